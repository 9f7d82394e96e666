//! The plugin's life: the panic hook, logging, loading the configuration.

use super::*;

/// Logs panics at critical level (with location) through proxy_log, so the reason a VM
/// died is in Envoy's log, and logs the plugin's name and version once.
pub fn install_panic_hook(plugin: &'static str, version: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let _ = crate::abi::log(
            LogLevel::Critical as u32,
            &format!("{plugin} {version} panicked: {info}"),
        );
    }));
}

/// Writes a line to Envoy's log (a failure to log is not worth failing traffic for).
pub fn log(level: LogLevel, message: &str) {
    let _ = crate::abi::log(level as u32, message);
}

/// Reads the plugin configuration and compiles it with `compile`. On failure, logs
/// "`plugin`: <error>" at error level and returns None, so `on_configure` can return false
/// and Envoy refuses the configuration.
pub fn load_config<T>(
    plugin: &str,
    compile: impl FnOnce(&[u8]) -> Result<T, crate::config::ConfigError>,
) -> Option<T> {
    let composed = COMPOSED.with(|c| c.borrow().configuration.clone());
    let read = match composed {
        Some(section) => Ok(Some(section)),
        None => crate::abi::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration as u32,
            0,
            usize::MAX,
        ),
    };
    let bytes = match read {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            log(
                LogLevel::Error,
                &format!("{plugin}: cannot read the plugin configuration: {status:?}"),
            );
            return None;
        }
    };
    match compile(&bytes) {
        Ok(config) => Some(config),
        Err(error) => {
            log(LogLevel::Error, &format!("{plugin}: {error}"));
            None
        }
    }
}
