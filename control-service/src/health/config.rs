//! The `[health]` section of the control service's config file: active checks per stack.
//!
//! Parse, then compile: [`HealthDoc`] is the TOML as written (unknown keys are errors);
//! [`compile`] checks every check and returns either the validated [`HealthConfig`] or
//! every problem, each named by its path (`health.checks[2].url`). Nothing here runs a
//! probe.

use std::time::Duration;

use serde::Deserialize;

/// Defaults for every check that does not set its own.
pub const DEFAULT_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_RISE: u32 = 2;
/// Bounds: a check faster than this only loads the stack; more checks than this is a
/// configuration mistake.
const MIN_INTERVAL_MS: u64 = 50;
const MAX_INTERVAL_MS: u64 = 3_600_000;
const MAX_CHECKS: usize = 256;
const MAX_THRESHOLD: u32 = 100;
/// Largest synthetic request body.
const MAX_BODY: usize = 64 * 1024;

/// `[health]` as written in the config file. Every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthDoc {
    /// Evacuate a hard-down stack without approval (default true).
    pub fast_path: Option<bool>,
    /// Count "breakers open on most reporting nodes" as hard-down (default true).
    pub breakers: Option<bool>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Consecutive failures that take a check down.
    pub fall: Option<u32>,
    /// Consecutive successes that bring a down check back.
    pub rise: Option<u32>,
    #[serde(default)]
    pub checks: Vec<CheckDoc>,
}

/// One `[[health.checks]]` entry as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDoc {
    pub stack: String,
    /// `infrastructure`, `component`, `api` or `integrity`.
    pub layer: String,
    /// Shown in status and reasons; default `<stack>/<layer>`.
    pub name: Option<String>,
    /// infrastructure: `host:port` to connect to.
    pub address: Option<String>,
    /// component, api, integrity: `http://host:port/path`.
    pub url: Option<String>,
    /// api: request method (default GET).
    pub method: Option<String>,
    /// api: request body.
    pub body: Option<String>,
    /// component, api, integrity: the status that counts as success (default: any 2xx).
    pub expect_status: Option<u16>,
    /// api: slowest acceptable answer.
    pub latency_budget_ms: Option<u64>,
    /// integrity: JSON pointers of the two numbers compared.
    pub left: Option<String>,
    pub right: Option<String>,
    /// integrity: largest accepted |left - right|.
    pub tolerance: Option<f64>,
    /// integrity: largest accepted |left - right| / max(|left|, |right|).
    pub tolerance_ratio: Option<f64>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub fall: Option<u32>,
    pub rise: Option<u32>,
}

/// The layers of §8.2, from the bottom up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The stack answers at all: a TCP connect.
    Infrastructure,
    /// Its health endpoint says it is up.
    Component,
    /// A real request answers within its latency budget.
    Api,
    /// Its data is consistent (two numbers of a JSON answer agree).
    Integrity,
}

impl Layer {
    pub const ALL: [Layer; 4] = [
        Layer::Infrastructure,
        Layer::Component,
        Layer::Api,
        Layer::Integrity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Infrastructure => "infrastructure",
            Layer::Component => "component",
            Layer::Api => "api",
            Layer::Integrity => "integrity",
        }
    }

    /// A failure of this layer means the stack is dead (the fast path); the upper layers
    /// only degrade it (a matter for the incident workflow and a human).
    pub fn is_hard(self) -> bool {
        matches!(self, Layer::Infrastructure | Layer::Component)
    }

    fn parse(s: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// An `http://host:port/path` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// `host:port` to connect to (also the `Host` header).
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpTarget {
    /// Parse a plain-HTTP URL (health checks do not speak TLS; check a TLS stack through
    /// its sidecar or a plain-text health port).
    pub fn parse(url: &str) -> Result<Self, &'static str> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("must start with http:// (https is not supported for health checks)")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        check_host_port(authority)?;
        if path
            .chars()
            .any(|c| c.is_ascii_control() || c == ' ' || c == '#')
        {
            return Err("the path must not contain spaces, control characters or '#'");
        }
        Ok(Self {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

fn check_host_port(s: &str) -> Result<(), &'static str> {
    let (host, port) = s.rsplit_once(':').ok_or("must be host:port")?;
    if host.is_empty() || host.contains('@') || host.chars().any(|c| c.is_whitespace()) {
        return Err("must be host:port with a host name or address");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("must be host:port with a port 1..=65535"),
    }
}

/// How far apart the two integrity numbers may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub absolute: Option<f64>,
    pub ratio: Option<f64>,
}

impl Tolerance {
    /// Whether `left` and `right` agree: within either given bound (exact equality when
    /// neither is given).
    pub fn accepts(&self, left: f64, right: f64) -> bool {
        let diff = (left - right).abs();
        if self.absolute.is_none() && self.ratio.is_none() {
            return diff == 0.0;
        }
        let abs_ok = self.absolute.is_some_and(|t| diff <= t);
        let scale = left.abs().max(right.abs());
        let ratio_ok = self
            .ratio
            .is_some_and(|r| diff == 0.0 || (scale > 0.0 && diff / scale <= r));
        abs_ok || ratio_ok
    }
}

/// What one check does.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeSpec {
    /// TCP connect.
    Tcp { address: String },
    /// GET; success is the expected status.
    Http {
        target: HttpTarget,
        expect_status: Option<u16>,
    },
    /// A synthetic request; success is the expected status within the budget.
    Api {
        target: HttpTarget,
        method: String,
        body: Option<String>,
        expect_status: Option<u16>,
        budget: Duration,
    },
    /// GET a JSON document; success is two numbers agreeing within the tolerance.
    Integrity {
        target: HttpTarget,
        expect_status: Option<u16>,
        left: String,
        right: String,
        tolerance: Tolerance,
    },
}

/// A validated check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    pub name: String,
    pub stack: String,
    pub layer: Layer,
    pub probe: ProbeSpec,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
}

/// The validated `[health]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub fast_path: bool,
    pub breakers: bool,
    pub checks: Vec<CheckSpec>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            fast_path: true,
            breakers: true,
            checks: Vec::new(),
        }
    }
}

/// Collects problems with their paths.
struct Problems(Vec<String>);

impl Problems {
    fn at(&mut self, path: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{path}: {message}"));
    }
}

/// Check and compile the `[health]` section. Returns every problem on failure.
pub fn compile(doc: &HealthDoc) -> Result<HealthConfig, Vec<String>> {
    let mut p = Problems(Vec::new());
    let interval_ms = doc.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
    let timeout_ms = doc.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    let fall = doc.fall.unwrap_or(DEFAULT_FALL);
    let rise = doc.rise.unwrap_or(DEFAULT_RISE);
    check_timing(&mut p, "health", interval_ms, timeout_ms, fall, rise);
    if doc.checks.len() > MAX_CHECKS {
        p.at(
            "health.checks",
            format!(
                "{} checks; at most {MAX_CHECKS} are allowed",
                doc.checks.len()
            ),
        );
    }
    let mut checks = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in doc.checks.iter().enumerate() {
        let path = format!("health.checks[{i}]");
        if let Some(spec) = compile_check(&mut p, &path, c, (interval_ms, timeout_ms, fall, rise)) {
            if !names.insert(spec.name.clone()) {
                p.at(
                    &format!("{path}.name"),
                    format!("{:?} is used by another check", spec.name),
                );
            }
            checks.push(spec);
        }
    }
    if p.0.is_empty() {
        Ok(HealthConfig {
            fast_path: doc.fast_path.unwrap_or(true),
            breakers: doc.breakers.unwrap_or(true),
            checks,
        })
    } else {
        Err(p.0)
    }
}

fn check_timing(p: &mut Problems, path: &str, interval: u64, timeout: u64, fall: u32, rise: u32) {
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval) {
        p.at(
            &format!("{path}.interval_ms"),
            format!("must be {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}"),
        );
    }
    if timeout == 0 || timeout > interval {
        p.at(
            &format!("{path}.timeout_ms"),
            format!("must be 1..=interval_ms ({interval}), so probes of one check never overlap"),
        );
    }
    for (key, v) in [("fall", fall), ("rise", rise)] {
        if !(1..=MAX_THRESHOLD).contains(&v) {
            p.at(
                &format!("{path}.{key}"),
                format!("must be 1..={MAX_THRESHOLD}"),
            );
        }
    }
}

fn compile_check(
    p: &mut Problems,
    path: &str,
    c: &CheckDoc,
    (interval_ms, timeout_ms, fall, rise): (u64, u64, u32, u32),
) -> Option<CheckSpec> {
    let before = p.0.len();
    if c.stack.trim().is_empty() {
        p.at(&format!("{path}.stack"), "must name a stack of the policy");
    }
    let layer = Layer::parse(&c.layer);
    if layer.is_none() {
        p.at(
            &format!("{path}.layer"),
            format!(
                "{:?} is not a layer; use infrastructure, component, api or integrity",
                c.layer
            ),
        );
    }
    let interval_ms = c.interval_ms.unwrap_or(interval_ms);
    let timeout_ms = c.timeout_ms.unwrap_or(timeout_ms);
    let fall = c.fall.unwrap_or(fall);
    let rise = c.rise.unwrap_or(rise);
    check_timing(p, path, interval_ms, timeout_ms, fall, rise);

    let unused = |p: &mut Problems, key: &str, given: bool, layer: &str| {
        if given {
            p.at(
                &format!("{path}.{key}"),
                format!("does not apply to the {layer} layer"),
            );
        }
    };
    let target = |p: &mut Problems| -> Option<HttpTarget> {
        match &c.url {
            None => {
                p.at(&format!("{path}.url"), "is required for this layer");
                None
            }
            Some(u) => HttpTarget::parse(u)
                .map_err(|m| p.at(&format!("{path}.url"), m))
                .ok(),
        }
    };
    let expect = |p: &mut Problems| -> Option<u16> {
        match c.expect_status {
            Some(s) if !(100..=599).contains(&s) => {
                p.at(&format!("{path}.expect_status"), "must be 100..=599");
                None
            }
            s => s,
        }
    };
    let probe = match layer? {
        Layer::Infrastructure => {
            for (key, given) in [
                ("url", c.url.is_some()),
                ("method", c.method.is_some()),
                ("body", c.body.is_some()),
                ("expect_status", c.expect_status.is_some()),
                ("latency_budget_ms", c.latency_budget_ms.is_some()),
                ("left", c.left.is_some()),
                ("right", c.right.is_some()),
                ("tolerance", c.tolerance.is_some()),
                ("tolerance_ratio", c.tolerance_ratio.is_some()),
            ] {
                unused(p, key, given, "infrastructure");
            }
            match &c.address {
                None => {
                    p.at(&format!("{path}.address"), "is required (host:port)");
                    None
                }
                Some(a) => match check_host_port(a) {
                    Ok(()) => Some(ProbeSpec::Tcp { address: a.clone() }),
                    Err(m) => {
                        p.at(&format!("{path}.address"), m);
                        None
                    }
                },
            }
        }
        Layer::Component => {
            for (key, given) in [
                ("address", c.address.is_some()),
                ("method", c.method.is_some()),
                ("body", c.body.is_some()),
                ("latency_budget_ms", c.latency_budget_ms.is_some()),
                ("left", c.left.is_some()),
                ("right", c.right.is_some()),
                ("tolerance", c.tolerance.is_some()),
                ("tolerance_ratio", c.tolerance_ratio.is_some()),
            ] {
                unused(p, key, given, "component");
            }
            let expect_status = expect(p);
            target(p).map(|target| ProbeSpec::Http {
                target,
                expect_status,
            })
        }
        Layer::Api => {
            for (key, given) in [
                ("address", c.address.is_some()),
                ("left", c.left.is_some()),
                ("right", c.right.is_some()),
                ("tolerance", c.tolerance.is_some()),
                ("tolerance_ratio", c.tolerance_ratio.is_some()),
            ] {
                unused(p, key, given, "api");
            }
            let method = c.method.clone().unwrap_or_else(|| "GET".into());
            let method_ok = !method.is_empty()
                && method.len() <= 16
                && method.bytes().all(|b| b.is_ascii_uppercase());
            if !method_ok {
                p.at(
                    &format!("{path}.method"),
                    "must be an upper-case HTTP method such as GET or POST",
                );
            }
            if c.body.as_ref().is_some_and(|b| b.len() > MAX_BODY) {
                p.at(&format!("{path}.body"), format!("at most {MAX_BODY} bytes"));
            }
            let budget = match c.latency_budget_ms {
                None => {
                    p.at(
                        &format!("{path}.latency_budget_ms"),
                        "is required for the api layer",
                    );
                    None
                }
                Some(b) if b == 0 || b > timeout_ms => {
                    p.at(
                        &format!("{path}.latency_budget_ms"),
                        format!("must be 1..=timeout_ms ({timeout_ms})"),
                    );
                    None
                }
                Some(b) => Some(Duration::from_millis(b)),
            };
            let expect_status = expect(p);
            match (target(p), budget, method_ok) {
                (Some(target), Some(budget), true) => Some(ProbeSpec::Api {
                    target,
                    method,
                    body: c.body.clone(),
                    expect_status,
                    budget,
                }),
                _ => None,
            }
        }
        Layer::Integrity => {
            for (key, given) in [
                ("address", c.address.is_some()),
                ("method", c.method.is_some()),
                ("body", c.body.is_some()),
                ("latency_budget_ms", c.latency_budget_ms.is_some()),
            ] {
                unused(p, key, given, "integrity");
            }
            let mut pointer = |key: &str, v: &Option<String>| -> Option<String> {
                match v {
                    None => {
                        p.at(
                            &format!("{path}.{key}"),
                            "is required: a JSON pointer such as /catalog_count",
                        );
                        None
                    }
                    Some(s) if !s.starts_with('/') => {
                        p.at(
                            &format!("{path}.{key}"),
                            "must be a JSON pointer starting with '/'",
                        );
                        None
                    }
                    Some(s) => Some(s.clone()),
                }
            };
            let left = pointer("left", &c.left);
            let right = pointer("right", &c.right);
            for (key, v) in [
                ("tolerance", c.tolerance),
                ("tolerance_ratio", c.tolerance_ratio),
            ] {
                if v.is_some_and(|t| !t.is_finite() || t < 0.0) {
                    p.at(&format!("{path}.{key}"), "must be a number 0 or more");
                }
            }
            let expect_status = expect(p);
            match (target(p), left, right) {
                (Some(target), Some(left), Some(right)) => Some(ProbeSpec::Integrity {
                    target,
                    expect_status,
                    left,
                    right,
                    tolerance: Tolerance {
                        absolute: c.tolerance,
                        ratio: c.tolerance_ratio,
                    },
                }),
                _ => None,
            }
        }
    };
    if p.0.len() != before {
        return None;
    }
    let layer = layer?;
    Some(CheckSpec {
        name: c
            .name
            .clone()
            .unwrap_or_else(|| format!("{}/{}", c.stack, layer.as_str())),
        stack: c.stack.clone(),
        layer,
        probe: probe?,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        fall,
        rise,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<HealthConfig, Vec<String>> {
        #[derive(Deserialize)]
        struct Wrap {
            health: HealthDoc,
        }
        let w: Wrap = toml::from_str(toml_text).unwrap();
        compile(&w.health)
    }

    #[test]
    fn every_layer_compiles_with_defaults_and_overrides() {
        let c = parse(
            r#"
            [health]
            interval_ms = 200
            timeout_ms = 150
            fall = 2
            [[health.checks]]
            stack = "blue"
            layer = "infrastructure"
            address = "127.0.0.1:8081"
            [[health.checks]]
            stack = "blue"
            layer = "component"
            url = "http://127.0.0.1:8081/healthz"
            expect_status = 200
            rise = 5
            [[health.checks]]
            stack = "blue"
            layer = "api"
            url = "http://localhost:8081/checkout"
            method = "POST"
            body = "{}"
            latency_budget_ms = 100
            [[health.checks]]
            stack = "blue"
            name = "catalog-vs-index"
            layer = "integrity"
            url = "http://127.0.0.1:8081/integrity"
            left = "/catalog_count"
            right = "/search_index_count"
            tolerance_ratio = 0.01
            "#,
        )
        .unwrap();
        assert!(c.fast_path && c.breakers);
        assert_eq!(c.checks.len(), 4);
        let names: Vec<&str> = c.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blue/infrastructure",
                "blue/component",
                "blue/api",
                "catalog-vs-index"
            ]
        );
        assert_eq!(c.checks[0].interval, Duration::from_millis(200));
        assert_eq!((c.checks[0].fall, c.checks[0].rise), (2, DEFAULT_RISE));
        assert_eq!(c.checks[1].rise, 5);
        assert_eq!(
            c.checks[2].probe,
            ProbeSpec::Api {
                target: HttpTarget {
                    authority: "localhost:8081".into(),
                    path: "/checkout".into()
                },
                method: "POST".into(),
                body: Some("{}".into()),
                expect_status: None,
                budget: Duration::from_millis(100),
            }
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let err = parse(
            r#"
            [health]
            interval_ms = 10
            [[health.checks]]
            stack = ""
            layer = "network"
            [[health.checks]]
            stack = "blue"
            layer = "infrastructure"
            address = "localhost"
            url = "http://x:1/"
            [[health.checks]]
            stack = "blue"
            layer = "component"
            url = "https://blue:443/healthz"
            [[health.checks]]
            stack = "blue"
            layer = "api"
            url = "http://blue:80/"
            method = "get"
            timeout_ms = 100
            interval_ms = 1000
            latency_budget_ms = 500
            [[health.checks]]
            stack = "blue"
            layer = "integrity"
            url = "http://blue:80/integrity"
            left = "catalog_count"
            tolerance = -1
            "#,
        )
        .unwrap_err();
        let text = err.join("\n");
        for want in [
            "health.interval_ms: must be 50..=",
            "health.checks[0].stack: must name a stack",
            "health.checks[0].layer: \"network\" is not a layer",
            "health.checks[1].address: must be host:port",
            "health.checks[1].url: does not apply to the infrastructure layer",
            "health.checks[2].url: must start with http://",
            "health.checks[3].method: must be an upper-case HTTP method",
            "health.checks[3].latency_budget_ms: must be 1..=timeout_ms (100)",
            "health.checks[4].left: must be a JSON pointer",
            "health.checks[4].right: is required",
            "health.checks[4].tolerance: must be a number 0 or more",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    /// The example in control-service/README.md compiles as documented.
    #[test]
    fn the_readme_example_compiles() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Health checks and the fast path")
            .nth(1)
            .expect("the README has the health section");
        let toml_text = section
            .split("```toml\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("a toml block");
        let c = parse(toml_text).unwrap();
        let layers: Vec<Layer> = c.checks.iter().map(|c| c.layer).collect();
        assert_eq!(layers, Layer::ALL);
        assert_eq!(c.checks[2].interval, Duration::from_millis(5_000));
        assert_eq!(c.checks[3].name, "blue-catalog-vs-index");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = parse(
            r#"
            [[health.checks]]
            stack = "blue"
            layer = "infrastructure"
            address = "127.0.0.1:1"
            [[health.checks]]
            stack = "blue"
            layer = "infrastructure"
            address = "127.0.0.1:2"
            "#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            ["health.checks[1].name: \"blue/infrastructure\" is used by another check"]
        );
    }

    #[test]
    fn tolerance_absolute_relative_and_exact() {
        let exact = Tolerance {
            absolute: None,
            ratio: None,
        };
        assert!(exact.accepts(10.0, 10.0));
        assert!(!exact.accepts(10.0, 9.0));
        let abs = Tolerance {
            absolute: Some(2.0),
            ratio: None,
        };
        assert!(abs.accepts(100.0, 98.0));
        assert!(!abs.accepts(100.0, 97.0));
        let rel = Tolerance {
            absolute: None,
            ratio: Some(0.01),
        };
        assert!(rel.accepts(1000.0, 990.0));
        assert!(!rel.accepts(1000.0, 989.0));
        assert!(rel.accepts(0.0, 0.0));
        assert!(!rel.accepts(0.0, 1.0));
        let either = Tolerance {
            absolute: Some(5.0),
            ratio: Some(0.01),
        };
        assert!(either.accepts(10.0, 6.0));
        assert!(either.accepts(10_000.0, 9_950.0));
        assert!(!either.accepts(10_000.0, 9_800.0));
    }
}
