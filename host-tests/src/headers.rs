//! Header maps as Envoy holds them, and the proxy-wasm header-pairs wire encoding.

/// An ordered multimap of lowercase header names to raw byte values, as Envoy keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// Builds a map from pairs; names are lowercased as Envoy does.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Headers {
        let mut headers = Headers::new();
        for (key, value) in pairs {
            headers.add(key.as_ref(), value.as_ref());
        }
        headers
    }

    pub fn add(&mut self, key: &str, value: impl AsRef<[u8]>) {
        self.0
            .push((key.to_ascii_lowercase(), value.as_ref().to_vec()));
    }

    /// Replaces every value of `key` with one value (appends if absent).
    pub fn replace(&mut self, key: &str, value: impl AsRef<[u8]>) {
        let key = key.to_ascii_lowercase();
        if let Some(index) = self.0.iter().position(|(k, _)| *k == key) {
            self.0[index].1 = value.as_ref().to_vec();
            let mut seen_first = false;
            self.0.retain(|(k, _)| {
                if *k != key {
                    return true;
                }
                let keep = !seen_first;
                seen_first = true;
                keep
            });
        } else {
            self.0.push((key, value.as_ref().to_vec()));
        }
    }

    pub fn remove(&mut self, key: &str) {
        let key = key.to_ascii_lowercase();
        self.0.retain(|(k, _)| *k != key);
    }

    /// All values of `key` joined by "," — what Envoy's get returns for a repeated header.
    pub fn get_joined(&self, key: &str) -> Option<Vec<u8>> {
        let key = key.to_ascii_lowercase();
        let mut values = self
            .0
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice());
        let first = values.next()?;
        let mut joined = first.to_vec();
        for value in values {
            joined.push(b',');
            joined.extend_from_slice(value);
        }
        Some(joined)
    }

    /// The value of `key` as text (lossy), for assertions.
    pub fn get(&self, key: &str) -> Option<String> {
        self.get_joined(key)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    pub fn contains(&self, key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        self.0.iter().any(|(k, _)| *k == key)
    }

    pub fn pairs(&self) -> &[(String, Vec<u8>)] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Encodes as proxy-wasm header pairs: u32 count, count × (u32 key len, u32 value len),
    /// then each key and value followed by a NUL byte. An empty map encodes as no bytes
    /// (the host then returns a null pointer with size 0).
    pub fn encode(&self) -> Vec<u8> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (key, value) in &self.0 {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (key, value) in &self.0 {
            out.extend_from_slice(key.as_bytes());
            out.push(0);
            out.extend_from_slice(value);
            out.push(0);
        }
        out
    }

    pub fn encoded_len(&self) -> usize {
        if self.0.is_empty() {
            return 0;
        }
        4 + self
            .0
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len() + 2)
            .sum::<usize>()
    }

    /// Decodes the header-pairs encoding sent by a module. `None` on malformed input.
    pub fn decode(bytes: &[u8]) -> Option<Headers> {
        if bytes.is_empty() {
            return Some(Headers::new());
        }
        let read_u32 = |at: usize| -> Option<usize> {
            let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(raw) as usize)
        };
        let count = read_u32(0)?;
        let mut sizes = Vec::with_capacity(count.min(4096));
        let mut at = 4;
        for _ in 0..count {
            sizes.push((read_u32(at)?, read_u32(at + 4)?));
            at += 8;
        }
        let mut headers = Headers::new();
        for (key_len, value_len) in sizes {
            let key = bytes.get(at..at + key_len)?;
            at += key_len + 1;
            let value = bytes.get(at..at + value_len)?;
            at += value_len + 1;
            headers.0.push((
                String::from_utf8_lossy(key).to_ascii_lowercase(),
                value.to_vec(),
            ));
        }
        Some(headers)
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(pairs: [(K, V); N]) -> Headers {
        Headers::from_pairs(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_pairs_including_non_utf8_values() {
        let headers = Headers::from_pairs([(":path", b"/a".as_slice()), ("X-Bin", b"\xff\x00z")]);
        let decoded = Headers::decode(&headers.encode()).unwrap();
        assert_eq!(decoded, headers);
        assert_eq!(decoded.get_joined("x-bin").unwrap(), b"\xff\x00z");
    }

    #[test]
    fn empty_map_encodes_to_nothing() {
        assert!(Headers::new().encode().is_empty());
        assert_eq!(Headers::decode(&[]).unwrap(), Headers::new());
    }

    #[test]
    fn truncated_input_is_rejected() {
        let encoded = Headers::from([("a", "b")]).encode();
        assert!(Headers::decode(&encoded[..encoded.len() - 2]).is_none());
    }

    #[test]
    fn replace_collapses_repeated_values() {
        let mut headers = Headers::from([("a", "1"), ("b", "x"), ("a", "2")]);
        headers.replace("A", "3");
        assert_eq!(headers.pairs().len(), 2);
        assert_eq!(headers.get("a").unwrap(), "3");
    }
}
