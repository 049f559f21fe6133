//! The audit log: append-only entries, each carrying the SHA-256 of the
//! previous one, so any edit, deletion or reordering breaks the chain.
//!
//! Entry v1 canonical bytes: `"KMFA" 01`, sequence (u64 as two u32), time,
//! actor, action, subject, outcome, details, previous hash. The entry hash is
//! SHA-256 over those bytes; the stored form appends it.

use sha2::{Digest, Sha256};

use super::DomainError;
use super::codec::{Reader, Writer};
use super::ids::UnixMillis;

const MAGIC: &[u8; 4] = b"KMFA";
const VERSION: u8 = 1;

/// The hash that precedes the first entry.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Most characters an entry's actor or subject holds, marker included: more
/// than any name the daemon makes (a record address is at most 258), so only a
/// caller-supplied string (a request path, a certificate's name) is cut.
pub const MAX_SUBJECT_CHARS: usize = 320;

/// Most characters of caller-influenced details (a refusal's reason).
pub const MAX_DETAILS_CHARS: usize = 1024;

/// `text` if it has at most `max` characters; else its beginning followed by
/// `…[N chars]` (N: the original length), `max` characters in all, so a
/// caller cannot make an audit entry as large as its request.
pub fn bounded(text: String, max: usize) -> String {
    let len = text.chars().count();
    if len <= max {
        return text;
    }
    let marker = format!("…[{len} chars]");
    let Some(keep) = max.checked_sub(marker.chars().count()) else { return text.chars().take(max).collect() };
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(&marker);
    out
}

/// Whether the audited thing happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Success,
    Refused,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self, DomainError> {
        match text {
            "success" => Ok(Outcome::Success),
            "refused" => Ok(Outcome::Refused),
            "failed" => Ok(Outcome::Failed),
            _ => Err(DomainError::malformed("audit entry", "unknown outcome")),
        }
    }
}

/// What happened, before it is placed in the chain. Never holds key material.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEvent {
    pub at: UnixMillis,
    /// Who: `operator:<name>`, `instance:<sys_id>` or `system`.
    pub actor: String,
    /// What, as a dotted verb: `key.rotate`, `exchange.approve`, `call.refused`, ...
    pub action: String,
    /// On what: a key id, request id, spec, property name, RPC method.
    pub subject: String,
    pub outcome: Outcome,
    /// Free text with ids and counts (never material).
    pub details: String,
}

impl AuditEvent {
    pub fn new(
        at: UnixMillis,
        actor: impl Into<String>,
        action: &str,
        subject: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        AuditEvent {
            at,
            actor: bounded(actor.into(), MAX_SUBJECT_CHARS),
            action: action.to_owned(),
            subject: bounded(subject.into(), MAX_SUBJECT_CHARS),
            outcome,
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

/// An event placed in the chain.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEntry {
    pub seq: u64,
    pub event: AuditEvent,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

fn body(seq: u64, e: &AuditEvent, prev: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::new(MAGIC, VERSION);
    w.u32((seq >> 32) as u32)
        .u32(seq as u32)
        .i64(e.at.0)
        .str(&e.actor)
        .str(&e.action)
        .str(&e.subject)
        .str(e.outcome.as_str())
        .str(&e.details)
        .raw(prev);
    w.finish()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl AuditEntry {
    /// Places `event` after the entry whose hash is `prev_hash`.
    pub fn chain(seq: u64, event: AuditEvent, prev_hash: [u8; 32]) -> Self {
        let hash = sha256(&body(seq, &event, &prev_hash));
        AuditEntry { seq, event, prev_hash, hash }
    }

    /// The stored form: canonical body followed by the hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = body(self.seq, &self.event, &self.prev_hash);
        bytes.extend_from_slice(&self.hash);
        bytes
    }

    /// Decodes without judging the hash; `verify_chain` does that.
    pub fn decode(bytes: &[u8]) -> Result<Self, DomainError> {
        const W: &str = "audit entry";
        let mut r = Reader::new(bytes, MAGIC, VERSION, W)?;
        let seq = (u64::from(r.u32()?) << 32) | u64::from(r.u32()?);
        let at = UnixMillis(r.i64()?);
        let event = AuditEvent {
            at,
            actor: r.str()?.to_owned(),
            action: r.str()?.to_owned(),
            subject: r.str()?.to_owned(),
            outcome: Outcome::parse(r.str()?)?,
            details: r.str()?.to_owned(),
        };
        let mut prev_hash = [0u8; 32];
        prev_hash.copy_from_slice(r.take(32)?);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(r.take(32)?);
        r.finish()?;
        Ok(AuditEntry { seq, event, prev_hash, hash })
    }
}

/// Where the chain first breaks.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BrokenLink {
    pub seq: u64,
    pub reason: String,
}

/// Checks entries one at a time, in order from sequence 1, so a long log
/// can be verified page by page.
#[derive(Debug)]
pub struct ChainVerifier {
    prev: [u8; 32],
    next_seq: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier { prev: GENESIS, next_seq: 1 }
    }
}

impl ChainVerifier {
    pub fn push(&mut self, e: &AuditEntry) -> Result<(), BrokenLink> {
        let broken = |reason: &str| BrokenLink { seq: e.seq, reason: reason.to_owned() };
        if e.seq != self.next_seq {
            return Err(BrokenLink { seq: self.next_seq, reason: format!("entry {} is missing", self.next_seq) });
        }
        if e.prev_hash != self.prev {
            return Err(broken("previous-hash does not match the entry before"));
        }
        if sha256(&body(e.seq, &e.event, &e.prev_hash)) != e.hash {
            return Err(broken("content does not match its hash (edited)"));
        }
        self.prev = e.hash;
        self.next_seq += 1;
        Ok(())
    }

    /// How many entries verified so far.
    pub fn verified(&self) -> u64 {
        self.next_seq - 1
    }
}

/// Walks entries in order from sequence 1; returns how many verified, or the first broken link.
pub fn verify_chain<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Result<u64, BrokenLink> {
    let mut v = ChainVerifier::default();
    for e in entries {
        v.push(e)?;
    }
    Ok(v.verified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for seq in 1..=n {
            let prev = out.last().map_or(GENESIS, |e| e.hash);
            let ev = AuditEvent::new(
                UnixMillis(seq as i64),
                "operator:a",
                "key.rotate",
                format!("k{seq}"),
                Outcome::Success,
            );
            out.push(AuditEntry::chain(seq, ev, prev));
        }
        out
    }

    #[test]
    fn actors_and_subjects_are_bounded_with_their_original_length() {
        let path = format!("GET /{}", "a".repeat(8_200));
        let e = AuditEvent::new(UnixMillis(1), "x".repeat(5_000), "call.refused", path, Outcome::Refused);
        assert_eq!(e.subject.chars().count(), MAX_SUBJECT_CHARS, "{}", e.subject);
        assert!(e.subject.starts_with("GET /aaa") && e.subject.ends_with("…[8205 chars]"), "{}", e.subject);
        assert_eq!(e.actor.chars().count(), MAX_SUBJECT_CHARS);
        assert!(e.actor.ends_with("…[5000 chars]"), "{}", e.actor);
        let short = AuditEvent::new(UnixMillis(1), "operator:a", "record.put", "t/f/1", Outcome::Success);
        assert_eq!((short.actor.as_str(), short.subject.as_str()), ("operator:a", "t/f/1"), "short ones are kept");
        let edge = "é".repeat(MAX_SUBJECT_CHARS);
        assert_eq!(bounded(edge.clone(), MAX_SUBJECT_CHARS), edge, "counted in characters, not bytes");
        assert_eq!(bounded("abcdef".into(), 3).chars().count(), 3, "never longer than the bound");
        let chained = AuditEntry::chain(1, e, GENESIS);
        assert_eq!(AuditEntry::decode(&chained.encode()).as_ref(), Ok(&chained));
    }

    #[test]
    fn intact_chain_verifies_and_round_trips() {
        let c = chain(5);
        assert_eq!(verify_chain(&c), Ok(5));
        for e in &c {
            assert_eq!(AuditEntry::decode(&e.encode()).as_ref(), Ok(e));
        }
    }

    #[test]
    fn edits_deletions_and_reorders_are_caught_at_the_right_entry() {
        let mut edited = chain(5);
        edited[2].event.subject = "other".into();
        assert_eq!(verify_chain(&edited).map_err(|b| b.seq), Err(3));

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(verify_chain(&deleted).map_err(|b| b.seq), Err(2));

        let mut rehashed = chain(5);
        rehashed[3].event.details = "forged".into();
        let prev = rehashed[3].prev_hash;
        rehashed[3] = AuditEntry::chain(4, rehashed[3].event.clone(), prev);
        assert_eq!(verify_chain(&rehashed).map_err(|b| b.seq), Err(5), "a re-hashed entry breaks the next link");
    }
}
