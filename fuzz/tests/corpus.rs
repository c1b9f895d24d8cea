//! Replays the checked-in corpus (`fuzz/corpus/<target>/`) and every crash found so far
//! (`fuzz/regressions/<target>/`) through the fuzz targets, on stable, as part of
//! `make test`. A file that makes a target panic fails this test with its path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use switchyard_fuzz::TARGETS;

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut n = 0;
    for (name, target) in TARGETS {
        for file in files(&root.join(name)) {
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("{name}: {} broke an invariant", file.display());
            }
            n += 1;
        }
    }
    n
}

#[test]
fn corpus_replays_clean() {
    let n = replay("corpus");
    // Every target has a seed corpus: an empty directory would make this test vacuous.
    for (name, _) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(name);
        assert!(!files(&dir).is_empty(), "no corpus for {name}");
    }
    assert!(n >= TARGETS.len());
}

#[test]
fn regressions_stay_fixed() {
    replay("regressions");
}
