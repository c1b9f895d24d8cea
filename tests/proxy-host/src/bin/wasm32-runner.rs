//! Runs a `wasm32-wasip1` program (a `cargo test --target wasm32-wasip1` test binary) on
//! wasmtime with this crate's WASI: real clocks, OS entropy, inherited stdout/stderr,
//! the arguments cargo passes, no preopened directories. It is the cargo runner for the
//! target (`.cargo/config.toml`), so the pure core's unit tests also run as 32-bit wasm.
//!
//! WASI functions this host does not implement answer ENOSYS (so e.g. proptest's
//! failure persistence degrades instead of trapping); any other missing import traps
//! when called, with its name.

use std::process::ExitCode;

use switchyard_proxy_host::module::engine;
use switchyard_proxy_host::wasi::{self, ProcExit, WasiState, WasiView};
use wasmtime::{ExternType, Linker, Module, Store, Val, ValType};

struct Runner {
    wasi: WasiState,
}

impl WasiView for Runner {
    fn wasi(&mut self) -> &mut WasiState {
        &mut self.wasi
    }
}

const ENOSYS: i32 = 52;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: wasm32-runner <program.wasm> [args...]");
        return ExitCode::from(2);
    };
    let module = match Module::from_file(engine(), &path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("wasm32-runner: loading {path}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut guest_args = vec![path.clone()];
    guest_args.extend(args);
    // Only what a test binary needs from the environment.
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("RUST_") || k.starts_with("PROPTEST_") || k.starts_with("SWITCHYARD_")
        })
        .collect();
    let mut store = Store::new(
        engine(),
        Runner {
            wasi: WasiState::real(guest_args, env),
        },
    );
    // The engine interrupts on epochs; a test binary may run as long as it needs.
    store.set_epoch_deadline(u64::MAX / 2);
    let mut linker: Linker<Runner> = Linker::new(engine());
    if let Err(e) = wasi::add_to_linker(&mut linker) {
        eprintln!("wasm32-runner: {e:#}");
        return ExitCode::from(2);
    }
    for import in module.imports() {
        let (m, name) = (import.module().to_string(), import.name().to_string());
        if linker.get_by_import(&mut store, &import).is_some() {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let errno_shaped = m == "wasi_snapshot_preview1"
            && ty.results().len() == 1
            && matches!(ty.results().next(), Some(ValType::I32));
        let label = format!("{m}::{name}");
        let r = linker.func_new(&m, &name, ty.clone(), move |_, _, results| {
            if errno_shaped {
                results[0] = Val::I32(ENOSYS);
                Ok(())
            } else {
                Err(wasmtime::Error::msg(format!(
                    "import {label} is not provided by wasm32-runner"
                )))
            }
        });
        if let Err(e) = r {
            eprintln!("wasm32-runner: {e:#}");
            return ExitCode::from(2);
        }
    }
    let instance = match linker.instantiate(&mut store, &module) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("wasm32-runner: instantiating {path}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let Ok(start) = instance.get_typed_func::<(), ()>(&mut store, "_start") else {
        eprintln!("wasm32-runner: {path} has no _start (is it a command module?)");
        return ExitCode::from(2);
    };
    match start.call(&mut store, ()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ProcExit>() {
            Some(ProcExit(code)) => ExitCode::from(*code as u8),
            None => {
                eprintln!("wasm32-runner: {path} trapped: {e:?}");
                ExitCode::from(101)
            }
        },
    }
}
