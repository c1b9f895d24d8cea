//! The crate's module graph has no cycles: two modules that import each other cannot be
//! understood, tested or moved one at a time. Reads `src/` and follows `crate::`,
//! `super::` and child-module paths (comments and `#[cfg(test)] mod tests` excluded).
//!
//! Asserted: no cycle among the top-level modules (`policy`, `balance`, `router`, …),
//! and none among the modules of the `policy` tree, where `mod.rs` files only declare
//! and re-export (a child never reaches back into its parent). Run with `--nocapture`
//! to print the graph.
//!
//! Native only: it reads the crate's source files.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`policy::compile::routes`; the crate root is `""`) → source text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                if name != "mod" && name != "lib" {
                    p.push(name);
                }
                out.insert(p.join("::"), std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut out,
    );
    out
}

/// The code of a file without comments, string and character literals, and its unit-test
/// module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A character literal ('x', '\n', '\''), not a lifetime.
            '\'' if c.get(i + 1) == Some(&'\\') => {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if c.get(i + 2) == Some(&'\'') => i += 3,
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// Paths a module's code names: every `a::b::c` sequence (expanding `use` groups
/// `a::{b, c::d}` into `a::b` and `a::c::d`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut tokens: Vec<String> = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if ident(c) {
            let mut t = c.to_string();
            while let Some(&n) = chars.peek() {
                if !ident(n) {
                    break;
                }
                t.push(n);
                chars.next();
            }
            tokens.push(t);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            tokens.push("::".into());
        } else if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    // Expand from each identifier that does not continue a path.
    /// Expand the path starting at `i`; returns the index after it.
    fn expand(
        tokens: &[String],
        mut i: usize,
        prefix: &[String],
        out: &mut Vec<Vec<String>>,
    ) -> usize {
        let mut path = prefix.to_vec();
        loop {
            match tokens.get(i).map(String::as_str) {
                Some("{") => {
                    // A group: each comma-separated element continues the prefix.
                    i += 1;
                    let mut depth = 0;
                    let mut start = i;
                    while let Some(t) = tokens.get(i).map(String::as_str) {
                        match t {
                            "{" => depth += 1,
                            "}" if depth > 0 => depth -= 1,
                            "}" | "," if depth == 0 => {
                                if start < i {
                                    expand(tokens, start, &path, out);
                                }
                                if t == "}" {
                                    return i + 1;
                                }
                                start = i + 1;
                            }
                            _ => {}
                        }
                        i += 1;
                    }
                    return i;
                }
                Some(t) if t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    path.push(t.to_string());
                    if tokens.get(i + 1).map(String::as_str) == Some("::") {
                        i += 2;
                        continue;
                    }
                    out.push(path);
                    return i + 1;
                }
                _ => {
                    if !path.is_empty() {
                        out.push(path);
                    }
                    return i;
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let starts = tokens[i].chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && tokens.get(i + 1).map(String::as_str) == Some("::")
            // `pub(in crate::x)` restricts visibility; it imports nothing.
            && (i == 0 || (tokens[i - 1] != "::" && tokens[i - 1] != "in"));
        if starts {
            i = expand(&tokens, i, &[], &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Edges `module → module it names`, at full module granularity.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let split = |m: &str| -> Vec<String> {
        if m.is_empty() {
            Vec::new()
        } else {
            m.split("::").map(String::from).collect()
        }
    };
    // The longest module path that prefixes `path`.
    let resolve = |path: &[String]| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("::"))
            .find(|m| modules.contains_key(m))
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &modules {
        let here = split(module);
        let targets = edges.entry(module.clone()).or_default();
        for path in paths(&code(text)) {
            let absolute: Vec<String> = match path[0].as_str() {
                "crate" => path[1..].to_vec(),
                "self" => here.iter().chain(&path[1..]).cloned().collect(),
                "super" => {
                    let ups = path.iter().take_while(|s| *s == "super").count();
                    let base = &here[..here.len().saturating_sub(ups)];
                    base.iter().chain(&path[ups..]).cloned().collect()
                }
                // A child module named without `self::`.
                _ => here.iter().chain(&path).cloned().collect(),
            };
            if let Some(target) = resolve(&absolute) {
                if target != *module && !target.is_empty() {
                    targets.insert(target);
                }
            }
        }
    }
    edges
}

/// Collapse every module to its first `depth` path segments below `root` (modules outside
/// `root` are dropped).
fn collapse(
    g: &BTreeMap<String, BTreeSet<String>>,
    root: &str,
    depth: usize,
) -> BTreeMap<String, BTreeSet<String>> {
    let key = |m: &str| -> Option<String> {
        let rest = if root.is_empty() {
            m
        } else if m == root {
            ""
        } else {
            m.strip_prefix(root)?.strip_prefix("::")?
        };
        if rest.is_empty() {
            return Some(root.to_string());
        }
        let head: Vec<&str> = rest.split("::").take(depth).collect();
        Some(if root.is_empty() {
            head.join("::")
        } else {
            format!("{root}::{}", head.join("::"))
        })
    };
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in g {
        let Some(f) = key(from) else { continue };
        if f.is_empty() {
            continue;
        }
        let set = out.entry(f.clone()).or_default();
        for to in tos {
            if let Some(t) = key(to) {
                if t != f && !t.is_empty() {
                    set.insert(t);
                }
            }
        }
    }
    out
}

/// Every cycle's modules (strongly connected components of more than one module).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for n in g.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    stack.push(n.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for m in g.keys() {
        let scc: Vec<String> = g
            .keys()
            .filter(|n| *n == m || (reachable[m].contains(*n) && reachable[n].contains(m)))
            .cloned()
            .collect();
        if scc.len() > 1 && !out.contains(&scc) {
            out.push(scc);
        }
    }
    out
}

fn print(title: &str, g: &BTreeMap<String, BTreeSet<String>>) {
    println!("{title}");
    for (from, tos) in g {
        let tos: Vec<&str> = tos.iter().map(String::as_str).collect();
        println!("  {from} -> {}", tos.join(", "));
    }
}

#[test]
fn top_level_modules_form_no_cycle() {
    let g = collapse(&graph(), "", 1);
    print("top-level modules", &g);
    assert!(
        g.contains_key("policy") && g.contains_key("router"),
        "{g:?}"
    );
    assert_eq!(cycles(&g), Vec::<Vec<String>>::new());
}

#[test]
fn the_policy_tree_forms_no_cycle() {
    let g = collapse(&graph(), "policy", usize::MAX);
    print("policy modules", &g);
    assert!(g.contains_key("policy::compile::routes"), "{g:?}");
    assert_eq!(cycles(&g), Vec::<Vec<String>>::new());
}

#[test]
fn the_scanner_sees_imports_and_cycles() {
    let found = paths(&code(
        "use crate::a::{b, c::{D, e}};\npub(in crate::p) fn g() {}\n// use crate::z;\nfn f<'a>() { super::x::y(); let s = \"crate::q\\\"\"; let c = ['\"', '\\'', 'x']; }",
    ));
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::a::b",
            "crate::a::c::D",
            "crate::a::c::e",
            "super::x::y"
        ]
    );
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &["a"][..]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
}
