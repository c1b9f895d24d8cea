//! Every JSON example in the repository's Markdown validates (issue 16): the fenced
//! ` ```json ` blocks of README.md, docs/, control-service/README.md, examples/ and every
//! other `.md` file are run through the policy validator, and any rejected example fails
//! the test with its file and line. The convention (documented at the top of
//! docs/policy.md) is the block's info string:
//!
//! - `json`: a complete policy; valid, without warnings.
//! - `json fragment=PATH`: put into the base policy (the first complete policy of
//!   docs/policy.md) at `PATH` (`a.b` replaces that value, `a[]` appends to that list);
//!   the result valid, without warnings.
//! - `json invalid`: a complete policy that is rejected with exactly the errors of the
//!   next fenced block (one `path: message` per line).
//! - `json doc=KIND`: another document (`event`, `trace-window`, `evidence`, `http-error`), checked by
//!   control-service/tests/integration/docs_json.rs.
//! - `jsonc` (outlines with comments and `...`) and every other language: not checked.
//!
//! Transcripts of the offline validator (`$ cargo run -q -p switchyard-filter --example
//! validate -- FILE` in a plain fenced block) must show what the validator prints for
//! FILE (from the repository, or as shown by an earlier `$ cat FILE`).
//!
//! Native only: it reads files of the repository.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use switchyard_filter::policy::validate_json;

/// A fenced block: where it starts, its info string and its text.
#[derive(Debug, Clone)]
struct Block {
    line: usize,
    info: String,
    text: String,
}

/// The fenced blocks of a Markdown text (fences of three or more backticks at the start
/// of a line).
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, String, String)> = None; // line, fence, info, text
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if trimmed.starts_with("```") {
                    let fence_len = trimmed.chars().take_while(|&c| c == '`').count();
                    let fence = "`".repeat(fence_len);
                    let info = trimmed[fence_len..].trim().to_string();
                    open = Some((i + 1, fence, info, String::new()));
                }
            }
            Some((start, fence, info, text)) => {
                if trimmed.starts_with(fence.as_str()) && trimmed.trim_matches('`').is_empty() {
                    out.push(Block {
                        line: *start,
                        info: std::mem::take(info),
                        text: std::mem::take(text),
                    });
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    out
}

/// What a block's info string asks for.
#[derive(Debug, PartialEq)]
enum Kind {
    /// Not a policy example.
    Other,
    Whole,
    Fragment(String),
    Invalid,
}

fn kind(info: &str) -> Result<Kind, String> {
    let mut words = info.split_whitespace();
    if words.next() != Some("json") {
        return Ok(Kind::Other);
    }
    let rest: Vec<&str> = words.collect();
    match rest.as_slice() {
        [] => Ok(Kind::Whole),
        ["invalid"] => Ok(Kind::Invalid),
        [w] if w.starts_with("fragment=") && w.len() > "fragment=".len() => {
            Ok(Kind::Fragment(w["fragment=".len()..].to_string()))
        }
        // Another document (an event, a trace window, an evidence bundle): checked by
        // control-service/tests/integration/docs_json.rs, not a policy.
        [w] if w.starts_with("doc=") && w.len() > "doc=".len() => Ok(Kind::Other),
        _ => Err(format!(
            "unknown info string `{info}`: use `json`, `json fragment=PATH`, `json invalid` \
             or `json doc=KIND`"
        )),
    }
}

/// `fragment` put into `base` at `path` (`a.b` replaces, `a[]` appends).
fn place(base: &Value, path: &str, fragment: Value) -> Result<Value, String> {
    let mut doc = base.clone();
    let (path, append) = match path.strip_suffix("[]") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let mut at = &mut doc;
    let keys: Vec<&str> = path.split('.').collect();
    for key in &keys[..keys.len() - 1] {
        at = at
            .get_mut(*key)
            .ok_or_else(|| format!("fragment path `{path}`: the base policy has no `{key}`"))?;
    }
    let last = keys[keys.len() - 1];
    let obj = at
        .as_object_mut()
        .ok_or_else(|| format!("fragment path `{path}`: not inside an object"))?;
    if append {
        match obj.entry(last).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(items) => items.push(fragment),
            _ => return Err(format!("fragment path `{path}[]`: not a list")),
        }
    } else {
        obj.insert(last.to_string(), fragment);
    }
    Ok(doc)
}

/// `Ok(())` if the document validates without errors or warnings.
fn clean(doc: &str) -> Result<(), String> {
    match validate_json(doc) {
        Ok(v) if v.warnings.is_empty() => Ok(()),
        Ok(v) => Err(lines("warnings", v.warnings.iter())),
        Err(e) => Err(lines("errors", e.errors.iter())),
    }
}

fn lines<T: std::fmt::Display>(what: &str, items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|i| format!("    {i}")).collect();
    format!("{what}:\n{}", items.join("\n"))
}

/// The problems of one Markdown file's examples, each prefixed with `file:line`.
fn check_file(name: &str, markdown: &str, base: &Value) -> Vec<String> {
    let blocks = blocks(markdown);
    let mut problems = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let at = format!("{name}:{}", b.line);
        let result = match kind(&b.info) {
            Err(e) => Err(e),
            Ok(Kind::Other) => continue,
            Ok(Kind::Whole) => clean(&b.text),
            Ok(Kind::Fragment(path)) => serde_json::from_str::<Value>(&b.text)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|f| place(base, &path, f))
                .and_then(|doc| clean(&doc.to_string())),
            Ok(Kind::Invalid) => {
                let listed: Vec<&str> = match blocks.get(i + 1) {
                    Some(next) => next.text.lines().filter(|l| !l.trim().is_empty()).collect(),
                    None => Vec::new(),
                };
                match validate_json(&b.text) {
                    Ok(_) => Err("accepted, but marked invalid".to_string()),
                    Err(e) => {
                        let got: Vec<String> = e.errors.iter().map(|i| i.to_string()).collect();
                        if got == listed {
                            Ok(())
                        } else {
                            Err(format!(
                                "the errors differ from the next block's\n{}\n{}",
                                lines("listed", listed.iter()),
                                lines("reported", got.iter())
                            ))
                        }
                    }
                }
            }
        };
        if let Err(e) = result {
            problems.push(format!("{at}: {e}"));
        }
    }
    problems
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every Markdown file of the repository (build output and tool directories excluded),
/// relative to its root.
fn markdown_files() -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    walk(root, &path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &repo(), &mut out);
    out.sort();
    out
}

/// The base of fragments: the first complete policy of docs/policy.md.
fn base() -> Value {
    let text = std::fs::read_to_string(repo().join("docs/policy.md")).unwrap();
    let block = blocks(&text)
        .into_iter()
        .find(|b| kind(&b.info) == Ok(Kind::Whole))
        .expect("docs/policy.md has a complete policy (a ```json block)");
    serde_json::from_str(&block.text).unwrap()
}

#[test]
fn every_json_example_in_the_docs_validates() {
    let base = base();
    let files = markdown_files();
    for must in ["README.md", "docs/policy.md", "control-service/README.md"] {
        assert!(
            files.iter().any(|f| f == must),
            "{must} not found in {files:?}"
        );
    }
    let mut problems = Vec::new();
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(repo().join(f)).unwrap();
        checked += blocks(&text)
            .iter()
            .filter(|b| kind(&b.info).is_ok_and(|k| k != Kind::Other))
            .count();
        problems.extend(check_file(f, &text, &base));
    }
    println!("{checked} JSON examples in {} Markdown files", files.len());
    // docs/policy.md alone has a complete policy, fragments of every section and an
    // invalid example: a vanished example would mean the extraction broke.
    assert!(checked >= 8, "only {checked} JSON examples found");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------------------------
// Transcripts of the offline validator
// ---------------------------------------------------------------------------------------

const VALIDATE: &str = "cargo run -q -p switchyard-filter --example validate -- ";

/// What `examples/validate.rs` prints for a document, and `(exit 1)` as transcripts show
/// a failure (kept in step with that example by hand: it is five lines).
fn validate_output(json: &str) -> Vec<String> {
    match validate_json(json) {
        Ok(v) => v
            .warnings
            .iter()
            .map(|w| format!("warning: {w}"))
            .chain([format!(
                "ok: {} stacks, {} rules",
                v.policy.stacks.len(),
                v.policy.rules.len()
            )])
            .collect(),
        Err(e) => e
            .errors
            .iter()
            .map(|e| format!("error: {e}"))
            .chain(["(exit 1)".to_string()])
            .collect(),
    }
}

/// Check every `$ cargo run … --example validate -- FILE` of a file's transcripts against
/// the validator; FILE is read from the repository, or is what an earlier `$ cat FILE`
/// of the same block showed.
fn check_validate_transcripts(
    name: &str,
    markdown: &str,
    read: &dyn Fn(&str) -> Option<String>,
) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut problems = Vec::new();
    for b in blocks(markdown).iter().filter(|b| b.info.is_empty()) {
        // (line, command, output) of each `$ ` step.
        let mut steps: Vec<(usize, String, Vec<String>)> = Vec::new();
        for (i, line) in b.text.lines().enumerate() {
            match line.strip_prefix("$ ") {
                Some(cmd) => steps.push((b.line + 1 + i, cmd.to_string(), Vec::new())),
                None => {
                    if let Some(step) = steps.last_mut() {
                        step.2.push(line.to_string());
                    }
                }
            }
        }
        let mut shown: Vec<(String, String)> = Vec::new();
        for (line, cmd, mut output) in steps {
            while output.last().is_some_and(|l| l.trim().is_empty()) {
                output.pop();
            }
            if let Some(file) = cmd.strip_prefix("cat ") {
                shown.push((file.trim().to_string(), output.join("\n")));
                continue;
            }
            let Some(file) = cmd.strip_prefix(VALIDATE).map(str::trim) else {
                continue;
            };
            checked += 1;
            let text = shown
                .iter()
                .rev()
                .find(|(f, _)| f == file)
                .map(|(_, t)| t.clone())
                .or_else(|| read(file));
            let Some(text) = text else {
                problems.push(format!(
                    "{name}:{line}: {file}: no such file, and no `$ cat {file}` before"
                ));
                continue;
            };
            let got = validate_output(&text);
            if got != output {
                problems.push(format!(
                    "{name}:{line}: $ {cmd}\n{}\n{}",
                    lines("shown", output.iter()),
                    lines("validator", got.iter())
                ));
            }
        }
    }
    (checked, problems)
}

#[test]
fn validate_transcripts_show_what_the_validator_says() {
    let read = |f: &str| std::fs::read_to_string(repo().join(f)).ok();
    let mut checked = 0;
    let mut problems = Vec::new();
    for f in markdown_files() {
        let text = std::fs::read_to_string(repo().join(&f)).unwrap();
        let (n, p) = check_validate_transcripts(&f, &text, &read);
        checked += n;
        problems.extend(p);
    }
    // examples/policies/README.md shows three runs.
    assert!(checked >= 3, "only {checked} validate transcripts found");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn a_validate_transcript_that_drifted_fails() {
    let md = format!(
        "```\n$ cat p.json\n{BASE}\n$ {VALIDATE}p.json\nok: 1 stacks, 2 rules\n\n$ {VALIDATE}q.json\n```\n"
    );
    let (n, problems) = check_validate_transcripts("t.md", &md, &|_| None);
    assert_eq!(n, 2);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].starts_with("t.md:4:") && problems[0].contains("ok: 1 stacks, 1 rules"));
    assert!(problems[1].contains("q.json: no such file"));
}

// ---------------------------------------------------------------------------------------
// The checker itself: it fails on what it must fail on
// ---------------------------------------------------------------------------------------

const BASE: &str = r#"{ "stacks": [ { "name": "blue", "region": "us" } ], "default": { "targets": [ { "stack": "blue" } ] } }"#;

fn check_md(md: &str) -> Vec<String> {
    check_file("t.md", md, &serde_json::from_str(BASE).unwrap())
}

#[test]
fn a_rejected_example_fails_with_its_line() {
    let md = format!("# T\n\n```json\n{BASE}\n```\n\ntext\n\n```json\n{{ \"stacks\": [] }}\n```\n");
    let problems = check_md(&md);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("t.md:9: errors:")
            && problems[0].contains("default: missing field"),
        "{problems:?}"
    );
}

#[test]
fn fragments_are_placed_into_the_base() {
    let ok = "```json fragment=rules[]\n{ \"id\": \"r\", \"match\": { \"methods\": [\"POST\"] }, \"route\": { \"targets\": [ { \"stack\": \"blue\" } ] } }\n```\n\
              ```json fragment=affinity\n{ \"ttl_s\": 60 }\n```\n";
    assert_eq!(check_md(ok), Vec::<String>::new());
    let bad = "```json fragment=rules[]\n{ \"id\": \"r\", \"route\": { \"targets\": [ { \"stack\": \"purple\" } ] } }\n```\n\
               ```json fragment=default.fallback\n{ \"targets\": [], \"locl\": {} }\n```\n\
               ```json fragment=nope.x\n{}\n```\n";
    let problems = check_md(bad);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("rules[0].route.targets[0].stack: unknown stack 'purple'"));
    assert!(problems[1].contains("default.fallback.locl: unknown field"));
    assert!(problems[2].contains("the base policy has no `nope`"));
}

#[test]
fn warnings_fail_too() {
    let md = "```json fragment=rules[]\n{ \"id\": \"all\", \"route\": { \"targets\": [ { \"stack\": \"blue\" } ] } }\n```\n\
              ```json fragment=rules[]\n{ \"id\": \"r\", \"match\": {}, \"route\": { \"targets\": [ { \"stack\": \"blue\" } ] } }\n```\n";
    // Each fragment alone is fine; together (one base) the second would be unreachable.
    assert_eq!(check_md(md), Vec::<String>::new());
    let both = "```json fragment=rules\n[ { \"id\": \"all\", \"route\": { \"targets\": [ { \"stack\": \"blue\" } ] } },\n  { \"id\": \"r\", \"route\": { \"targets\": [ { \"stack\": \"blue\" } ] } } ]\n```\n";
    let problems = check_md(both);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("warnings:") && problems[0].contains("unreachable"));
}

#[test]
fn invalid_examples_must_list_exactly_their_errors() {
    let doc = r#"{ "stacks": [ { "name": "blue", "region": "us" } ], "default": { "targets": [ { "stack": "purple" } ] } }"#;
    let right = format!(
        "```json invalid\n{doc}\n```\n\n```\ndefault.targets[0].stack: unknown stack 'purple'\n```\n"
    );
    assert_eq!(check_md(&right), Vec::<String>::new());
    let wrong = format!("```json invalid\n{doc}\n```\n\n```\nsomething else\n```\n");
    assert!(check_md(&wrong)[0].contains("the errors differ"));
    let valid = format!("```json invalid\n{BASE}\n```\n\n```\n```\n");
    assert!(check_md(&valid)[0].contains("accepted, but marked invalid"));
}

#[test]
fn outlines_and_other_languages_are_skipped_and_unknown_markers_fail() {
    let md = "```jsonc\n{ \"stacks\": [ ... ] // outline\n}\n```\n```sh\nmake run\n```\n````\n```json\nnot json, inside a longer fence\n```\n````\n";
    assert_eq!(check_md(md), Vec::<String>::new());
    let problems = check_md("```json fragmnet=rules[]\n{}\n```\n");
    assert!(problems[0].contains("unknown info string"), "{problems:?}");
}
