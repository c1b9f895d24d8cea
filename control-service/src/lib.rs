//! Switchyard control service: holds the desired routing state (policy and per-stack
//! weight and health), stores every change as a numbered version, and pushes each
//! version to every connected Envoy over a gRPC Watch stream.
//!
//! Modules: [`validate`] (the filter's policy validator), [`model`] (versions and stack
//! state), [`store`] (durable history), [`control`] (every change), [`fleet`] (connected
//! Envoys and their telemetry), [`proto`] (wire types and conversions), [`grpc`] and
//! [`http`] (front ends), [`config`] and [`server`] (running it), [`cli`] (the
//! `switchyard` operator CLI).
//!
//! Imports point one way, from the edges to the domain, never back:
//! `server → {config, grpc, http, control, store, proto, net}`, `config → {grpc, store}` (Watch
//! settings), `grpc → {control, fleet, proto, codec}`, `http → {control, fleet, model,
//! metrics}`, `metrics → {control, fleet, model, net}` (the Prometheus exposition),
//! `cli → {proto, model, validate}`, `proto → {model, fleet, validate}` (and `codec`, from
//! the generated code), `control → {model, fleet, store, validate}`, `fleet → model`,
//! `store → model`, `replica → {store, model}` ([`replica`]: leadership among replicas
//! on etcd and the fence on a leader's writes; imported by `control`, `config`,
//! `server`), `degraded → model` ([`degraded`]: rules in degraded mode, read by
//! `control` and `fleet`); [`auth`] (identities, tokens, the access table and its enforcement
//! layers): `auth → store`, imported by `grpc`, `http`, `server`, `cli` and
//! `proto`; [`health`] (active checks, the fast path): `health → {brain, control,
//! fleet, model}`, imported by `config`, `http` and `server`; [`tls`] (the listeners'
//! rustls settings and handshake, the demo CA): `tls → {auth, net}`, imported by
//! `config`, `server` and `cli`; [`net`] (admission on the listeners: the accept loop,
//! connection limits, the first-byte deadline, back-off on accept errors) imports
//! nothing of the crate and is imported by `config`, `metrics`, `server` and `tls`. Only the edges (`grpc`, `server`, `cli`) import `proto`.
//! [`intakes`] (scrapes of the degraded-mode intakes' queues, shown in status):
//! `intakes → {autopilot, degraded, fleet, health, model}`, imported by `config` and
//! `server`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod autopilot;
pub mod brain;
pub mod cli;
pub mod codec;
pub mod config;
pub mod console;
pub mod control;
pub mod degraded;
pub mod fleet;
pub mod grpc;
pub mod health;
pub mod http;
pub mod intakes;
pub mod metrics;
pub mod model;
pub mod net;
pub mod proto;
pub mod replica;
pub mod server;
pub mod store;
pub mod tls;
pub mod validate;

/// The import graph stated above, checked on the source: no module imports one that
/// imports it back (directly or around a loop), and only the edges import `proto`.
#[cfg(test)]
mod imports {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module → the top-level modules it names as `crate::…`.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        fn walk(dir: &Path, top: Option<&str>, g: &mut BTreeMap<String, BTreeSet<String>>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_stem().unwrap().to_str().unwrap().to_string();
                if path.is_dir() {
                    if top.is_none() && name != "bin" {
                        walk(&path, Some(&name), g);
                    }
                    continue;
                }
                if top.is_none() && (name == "lib" || name == "main") {
                    continue;
                }
                let module = top.unwrap_or(&name).to_string();
                let text = std::fs::read_to_string(&path).unwrap();
                let deps = g.entry(module.clone()).or_default();
                for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                    for (i, _) in line.match_indices("crate::") {
                        let dep: String = line[i + 7..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if dep != module {
                            deps.insert(dep);
                        }
                    }
                }
            }
        }
        let mut g = BTreeMap::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            None,
            &mut g,
        );
        g
    }

    #[test]
    fn modules_import_without_cycles() {
        let g = graph();
        assert!(
            g.contains_key("control") && g.contains_key("proto"),
            "{g:?}"
        );
        // Depth-first search; a module met again while still on the path closes a loop.
        fn visit<'a>(
            m: &'a str,
            g: &'a BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if let Some(at) = path.iter().position(|p| *p == m) {
                panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
            }
            if !done.insert(m) {
                return;
            }
            path.push(m);
            for d in g.get(m).into_iter().flatten() {
                visit(d, g, path, done);
            }
            path.pop();
        }
        let mut done = BTreeSet::new();
        for m in g.keys() {
            visit(m, &g, &mut Vec::new(), &mut done);
        }
    }

    #[test]
    fn only_the_edges_import_proto() {
        let g = graph();
        let importers: BTreeSet<&str> = g
            .iter()
            .filter(|(_, deps)| deps.contains("proto"))
            .map(|(m, _)| m.as_str())
            .collect();
        assert_eq!(importers, BTreeSet::from(["cli", "grpc", "server"]));
    }
}
