//! Little-endian words in stored values (shared data, cache entries), read at an offset or in turn with a [`Reader`]: short or malformed input is `None`, never a panic.

/// The `N` bytes at `at`, if the value holds them.
fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The little-endian u16 at `at`.
pub fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    array(bytes, at).map(u16::from_le_bytes)
}

/// The little-endian u32 at `at`.
pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    array(bytes, at).map(u32::from_le_bytes)
}

/// The little-endian u64 at `at`.
pub fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    array(bytes, at).map(u64::from_le_bytes)
}

/// A value that is exactly one little-endian u64 (a counter, a deadline); None for any
/// other length.
pub fn u64_exact(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_le_bytes)
}

/// Reads a value's fields in turn; each read is None once the value runs out.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_le_bytes)
    }

    /// Bytes preceded by their u32 length; None when the length is over `max` (a value
    /// whose length field was corrupted never becomes a large allocation).
    pub fn bytes(&mut self, max: usize) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return None;
        }
        self.take(n)
    }

    /// Whether every byte has been read (a value with trailing bytes is malformed).
    pub fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn words_are_read_little_endian_at_their_offset() {
        let bytes = [1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(u16_at(&bytes, 0), Some(1));
        assert_eq!(u32_at(&bytes, 2), Some(2));
        assert_eq!(u64_at(&bytes, 6), Some(3));
        assert_eq!(u64_at(&bytes, 7), None, "one byte short");
        assert_eq!(u32_at(&bytes, usize::MAX), None, "an offset past usize");
        assert_eq!(u64_exact(&bytes[6..]), Some(3));
        assert_eq!(u64_exact(&bytes[5..]), None, "nine bytes are not one word");
    }

    #[test]
    fn a_reader_reads_fields_in_turn() {
        let mut value = 7u64.to_le_bytes().to_vec();
        value.push(9);
        value.extend_from_slice(&3u32.to_le_bytes());
        value.extend_from_slice(b"abc");
        value.extend_from_slice(&(-2i64).to_le_bytes());
        let mut r = Reader::new(&value);
        assert_eq!(r.u64(), Some(7));
        assert_eq!(r.u8(), Some(9));
        assert_eq!(r.bytes(3), Some(&b"abc"[..]));
        assert!(!r.is_done());
        assert_eq!(r.i64(), Some(-2));
        assert!(r.is_done());
        assert_eq!(r.u8(), None);
        let mut r = Reader::new(&value[8 + 1..]);
        assert_eq!(r.bytes(2), None, "a length over the bound");
    }

    proptest! {
        /// Any input and any reads: no panic, and a read never goes past the end.
        #[test]
        fn reads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                             reads in proptest::collection::vec(0u8..5, 0..32),
                             at in any::<usize>()) {
            let _ = (u16_at(&bytes, at), u32_at(&bytes, at), u64_at(&bytes, at % 80));
            let mut r = Reader::new(&bytes);
            for read in reads {
                let _ = match read {
                    0 => r.u8().map(u64::from),
                    1 => r.u32().map(u64::from),
                    2 => r.u64(),
                    3 => r.i64().map(|v| v as u64),
                    _ => r.bytes(16).map(|b| b.len() as u64),
                };
                prop_assert!(r.at <= bytes.len());
            }
        }
    }
}
