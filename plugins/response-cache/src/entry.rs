//! A stored response as bytes: status, header pairs, the times §4.2.3 needs, the variant
//! generation, the Vary fields and the request's values for them, then the body. Decoding
//! never trusts input.

use edgewise_support::le::Reader;
use edgewise_support::Fields;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The full primary key: a hash match alone never serves an entry.
    pub key: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub request_time: i64,
    pub response_time: i64,
    /// Ties the variants of one URL together (see `cache::store`): the entry in the URL's
    /// own slot draws it; its other variants are keyed by it, so removing that entry makes
    /// them all unreachable at once.
    pub generation: u64,
    pub vary_fields: Vec<String>,
    pub vary_values: Vec<Option<Vec<u8>>>,
    pub body: Vec<u8>,
    /// The response's tags (`tags.headers`), for purges by tag.
    pub tags: Vec<Vec<u8>>,
    /// The purge sequence when its request went to the origin (`purge.rs`): rules numbered
    /// from it on apply to this entry.
    pub purge_seq: u64,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self.body.len()
                + self
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 8)
                    .sum::<usize>(),
        );
        put_bytes(&mut out, &self.key);
        out.extend_from_slice(&(self.status as u32).to_le_bytes());
        out.extend_from_slice(&self.request_time.to_le_bytes());
        out.extend_from_slice(&self.response_time.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (k, v) in &self.headers {
            put_bytes(&mut out, k.as_bytes());
            put_bytes(&mut out, v);
        }
        out.extend_from_slice(&(self.vary_fields.len() as u32).to_le_bytes());
        for (field, value) in self.vary_fields.iter().zip(&self.vary_values) {
            put_bytes(&mut out, field.as_bytes());
            match value {
                Some(v) => {
                    out.push(1);
                    put_bytes(&mut out, v);
                }
                None => out.push(0),
            }
        }
        put_bytes(&mut out, &self.body);
        out.extend_from_slice(&self.purge_seq.to_le_bytes());
        out.extend_from_slice(&(self.tags.len() as u32).to_le_bytes());
        for tag in &self.tags {
            put_bytes(&mut out, tag);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader::new(bytes);
        // No field is longer than the value it is in.
        let max = bytes.len();
        let key = r.bytes(max)?.to_vec();
        let status = u16::try_from(r.u32()?).ok()?;
        let request_time = r.i64()?;
        let response_time = r.i64()?;
        let generation = r.i64()? as u64;
        let n = r.u32()? as usize;
        let mut headers = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            let k = String::from_utf8(r.bytes(max)?.to_vec()).ok()?;
            headers.push((k, r.bytes(max)?.to_vec()));
        }
        let n = r.u32()? as usize;
        let (mut vary_fields, mut vary_values) = (Vec::new(), Vec::new());
        for _ in 0..n {
            vary_fields.push(String::from_utf8(r.bytes(max)?.to_vec()).ok()?);
            vary_values.push(match r.take(1)?[0] {
                1 => Some(r.bytes(max)?.to_vec()),
                _ => None,
            });
        }
        let body = r.bytes(max)?.to_vec();
        // Entries written before tags existed end here.
        let (mut tags, mut purge_seq) = (Vec::new(), 0);
        if !r.is_done() {
            purge_seq = r.i64()? as u64;
            let n = r.u32()? as usize;
            for _ in 0..n.min(256) {
                tags.push(r.bytes(max)?.to_vec());
            }
            if n > 256 {
                return None;
            }
        }
        r.is_done().then_some(Entry {
            tags,
            purge_seq,
            key,
            status,
            headers,
            request_time,
            response_time,
            generation,
            vary_fields,
            vary_values,
            body,
        })
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.field(name)
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.field_lines(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let e = Entry {
            key: b"http://h/p".to_vec(),
            status: 200,
            headers: vec![
                ("cache-control".into(), b"max-age=60".to_vec()),
                ("etag".into(), b"\"v1\"".to_vec()),
            ],
            request_time: 10,
            response_time: 11,
            generation: u64::MAX - 3,
            vary_fields: vec!["accept-encoding".into(), "x-absent".into()],
            vary_values: vec![Some(b"gzip".to_vec()), None],
            body: b"hello".to_vec(),
            tags: vec![b"product-1".to_vec(), b"listing".to_vec()],
            purge_seq: 7,
        };
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        // An entry written before tags existed decodes with none.
        let mut old = e.encode();
        let tags_len = 8 + 4 + e.tags.iter().map(|t| 4 + t.len()).sum::<usize>();
        old.truncate(old.len() - tags_len);
        let decoded = Entry::decode(&old).unwrap();
        assert_eq!((decoded.tags.len(), decoded.purge_seq), (0, 0));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Entry::decode(&bytes);
        }
    }
}
