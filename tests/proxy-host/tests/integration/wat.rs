//! Host behaviour that needs a hand-written module: import resolution, ABI checks and
//! pointers no SDK would produce.

use switchyard_proxy_host::{HostError, Process, Request, VmSpec, WasmModule};

const PRELUDE: &str = r#"
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
"#;

fn module(body: &str) -> Result<std::sync::Arc<WasmModule>, HostError> {
    WasmModule::from_bytes(format!("(module {body} {PRELUDE})"))
}

#[test]
fn a_missing_import_fails_at_load_and_names_it() {
    let err = module(r#"(import "env" "proxy_does_not_exist" (func (param i32)))"#).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("proxy_does_not_exist"), "{msg}");
    let err = module(r#"(import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#).unwrap_err();
    assert!(err.to_string().contains("path_open"), "{err}");
}

#[test]
fn an_import_with_the_wrong_signature_is_refused() {
    let err = module(r#"(import "env" "proxy_log" (func (param i32)))"#).unwrap_err();
    assert!(err.to_string().contains("proxy_log"), "{err}");
}

#[test]
fn a_module_without_an_abi_version_is_refused() {
    let m = WasmModule::from_bytes(r#"(module (memory (export "memory") 1))"#).unwrap();
    let err = Process::new().spawn(VmSpec::new(m)).unwrap_err();
    assert!(err.to_string().contains("proxy_abi_version"), "{err}");
}

#[test]
fn out_of_bounds_out_pointers_are_refused_before_allocating() {
    // On request headers: ask for the :path header with the out-pointers past the end of
    // memory, and store the status at address 0 for the test to read back via a header.
    let m = module(
        r#"
        (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
        (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
        (data (i32.const 100) ":path")
        (data (i32.const 200) "x-status")
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          ;; status of a read whose out-pointers are out of bounds, as an ASCII digit
          (i32.store8 (i32.const 300)
            (i32.add (i32.const 48) (call $get (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 65535) (i32.const 70000))))
          ;; key pointer wrapping past 4 GiB
          (i32.store8 (i32.const 301)
            (i32.add (i32.const 48) (call $get (i32.const 0) (i32.const -1) (i32.const 5) (i32.const 0) (i32.const 4))))
          (drop (call $add (i32.const 0) (i32.const 200) (i32.const 8) (i32.const 300) (i32.const 2)))
          (i32.const 0))
        "#,
    )
    .unwrap();
    let mut p = Process::new();
    let vm = p.spawn(VmSpec::new(m)).unwrap();
    let ex = p.send(vm, Request::get("/x")).unwrap();
    assert_eq!(ex.upstream_header("x-status"), Some("66"));
    assert_eq!(p.vm(vm).host_errors().len(), 2);
    // The heap did not move: nothing was allocated for the refused reads.
}

#[test]
fn a_malformed_pairs_buffer_is_an_error_not_a_read_past_its_end() {
    let m = module(
        r#"
        (import "env" "proxy_set_header_map_pairs" (func $set (param i32 i32 i32) (result i32)))
        ;; count 1, key length 1000, value length 0: claims far more bytes than given
        (data (i32.const 100) "\01\00\00\00\e8\03\00\00\00\00\00\00ab")
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (drop (call $set (i32.const 0) (i32.const 100) (i32.const 14)))
          (i32.const 0))
        "#,
    )
    .unwrap();
    let mut p = Process::new();
    let vm = p.spawn(VmSpec::new(m)).unwrap();
    let ex = p.send(vm, Request::get("/x")).unwrap();
    assert_eq!(ex.upstream_header(":path"), Some("/x"));
    assert_eq!(
        p.vm(vm).host_errors(),
        ["proxy_set_header_map_pairs: pairs key runs past the buffer"]
    );
}

#[test]
fn a_trapping_allocator_is_reported_as_a_trap() {
    let m = WasmModule::from_bytes(
        r#"(module
          (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) unreachable)
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (drop (call $pairs (i32.const 0) (i32.const 0) (i32.const 4)))
            (i32.const 0)))"#,
    )
    .unwrap();
    let mut p = Process::new();
    let vm = p.spawn(VmSpec::new(m)).unwrap();
    let err = p.send(vm, Request::get("/")).unwrap_err();
    assert!(err.is_trap(), "{err}");
}

#[test]
fn a_guest_stuck_in_a_loop_is_trapped_not_hung() {
    let m = module(
        r#"
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (loop $forever (br $forever))
          (i32.const 0))
        "#,
    )
    .unwrap();
    let mut p = Process::new();
    let vm = p
        .spawn(VmSpec::new(m).callback_deadline(std::time::Duration::from_millis(300)))
        .unwrap();
    let started = std::time::Instant::now();
    let err = p.send(vm, Request::get("/")).unwrap_err();
    assert!(err.is_trap(), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
