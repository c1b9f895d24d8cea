//! `switchyard-control replay` through the real binary: every shipped scenario gives the
//! outcome its trace expects (right stack, right suspect deployment, no false alarm), and
//! malformed traces are rejected with a clear error and exit code 2.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios")
}

struct Run {
    code: i32,
    lines: Vec<Value>,
    stderr: String,
}

fn replay(file: &Path, extra: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-control"))
        .arg("replay")
        .arg(file)
        .arg("--json")
        .args(extra)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    Run {
        code: out.status.code().unwrap_or(-1),
        lines: stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    fn summary(&self) -> &Value {
        &self.lines.last().expect("a summary line")["summary"]
    }
    fn decisions(&self) -> &[Value] {
        &self.lines[..self.lines.len() - 1]
    }
}

#[test]
fn every_scenario_replays_to_its_expected_outcome() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios())
        .expect("examples/scenarios")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "scenarios: {files:?}");
    for f in &files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let run = replay(f, &["--approve-after", "5m"]);
        let s = run.summary().clone();
        assert_eq!(run.code, 0, "{name}: {s:#} {}", run.stderr);
        assert_eq!(s["problems"], serde_json::json!([]), "{name}");
        assert_eq!(s["false_alarms"], serde_json::json!([]), "{name}");
        for d in run.decisions() {
            for k in [
                "at_ms",
                "incident",
                "phase",
                "stack",
                "action",
                "confidence",
            ] {
                assert!(d.get(k).is_some(), "{name}: {k} missing in {d}");
            }
        }
        match name.as_str() {
            "clean-7d" | "flash-sale" => {
                assert!(s["first_recommendation_ms"].is_null(), "{name}: {s:#}");
                assert_eq!(s["executed"], 0, "{name}");
            }
            "slow-burn" => {
                assert_eq!(s["recommended_stack"], "green");
                assert!(s["lead_before_breach_ms"].as_i64().unwrap() > 0, "{s:#}");
                // The trace does not recover after the first shift: the next action
                // comes inside the freeze window and its approval is refused first.
                assert!(s["frozen_refusals"].as_u64().unwrap() > 0, "{s:#}");
                assert!(run
                    .decisions()
                    .iter()
                    .any(|d| d["phase"] == "approval_refused" && d["stack"] == "green"));
            }
            "bad-canary" => {
                assert_eq!(s["recommended_stack"], "canary");
                assert_eq!(s["suspect_event"], "deploy-canary-7");
            }
            "kpi-dip" => {
                assert_eq!(s["recommended_stack"], "green");
                assert_eq!(s["suspect_event"], "deploy-green-42");
            }
            "dead-stack" => {
                assert_eq!(s["recommended_stack"], "green");
                assert!(s["recommendation"]
                    .as_str()
                    .unwrap()
                    .starts_with("evacuate green"));
            }
            other => panic!("a scenario this test does not know: {other}"),
        }
    }
}

#[test]
fn without_approval_nothing_is_executed() {
    let run = replay(&scenarios().join("slow-burn.json"), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = run.summary();
    assert_eq!(s["executed"], 0);
    assert_eq!(s["recommended_stack"], "green");
    assert!(run
        .decisions()
        .iter()
        .all(|d| d["phase"] != "executing" && d["phase"] != "verifying"));
}

#[test]
fn malformed_traces_are_rejected_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("not-json.json", "{ nope", "line 1 column 3"),
        (
            "bad-field.json",
            r#"{"format":"switchyard-trace/1","name":"x","window_ms":0,"start_ms":0,"stacks":[],"windows":[]}"#,
            "window_ms",
        ),
    ];
    for (file, body, needle) in cases {
        let p = dir.path().join(file);
        std::fs::write(&p, body).unwrap();
        let run = Command::new(env!("CARGO_BIN_EXE_switchyard-control"))
            .args(["replay", p.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains("not a valid trace"), "{file}: {stderr}");
        assert!(stderr.contains(needle), "{file}: {stderr}");
        assert!(run.stdout.is_empty(), "{file}: printed a timeline");
    }
    let missing = Command::new(env!("CARGO_BIN_EXE_switchyard-control"))
        .args(["replay", "/nonexistent/trace.json"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}
