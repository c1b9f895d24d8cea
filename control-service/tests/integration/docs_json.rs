//! The JSON examples of the docs that are not policies (those are checked by the
//! filter's docs_examples test): every ` ```json doc=KIND ` block in the repository's
//! Markdown must be JSON, and kinds with a parser must pass it — `event` through the
//! event registry's own parser, `trace-event` and `trace-window` inside a real trace.

use std::path::{Path, PathBuf};

use switchyard_control::brain::events::parse_event;
use switchyard_control::brain::scenario::Trace;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                markdown_files(&p, out);
            }
        } else if name.ends_with(".md") {
            out.push(p);
        }
    }
}

/// (file, line, kind, text) of every ```json doc=KIND block.
fn blocks() -> Vec<(String, usize, String, String)> {
    let mut files = Vec::new();
    markdown_files(&repo(), &mut files);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(repo()).unwrap().display().to_string();
        let mut open: Option<(usize, String, String)> = None;
        for (i, line) in text.lines().enumerate() {
            if open.is_none() {
                if let Some(kind) = line.trim().strip_prefix("```json doc=") {
                    open = Some((i + 1, kind.trim().to_string(), String::new()));
                }
            } else if line.trim() == "```" {
                let (at, kind, body) = open.take().unwrap();
                out.push((rel.clone(), at, kind, body));
            } else if let Some((_, _, body)) = &mut open {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    out
}

#[test]
fn every_other_json_example_parses() {
    let all = blocks();
    let kinds: Vec<&str> = all.iter().map(|b| b.2.as_str()).collect();
    for must in ["trace-event", "trace-window", "evidence"] {
        assert!(
            kinds.contains(&must),
            "no `json doc={must}` block found: {kinds:?}"
        );
    }
    let mut problems = Vec::new();
    for (file, line, kind, body) in &all {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(body) {
            problems.push(format!("{file}:{line}: not JSON: {e}"));
            continue;
        }
        let checked = match kind.as_str() {
            "event" => parse_event(body).map(|_| ()).map_err(|e| e.to_string()),
            "trace-event" => {
                // An event inside a minimal trace.
                let e: serde_json::Value = serde_json::from_str(body).unwrap();
                let trace = serde_json::json!({
                    "format": "switchyard-trace/1",
                    "name": "doc",
                    "window_ms": 60000,
                    "start_ms": 0,
                    "stacks": [{"name": "canary"}, {"name": "stable"}],
                    "events": [e],
                    "windows": [],
                });
                Trace::parse(&trace.to_string())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            "trace-window" => {
                // A window in a minimal trace over the stacks it names.
                let w: serde_json::Value = serde_json::from_str(body).unwrap();
                let stacks: Vec<serde_json::Value> = w["stacks"]
                    .as_object()
                    .map(|m| m.keys().map(|k| serde_json::json!({ "name": k })).collect())
                    .unwrap_or_default();
                let trace = serde_json::json!({
                    "format": "switchyard-trace/1",
                    "name": "doc",
                    "window_ms": 60000,
                    "start_ms": w["t"],
                    "stacks": stacks,
                    "windows": [w],
                });
                Trace::parse(&trace.to_string())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            "evidence" => Ok(()),
            // `GET /api/v1/whoami`: exactly what the server answers for that identity.
            "whoami" => whoami_as_served(body),
            // The HTTP API's error shape: {"error": {"code", "message", "field"?, ...}}.
            "http-error" => serde_json::from_str::<serde_json::Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let e = &v["error"];
                    match (e["code"].as_str(), e["message"].as_str()) {
                        (Some(c), Some(m)) if !c.is_empty() && !m.is_empty() => Ok(()),
                        _ => Err("expected {\"error\": {\"code\": …, \"message\": …}}".into()),
                    }
                }),
            other => Err(format!(
                "unknown kind `{other}` (event, trace-window, evidence, http-error, whoami)"
            )),
        };
        if let Err(e) = checked {
            problems.push(format!("{file}:{line}: {kind}: {e}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A documented `GET /api/v1/whoami` answer must be the one the server gives for the
/// identity it names (its actions follow the access table, which may have changed).
fn whoami_as_served(body: &str) -> Result<(), String> {
    use switchyard_control::auth::{Credential, Identity, Role};
    let doc: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let role = doc["role"]
        .as_str()
        .and_then(Role::parse)
        .ok_or("no known role")?;
    let who = Identity {
        name: doc["name"].as_str().unwrap_or_default().to_string(),
        role,
        credential: Credential::Token {
            id: doc["credential"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        },
    };
    let served = switchyard_control::console::whoami::describe(Some(&who));
    if served == doc {
        Ok(())
    } else {
        Err(format!("the server answers {served}"))
    }
}
