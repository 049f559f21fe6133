//! Order-preserving encoding of composite keys: byte order of the encoded
//! keys is the order of the tuples. Strings end with 0x00 0x01 (a 0x00
//! inside is written 0x00 0xff), integers are big-endian (i64 with the sign
//! bit flipped). So a prefix of whole components is a prefix of bytes, and
//! no other key starts with it.

use super::StoreError;

#[derive(Default, Clone, Debug)]
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub fn new() -> Self {
        KeyBuf(Vec::with_capacity(64))
    }

    pub fn str(mut self, s: &str) -> Self {
        for &b in s.as_bytes() {
            self.0.push(b);
            if b == 0 {
                self.0.push(0xff);
            }
        }
        self.0.extend_from_slice(&[0, 1]);
        self
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
        self
    }

    /// Raw bytes, only as the last component (no terminator).
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

/// Reads components back in the order they were written.
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("stored key: {what}"))
}

impl<'a> KeyReader<'a> {
    pub fn new(key: &'a [u8]) -> Self {
        KeyReader { rest: key }
    }

    pub fn str(&mut self) -> Result<String, StoreError> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let b = *self.rest.get(i).ok_or_else(|| corrupt("unterminated string"))?;
            if b == 0 {
                match self.rest.get(i + 1) {
                    Some(0xff) => {
                        out.push(0);
                        i += 2;
                        continue;
                    }
                    Some(1) => {
                        self.rest = &self.rest[i + 2..];
                        return String::from_utf8(out).map_err(|_| corrupt("string is not UTF-8"));
                    }
                    _ => return Err(corrupt("bad string terminator")),
                }
            }
            out.push(b);
            i += 1;
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        if self.rest.len() < N {
            return Err(corrupt("truncated integer"));
        }
        let (head, tail) = self.rest.split_at(N);
        self.rest = tail;
        let mut a = [0u8; N];
        a.copy_from_slice(head);
        Ok(a)
    }

    pub fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, StoreError> {
        Ok((u64::from_be_bytes(self.array()?) ^ (1 << 63)) as i64)
    }

    pub fn raw(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    pub fn end(&self) -> Result<(), StoreError> {
        if self.rest.is_empty() { Ok(()) } else { Err(corrupt("trailing bytes")) }
    }
}

/// The first component of a key, when it is a string: its encoded bytes up
/// to and including the terminator (the prefix every key starting with that
/// string has). None when the key has no terminated string first.
pub fn first_str_component(key: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    while i < key.len() {
        if key[i] == 0 {
            match key.get(i + 1) {
                Some(1) => return Some(&key[..i + 2]),
                Some(0xff) => i += 2,
                _ => return None,
            }
        } else {
            i += 1;
        }
    }
    None
}

/// A single-string key.
pub fn str_key(s: &str) -> Vec<u8> {
    KeyBuf::new().str(s).done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_preserved() {
        let keys = [
            KeyBuf::new().str("").u32(0).done(),
            KeyBuf::new().str("a").u32(1).done(),
            KeyBuf::new().str("a").u32(2).done(),
            KeyBuf::new().str("a\0").u32(0).done(),
            KeyBuf::new().str("ab").u32(0).done(),
            KeyBuf::new().str("b").u32(0).done(),
        ];
        for w in keys.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        let ints = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in ints.windows(2) {
            assert!(KeyBuf::new().i64(w[0]).done() < KeyBuf::new().i64(w[1]).done());
        }
    }

    #[test]
    fn round_trip_and_prefixes() {
        let k = KeyBuf::new().str("spec\0x").str("origin").u32(7).i64(-3).u64(9).raw(b"tail").done();
        let mut r = KeyReader::new(&k);
        assert_eq!(r.str().unwrap(), "spec\0x");
        assert_eq!(r.str().unwrap(), "origin");
        assert_eq!(r.u32().unwrap(), 7);
        assert_eq!(r.i64().unwrap(), -3);
        assert_eq!(r.u64().unwrap(), 9);
        assert_eq!(r.raw(), b"tail");
        r.end().unwrap();
        assert!(k.starts_with(&KeyBuf::new().str("spec\0x").done()));
        // "spec" is not a component-prefix of "spec\0x".
        assert!(!k.starts_with(&KeyBuf::new().str("spec").done()));
        let why = |e: StoreError| e.to_string();
        assert_eq!(KeyReader::new(b"abc").str().map_err(why), Err(corrupt("unterminated string").to_string()));
        assert_eq!(KeyReader::new(&[1, 2]).u32().map_err(why), Err(corrupt("truncated integer").to_string()));
        let mut r = KeyReader::new(&[0, 1, 7]);
        r.str().unwrap();
        assert_eq!(r.end().map_err(why), Err(corrupt("trailing bytes").to_string()));
        assert_eq!(KeyReader::new(&[b'a', 0, 2]).str().map_err(why), Err(corrupt("bad string terminator").to_string()));
        assert_eq!(first_str_component(&k), Some(KeyBuf::new().str("spec\0x").done().as_slice()));
        assert_eq!(first_str_component(b"abc"), None);
        assert_eq!(first_str_component(&[b'a', 0, 2]), None);
    }
}
