//! LEB128 varints and a bounds-checked reader, for the store's own binary
//! layouts (block postings, segments).

/// The input ended (or a length pointed) past its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

/// Append `v` as an unsigned LEB128 varint.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a byte slice front to back; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn byte(&mut self) -> Result<u8, Truncated> {
        let b = *self.buf.get(self.pos).ok_or(Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub fn varint(&mut self) -> Result<u64, Truncated> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Truncated)
    }

    /// A varint length that must fit in what is left.
    pub fn len(&mut self) -> Result<usize, Truncated> {
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(Truncated);
        }
        Ok(n as usize)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let s = self
            .buf
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or(Truncated)?;
        self.pos += n;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_truncation_is_an_error() {
        let mut out = Vec::new();
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            put(&mut out, v);
        }
        let mut r = Reader::new(&out);
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(r.varint(), Ok(v));
        }
        assert_eq!(r.byte(), Err(Truncated));
        assert_eq!(Reader::new(&[0x80]).varint(), Err(Truncated));
        assert_eq!(Reader::new(&[5, 1]).len(), Err(Truncated));
    }
}
