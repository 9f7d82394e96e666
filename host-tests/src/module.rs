//! Loading a .wasm the way Envoy does: only Envoy's imports link, the ABI version and
//! allocator exports must be present, and failures name the offending import.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::{Config, Engine, ExternType, Module, OptLevel};

use crate::abi::{ENVOY_ENV_FUNCTIONS, ENVOY_WASI_FUNCTIONS, WASI_MODULES};
use crate::failure::VmFailure;

/// A compiled proxy-wasm module, checked against what Envoy links. Cheap to clone.
#[derive(Clone)]
pub struct WasmModule {
    pub(crate) module: Module,
    pub(crate) name: Arc<str>,
}

pub(crate) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.cranelift_opt_level(OptLevel::Speed);
        // A module that cannot be compiled here is a bug in the module, not the test.
        Engine::new(&config).unwrap_or_else(|e| panic!("wasmtime engine: {e}"))
    })
}

impl WasmModule {
    /// Loads and checks a module from a file. Compiled modules are cached per path and
    /// modification time, so many tests can share one compilation.
    pub fn load(path: impl AsRef<Path>) -> Result<WasmModule, VmFailure> {
        static CACHE: OnceLock<Mutex<HashMap<(PathBuf, std::time::SystemTime), WasmModule>>> =
            OnceLock::new();
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| {
            VmFailure::load(format!("cannot read Wasm module {}: {e}", path.display()))
        })?;
        let key = (
            path.to_path_buf(),
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
        );
        let cache = CACHE.get_or_init(Default::default);
        if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(hit.clone());
        }
        let bytes = std::fs::read(path).map_err(|e| {
            VmFailure::load(format!("cannot read Wasm module {}: {e}", path.display()))
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let module = WasmModule::from_bytes(&name, &bytes)?;
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, module.clone());
        Ok(module)
    }

    /// Compiles and checks a module from bytes (binary or WAT text).
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<WasmModule, VmFailure> {
        let module = Module::new(engine(), bytes)
            .map_err(|e| VmFailure::load(format!("Failed to load Wasm bytecode {name}: {e:#}")))?;
        check_imports(&module)?;
        check_exports(&module)?;
        Ok(WasmModule {
            module,
            name: name.into(),
        })
    }

    /// The module's imports as `module.name`, sorted.
    pub fn imports(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .module
            .imports()
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect();
        all.sort();
        all
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn check_imports(module: &Module) -> Result<(), VmFailure> {
    for import in module.imports() {
        let provided = match import.module() {
            "env" => ENVOY_ENV_FUNCTIONS.contains(&import.name()),
            m if WASI_MODULES.contains(&m) => ENVOY_WASI_FUNCTIONS.contains(&import.name()),
            _ => false,
        };
        if !provided || !matches!(import.ty(), ExternType::Func(_)) {
            // Envoy's wording, so a test failure reads like the Envoy log would.
            return Err(VmFailure::load(format!(
                "Failed to load Wasm module due to a missing import: {}.{}",
                import.module(),
                import.name()
            )));
        }
    }
    Ok(())
}

fn check_exports(module: &Module) -> Result<(), VmFailure> {
    let has = |name: &str| module.exports().any(|e| e.name() == name);
    if !has("proxy_abi_version_0_2_1") {
        return Err(VmFailure::load(
            "Missing or unknown Proxy-Wasm ABI version: this host (like our Envoy configs) runs ABI 0.2.1 modules; export proxy_abi_version_0_2_1".to_string(),
        ));
    }
    if !has("malloc") && !has("proxy_on_memory_allocate") {
        return Err(VmFailure::load(
            "Wasm module is missing malloc function.".to_string(),
        ));
    }
    if !has("memory") {
        return Err(VmFailure::load("Wasm module exports no memory".to_string()));
    }
    Ok(())
}
