//! Conformance scenarios: one JSON file describes requests (headers, client address,
//! cookies) against a policy and the outcome each must have (stack, status, local
//! reply, decision, cookie). The same file runs against this host (here) and against
//! the real Envoy (tests/e2e); both must agree. Format: `scenarios/README.md`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::abi::Pair;
use crate::fixture::{Switchyard, STACK_HEADER};
use crate::http::{Exchange, Request, Response};

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Format version; this runner reads 1.
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Policy file, relative to the workspace root.
    #[serde(default)]
    pub policy: Option<String>,
    /// Inline policy (instead of `policy`).
    #[serde(default)]
    pub policy_inline: Option<serde_json::Value>,
    /// `SWITCHYARD_AFFINITY_KEYS`; default: the fixture's test keys.
    #[serde(default)]
    pub affinity_keys: Option<String>,
    /// Per-stack upstream behaviour for the whole scenario (default: 200).
    #[serde(default)]
    pub upstreams: HashMap<String, Upstream>,
    pub steps: Vec<Step>,
}

/// How a stack's upstream answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub status: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// Wait this long before the step (virtual time here, real time on Envoy).
    #[serde(default)]
    pub advance_ms: u64,
    /// Send the request this many times; `expect` holds for every one.
    #[serde(default = "one")]
    pub repeat: u32,
    /// Overrides of the scenario's `upstreams` for this step.
    #[serde(default)]
    pub upstreams: HashMap<String, Upstream>,
    pub request: StepRequest,
    pub expect: Expect,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub authority: Option<String>,
    /// Headers in order; repeats allowed.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Client IP as Envoy's `source.address` should show it (`ip` or `ip:port`).
    #[serde(default)]
    pub source: Option<String>,
    /// `cookie` headers, one per entry: name=value.
    #[serde(default)]
    pub cookies: Vec<(String, String)>,
    /// Send the affinity cookie the named earlier step received.
    #[serde(default)]
    pub cookie_from: Option<String>,
    /// Send that cookie with its signature corrupted (a forgery).
    #[serde(default)]
    pub cookie_forged: bool,
}

fn get() -> String {
    "GET".into()
}
fn root() -> String {
    "/".into()
}

/// What must hold. Every field is optional; absent ones are not checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The stack routed to, or one of several (`"blue"` or `["blue", "green"]`).
    #[serde(default)]
    pub stack: Option<OneOrMany>,
    /// The request must not reach any upstream (a local reply).
    #[serde(default)]
    pub no_upstream: Option<bool>,
    /// Status the client receives.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub retry_after: Option<String>,
    #[serde(default)]
    pub body_contains: Option<String>,
    /// Prefix of the `x-switchyard-decision` response header.
    #[serde(default)]
    pub decision_prefix: Option<String>,
    /// Whether an affinity cookie is set.
    #[serde(default)]
    pub set_cookie: Option<bool>,
    /// Same stack as the named earlier step.
    #[serde(default)]
    pub same_stack_as: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn allows(&self, s: &str) -> bool {
        match self {
            OneOrMany::One(x) => x == s,
            OneOrMany::Many(v) => v.iter().any(|x| x == s),
        }
    }
}

impl Scenario {
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, String> {
        let p = path.as_ref();
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let s: Scenario =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        if s.version != 1 {
            return Err(format!(
                "{}: unsupported scenario version {}",
                p.display(),
                s.version
            ));
        }
        Ok(s)
    }

    pub fn policy_text(&self) -> Result<String, String> {
        match (&self.policy, &self.policy_inline) {
            (Some(p), None) => std::fs::read_to_string(crate::build::workspace_root().join(p))
                .map_err(|e| format!("policy {p}: {e}")),
            (None, Some(v)) => Ok(v.to_string()),
            _ => Err("exactly one of policy and policy_inline".into()),
        }
    }
}

fn upstream_for(all: HashMap<String, Upstream>) -> crate::http::Upstream {
    Arc::new(move |h: &[Pair]| {
        let stack = h
            .iter()
            .find(|(k, _)| k == STACK_HEADER)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        let status = stack
            .and_then(|s| all.get(&s).map(|u| u.status))
            .unwrap_or(200);
        Response::status(status)
    })
}

fn corrupt(value: &str) -> String {
    let mut v = value.to_string();
    let last = v.pop().unwrap_or('A');
    v.push(if last == 'A' { 'B' } else { 'A' });
    v
}

/// One request of a step, resolved (cookies from earlier steps filled in), ready for a
/// driver: this host, or a real Envoy.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
    /// Headers in order, `cookie` headers included.
    pub headers: Vec<(String, String)>,
    /// Client address as `ip:port` (a bare IP in the file becomes port 0).
    pub source: Option<String>,
    /// Upstream status per stack for this request (stacks not named answer 200).
    pub upstreams: HashMap<String, u16>,
}

/// What a driver saw for one request.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Stack whose upstream served the request; `None` if no upstream saw it.
    pub stack: Option<String>,
    pub status: u16,
    /// Response headers as the client received them, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Observed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn set_cookies(&self) -> Vec<crate::http::SetCookie> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .filter_map(|(_, v)| crate::http::SetCookie::parse(v))
            .collect()
    }

    /// From an exchange on this host.
    pub fn from_exchange(ex: &Exchange) -> Observed {
        Observed {
            stack: ex
                .upstream_request
                .as_ref()
                .and(ex.stack())
                .map(str::to_string),
            status: ex.status(),
            headers: ex
                .response_headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            body: ex.body_str().to_string(),
        }
    }
}

/// Runs a scenario through a driver; `Err` lists every failed expectation.
pub fn run_with(
    s: &Scenario,
    mut send: impl FnMut(&Outgoing) -> Result<Observed, String>,
    mut advance: impl FnMut(u64) -> Result<(), String>,
) -> Result<usize, String> {
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut stacks: HashMap<String, String> = HashMap::new();
    let mut failures = Vec::new();
    let mut sent = 0;
    for step in &s.steps {
        if step.advance_ms > 0 {
            advance(step.advance_ms)?;
        }
        let mut ups = s.upstreams.clone();
        ups.extend(step.upstreams.clone());
        let upstreams: HashMap<String, u16> = ups.into_iter().map(|(k, v)| (k, v.status)).collect();
        for i in 0..step.repeat {
            let r = &step.request;
            let mut headers = r.headers.clone();
            for (k, v) in &r.cookies {
                headers.push(("cookie".into(), format!("{k}={v}")));
            }
            if let Some(from) = &r.cookie_from {
                match cookies.get(from) {
                    Some(c) => {
                        let (name, value) = c.split_once('=').unwrap_or(("sy_aff", c));
                        let value = if r.cookie_forged {
                            corrupt(value)
                        } else {
                            value.to_string()
                        };
                        headers.push(("cookie".into(), format!("{name}={value}")));
                    }
                    None => {
                        failures.push(format!("step {} has no cookie from step {from}", step.name))
                    }
                }
            }
            // An address with a port is used as is; a bare IP gets port 0, which is
            // what Envoy shows for an address taken from x-forwarded-for.
            let source = r.source.as_ref().map(|src| {
                match (
                    src.parse::<std::net::SocketAddr>(),
                    src.parse::<std::net::IpAddr>(),
                ) {
                    (Ok(a), _) => a.to_string(),
                    (_, Ok(ip)) => std::net::SocketAddr::new(ip, 0).to_string(),
                    _ => src.clone(),
                }
            });
            let out = Outgoing {
                method: r.method.clone(),
                path: r.path.clone(),
                authority: r.authority.clone(),
                headers,
                source,
                upstreams: upstreams.clone(),
            };
            let seen = send(&out).map_err(|e| format!("{} / {}: {e}", s.name, step.name))?;
            sent += 1;
            check(&step.name, i, &step.expect, &seen, &stacks, &mut failures);
            if let Some(c) = seen.set_cookies().first() {
                cookies.insert(step.name.clone(), format!("{}={}", c.name, c.value));
            }
            if let Some(st) = &seen.stack {
                stacks.insert(step.name.clone(), st.clone());
            }
        }
    }
    if failures.is_empty() {
        Ok(sent)
    } else {
        Err(format!("scenario {}:\n  {}", s.name, failures.join("\n  ")))
    }
}

/// Runs a scenario on this host: a fresh process with one worker VM.
pub fn run(s: &Scenario) -> Result<usize, String> {
    let mut b = Switchyard::builder().policy(s.policy_text()?);
    if let Some(k) = &s.affinity_keys {
        b = b.affinity_keys(Some(k));
    }
    let sy = std::cell::RefCell::new(b.build().map_err(|e| format!("{}: {e}", s.name))?);
    run_with(
        s,
        |o| {
            let ups: HashMap<String, Upstream> = o
                .upstreams
                .iter()
                .map(|(k, v)| (k.clone(), Upstream { status: *v }))
                .collect();
            let mut req = Request::new(&o.method, &o.path).upstream(upstream_for(ups));
            if let Some(a) = &o.authority {
                req = req.authority(a);
            }
            for (k, v) in &o.headers {
                req = req.header(k, v);
            }
            if let Some(src) = &o.source {
                req = req.source(src);
            }
            let ex = sy.borrow_mut().send(req).map_err(|e| e.to_string())?;
            Ok(Observed::from_exchange(&ex))
        },
        |ms| {
            sy.borrow_mut()
                .advance(Duration::from_millis(ms))
                .map_err(|e| e.to_string())
        },
    )
}

fn check(
    step: &str,
    i: u32,
    e: &Expect,
    ex: &Observed,
    stacks: &HashMap<String, String>,
    out: &mut Vec<String>,
) {
    let at = format!("step {step} #{i}");
    let decision = ex.header(crate::fixture::DECISION_HEADER);
    if let Some(want) = &e.stack {
        match ex.stack.as_deref() {
            Some(s) if want.allows(s) => {}
            other => out.push(format!(
                "{at}: stack {other:?}, want {want:?} (decision {decision:?})"
            )),
        }
    }
    if let Some(no) = e.no_upstream {
        if no != ex.stack.is_none() {
            out.push(format!(
                "{at}: reached upstream = {}, want {}",
                ex.stack.is_some(),
                !no
            ));
        }
    }
    if let Some(st) = e.status {
        if ex.status != st {
            out.push(format!("{at}: status {}, want {st}", ex.status));
        }
    }
    if let Some(ra) = &e.retry_after {
        if ex.header("retry-after") != Some(ra.as_str()) {
            out.push(format!(
                "{at}: retry-after {:?}, want {ra}",
                ex.header("retry-after")
            ));
        }
    }
    if let Some(b) = &e.body_contains {
        if !ex.body.contains(b.as_str()) {
            out.push(format!("{at}: body {:?} lacks {b:?}", ex.body));
        }
    }
    if let Some(p) = &e.decision_prefix {
        if !decision.is_some_and(|d| d.starts_with(p.as_str())) {
            out.push(format!("{at}: decision {decision:?}, want prefix {p:?}"));
        }
    }
    if let Some(c) = e.set_cookie {
        if c == ex.set_cookies().is_empty() {
            out.push(format!("{at}: set-cookie present = {}, want {c}", !c));
        }
    }
    if let Some(other) = &e.same_stack_as {
        if stacks.get(other) != ex.stack.as_ref() {
            out.push(format!(
                "{at}: stack {:?}, want the same as step {other} ({:?})",
                ex.stack,
                stacks.get(other)
            ));
        }
    }
}

/// Every `*.json` scenario in a directory, sorted by name.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<Vec<(String, Scenario)>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir.as_ref()).map_err(|e| e.to_string())?;
    for entry in entries.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "json") {
            out.push((
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                Scenario::load(&p)?,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
