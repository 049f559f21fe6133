//! Rekey crash trials through the binaries. A source holds 100,000 records
//! that are real ciphertexts under its key (sealed by the test, as the
//! daemon seals records, straight into its stopped store) and a One Time
//! Clone with rekey for each fresh target. Each target clones the source,
//! imports its key and starts rekeying; the test kill -9s it at a random
//! moment of the rekey. Right after the kill the target holds exactly the
//! 100,000 records, each under the source's key or the target's own, moved
//! exactly up to the durable cursor (a batch's rows and its cursor commit
//! together). After a restart the rekey completes by itself, and every
//! record decrypts under the target's key to its original plaintext: the
//! digest over all (address, plaintext) pairs equals the source's, so none
//! is lost, skipped or encrypted twice.
//!
//! An uninterrupted rekey runs first: it checks the seeded ciphertexts and
//! measures how long a rekey of 100,000 records takes with these binaries;
//! kill moments are drawn over that length, so most kills land while it runs.
//!
//! `KMF_REKEY_CRASH_TRIALS` sets the number of trials (default 10) and
//! `KMF_CRASH_SEED` the random seed (printed, so a failure can be replayed).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kmf::domain::ciphertext;
use kmf::domain::ids::{KeyId, Name, SysId, UnixMillis};
use kmf::domain::record::{RecordAddress, StoredRecord};
use kmf::domain::rekey::{RekeyRun, RekeyState};
use kmf::signer::Signer;
use kmf::signer::schemes::LoadedKey;
use kmf::signer::software::SoftwareSigner;
use kmf::store::{CatalogStore, PropertyStore, RecordStore, RekeyStore, Store};
use sha2::{Digest, Sha256};

use crate::binaries::{Daemon, Settings, free_port, init, ok, run, start_listening};
use crate::support::wait_for;

const RECORDS: u32 = 100_000;
const TABLE: &str = "hr";
const FIELD: &str = "salary";
const SPEC: &str = "pay";
const REKEYED: &str = "protected.script.values.kmf.rekeyed";
const AUTO_EXCHANGE: &str = "glide_encryption.auto_key_exchange.enabled";
/// Records read from a stopped daemon's store per page.
const PAGE: usize = 5_000;

fn address(i: u32) -> RecordAddress {
    RecordAddress::parse(TABLE, FIELD, &format!("r{i:06}")).expect("address")
}

/// Record `i`'s plaintext: 32 bytes, distinct for every record.
fn plaintext(i: u32) -> [u8; 32] {
    Sha256::digest(format!("kmf rekey crash record {i}")).into()
}

/// The plaintext the record at `address` was seeded with.
fn expected_plaintext(address: &RecordAddress) -> Option<[u8; 32]> {
    let i: u32 = address.record_id.strip_prefix('r')?.parse().ok()?;
    (i < RECORDS).then(|| plaintext(i))
}

/// SHA-256 over every (address, plaintext) pair, in address order.
#[derive(Default)]
struct PlaintextDigest {
    sha: Sha256,
    pairs: u64,
}

impl PlaintextDigest {
    fn add(&mut self, address: &RecordAddress, plaintext: &[u8]) {
        // Both parts are length-delimited, so pairs never run together.
        self.sha.update(address.associated_data());
        self.sha.update((plaintext.len() as u32).to_be_bytes());
        self.sha.update(plaintext);
        self.pairs += 1;
    }

    fn finish(self) -> (String, u64) {
        (self.sha.finalize().iter().map(|b| format!("{b:02x}")).collect(), self.pairs)
    }
}

/// A stopped daemon's data keys, unwrapped with its software KEK.
struct Keyring<'a> {
    store: &'a Arc<Store>,
    signer: SoftwareSigner,
    keys: HashMap<KeyId, LoadedKey>,
}

impl<'a> Keyring<'a> {
    fn new(store: &'a Arc<Store>, dir: &Path) -> Self {
        let signer = SoftwareSigner::load(&dir.join(kmf::app::KEK_FILE)).expect("load the daemon's KEK");
        Keyring { store, signer, keys: HashMap::new() }
    }

    fn key(&mut self, id: &KeyId) -> &LoadedKey {
        if !self.keys.contains_key(id) {
            let catalog = CatalogStore::new(self.store);
            let (_, wrapped) =
                wait_for(catalog.key(id.clone())).expect("read the key").unwrap_or_else(|| panic!("no key {id}"));
            let spec = wait_for(catalog.spec(id.spec.clone())).expect("read the spec").expect("the key's spec");
            let dek = self.signer.unwrap(&wrapped).expect("unwrap the key");
            self.keys.insert(id.clone(), LoadedKey::load(spec.scheme(), dek).expect("load the key"));
        }
        &self.keys[id]
    }
}

/// Seals every record under the stopped source's Active key of `pay`,
/// exactly as kmfd seals records (header, then the body sealed with the
/// associated data [header, address]), and writes them into its store.
/// Returns the key and the digest of the plaintexts.
fn seed_ciphertexts(dir: &Path) -> (KeyId, String) {
    let store = Arc::new(Store::open_redb(&dir.join("kmf.redb")).expect("open the source's store"));
    let spec_name = Name::parse(SPEC, "spec").expect("spec");
    let catalog = CatalogStore::new(&store);
    let spec = wait_for(catalog.spec(spec_name.clone())).expect("read the spec").expect("spec pay");
    let active = wait_for(catalog.find_key(spec_name.clone(), |k| k.state.can_encrypt()));
    let (row, wrapped) = active.expect("read keys").expect("Active key");
    let signer = SoftwareSigner::load(&dir.join(kmf::app::KEK_FILE)).expect("load the source's KEK");
    let key = LoadedKey::load(spec.scheme(), signer.unwrap(&wrapped).expect("unwrap")).expect("load the key");
    let header = ciphertext::encode_header(&row.id);
    let mut digest = PlaintextDigest::default();
    let records: Vec<StoredRecord> = (0..RECORDS)
        .map(|i| {
            let (address, plaintext) = (address(i), plaintext(i));
            let mut out = header.clone();
            key.seal(&[&header, &address.associated_data()], &plaintext, &mut out).expect("seal");
            digest.add(&address, &plaintext);
            StoredRecord { address, ciphertext: out, key_id: row.id.clone(), updated_at: UnixMillis(1) }
        })
        .collect();
    for chunk in records.chunks(10_000) {
        wait_for(RecordStore::new(&store).put_records(chunk.to_vec())).expect("seed records");
    }
    (row.id, digest.finish().0)
}

/// Calls `f` with every record of a stopped daemon's store, in address order.
fn each_record(store: &Arc<Store>, mut f: impl FnMut(&StoredRecord)) {
    let mut after: Option<RecordAddress> = None;
    // Bounded: far more pages than the records fill.
    for _ in 0..(RECORDS as usize / PAGE) * 4 + 4 {
        let page = wait_for(RecordStore::new(store).records(None, None, after.clone(), PAGE)).expect("read records");
        let Some(last) = page.last() else { return };
        after = Some(last.address.clone());
        page.iter().for_each(&mut f);
    }
    panic!("more records than expected");
}

/// The one rekey run of a stopped target.
fn the_rekey(store: &Arc<Store>, trial: &str) -> RekeyRun {
    let runs = wait_for(RekeyStore::new(store).rekeys()).expect("rekeys");
    <[RekeyRun; 1]>::try_from(runs).unwrap_or_else(|r| panic!("trial {trial}: one rekey, not {}", r.len()))[0].clone()
}

/// Right after the kill: the killed target's rekey (state, durable records
/// done) and its records, each checked to be under the source's key or the
/// target's own, moved exactly as far as the durable cursor says.
fn at_kill(dir: &Path, source_key: &KeyId, target: &SysId, trial: &str) -> (RekeyState, u64) {
    let store = Arc::new(Store::open_redb(&dir.join("kmf.redb")).expect("open the killed target's store"));
    let run = the_rekey(&store, trial);
    let (mut total, mut moved) = (0u64, 0u64);
    // Within the first pass of the first attempt, exactly the records up to the cursor have moved.
    let check_cursor = run.attempts <= 1 && run.pass <= 1 && run.state != RekeyState::Completed;
    each_record(&store, |rec| {
        total += 1;
        let own = rec.key_id.origin == *target;
        assert!(own || rec.key_id == *source_key, "trial {trial}: {:?} is under {}", rec.address, rec.key_id);
        moved += u64::from(own);
        if check_cursor {
            let up_to_cursor = run.cursor.as_ref().is_some_and(|c| rec.address <= *c);
            assert_eq!(
                own, up_to_cursor,
                "trial {trial}: {:?} moved={own}; the durable cursor is {:?}",
                rec.address, run.cursor
            );
        }
    });
    assert_eq!(total, u64::from(RECORDS), "trial {trial}: records after the kill");
    assert_eq!(moved, run.records_done, "trial {trial}: records moved = the durable progress ({run:?})");
    let debt = wait_for(RecordStore::new(&store).record_debt()).expect("record debt");
    let source_debt: u64 = debt.iter().filter(|d| d.key_id == *source_key).map(|d| d.records).sum();
    assert_eq!(source_debt, total - moved, "trial {trial}: the debt index follows the records: {debt:?}");
    (run.state, run.records_done)
}

/// After the rekey completed (target stopped): every record is under the
/// target's one key and decrypts to its plaintext; returns the digest and
/// the run.
fn verify_rekeyed(dir: &Path, source_key: &KeyId, target: &SysId, trial: &str) -> (String, RekeyRun) {
    let store = Arc::new(Store::open_redb(&dir.join("kmf.redb")).expect("open the target's store"));
    let run = the_rekey(&store, trial);
    assert_eq!(run.state, RekeyState::Completed, "trial {trial}: {run:?}");
    assert_eq!((run.records_done, run.records_total), (u64::from(RECORDS), u64::from(RECORDS)), "{run:?}");
    let mut keys = Keyring::new(&store, dir);
    let (mut digest, mut under) = (PlaintextDigest::default(), BTreeSet::new());
    let mut wrong = Vec::new();
    each_record(&store, |rec| {
        assert_eq!(rec.key_id.origin, *target, "trial {trial}: {:?} is still under {}", rec.address, rec.key_id);
        let (named, header, body) = ciphertext::parse(&rec.ciphertext).expect("a kmf ciphertext");
        assert_eq!(named, rec.key_id, "trial {trial}: {:?}: the header names another key", rec.address);
        under.insert(rec.key_id.clone());
        let opened = keys.key(&rec.key_id).open(&[header, &rec.address.associated_data()], body);
        let opened = opened.unwrap_or_else(|e| panic!("trial {trial}: {:?} does not decrypt: {e}", rec.address));
        if expected_plaintext(&rec.address).is_none_or(|p| p[..] != opened[..]) && wrong.len() < 5 {
            wrong.push(format!("{:?} opens to {} bytes that are not its plaintext", rec.address, opened.len()));
        }
        digest.add(&rec.address, &opened);
    });
    assert!(wrong.is_empty(), "trial {trial}: {wrong:?}");
    assert_eq!(under.len(), 1, "trial {trial}: one key of the target's own, generated once: {under:?}");
    let debt = wait_for(RecordStore::new(&store).record_debt()).expect("record debt");
    assert!(!debt.iter().any(|d| d.key_id.origin == source_key.origin), "trial {trial}: debt of source keys: {debt:?}");
    assert_eq!(debt.iter().map(|d| d.records).sum::<u64>(), u64::from(RECORDS), "trial {trial}: {debt:?}");
    let rekeyed = wait_for(PropertyStore::new(&store).property(REKEYED.into()));
    let rekeyed = rekeyed.expect("read the property").map(|p| p.value);
    assert_eq!(rekeyed.as_deref(), Some("true"), "trial {trial}: {REKEYED}");
    let (digest, pairs) = digest.finish();
    assert_eq!(pairs, u64::from(RECORDS), "trial {trial}");
    (digest, run)
}

/// The target's rekeys (`kmfctl --json rekey list`), or None if it did not answer.
fn rekeys(target: &Daemon, pki: &Path) -> Option<Vec<serde_json::Value>> {
    let out = run(target.ctl(pki).args(["--json", "rekey", "list"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    // An empty list is left out of the JSON mapping.
    Some(v["rekeys"].as_array().cloned().unwrap_or_default())
}

/// Waits (bounded) for the target's one rekey to appear pending or
/// running; returns its request id.
fn rekey_appears(target: &Daemon, pki: &Path, trial: &str) -> String {
    // The clone of 100,000 records (debug binaries) and the exchange come first.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(list) = rekeys(target, pki)
            && let Some(r) = list.first()
        {
            let state = r["state"].as_str().unwrap_or_default();
            assert!(
                matches!(state, "REKEY_PENDING" | "REKEY_RUNNING"),
                "trial {trial}: the rekey appeared {state}: {r}"
            );
            return r["requestId"].as_str().expect("request id").to_owned();
        }
        if Instant::now() >= deadline {
            let clones = run(target.ctl(pki).args(["--json", "clone", "list"]));
            panic!(
                "trial {trial}: no rekey appeared; clones: {}\nlog:\n{}",
                String::from_utf8_lossy(&clones.stdout),
                std::fs::read_to_string(&target.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(30)); // poll interval; bounded by the deadline
    }
}

/// Waits (bounded) until the rekey of `request_id` is completed.
fn rekey_completes(target: &Daemon, pki: &Path, request_id: &str, trial: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    loop {
        let list = rekeys(target, pki).unwrap_or_default();
        if let Some(r) = list.iter().find(|r| r["requestId"] == request_id) {
            match r["state"].as_str().unwrap_or_default() {
                "REKEY_COMPLETED" => return,
                "REKEY_PENDING" | "REKEY_RUNNING" => {}
                other => panic!("trial {trial}: the rekey is {other}: {r}"),
            }
            last = Some(r.clone());
        }
        assert!(Instant::now() < deadline, "trial {trial}: the rekey never completed: {last:?}");
        std::thread::sleep(Duration::from_millis(50)); // poll interval; bounded by the deadline
    }
}

/// A fresh target whose clone of the source is under way (the source's
/// One Time Clone with rekey configured for it).
fn fresh_target(
    dir: &Path,
    pki: &Path,
    source: &Daemon,
    source_id: &str,
    source_listen: &str,
) -> (Daemon, SysId, String) {
    let target_id = init(dir, pki);
    let listen = free_port();
    let target = start_listening(dir, pki, Settings::Flags, &listen);
    ok(source.ctl(pki).args([
        "exchange",
        "clone-config",
        "create",
        "--frequency",
        "one-time",
        "--rekey",
        "--target-sys-id",
        &target_id,
        "--target-host",
        &listen,
        "--spec",
        SPEC,
    ]));
    ok(target.ctl(pki).args(["clone", "start", source_id, source_listen]));
    (target, SysId::parse(&target_id).expect("sys_id"), listen)
}

#[test]
fn kill_9_during_a_rekey_of_100k_records_and_it_completes_with_every_record_intact() {
    let (trials, seed_value, mut rng) = crate::binaries::trials("rekey crash", "KMF_REKEY_CRASH_TRIALS", 10);
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = tmp.path().join("pki");
    crate::binaries::operator_pki(&pki);

    // The source: module hr, spec pay (AES-256-GCM), one key, then 100,000 records sealed under it.
    let source_dir = tmp.path().join("source");
    let source_id = init(&source_dir, &pki);
    let source_listen = free_port();
    let mut source = start_listening(&source_dir, &pki, Settings::Flags, &source_listen);
    ok(source.ctl(&pki).args(["module", "create", TABLE, "--default-access", "track"]));
    ok(source.ctl(&pki).args(["spec", "create", SPEC, "--module", TABLE]));
    ok(source.ctl(&pki).args(["key", "generate", SPEC]));
    ok(source.ctl(&pki).args(["property", "set", AUTO_EXCHANGE, "false"]));
    source.stop();
    let seeding = Instant::now();
    let (source_key, source_digest) = seed_ciphertexts(&source_dir);
    assert_eq!(source_key.origin.as_str(), source_id);
    println!("seeded {RECORDS} records under {source_key} in {:.1} s", seeding.elapsed().as_secs_f64());
    let mut source = start_listening(&source_dir, &pki, Settings::Flags, &source_listen);

    // An uninterrupted rekey: checks the seeded ciphertexts and measures the rekey.
    let dir = tmp.path().join("target-baseline");
    let (mut target, target_id, _) = fresh_target(&dir, &pki, &source, &source_id, &source_listen);
    let request_id = rekey_appears(&target, &pki, "baseline");
    let appeared = Instant::now();
    rekey_completes(&target, &pki, &request_id, "baseline");
    let rekey_ms = appeared.elapsed().as_millis() as u64;
    target.stop();
    let (digest, run) = verify_rekeyed(&dir, &source_key, &target_id, "baseline");
    assert_eq!(digest, source_digest, "baseline digest");
    let in_daemon_ms = run.finished_at.map_or(0, |f| f.0 - run.attempt_started_at.0);
    let _ = std::fs::remove_dir_all(&dir);
    // As long as the rekey itself: most kills land while it runs, a few (when a rekey runs faster) after it.
    let kill_window_ms = rekey_ms.max(500);
    println!(
        "uninterrupted rekey of {RECORDS} records: {:.2} s from its appearance to completed ({:.2} s by the run's \
         own times); kill window {kill_window_ms} ms",
        rekey_ms as f64 / 1000.0,
        in_daemon_ms as f64 / 1000.0
    );

    let (mut pending, mut running, mut completed) = (0, 0, 0);
    let mut recoveries = Vec::new();
    for trial in 0..trials {
        let name = trial.to_string();
        let dir = tmp.path().join(format!("target-{trial}"));
        let (mut target, target_id, listen) = fresh_target(&dir, &pki, &source, &source_id, &source_listen);
        let request_id = rekey_appears(&target, &pki, &name);
        let kill_after_ms = rng.next() % kill_window_ms;
        std::thread::sleep(Duration::from_millis(kill_after_ms)); // the random kill moment, not a wait for state
        target.child.kill().expect("kill -9 the target");
        target.child.wait().expect("reap");
        let killed_at = Instant::now();

        let (state, done) = at_kill(&dir, &source_key, &target_id, &name);
        match state {
            RekeyState::Pending => pending += 1,
            RekeyState::Running => running += 1,
            RekeyState::Completed => completed += 1,
            other => panic!("trial {trial} (seed {seed_value}): the rekey was {} at the kill", other.label()),
        }

        target = start_listening(&dir, &pki, Settings::Flags, &listen);
        rekey_completes(&target, &pki, &request_id, &name);
        recoveries.push(killed_at.elapsed().as_secs_f64());
        target.stop();
        let (digest, _) = verify_rekeyed(&dir, &source_key, &target_id, &name);
        assert_eq!(digest, source_digest, "trial {trial} (seed {seed_value}, {kill_after_ms} ms): plaintext digest");
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "trial {trial:2}: killed {kill_after_ms:5} ms after the rekey appeared, {} with {done:6} records durably \
             moved; completed {:.2} s after the kill; digest matches",
            state.label(),
            recoveries[recoveries.len() - 1]
        );
    }
    source.stop();
    recoveries.sort_by(f64::total_cmp);
    println!(
        "rekey crash trials: {trials} run ({RECORDS} records each; uninterrupted rekey {:.2} s, kill window \
         {kill_window_ms} ms); at the kill the rekey was pending in {pending}, running in {running}, completed in \
         {completed}; right after every kill {RECORDS} records, each under the source's key or the target's, moved \
         exactly up to the durable cursor; every rekey completed by itself: kill -> completed median {:.2} s, max \
         {:.2} s; every record decrypts under the target's key to its plaintext (digest {})",
        rekey_ms as f64 / 1000.0,
        recoveries.get(recoveries.len() / 2).copied().unwrap_or_default(),
        recoveries.last().copied().unwrap_or_default(),
        &source_digest[..16]
    );
    assert_eq!(pending + running + completed, trials);
}
