//! Compiling modules once: one wasmtime `Engine` per test binary and a cache of compiled
//! modules keyed by file identity (path, size, mtime) or by content. Instantiation is
//! per VM and cheap; compilation is not, so it happens once per binary.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use crate::error::HostError;
use crate::state::HostState;

/// A compiled module with every import resolved against this host.
pub struct WasmModule {
    pub(crate) module: Module,
    pub(crate) pre: InstancePre<HostState>,
    /// Where it came from, for messages.
    pub name: String,
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WasmModule({})", self.name)
    }
}

/// The engine every VM of this test binary shares. Compilation settings only: no host
/// state lives here.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut cfg = Config::new();
        cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // A guest stuck in a loop must fail its test, not hang it: every store gets an
        // epoch deadline and a ticker thread moves the epoch on.
        cfg.epoch_interruption(true);
        // Profiling the guest with `perf`: build with `--features wasmtime/profiling` and
        // set SWITCHYARD_WASM_PERFMAP=1 (writes /tmp/perf-<pid>.map for wasm functions).
        if std::env::var_os("SWITCHYARD_WASM_PERFMAP").is_some() {
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&cfg).expect("wasmtime engine with default settings");
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("proxy-host-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(EPOCH_TICK_MS));
                ticker.increment_epoch();
            })
            .expect("epoch ticker thread");
        engine
    })
}

/// Real time between epoch ticks.
pub(crate) const EPOCH_TICK_MS: u64 = 100;
/// Longest real time one guest callback may run before it is trapped.
pub const CALLBACK_DEADLINE_MS: u64 = 20_000;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    File(PathBuf, u64, Option<SystemTime>),
    Content(u64, usize),
}

fn cache() -> &'static Mutex<HashMap<Key, Arc<WasmModule>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<WasmModule>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn compile(bytes: &[u8], name: String) -> Result<WasmModule, HostError> {
    let module = Module::new(engine(), bytes).map_err(|e| HostError::Load {
        what: name.clone(),
        message: format!("{e:#}"),
    })?;
    let mut linker = Linker::new(engine());
    crate::host::add_to_linker(&mut linker).map_err(|e| HostError::Load {
        what: name.clone(),
        message: format!("building the linker: {e:#}"),
    })?;
    // A missing import fails here, naming it ("unknown import: `env::proxy_x` ...").
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| HostError::Instantiate(format!("{name}: {e:#}")))?;
    Ok(WasmModule { module, pre, name })
}

impl WasmModule {
    /// Loads and compiles a `.wasm` file, or returns the already compiled one.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Arc<WasmModule>, HostError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| HostError::Load {
            what: path.display().to_string(),
            message: e.to_string(),
        })?;
        let key = Key::File(path.to_path_buf(), meta.len(), meta.modified().ok());
        if let Some(m) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let bytes = std::fs::read(path).map_err(|e| HostError::Load {
            what: path.display().to_string(),
            message: e.to_string(),
        })?;
        let m = Arc::new(compile(&bytes, path.display().to_string())?);
        cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, m.clone());
        Ok(m)
    }

    /// Compiles a module from binary wasm or WAT text (cached by content).
    pub fn from_bytes(bytes: impl AsRef<[u8]>) -> Result<Arc<WasmModule>, HostError> {
        let bytes = bytes.as_ref();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        let key = Key::Content(h.finish(), bytes.len());
        if let Some(m) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let m = Arc::new(compile(bytes, format!("<{} bytes>", bytes.len()))?);
        cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, m.clone());
        Ok(m)
    }

    /// Names of the module's exports, for diagnostics.
    pub fn exports(&self) -> Vec<String> {
        self.module
            .exports()
            .map(|e| e.name().to_string())
            .collect()
    }
}
