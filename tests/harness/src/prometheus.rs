//! Real Prometheus and Alertmanager (Debian's `prometheus` and `prometheus-alertmanager`,
//! installed by the Makefile's `.tools/.prometheus`) on 127.0.0.1 ports they are told, each
//! with its configuration and data in its own directory, killed with the test; `promtool
//! check metrics`; and the shipped `examples/prometheus` turned into a fast variant
//! ([`Examples::fast`]): the same rules and routes with every duration divided by a factor,
//! so that an hour-long burn-rate window takes a minute. The shipped files keep realistic
//! intervals and the test never carries a copy of the rules.
//!
//! It never edits the rules' logic: only durations, and the addresses the shipped files
//! name (`make run`'s), which [`Examples::wire`] points at the test's servers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::error::HarnessError;
use crate::ports::start_on_port;
use crate::proc::{Proc, TestDir};
use crate::Client;

/// How long either server may take to answer `/-/ready`.
const READY: Duration = Duration::from_secs(30);

fn tool(env: &str, names: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from(names[0])
}

/// `$PROMETHEUS`, else `prometheus`.
pub fn prometheus_bin() -> PathBuf {
    tool("PROMETHEUS", &["prometheus"])
}

/// `$ALERTMANAGER`, else Debian's `prometheus-alertmanager`, else `alertmanager`.
pub fn alertmanager_bin() -> PathBuf {
    tool("ALERTMANAGER", &["prometheus-alertmanager", "alertmanager"])
}

/// `$PROMTOOL`, else `promtool`.
pub fn promtool_bin() -> PathBuf {
    tool("PROMTOOL", &["promtool"])
}

/// `promtool check metrics` on an exposition (Prometheus's linter: names, types, help,
/// units). `Err` carries what it said.
pub fn check_metrics(exposition: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(promtool_bin())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e} (make .tools/.prometheus installs it)"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(exposition.as_bytes())
        .map_err(|e| format!("promtool stdin: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Write `files` (paths relative to `dir`) and `main` as `dir/<main_name>`.
fn write_files(dir: &TestDir, main_name: &str, main: &str, files: &[(String, String)]) -> PathBuf {
    for (rel, text) in files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("a config directory");
        }
        std::fs::write(&p, text).expect("a config file");
    }
    let p = dir.join(main_name);
    std::fs::write(&p, main).expect("the main config file");
    p
}

/// GET a JSON API path on `port`; panics with the body unless it answers 200.
fn get_json(name: &str, port: u16, path: &str) -> Value {
    let r = Client::connect(port)
        .unwrap_or_else(|e| panic!("{name}: connect: {e}"))
        .get(path, &[])
        .unwrap_or_else(|e| panic!("{name}: GET {path}: {e}"));
    assert_eq!(r.status, 200, "{name}: GET {path}: {}", r.text());
    r.json()
}

/// Start a server on a reserved port and wait for `/-/ready`.
fn start_server(
    name: &str,
    dir: &TestDir,
    mut command: impl FnMut(u16) -> Command,
) -> Result<(Proc, u16), HarnessError> {
    start_on_port(3, |port| {
        let mut proc = Proc::spawn(name, command(port), dir.path())?;
        proc.wait_http_ok(([127, 0, 0, 1], port).into(), "/-/ready", READY)?;
        Ok((proc, port))
    })
}

/// A running Prometheus.
pub struct Prometheus {
    proc: Proc,
    port: u16,
    dir: TestDir,
}

impl Prometheus {
    /// Start with `config` (a `prometheus.yml`) and `files` (e.g. its rule files, paths
    /// relative to the config, as it names them) in a fresh directory; wait until ready.
    pub fn start(config: &str, files: &[(String, String)]) -> Prometheus {
        let dir = TestDir::new("prometheus");
        let path = write_files(&dir, "prometheus.yml", config, files);
        let data = dir.join("data");
        let (proc, port) = start_server("prometheus", &dir, |port| {
            let mut cmd = Command::new(prometheus_bin());
            cmd.arg(format!("--config.file={}", path.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn");
            cmd
        })
        .unwrap_or_else(|e| panic!("prometheus: {e}"));
        Prometheus { proc, port, dir }
    }

    /// Its HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (config, rules, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of its logs.
    pub fn tail(&self) -> String {
        self.proc.tail(crate::proc::TAIL_LINES)
    }

    /// GET an API path; panics unless it answers 200 with `"status": "success"`.
    pub fn api(&self, path_and_query: &str) -> Value {
        let v = get_json("prometheus", self.port, path_and_query);
        assert_eq!(v["status"], "success", "{path_and_query}: {v}");
        v["data"].clone()
    }

    /// An instant query: the result vector (each `{"metric": {…}, "value": [t, "v"]}`).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(promql)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts of every rule, pending and firing (`/api/v1/alerts`).
    pub fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every metric name it holds, scraped or recorded (`__name__` values).
    pub fn metric_names(&self) -> Vec<String> {
        self.api("/api/v1/label/__name__/values")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// The scrape targets and their health (`/api/v1/targets`, active ones).
    pub fn targets(&self) -> Vec<Value> {
        self.api("/api/v1/targets")["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// A running Alertmanager (clustering off).
pub struct Alertmanager {
    proc: Proc,
    port: u16,
    _dir: TestDir,
}

impl Alertmanager {
    /// Start with `config` (an `alertmanager.yml`) and `files` beside it; wait until ready.
    pub fn start(config: &str, files: &[(String, String)]) -> Alertmanager {
        let dir = TestDir::new("alertmanager");
        let path = write_files(&dir, "alertmanager.yml", config, files);
        let data = dir.join("data");
        let (proc, port) = start_server("alertmanager", &dir, |port| {
            let mut cmd = Command::new(alertmanager_bin());
            cmd.arg(format!("--config.file={}", path.display()))
                .arg(format!("--storage.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // No gossip port on every interface: a single instance.
                .arg("--cluster.listen-address=")
                .arg("--log.level=debug");
            cmd
        })
        .unwrap_or_else(|e| panic!("alertmanager: {e}"));
        Alertmanager {
            proc,
            port,
            _dir: dir,
        }
    }

    /// Its HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything it logged so far (debug level: each notification and its outcome).
    pub fn log(&self) -> String {
        self.proc.stderr() + &self.proc.stdout()
    }

    /// The last lines of its logs.
    pub fn tail(&self) -> String {
        self.proc.tail(crate::proc::TAIL_LINES)
    }

    /// The alerts it holds (`/api/v2/alerts`), each with its labels and receivers.
    pub fn alerts(&self) -> Vec<Value> {
        get_json("alertmanager", self.port, "/api/v2/alerts")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Percent-encode a query parameter value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A Prometheus duration (`5m`, `1h30m`, `500ms`, `3d`) in milliseconds; `None` when `s`
/// is not one.
pub fn parse_duration(s: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 7] = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
        ("w", 604_800_000),
        ("y", 31_536_000_000),
    ];
    let mut rest = s;
    let mut total = 0u64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, ms) = UNITS.iter().find(|(u, _)| rest.starts_with(u))?;
        total = total.checked_add(n.checked_mul(*ms)?)?;
        rest = &rest[unit.len()..];
    }
    Some(total)
}

/// Milliseconds as a Prometheus duration (`5s`, `1500ms`).
pub fn format_duration(ms: u64) -> String {
    if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// Keys whose value is a duration, in Prometheus and Alertmanager configuration files.
const DURATION_KEYS: [&str; 9] = [
    "for",
    "keep_firing_for",
    "interval",
    "scrape_interval",
    "scrape_timeout",
    "evaluation_interval",
    "group_wait",
    "group_interval",
    "repeat_interval",
];

/// Every duration in a Prometheus, rules or Alertmanager YAML divided by `factor`, and no
/// shorter than `floor_ms`: PromQL range selectors and subqueries (`[1h]`, `[1h:5m]`) and
/// the values of the duration keys (`for:`, `scrape_interval:`, `group_wait:`, …).
/// Everything else — names, expressions, thresholds, comments — is left as it is.
pub fn compress_durations(text: &str, factor: u64, floor_ms: u64) -> String {
    let scale = |ms: u64| format_duration((ms / factor.max(1)).max(floor_ms));
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, eol) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        out.push_str(&compress_key(body, &scale).unwrap_or_else(|| compress_ranges(body, &scale)));
        out.push_str(eol);
    }
    out
}

/// `key: <duration>` (optionally quoted) with the duration scaled; `None` if the line is
/// not a duration key.
fn compress_key(line: &str, scale: &impl Fn(u64) -> String) -> Option<String> {
    let trimmed = line.trim_start();
    let indent = &line[..line.len() - trimmed.len()];
    let (dash, rest) = match trimmed.strip_prefix("- ") {
        Some(r) => ("- ", r),
        None => ("", trimmed),
    };
    let (key, value) = rest.split_once(':')?;
    if !DURATION_KEYS.contains(&key) {
        return None;
    }
    let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
    let ms = parse_duration(value)?;
    Some(format!("{indent}{dash}{key}: {}", scale(ms)))
}

/// Every `[d]` / `[d:d]` / `[d:]` in a line with its durations scaled; other brackets
/// (YAML lists) unchanged.
fn compress_ranges(line: &str, scale: &impl Fn(u64) -> String) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        let inner = &rest[..close];
        let parts: Vec<&str> = inner.split(':').collect();
        let durations: Option<Vec<Option<u64>>> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| match (i, p.trim()) {
                (1, "") => Some(None),
                (_, p) => parse_duration(p).map(Some),
            })
            .collect();
        match durations {
            Some(ds) if parts.len() <= 2 => {
                let scaled: Vec<String> = ds
                    .into_iter()
                    .map(|d| d.map(scale).unwrap_or_default())
                    .collect();
                out.push_str(&scaled.join(":"));
            }
            _ => out.push_str(inner),
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// The shipped `examples/prometheus`, ready to run: `prometheus.yml`, its rule files
/// (paths as it names them) and `alertmanager.yml`.
pub struct Examples {
    pub prometheus: String,
    pub rules: Vec<(String, String)>,
    pub alertmanager: String,
}

/// The addresses the shipped files name (`make run`'s).
const ENVOY_ADMIN: &str = "127.0.0.1:9901";
const CONTROL_HTTP: &str = "127.0.0.1:18080";
const ALERTMANAGER: &str = "127.0.0.1:9093";
/// `make run`'s run directory as the shipped files name it (relative to themselves): the
/// control service's CA (`tls/ca.pem`) and the webhook's token (`alertmanager.token`).
const RUN_DIR: &str = "../../.run/";

impl Examples {
    /// The directory of the shipped files.
    pub fn dir() -> PathBuf {
        crate::workspace_root().join("examples/prometheus")
    }

    /// The shipped files as they are.
    pub fn shipped() -> Examples {
        let dir = Self::dir();
        let read = |rel: &str| {
            std::fs::read_to_string(dir.join(rel))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(rel).display()))
        };
        let prometheus = read("prometheus.yml");
        // The rule files prometheus.yml lists (`  - rules/….yml` lines).
        let rules = prometheus
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .filter(|l| l.starts_with("rules/") && l.ends_with(".yml"))
            .map(|rel| (rel.to_string(), read(rel)))
            .collect();
        Examples {
            prometheus,
            rules,
            alertmanager: read("alertmanager.yml"),
        }
    }

    /// The shipped files with every duration divided by `factor` (at least 1 s each):
    /// scrape and evaluation intervals, rule windows, `for`, Alertmanager's grouping.
    pub fn fast(factor: u64) -> Examples {
        let s = Self::shipped();
        let c = |t: &str| compress_durations(t, factor, 1_000);
        Examples {
            prometheus: c(&s.prometheus),
            rules: s.rules.iter().map(|(p, t)| (p.clone(), c(t))).collect(),
            alertmanager: c(&s.alertmanager),
        }
    }

    /// Point them at the test's servers: the Envoy admin ports to scrape, the control
    /// service's HTTPS port (scraped, and the webhook's target), Alertmanager's port, and
    /// the directory standing for `make run`'s `.run/` (holding `tls/ca.pem`, the CA the
    /// control service's certificate is signed by, and `alertmanager.token`, the webhook's
    /// bearer token). Panics when the shipped files no longer name what this replaces (so
    /// a change there cannot silently test nothing).
    pub fn wire(
        mut self,
        envoy_admin: &[u16],
        control_http: u16,
        alertmanager: u16,
        run_dir: &Path,
    ) -> Examples {
        let replace = |text: &mut String, from: &str, to: &str| {
            assert!(text.contains(from), "{from} is not in\n{text}");
            *text = text.replace(from, to);
        };
        let envoys = envoy_admin
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join("\", \"");
        replace(&mut self.prometheus, ENVOY_ADMIN, &envoys);
        let control = format!("127.0.0.1:{control_http}");
        replace(&mut self.prometheus, CONTROL_HTTP, &control);
        replace(
            &mut self.prometheus,
            ALERTMANAGER,
            &format!("127.0.0.1:{alertmanager}"),
        );
        replace(&mut self.alertmanager, CONTROL_HTTP, &control);
        let run = format!("{}/", run_dir.display());
        replace(&mut self.prometheus, RUN_DIR, &run);
        replace(&mut self.alertmanager, RUN_DIR, &run);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("3d"), Some(259_200_000));
        for bad in ["", "5", "m", "5x", "1h 2m", "\"5m\"", "alertname"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(60_000), "60s");
        assert_eq!(format_duration(1_500), "1500ms");
    }

    #[test]
    fn compression_touches_durations_only() {
        let text = "\
global:
  scrape_interval: 15s
groups:
  - name: g
    interval: \"2m\"
    rules:
      - record: x:error_ratio:rate5m
        expr: sum(rate(a[5m])) / sum(rate(b[1h])) + max_over_time(c[1h:5m]) + d[30m:]
      - alert: A
        expr: x:error_ratio:rate5m > (14.4 * 0.001)
        for: 2m
route:
  group_by: [alertname, switchyard_stack]
  group_wait: 30s
        targets: [\"127.0.0.1:9093\"]
";
        let fast = compress_durations(text, 60, 1_000);
        let want = "\
global:
  scrape_interval: 1s
groups:
  - name: g
    interval: 2s
    rules:
      - record: x:error_ratio:rate5m
        expr: sum(rate(a[5s])) / sum(rate(b[60s])) + max_over_time(c[60s:5s]) + d[30s:]
      - alert: A
        expr: x:error_ratio:rate5m > (14.4 * 0.001)
        for: 2s
route:
  group_by: [alertname, switchyard_stack]
  group_wait: 1s
        targets: [\"127.0.0.1:9093\"]
";
        assert_eq!(fast, want);
    }

    #[test]
    fn the_shipped_examples_have_what_wire_replaces() {
        let fast = Examples::fast(60).wire(&[1, 2], 3, 4, Path::new("/tmp/run"));
        assert!(fast
            .prometheus
            .contains("targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"]"));
        // The control service over TLS, trusting the run directory's CA.
        assert!(fast.prometheus.contains("scheme: https"));
        assert!(fast.prometheus.contains("ca_file: /tmp/run/tls/ca.pem"));
        assert!(fast
            .alertmanager
            .contains("https://127.0.0.1:3/api/v1/alerts"));
        assert!(fast
            .alertmanager
            .contains("credentials_file: /tmp/run/alertmanager.token"));
        assert!(fast.alertmanager.contains("ca_file: /tmp/run/tls/ca.pem"));
        assert!(
            fast.rules.len() >= 2 && fast.rules.iter().all(|(p, _)| p.starts_with("rules/")),
            "{:?}",
            fast.rules.iter().map(|r| &r.0).collect::<Vec<_>>()
        );
        assert!(fast
            .rules
            .iter()
            .any(|(_, t)| t.contains("rate(switchyard_stack_rq_total[60s])")));
    }
}
