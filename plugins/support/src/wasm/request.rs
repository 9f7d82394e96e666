//! The stream's request headers read on demand, and properties.

use super::*;

/// Request headers read on demand, each at most once (one host call per header, bytes
/// getter: values need not be UTF-8). The whole map is copied only when every value of a
/// field is asked for (Envoy's single-value getter returns the first one), once per request.
#[derive(Default)]
pub struct RequestHeaders {
    /// The names read so far, back to back: one buffer per request, not a String per name.
    names: String,
    /// Per name read, in order: where its name ends in `names`, and its first value.
    cache: Vec<(usize, Option<Vec<u8>>)>,
    all: Option<crate::abi::RequestPairs>,
}

impl RequestView for RequestHeaders {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        let mut start = 0;
        for (end, value) in &self.cache {
            if self.names.get(start..*end) == Some(name) {
                return value.clone();
            }
            start = *end;
        }
        let value =
            crate::abi::get_map_value(proxy_wasm::types::MapType::HttpRequestHeaders as u32, name);
        // Sized once for a request's usual reads, so growing them rarely allocates again.
        if self.cache.capacity() == 0 {
            self.cache.reserve(8);
            self.names.reserve(128);
        }
        self.names.push_str(name);
        self.cache.push((self.names.len(), value.clone()));
        value
    }

    fn header_values(&mut self, name: &str) -> Vec<Vec<u8>> {
        self.all
            .get_or_insert_with(crate::abi::RequestPairs::read)
            .values(name)
    }
}

/// A property of the stream or the plugin (`xds.route_name`, ...); None when absent or
/// when the host fails to give it (never a trap).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    crate::abi::get_property(path).ok().flatten()
}
