//! What adapter policy asks of the host, as a trait: the wasm adapter implements it with
//! host calls (`wasm::WasmHost`), native tests with maps (`MapHost`) — so a policy that
//! reads and writes response fields is tested without a wasm host.

use crate::HeaderMap;

/// The host's response fields, as a policy reads and changes them.
pub trait Host {
    /// The first value of response header `name` (of trailer `name` with `trailers`); None
    /// when absent or when the host cannot give it now.
    fn response_field(&self, trailers: bool, name: &str) -> Option<Vec<u8>>;
    /// Sets response header `name` to `value`, replacing every line it had.
    fn set_response_header(&mut self, name: &str, value: &[u8]);
    /// Removes every line of response header `name`.
    fn remove_response_header(&mut self, name: &str);
}

/// A host made of two maps, for native tests of adapter policy.
#[derive(Clone, Debug, Default)]
pub struct MapHost {
    pub headers: HeaderMap,
    pub trailers: HeaderMap,
}

impl MapHost {
    /// A host whose response carries `headers`.
    pub fn with_headers(headers: &[(&str, &str)]) -> MapHost {
        MapHost {
            headers: HeaderMap::from_pairs(headers),
            trailers: HeaderMap::default(),
        }
    }
}

impl Host for MapHost {
    fn response_field(&self, trailers: bool, name: &str) -> Option<Vec<u8>> {
        let map = if trailers {
            &self.trailers
        } else {
            &self.headers
        };
        map.get(name).map(<[u8]>::to_vec)
    }

    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.headers.replace(name, value);
    }

    fn remove_response_header(&mut self, name: &str) {
        self.headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_host_reads_and_changes_its_fields() {
        let mut host = MapHost::with_headers(&[(":status", "200"), ("x-tag", "a")]);
        host.trailers = HeaderMap::from_pairs(&[("x-usage", "7")]);
        assert_eq!(host.response_field(false, ":status"), Some(b"200".to_vec()));
        assert_eq!(host.response_field(true, "x-usage"), Some(b"7".to_vec()));
        assert_eq!(host.response_field(true, ":status"), None);
        host.set_response_header("ratelimit", b"\"a\";r=1;t=1");
        host.remove_response_header("x-tag");
        assert_eq!(host.response_field(false, "x-tag"), None);
        assert_eq!(host.headers.len(), 2);
    }
}
