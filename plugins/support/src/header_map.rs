//! A header map held as the host serializes it — one buffer and one table of spans — so
//! fields are looked up in place instead of costing a String and a Vec each.
//!
//! proxy-wasm's serialization (ABI 0.2.1, `proxy_get_header_map_pairs`): a u32 count, then
//! each pair's name and value lengths (u32, little-endian), then every name and value in
//! order, each followed by a NUL.

use crate::request::RequestView;

/// Where one field's name and value sit in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    name_at: u32,
    name_len: u32,
    value_at: u32,
    value_len: u32,
}

/// A header map: the fields in order, names and values borrowed from one buffer. Changes
/// (`replace`, `remove`) keep it equal to the host's map after the same changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    bytes: Vec<u8>,
    fields: Vec<Field>,
}

impl HeaderMap {
    /// The map from its serialization; a malformed serialization yields the fields before
    /// the first malformed entry (none when even the count is missing).
    pub fn from_serialized(bytes: Vec<u8>) -> HeaderMap {
        let mut fields = Vec::new();
        let spans = Spans::new(&bytes);
        // Each field takes at least 10 bytes (two lengths, two NULs): a count beyond that
        // is a lie, not a reason to reserve memory.
        fields.reserve(spans.count.min(bytes.len() / 10));
        fields.extend(spans);
        HeaderMap { bytes, fields }
    }

    /// A map of the given fields, in order (tests and native callers).
    pub fn from_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> HeaderMap {
        let mut map = HeaderMap::default();
        for (name, value) in pairs {
            map.push(name.as_ref(), value.as_ref());
        }
        map
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(|f| self.field(f))
    }

    /// The number of field lines.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The first value of `name` (names as Envoy gives them: lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// Every line of `name` joined with ", " (RFC 9110 §5.3); None when absent.
    pub fn combined(&self, name: &str) -> Option<Vec<u8>> {
        crate::fields::join_lines(self.all(name))
    }

    /// Sets `name` to `value`, replacing every line it had (the new line goes last, as the
    /// host's replace of an absent field adds it at the end).
    pub fn replace(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.push(name.as_bytes(), value);
    }

    /// Removes every line of `name`.
    pub fn remove(&mut self, name: &str) {
        let bytes = &self.bytes;
        self.fields.retain(|f| {
            bytes.get(f.name_at as usize..(f.name_at + f.name_len) as usize)
                != Some(name.as_bytes())
        });
    }

    /// The fields as owned pairs (names decoded lossily: Envoy's names are ASCII).
    pub fn to_pairs(&self) -> Vec<(String, Vec<u8>)> {
        self.iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec()))
            .collect()
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        // Spans are u32 like the ABI's own lengths; a map past 4 GiB is not a header map.
        let (Ok(name_at), Ok(name_len), Ok(value_len)) = (
            u32::try_from(self.bytes.len()),
            u32::try_from(name.len()),
            u32::try_from(value.len()),
        ) else {
            return;
        };
        let Some(value_at) = name_at.checked_add(name_len) else {
            return;
        };
        if value_at.checked_add(value_len).is_none() {
            return;
        }
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.fields.push(Field {
            name_at,
            name_len,
            value_at,
            value_len,
        });
    }

    fn field(&self, f: &Field) -> (&[u8], &[u8]) {
        let span = |at: u32, len: u32| {
            self.bytes
                .get(at as usize..(at as usize).saturating_add(len as usize))
                .unwrap_or_default()
        };
        (span(f.name_at, f.name_len), span(f.value_at, f.value_len))
    }
}

/// Every (name, value) of a serialized map, borrowed in place (no table built): for one
/// pass over a map read once.
pub fn serialized_pairs(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    Spans::new(bytes).map(move |f| {
        let span = |at: u32, len: u32| {
            bytes
                .get(at as usize..(at as usize).saturating_add(len as usize))
                .unwrap_or_default()
        };
        (span(f.name_at, f.name_len), span(f.value_at, f.value_len))
    })
}

/// Every (name, value) of a serialized map as owned pairs (names decoded lossily: Envoy's
/// are ASCII); None when the serialization is malformed.
pub fn decode_serialized(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new()); // the host's empty map
    }
    let count = u32_le(bytes, 0)?;
    // A count beyond what the bytes can hold is a lie, not a reason to reserve memory.
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10));
    pairs.extend(
        serialized_pairs(bytes).map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec())),
    );
    (pairs.len() == count).then_some(pairs)
}

/// The fields of a serialization in order, up to the first malformed one.
struct Spans<'a> {
    bytes: &'a [u8],
    index: usize,
    count: usize,
    /// Where the next name starts.
    at: usize,
}

impl<'a> Spans<'a> {
    fn new(bytes: &'a [u8]) -> Spans<'a> {
        let count = u32_le(bytes, 0).unwrap_or(0);
        Spans {
            bytes,
            index: 0,
            count,
            at: 4usize.saturating_add(count.saturating_mul(8)),
        }
    }
}

impl Iterator for Spans<'_> {
    type Item = Field;

    fn next(&mut self) -> Option<Field> {
        if self.index >= self.count {
            return None;
        }
        let field = field_at(self.bytes, self.index, self.at);
        match field {
            Some(f) => {
                self.index += 1;
                self.at = (f.value_at as usize)
                    .saturating_add(f.value_len as usize)
                    .saturating_add(1);
            }
            None => self.index = self.count,
        }
        field
    }
}

/// Field `index` of a serialization, whose name starts at `at`.
fn field_at(bytes: &[u8], index: usize, at: usize) -> Option<Field> {
    let name_len = u32_le(bytes, index.checked_mul(8)?.checked_add(4)?)?;
    let value_len = u32_le(bytes, index.checked_mul(8)?.checked_add(8)?)?;
    let value_at = at.checked_add(name_len)?.checked_add(1)?;
    let end = value_at.checked_add(value_len)?;
    // The value's NUL must be there too (the last byte of a well-formed map).
    if end >= bytes.len() {
        return None;
    }
    Some(Field {
        name_at: u32::try_from(at).ok()?,
        name_len: u32::try_from(name_len).ok()?,
        value_at: u32::try_from(value_at).ok()?,
        value_len: u32::try_from(value_len).ok()?,
    })
}

/// The little-endian u32 at `at`, as a usize.
fn u32_le(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(word) as usize)
}

impl RequestView for HeaderMap {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.get(name).map(<[u8]>::to_vec)
    }

    fn header_values(&mut self, name: &str) -> Vec<Vec<u8>> {
        self.all(name).map(<[u8]>::to_vec).collect()
    }

    fn combined(&mut self, name: &str) -> Option<Vec<u8>> {
        HeaderMap::combined(self, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The ABI's serialization of `pairs` (what Envoy hands a filter).
    fn serialize(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            bytes.extend_from_slice(&(k.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            bytes.extend_from_slice(k);
            bytes.push(0);
            bytes.extend_from_slice(v);
            bytes.push(0);
        }
        bytes
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn fields_are_read_in_place_in_order() {
        let map = HeaderMap::from_serialized(serialize(&pairs(&[
            (":path", "/a"),
            ("accept", "text/html"),
            ("accept", "*/*"),
        ])));
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(":path"), Some(&b"/a"[..]));
        assert_eq!(map.get("accept"), Some(&b"text/html"[..]));
        assert_eq!(
            map.combined("accept").as_deref(),
            Some(&b"text/html, */*"[..])
        );
        assert_eq!(map.get("cookie"), None);
        assert_eq!(map.combined("cookie"), None);
    }

    #[test]
    fn replace_and_remove_follow_the_hosts_map() {
        let mut map =
            HeaderMap::from_serialized(serialize(&pairs(&[("a", "1"), ("b", "2"), ("a", "3")])));
        map.replace("a", b"new");
        map.replace("c", b"added");
        map.remove("b");
        map.remove("absent");
        assert_eq!(
            map.to_pairs(),
            vec![
                ("a".to_string(), b"new".to_vec()),
                ("c".into(), b"added".to_vec())
            ]
        );
    }

    #[test]
    fn a_malformed_map_keeps_the_fields_before_the_damage() {
        let mut bytes = serialize(&pairs(&[("a", "1"), ("b", "22")]));
        bytes.truncate(bytes.len() - 2); // b's value cut short
        let map = HeaderMap::from_serialized(bytes);
        assert_eq!(map.to_pairs(), vec![("a".to_string(), b"1".to_vec())]);
        assert!(HeaderMap::from_serialized(Vec::new()).is_empty());
        // A count far beyond the bytes reserves nothing and reads nothing.
        assert!(HeaderMap::from_serialized(u32::MAX.to_le_bytes().to_vec()).is_empty());
    }

    proptest! {
        #[test]
        fn reads_what_was_serialized(
            fields in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..12),
                 proptest::collection::vec(any::<u8>(), 0..40)),
                0..20,
            ),
        ) {
            let map = HeaderMap::from_serialized(serialize(&fields));
            let read: Vec<(Vec<u8>, Vec<u8>)> =
                map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(&read, &fields);
            let bytes = serialize(&fields);
            let in_place: Vec<(Vec<u8>, Vec<u8>)> = serialized_pairs(&bytes)
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            prop_assert_eq!(&in_place, &fields);
            let decoded = decode_serialized(&bytes).map(|pairs| pairs.len());
            prop_assert_eq!(decoded, Some(fields.len()));
        }

        #[test]
        fn never_reads_past_a_cut(
            fields in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..8),
                 proptest::collection::vec(any::<u8>(), 0..8)),
                1..8,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = serialize(&fields);
            bytes.truncate(cut.index(bytes.len()));
            // Owned decoding refuses a cut map as a whole (nothing left is the empty map).
            prop_assert_eq!(decode_serialized(&bytes).is_none(), !bytes.is_empty());
            let map = HeaderMap::from_serialized(bytes);
            // Whatever survives is a prefix of what was sent.
            let read: Vec<(Vec<u8>, Vec<u8>)> =
                map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            prop_assert!(read.len() < fields.len());
            prop_assert_eq!(&read[..], &fields[..read.len()]);
        }
    }
}
