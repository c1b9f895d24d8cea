//! The ABI-boundary target's checked-in corpus (`fuzz/corpus/abi/`) and regressions
//! (`fuzz/regressions/abi/`), replayed on the wasmtime host against the built filter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../abi/driver.rs"]
mod driver;

use std::path::Path;

fn replay(kind: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join("abi");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in &files {
        if let Err(e) = driver::run(&std::fs::read(f).unwrap()) {
            panic!("{}: {e}", f.display());
        }
    }
    files.len()
}

#[test]
fn abi_corpus_replays_clean() {
    assert!(replay("corpus") > 0, "no corpus for the abi target");
}

#[test]
fn abi_regressions_stay_fixed() {
    replay("regressions");
}
