//! A small length-prefixed binary codec for the signed formats (bundle,
//! receipt, ciphertext header). Decoding never panics: every read is bounded.

use super::DomainError;

#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(magic: &[u8; 4], version: u8) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(magic);
        buf.push(version);
        Writer { buf }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A byte string with a u32 length prefix.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub fn opt_i64(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).i64(v),
            None => self.u8(0),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Checks magic and version, and positions after them.
    pub fn new(input: &'a [u8], magic: &[u8; 4], version: u8, what: &'static str) -> Result<Self, DomainError> {
        let mut r = Reader { rest: input, what };
        if r.take(4)? != magic {
            return Err(DomainError::malformed(what, "wrong magic"));
        }
        let v = r.u8()?;
        if v != version {
            return Err(DomainError::malformed(what, format!("unsupported version {v}")));
        }
        Ok(r)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DomainError> {
        if self.rest.len() < n {
            return Err(DomainError::malformed(self.what, "truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DomainError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, DomainError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i64(&mut self) -> Result<i64, DomainError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], DomainError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn str(&mut self) -> Result<&'a str, DomainError> {
        let what = self.what;
        std::str::from_utf8(self.bytes()?).map_err(|_| DomainError::malformed(what, "invalid UTF-8"))
    }

    pub fn opt_i64(&mut self) -> Result<Option<i64>, DomainError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.i64()?)),
            _ => Err(DomainError::malformed(self.what, "bad option tag")),
        }
    }

    /// A count that must fit in what is left (each item at least `min_item` bytes).
    pub fn count(&mut self, min_item: usize) -> Result<usize, DomainError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.rest.len() {
            return Err(DomainError::malformed(self.what, "count exceeds input"));
        }
        Ok(n)
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    pub fn finish(self) -> Result<(), DomainError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DomainError::malformed(self.what, "trailing bytes")) }
    }
}
