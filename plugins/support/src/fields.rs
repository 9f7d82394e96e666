//! Lookups over a decoded list of header fields (a response's, a stored entry's): a name's first line, all its lines, or all joined (RFC 9110 §5.3) — what [`crate::HeaderMap`] offers over the host's buffer.

/// Header-field lookups by name (names lowercase, as Envoy gives them).
pub trait Fields {
    /// The first line of `name`.
    fn field(&self, name: &str) -> Option<&[u8]>;

    /// Every line of `name`, in order (a field may be sent more than once).
    fn field_lines<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>;

    /// Every line of `name` joined with ", " (RFC 9110 §5.3), as an origin that combines
    /// them reads it; None when absent.
    fn field_combined(&self, name: &str) -> Option<Vec<u8>> {
        join_lines(self.field_lines(name))
    }

    /// Whether `name` has a line.
    fn has_field(&self, name: &str) -> bool {
        self.field(name).is_some()
    }

    /// Every field in order, as (name, value). A name that is not UTF-8 (never one Envoy
    /// passes: field names are tokens, RFC 9110 §5.1) is left out.
    fn each_field(&self) -> impl Iterator<Item = (&str, &[u8])>;
}

impl Fields for [(String, Vec<u8>)] {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    fn field_lines<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    fn each_field(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

impl Fields for Vec<(String, Vec<u8>)> {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.as_slice().field(name)
    }

    fn field_lines<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.as_slice().field_lines(name)
    }

    fn each_field(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.as_slice().each_field()
    }
}

impl Fields for crate::HeaderMap {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.get(name)
    }

    fn field_lines<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v)
    }

    fn each_field(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter()
            .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, v)))
    }
}

/// Field lines joined with ", " (RFC 9110 §5.3); None for no line.
pub fn join_lines<'a>(mut lines: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut joined = lines.next()?.to_vec();
    for line in lines {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line);
    }
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_looked_up_line_by_line_or_combined() {
        let fields: Vec<(String, Vec<u8>)> = [("vary", "a"), ("etag", "\"1\""), ("vary", "b")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(fields.field("vary"), Some(&b"a"[..]));
        assert_eq!(fields.field_lines("vary").collect::<Vec<_>>(), [b"a", b"b"]);
        assert_eq!(fields.field_combined("vary"), Some(b"a, b".to_vec()));
        assert_eq!(fields.field_combined("age"), None);
        assert!(fields.has_field("etag") && !fields.has_field("Etag"));
        // A header map answers the same.
        let map = crate::HeaderMap::from_pairs(&fields);
        assert_eq!(map.field("vary"), Some(&b"a"[..]));
        assert_eq!(map.field_combined("vary"), Some(b"a, b".to_vec()));
        assert!(map.each_field().eq(fields.each_field()));
    }
}
