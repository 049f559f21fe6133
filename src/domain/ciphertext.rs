//! The ciphertext header: `"KMFC" 01`, origin sys_id (16 bytes), spec name
//! (u8 length + bytes), key version (u32), then the algorithm's nonce and
//! ciphertext. The header bytes are part of the AEAD associated data, so a
//! header cannot be swapped onto another ciphertext.

use super::DomainError;
use super::codec::{Reader, Writer};
use super::ids::{KeyId, Name, SysId};

const MAGIC: &[u8; 4] = b"KMFC";
const VERSION: u8 = 1;

/// Encodes the header naming `key`.
pub fn encode_header(key: &KeyId) -> Vec<u8> {
    let spec = key.spec.as_str().as_bytes();
    let mut w = Writer::new(MAGIC, VERSION);
    // Name is at most 64 bytes, so the length fits a u8.
    w.raw(&key.origin.to_bytes()).u8(spec.len() as u8).raw(spec).u32(key.version);
    w.finish()
}

/// The length of the header `encode_header` makes for `key`.
pub fn header_len(key: &KeyId) -> usize {
    MAGIC.len() + 1 + 16 + 1 + key.spec.as_str().len() + 4
}

/// Splits a ciphertext into (key id, header bytes, body).
pub fn parse(ciphertext: &[u8]) -> Result<(KeyId, &[u8], &[u8]), DomainError> {
    const W: &str = "ciphertext";
    let mut r = Reader::new(ciphertext, MAGIC, VERSION, W)?;
    let mut origin = [0u8; 16];
    origin.copy_from_slice(r.take(16)?);
    let len = r.u8()? as usize;
    let spec = std::str::from_utf8(r.take(len)?).map_err(|_| DomainError::malformed(W, "bad spec name"))?;
    let spec = Name::parse(spec, "spec").map_err(|_| DomainError::malformed(W, "bad spec name"))?;
    let version = r.u32()?;
    let body = r.remaining();
    let header = &ciphertext[..ciphertext.len() - body.len()];
    Ok((KeyId { origin: SysId::from_bytes(origin), spec, version }, header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_refusals() {
        let key = KeyId { origin: SysId::from_random([3; 16]), spec: Name::parse("pay", "s").unwrap(), version: 7 };
        let mut ct = encode_header(&key);
        let header_len = ct.len();
        assert_eq!(super::header_len(&key), header_len);
        ct.extend_from_slice(b"body");
        let (id, header, body) = parse(&ct).unwrap();
        assert_eq!((id, header.len(), body), (key, header_len, &b"body"[..]));
        let malformed = |why: &str| Err(DomainError::malformed("ciphertext", why));
        assert_eq!(parse(b"KMFC"), malformed("truncated"));
        assert_eq!(parse(b"XXXX\x01"), malformed("wrong magic"));
        assert_eq!(parse(&ct[..header_len - 1]), malformed("truncated"));
    }
}
