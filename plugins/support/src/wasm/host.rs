//! The live host behind `crate::Host`: response fields read and changed through the ABI.

/// The live host, for adapter policy written against [`crate::Host`]: each call is the ABI
/// call, and a failing one counts as an absent field or a change not made (never a trap).
pub struct WasmHost;

impl crate::Host for WasmHost {
    fn response_field(&self, trailers: bool, name: &str) -> Option<Vec<u8>> {
        let map = if trailers {
            proxy_wasm::types::MapType::HttpResponseTrailers
        } else {
            proxy_wasm::types::MapType::HttpResponseHeaders
        };
        crate::abi::get_map_value(map as u32, name)
    }

    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        crate::abi::replace_map_value(
            proxy_wasm::types::MapType::HttpResponseHeaders as u32,
            name,
            value,
        );
    }

    fn remove_response_header(&mut self, name: &str) {
        crate::abi::remove_map_value(proxy_wasm::types::MapType::HttpResponseHeaders as u32, name);
    }
}
