//! `make fuzz`'s ABI-boundary run: a seeded random search over inputs to the driver
//! (`fuzz/abi/driver.rs`) for a set time. libFuzzer's coverage cannot see inside the
//! wasm guest, so this mutates the checked-in corpus and fresh random bytes instead.
//!
//!   cargo run --release -p switchyard-fuzz --example abi -- --seconds 60 [--seed N] [--artifacts DIR]
//!
//! Prints `executions: N` and `crashes: N`; each failing input is written to the
//! artifacts directory (default fuzz/artifacts/abi) and exits 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../abi/driver.rs"]
mod driver;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn main() {
    let mut seconds = 60u64;
    let mut seed = 0x5eed_f022u64;
    let mut artifacts = PathBuf::from("fuzz/artifacts/abi");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--seconds" => seconds = v.parse().expect("--seconds N"),
            "--seed" => seed = v.parse().expect("--seed N"),
            "--artifacts" => artifacts = PathBuf::from(v),
            _ => panic!("unknown argument {a}"),
        }
    }
    let corpus_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/abi");
    let corpus: Vec<Vec<u8>> = std::fs::read_dir(&corpus_dir)
        .map(|rd| {
            rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut rng = Rng(seed | 1);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut execs, mut crashes) = (0u64, 0u64);
    while Instant::now() < deadline {
        let input: Vec<u8> = if !corpus.is_empty() && rng.below(2) == 0 {
            // Mutate a corpus entry: overwrite, insert and delete a few bytes.
            let mut v = corpus[rng.below(corpus.len())].clone();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(v.len() + 1);
                match rng.below(3) {
                    0 if at < v.len() => v[at] = rng.next() as u8,
                    1 => v.insert(at, rng.next() as u8),
                    _ if at < v.len() => {
                        v.remove(at);
                    }
                    _ => {}
                }
            }
            v
        } else {
            (0..rng.below(1024)).map(|_| rng.next() as u8).collect()
        };
        let outcome = std::panic::catch_unwind(|| driver::run(&input));
        execs += 1;
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => "panic".to_string(),
        };
        crashes += 1;
        std::fs::create_dir_all(&artifacts).unwrap();
        let path = artifacts.join(format!("crash-{seed:x}-{execs}"));
        std::fs::write(&path, &input).unwrap();
        eprintln!("{}: {failure}", path.display());
    }
    println!("executions: {execs}");
    println!("crashes: {crashes}");
    std::process::exit(i32::from(crashes > 0));
}
