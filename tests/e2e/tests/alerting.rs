//! Prometheus and Alertmanager for real, on the shipped `examples/prometheus` with every
//! duration divided by 60 (the 1 h burn-rate window is a minute, scrapes and evaluations
//! every second): the real Envoy with the .wasm, two demo stacks under bounded traffic,
//! the real control service. An error fault on blue makes the SLO alert fire in
//! Prometheus, reach Alertmanager, be posted to the control service's webhook and open an
//! incident on blue; green stays quiet. And every series the Grafana dashboard
//! (`examples/grafana/switchyard.json`) queries exists in Prometheus after a short scrape,
//! and the control service's `/metrics` passes `promtool check metrics`.
//!
//! The control service runs as `make run` runs it: TLS on both listeners with the demo
//! certificates (`switchyard-control certs demo`), mTLS for the Envoy, authentication on.
//! The shipped files' TLS settings are what is tested: Prometheus scrapes `/metrics` over
//! https trusting the demo CA, Alertmanager posts to the webhook over https with that CA
//! and the operator token file; only the directory standing for `.run/` is re-pointed.
//!
//! The control service's brain detector is switched off (`detect_min_requests`), so the
//! incident can only come from the alert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_e2e::*;
use switchyard_harness::prometheus::{self, Alertmanager, Examples, Prometheus};

const POLICY: &str = r#"{
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "green", "region": "us" } ],
  "breaker": { "enabled": false },
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ] },
  "kpis": [ { "name": "views", "method": "GET", "path_prefix": "/", "status": "2xx" } ]
}"#;

/// The shipped durations divided by this.
const FACTOR: u64 = 60;

/// The bearer token Alertmanager sends to `POST /api/v1/alerts` (and these tests send
/// with their reads): imported into the control service's store with role operator
/// before it starts (authentication is on, as in production), and written where the
/// shipped alertmanager.yml reads it (`.run/alertmanager.token`, as `make run` does).
const OPERATOR_TOKEN: &str = "syt_5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0ff";

/// Every bounded wait in this file.
const WAIT: Duration = Duration::from_secs(40);

/// Poll `f` every 200 ms until it returns `Some`, for at most [`WAIT`]; then fail with
/// `what` and whatever `explain` says.
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>, explain: impl Fn() -> String) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}\n{}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Control {
    proc: Proc,
    http: u16,
    _grpc: ReservedPort,
    /// Stands for `make run`'s `.run/`: `tls/` (the demo CA and certificates) and
    /// `alertmanager.token`.
    run: PathBuf,
    certs: DemoCerts,
}

impl Control {
    fn start(dir: &TestDir) -> Control {
        let grpc = ReservedPort::new().unwrap();
        std::fs::write(dir.join("policy.json"), POLICY).unwrap();
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!(
                "store = \"redb\"\ndata_dir = \"data\"\ngrpc = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:0\"\n\
                 bootstrap_policy = \"policy.json\"\n\n[autopilot]\ntick_ms = 100\n\
                 detect_min_requests = 1000000000\n",
                grpc.port()
            ),
        )
        .unwrap();
        // The demo CA and certificates, as `make run` makes them into .run/tls.
        let certs = DemoCerts::new("alerting-run");
        let run = certs
            .file("ca.pem")
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        // The Envoy's dataplane token and Alertmanager's operator token, offline.
        let data = dir.join("data");
        let store_args = ["--config", config.to_str().unwrap()];
        let operator = run.join("alertmanager.token");
        std::fs::write(&operator, OPERATOR_TOKEN).unwrap();
        for (name, role, file) in [
            (DATAPLANE_NAME, "dataplane", dataplane_token().file.clone()),
            ("alertmanager", "operator", operator),
        ] {
            token_command(
                &data,
                &store_args,
                &[
                    "import",
                    "--name",
                    name,
                    "--role",
                    role,
                    "--token-file",
                    file.to_str().unwrap(),
                ],
            );
        }
        let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard-control"));
        cmd.args(["serve", "--config", config.to_str().unwrap()])
            .args(certs.serve_args());
        let mut proc = Proc::spawn("control", cmd, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let line = proc
            .wait_for_line("its `http listening on` line", WAIT, |l| {
                l.starts_with("http listening on")
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let http = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        Control {
            proc,
            http,
            _grpc: grpc,
            run,
            certs,
        }
    }

    /// GET over https (trusting the demo CA, with the operator token), as a user would
    /// with curl; the body of a 200.
    fn get_text(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(self.certs.file("ca.pem"))
            .args(["-H", &format!("authorization: Bearer {OPERATOR_TOKEN}")])
            .arg(format!("https://127.0.0.1:{}{path}", self.http))
            .output()
            .expect("curl (the tests read the control service over https with it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        assert!(
            out.status.success() && code == "200",
            "GET {path}: {code} {body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        body.to_string()
    }

    fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.get_text(path)).unwrap()
    }

    fn incidents(&self) -> Vec<Value> {
        self.get("/api/v1/incidents")["incidents"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Everything running: two stacks, the control service, one Envoy, Alertmanager and
/// Prometheus on the fast variant of the shipped configuration.
struct System {
    blue: Stack,
    _green: Stack,
    control: Control,
    envoy: Envoy,
    alertmanager: Alertmanager,
    prometheus: Prometheus,
    _dir: TestDir,
}

impl System {
    fn start() -> System {
        let blue = Stack::start("blue", 0);
        let green = Stack::start("green", 0);
        let dir = TestDir::new("alerting");
        let control = Control::start(&dir);
        let ports: HashMap<&str, u16> = HashMap::from([
            ("blue", blue.port),
            ("green", green.port),
            ("control", control._grpc.port()),
            ("node", 1),
        ]);
        let envoy = envoy_over_mtls(&ports, &control.certs);
        // Alertmanager first: Prometheus's configuration names its port.
        let am_config = Examples::fast(FACTOR)
            .wire(&[envoy.admin], control.http, 0, &control.run)
            .alertmanager;
        let alertmanager = Alertmanager::start(&am_config, &[]);
        let fast = Examples::fast(FACTOR).wire(
            &[envoy.admin],
            control.http,
            alertmanager.port(),
            &control.run,
        );
        let prometheus = Prometheus::start(&fast.prometheus, &fast.rules);
        System {
            blue,
            _green: green,
            control,
            envoy,
            alertmanager,
            prometheus,
            _dir: dir,
        }
    }

    /// Logs of everything, for a failure message.
    fn explain(&self) -> String {
        format!(
            "prometheus targets: {:#?}\nprometheus alerts: {:#?}\n{}\n{}\n{}",
            self.prometheus.targets(),
            self.prometheus.alerts(),
            self.prometheus.tail(),
            self.alertmanager.tail(),
            self.control.proc.tail(20)
        )
    }

    /// Wait until Prometheus has scraped both targets and the rules have recorded a
    /// request rate for both stacks.
    fn wait_scraped(&self) {
        wait(
            "both targets up and a request rate recorded for blue and green",
            || {
                let up = self.prometheus.query("up == 1").len() == 2;
                let rates = self
                    .prometheus
                    .query("switchyard_stack:requests:rate5m > 0")
                    .len();
                (up && rates == 2).then_some(())
            },
            || self.explain(),
        );
    }
}

/// The shipped Envoy bootstrap with its control cluster over mTLS (the demo certificates'
/// SDS files), as `make run` runs it, on the test's ports.
fn envoy_over_mtls(ports: &HashMap<&str, u16>, certs: &DemoCerts) -> Envoy {
    let config = render_config_tls(
        POLICY,
        ports,
        &certs.file("envoy-sds-cert.yaml"),
        &certs.file("envoy-sds-ca.yaml"),
    );
    let opts = switchyard_harness::EnvoyOptions {
        concurrency: 2,
        log_level: "warn".into(),
        env: vec![("SWITCHYARD_AFFINITY_KEYS".into(), TEST_KEYS.into())],
        ..Default::default()
    };
    let inner = switchyard_harness::Envoy::start(&config, &opts);
    Envoy {
        port: inner.listener(LISTENER).port(),
        admin: inner.admin_addr().port(),
        config: inner.config_path().to_path_buf(),
        inner,
    }
}

const BURN: &str = "SwitchyardStackErrorBudgetBurn";

/// Prometheus's burn alerts for `stack` in `state` (`pending` or `firing`).
fn burn_alerts(p: &Prometheus, stack: &str, state: &str) -> Vec<Value> {
    p.alerts()
        .into_iter()
        .filter(|a| {
            a["labels"]["alertname"] == BURN
                && a["labels"]["switchyard_stack"] == stack
                && a["state"] == state
        })
        .collect()
}

#[test]
fn error_burn_on_one_stack_fires_reaches_alertmanager_and_opens_an_incident_on_it() {
    let sys = System::start();
    let traffic = Traffic::start(sys.envoy.port, 4);
    sys.wait_scraped();
    // Healthy: nothing burns, nothing is open.
    assert!(burn_alerts(&sys.prometheus, "blue", "firing").is_empty());
    assert!(
        sys.control.incidents().is_empty(),
        "an incident before the fault"
    );

    let fault_at = Instant::now();
    fault(sys.blue.port, r#"{"error_rate": 0.5}"#);

    // 1. Prometheus: the fast burn (1 h and 5 m windows, compressed) pages for blue.
    let alert = wait(
        "the burn alert on blue firing in Prometheus",
        || {
            burn_alerts(&sys.prometheus, "blue", "firing")
                .into_iter()
                .find(|a| a["labels"]["severity"] == "page")
        },
        || sys.explain(),
    );
    let fired = fault_at.elapsed();
    assert_eq!(alert["labels"]["slo"], "availability", "{alert:#}");
    let ratio: f64 = alert["value"].as_str().unwrap().parse().unwrap();
    // A page fires on either clause: 14.4 x over 1h/5m or 6 x over 6h/30m (compressed);
    // its value is the long window's ratio of the clause that fired, so at least 6 x.
    assert!(ratio > 0.006, "a page below 6 x the budget: {alert:#}");

    // 2. Alertmanager holds it, routed to the control service's receiver.
    let held = wait(
        "the alert in Alertmanager, routed to the switchyard receiver",
        || {
            sys.alertmanager.alerts().into_iter().find(|a| {
                a["labels"]["alertname"] == BURN
                    && a["labels"]["switchyard_stack"] == "blue"
                    && a["labels"]["severity"] == "page"
                    && a["receivers"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["name"] == "switchyard"))
            })
        },
        || sys.explain(),
    );
    // Active: the page is sent (it inhibits the slow-burn ticket on the same stack).
    assert_eq!(held["status"]["state"], "active", "{held}");

    // 3. Posted to the control service: an incident on blue, opened by that alert.
    let incident = wait(
        "an incident on blue in the control service",
        || {
            sys.control
                .incidents()
                .into_iter()
                .find(|i| i["stack"] == "blue")
        },
        || format!("{}\n{}", sys.explain(), sys.alertmanager.log()),
    );
    let posted = fault_at.elapsed();
    let id = incident["id"].as_u64().unwrap();
    let detail = &sys.control.get(&format!("/api/v1/incidents/{id}"))["incident"];
    let first = &detail["triggers"][0];
    assert_eq!(first["source"], "alertmanager", "{detail:#}");
    assert_eq!(first["signal"], BURN, "{detail:#}");
    assert_eq!(first["stack"], "blue", "{detail:#}");
    assert!(
        first["summary"]
            .as_str()
            .unwrap()
            .starts_with("blue fails "),
        "the alert's summary annotation: {detail:#}"
    );

    // Green served the same traffic without errors: no alert, no incident.
    assert!(burn_alerts(&sys.prometheus, "green", "firing").is_empty());
    assert!(burn_alerts(&sys.prometheus, "green", "pending").is_empty());
    assert!(
        sys.control
            .incidents()
            .iter()
            .all(|i| i["stack"] != "green"),
        "{:#?}",
        sys.control.incidents()
    );
    let sent = traffic.stop();
    println!(
        "ALERT {} {}: {}",
        alert["labels"]["alertname"], alert["labels"]["severity"], alert["annotations"]["summary"]
    );
    println!("INCIDENT {incident}");
    println!(
        "ALERTING fault_to_firing_ms={} fault_to_incident_ms={} requests={sent}",
        fired.as_millis(),
        posted.as_millis()
    );
}

/// The metric names a PromQL expression reads: identifiers that are not functions,
/// keywords, label names (in `{…}` or a `by (…)`-style list), strings, durations or
/// Grafana variables.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 24] = [
        // Aggregations may be followed by `by (…)` rather than `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
    ];
    const LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Drop strings, label matchers and ranges first.
    let mut plain = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        let close = match c {
            '"' | '\'' | '`' => c,
            '{' => '}',
            '[' => ']',
            _ => {
                plain.push(c);
                continue;
            }
        };
        for d in chars.by_ref() {
            if d == close {
                break;
            }
        }
        plain.push(' ');
    }
    let mut names = BTreeSet::new();
    let bytes = plain.as_bytes();
    let mut i = 0;
    let mut skip_list = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '$' {
            // A Grafana variable ($__rate_interval, $stack).
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            continue;
        }
        if c == '(' && skip_list {
            // The label list after by/without/on/…: skip to its `)`.
            while i < bytes.len() && bytes[i] != b')' {
                i += 1;
            }
            skip_list = false;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &plain[start..i];
            let next = plain[i..].trim_start().chars().next();
            let lower = word.to_ascii_lowercase();
            if LISTS.contains(&lower.as_str()) {
                skip_list = true;
            } else if next != Some('(') && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word.to_string());
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            // A number (1000, 0.001, 1e3).
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            continue;
        }
        if !c.is_whitespace() {
            skip_list = false;
        }
        i += 1;
    }
    names
}

/// Every PromQL expression in a Grafana dashboard: panel targets' `expr` (nested rows
/// included) and query variables.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains("label_values(") => {
                        // label_values(metric, label) → metric
                        let inner = s
                            .split_once("label_values(")
                            .map(|x| x.1)
                            .and_then(|x| x.split_once(','))
                            .map(|x| x.0.to_string());
                        out.extend(inner);
                    }
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            if let Some(m) = s
                                .split_once("label_values(")
                                .and_then(|x| x.1.split_once(','))
                            {
                                out.push(m.0.to_string());
                            }
                        }
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[test]
fn promql_names_are_read_from_expressions() {
    let names = promql_metric_names(
        r#"1000 * sum by (switchyard_stack, le) (rate(switchyard_stack_latency_ms_bucket{switchyard_stack=~"$stack", le="250"}[$__rate_interval])) / on (switchyard_stack) group_left () switchyard_stack:requests:rate5m > bool 0.5e1 or vector(0)"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "switchyard_stack_latency_ms_bucket".to_string(),
            "switchyard_stack:requests:rate5m".to_string(),
        ])
    );
}

#[test]
fn every_series_the_dashboard_queries_exists_and_metrics_pass_promtool() {
    let path = root().join("examples/grafana/switchyard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Panels and variables (annotations read ALERTS, which exists only while one fires).
    let mut queries = Vec::new();
    dashboard_queries(&dashboard["panels"], &mut queries);
    dashboard_queries(&dashboard["templating"], &mut queries);
    let wanted: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| promql_metric_names(q))
        .collect();
    // Not vacuous: the panels read the recorded SLIs, Envoy's and the control service's.
    for must in [
        "switchyard_stack:error_ratio:rate5m",
        "switchyard_stack:latency_ms:p99_rate5m",
        "switchyard_stack:kpi_per_1k_requests:rate5m",
        "switchyard_stack_affinity_hit",
        "switchyard_control_stack_effective_weight_percent",
    ] {
        assert!(wanted.contains(must), "{must} not queried: {wanted:?}");
    }

    let sys = System::start();
    let traffic = Traffic::start(sys.envoy.port, 4);
    sys.wait_scraped();
    wait(
        "every series the dashboard queries in Prometheus",
        || {
            let have: BTreeSet<String> = sys.prometheus.metric_names().into_iter().collect();
            wanted.is_subset(&have).then_some(())
        },
        || {
            let have: BTreeSet<String> = sys.prometheus.metric_names().into_iter().collect();
            format!(
                "missing: {:?}\n{}",
                wanted.difference(&have).collect::<Vec<_>>(),
                sys.explain()
            )
        },
    );
    let sent = traffic.stop();

    // The control service's exposition, after traffic (so the counters have samples),
    // passes Prometheus's linter and carries the KPI counter the rules read.
    let text = sys.control.get_text("/metrics");
    prometheus::check_metrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        text.lines()
            .any(|l| l
                .starts_with("switchyard_control_stack_kpi_total{stack=\"blue\",kpi=\"views\"} ")),
        "{text}"
    );
    for l in text.lines().filter(|l| l.contains("_total{")) {
        println!("METRICS {l}");
    }
    for q in [
        "switchyard_stack:requests:rate5m",
        "switchyard_stack:error_ratio:rate5m",
        "switchyard_stack:latency_ms:p99_rate5m",
        "switchyard_stack:kpi_per_1k_requests:rate5m",
    ] {
        for r in sys.prometheus.query(q) {
            println!("RECORDED {q}{} {}", r["metric"], r["value"][1]);
        }
    }
    println!("DASHBOARD series={} requests={sent}", wanted.len());
}
