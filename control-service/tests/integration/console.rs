//! The web console's server side through the real binaries: the embedded pages, the
//! JSON actions (each must change state exactly as the CLI/gRPC call for the same
//! operation does, and refuse bad input with a 400 naming the field), explain, and the
//! live event stream.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cli(server: &ServerProcess, args: &[&str]) -> String {
    let o: Output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--server", &server.grpc, "--actor", "carol"])
        .args(args)
        .output()
        .expect("run switchyard");
    assert!(
        o.status.success(),
        "switchyard {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One HTTP/1.1 exchange: status, headers and body text.
async fn http(method: &str, url: &str, body: &str) -> (u16, String, String) {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

async fn post(server: &ServerProcess, path: &str, body: Value) -> (u16, Value) {
    let (status, _, text) =
        http("POST", &format!("{}{path}", server.http), &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn post_raw(server: &ServerProcess, path: &str, body: &str) -> (u16, Value) {
    let (status, _, text) = http("POST", &format!("{}{path}", server.http), body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(server: &ServerProcess, path: &str) -> Value {
    http_json(&format!("{}{path}", server.http)).await
}

/// A 400 whose error names `field`.
fn assert_bad(reply: (u16, Value), field: &str) {
    let (status, body) = reply;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

fn start(dir: &Path) -> ServerProcess {
    let cfg = dir.join("control.toml");
    std::fs::write(
        &cfg,
        "store = \"memory\"\n[autopilot]\ntick_ms = 50\nincident_validate_ms = 0\n\
         incident_verify_ms = 300\nincident_freeze_ms = 600000\n",
    )
    .unwrap();
    let server = ServerProcess::spawn(&dir.join("data"), &["--config", cfg.to_str().unwrap()]);
    let p = dir.join("policy.json");
    std::fs::write(&p, policy("shop", &["blue", "green"])).unwrap();
    cli(&server, &["policy", "apply", p.to_str().unwrap()]);
    server
}

async fn stack(server: &ServerProcess, name: &str) -> Value {
    let v = get(server, "/api/v1/stacks").await;
    v["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_and_vendored_chart_library_are_served_from_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let (status, head, body) = http("GET", &format!("{}/console/", server.http), "").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(
        body.contains("app.js") && body.contains("uPlot.iife.min.js"),
        "{body}"
    );
    let (status, head, body) = http(
        "GET",
        &format!("{}/console/vendor/uplot/uPlot.iife.min.js", server.http),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("text/javascript"), "{head}");
    assert!(body.contains("uPlot"));
    let (status, head, _) = http("GET", &format!("{}/console", server.http), "").await;
    assert_eq!(status, 308, "{head}");
    let (status, _, body) =
        http("GET", &format!("{}/console/../Cargo.toml", server.http), "").await;
    assert_eq!(status, 404);
    let body: Value = serde_json::from_str(&body).expect("json error");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn stack_actions_go_through_the_same_guardrails_as_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());

    let (status, body) = post(
        &server,
        "/api/v1/stacks/blue/weight",
        json!({ "percent": 40, "actor": "dora", "reason": "console test" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    cli(
        &server,
        &["stacks", "weight", "green", "40", "--reason", "cli test"],
    );
    let (blue, green) = (stack(&server, "blue").await, stack(&server, "green").await);
    assert_eq!(blue["weight_percent"], 40);
    assert_eq!(green["weight_percent"], 40);
    assert_eq!(blue["changed_by"], "dora");
    assert_eq!(green["changed_by"], "carol");
    // The same kind of version, one each.
    let history = get(&server, "/api/v1/history?limit=2").await;
    let kinds: Vec<&str> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["stack_weight", "stack_weight"]);

    // Bad input: 400 naming the field, nothing changed.
    let before = get(&server, "/api/v1/status").await["current_version"].clone();
    assert_bad(
        post(
            &server,
            "/api/v1/stacks/blue/weight",
            json!({ "percent": "x" }),
        )
        .await,
        "percent",
    );
    assert_bad(
        post(&server, "/api/v1/stacks/blue/weight", json!({})).await,
        "percent",
    );
    assert_bad(
        post(
            &server,
            "/api/v1/stacks/blue/weight",
            json!({ "percnt": 5 }),
        )
        .await,
        "percnt",
    );
    assert_bad(
        post(&server, "/api/v1/stacks/blue/melt", json!({})).await,
        "op",
    );
    assert_bad(
        post_raw(&server, "/api/v1/stacks/blue/drain", "{not json").await,
        "$",
    );
    // A guardrail of the control core: out of range.
    let (status, body) = post(
        &server,
        "/api/v1/stacks/blue/weight",
        json!({ "percent": 101 }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&server, "/api/v1/stacks/purple/drain", json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        get(&server, "/api/v1/status").await["current_version"],
        before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_commands_match_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    cli(
        &server,
        &[
            "rollout",
            "start",
            "--stack",
            "green",
            "--stable",
            "blue",
            "--plan",
            "10,50,100",
            "--step",
            "10m",
            "--warmup",
            "1m",
            "--id",
            "r1",
        ],
    );
    let (status, body) = post(
        &server,
        "/api/v1/rollouts/r1/pause",
        json!({ "actor": "dora" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rollout"]["phase"]["state"], "paused", "{body}");
    assert_eq!(
        body["rollout"]["phase"]["reason"]["actor"], "dora",
        "{body}"
    );
    let state = |v: Value| v["rollout"]["phase"]["state"].clone();
    assert_eq!(state(get(&server, "/api/v1/rollouts/r1").await), "paused");
    // Pausing twice is refused by the brain, as from the CLI.
    let (status, body) = post(&server, "/api/v1/rollouts/r1/pause", json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "failed_precondition");
    cli(&server, &["rollout", "resume", "r1"]);
    assert_ne!(state(get(&server, "/api/v1/rollouts/r1").await), "paused");

    assert_bad(
        post(&server, "/api/v1/rollouts/r1/explode", json!({})).await,
        "action",
    );
    assert_bad(
        post(&server, "/api/v1/rollouts/r1/pause", json!({ "actor": 7 })).await,
        "actor",
    );
    let (status, _) = post(&server, "/api/v1/rollouts/nope/pause", json!({})).await;
    assert_eq!(status, 404);

    let (status, body) = post(
        &server,
        "/api/v1/rollouts/r1/abort",
        json!({ "actor": "dora" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let audit = get(&server, "/api/v1/audit?limit=50").await.to_string();
    assert!(audit.contains("\"dora\""), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn incident_approval_and_rejection_from_the_console() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let alert = |fp: &str, stack: &str| {
        json!({
            "version": "4", "status": "firing", "receiver": "switchyard", "groupKey": "{}:{}",
            "alerts": [{ "status": "firing",
                "labels": { "alertname": "Latency", "stack": stack, "severity": "page" },
                "annotations": { "summary": "slow" },
                "startsAt": "2026-01-01T00:00:00Z", "fingerprint": fp }],
        })
    };
    let (status, body) = post(&server, "/api/v1/alerts", alert("fp-1", "blue")).await;
    assert_eq!(status, 200, "{body}");
    let phase = |v: Value| {
        v["incident"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut awaiting = false;
    for _ in 0..400 {
        if phase(get(&server, "/api/v1/incidents/1").await) == "awaiting_approval" {
            awaiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(awaiting, "incident 1 never awaited approval");

    assert_bad(
        post(&server, "/api/v1/incidents/1/reject", json!({})).await,
        "comment",
    );
    assert_bad(
        post(&server, "/api/v1/incidents/x/approve", json!({})).await,
        "id",
    );
    assert_bad(
        post(&server, "/api/v1/incidents/1/maybe", json!({})).await,
        "decision",
    );
    assert_eq!(
        phase(get(&server, "/api/v1/incidents/1").await),
        "awaiting_approval"
    );

    let (status, body) = post(
        &server,
        "/api/v1/incidents/1/approve",
        json!({ "comment": "looks right", "actor": "dora" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The approved shift moved blue's traffic, as an approval from the CLI does.
    assert!(
        stack(&server, "blue").await["weight_percent"]
            .as_u64()
            .unwrap()
            < 100
    );
    let (status, body) = post(&server, "/api/v1/incidents/1/approve", json!({})).await;
    assert_eq!(status, 409, "approving twice: {body}");
    let audit = get(&server, "/api/v1/audit?limit=50").await.to_string();
    assert!(
        audit.contains("dora") && audit.contains("looks right"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_validate_apply_and_diff() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let (status, body) = post(
        &server,
        "/api/v1/policy/validate",
        json!({ "policy": INVALID }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], false);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(fields.iter().any(|f| f.contains("stacks[1]")), "{fields:?}");

    let next: Value = serde_json::from_str(&policy("shop2", &["blue", "green", "canary"])).unwrap();
    let (status, body) = post(
        &server,
        "/api/v1/policy/validate",
        json!({ "policy": next }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["valid"], true, "{body}");
    assert_eq!(body["stacks"], json!(["blue", "green", "canary"]));

    // An invalid apply changes nothing and names the problems.
    let (status, body) = post(
        &server,
        "/api/v1/policy/apply",
        json!({ "policy": INVALID }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_policy");
    assert!(
        body["error"]["problems"].as_array().unwrap().len() >= 3,
        "{body}"
    );
    assert_bad(
        post(&server, "/api/v1/policy/apply", json!({ "comment": "x" })).await,
        "policy",
    );
    assert_bad(
        post(
            &server,
            "/api/v1/policy/apply",
            json!({ "policy": next, "expected_version": "one" }),
        )
        .await,
        "expected_version",
    );
    // A stale expected version is refused (compare-and-set), as `--expect-version`.
    let (status, _) = post(
        &server,
        "/api/v1/policy/apply",
        json!({ "policy": next, "expected_version": 99 }),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(get(&server, "/api/v1/status").await["current_version"], 1);

    let (status, body) = post(
        &server,
        "/api/v1/policy/apply",
        json!({ "policy": next, "actor": "dora", "comment": "add canary", "expected_version": 1 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    let info = &get(&server, "/api/v1/policy").await["info"];
    assert_eq!(info["actor"], "dora");
    assert_eq!(info["comment"], "add canary");

    let diff = get(&server, "/api/v1/policy/diff?from=1&to=2").await;
    assert_eq!(diff["changed"], true);
    let changed: Vec<String> = diff["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["op"] != "same")
        .map(|l| {
            format!(
                "{} {}",
                l["op"].as_str().unwrap(),
                l["text"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        changed
            .iter()
            .any(|l| l.starts_with("added") && l.contains("canary")),
        "{changed:?}"
    );
    assert!(
        changed
            .iter()
            .any(|l| l.starts_with("removed") && l.contains("\"shop\"")),
        "{changed:?}"
    );
    let (status, _, body) = http(
        "GET",
        &format!("{}/api/v1/policy/diff?from=x", server.http),
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // The split over time: one point per version, shares of the default route.
    let split = get(&server, "/api/v1/split").await;
    let points = split["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0]["shares"]["blue"], 0.5);
    let third = points[1]["shares"]["canary"].as_f64().unwrap();
    assert!((third - 1.0 / 3.0).abs() < 1e-9, "{split}");
}

#[tokio::test(flavor = "multi_thread")]
async fn whoami_without_authentication_allows_every_action() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let v = get(&server, "/api/v1/whoami").await;
    assert_eq!(v["authenticated"], false, "{v}");
    assert_eq!(v["actions"]["incident_decision"], true, "{v}");
    assert_eq!(v["actions"]["stack_op"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_runs_the_filter_router_on_the_state_in_force() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    cli(
        &server,
        &["stacks", "unhealthy", "blue", "--reason", "db down"],
    );
    let (status, body) = post(
        &server,
        "/api/v1/explain",
        json!({ "headers": { ":path": "/cart", "user-agent": "curl/8" }, "cookie": "a=b", "source": "10.0.0.1" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"]["kind"], "stack", "{body}");
    assert_eq!(body["decision"]["stack"], "green", "{body}");
    assert_eq!(body["rule"]["default"], true);
    assert_eq!(body["classification"]["path"], "/cart");
    let blue = body["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["stack"] == "blue")
        .cloned()
        .unwrap();
    assert_eq!(blue["eligible"], false);
    assert_eq!(blue["why_not"], "unhealthy");

    // With both down, the route's local reply.
    cli(
        &server,
        &["stacks", "unhealthy", "green", "--reason", "db down"],
    );
    let (_, body) = post(
        &server,
        "/api/v1/explain",
        json!({ "headers": [[":path", "/"]] }),
    )
    .await;
    assert_eq!(body["decision"]["kind"], "local_reply", "{body}");

    assert_bad(
        post(&server, "/api/v1/explain", json!({ "source": "not-an-ip" })).await,
        "source",
    );
    assert_bad(
        post(
            &server,
            "/api/v1/explain",
            json!({ "headers": { "x-a": 1 } }),
        )
        .await,
        "headers.x-a",
    );
    assert_bad(
        post(&server, "/api/v1/explain", json!({ "header": {} })).await,
        "header",
    );
}

/// The cookie keys both the test's "Envoy" (the filter crate's `Keyring`, as Envoy's
/// workers use it) and the control service hold.
const KEYS: &str = "k2=explain-test-secret-0002,k1=explain-test-secret-0001";

#[tokio::test(flavor = "multi_thread")]
async fn explain_verifies_the_affinity_cookie_with_the_envoys_keys() {
    use switchyard_filter::affinity::Keyring;
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn_with_env(
        &tmp.path().join("data"),
        &[],
        &[("SWITCHYARD_AFFINITY_KEYS", KEYS)],
    );
    let p = tmp.path().join("policy.json");
    std::fs::write(
        &p,
        r#"{"name":"sticky","stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"}],
            "affinity":{"epoch":3},
            "default":{"targets":[{"stack":"blue"},{"stack":"green"}],"affinity":true}}"#,
    )
    .unwrap();
    cli(&server, &["policy", "apply", p.to_str().unwrap()]);
    let keys = Keyring::parse(KEYS).unwrap();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let explain = |cookie: String| {
        let server = &server;
        async move {
            let (status, body) = post(
                server,
                "/api/v1/explain",
                json!({ "headers": [[":path", "/"]], "cookie": cookie }),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };

    // A genuine cookie for green: verified, and the decision keeps the user there.
    let green = keys.sign("green", 3, now_s + 600);
    let body = explain(format!("other=1; sy_aff={green}")).await;
    assert_eq!(body["affinity"]["verified"], true, "{body}");
    assert_eq!(body["affinity"]["verdict"], "valid", "{body}");
    assert_eq!(body["affinity"]["stack"], "green", "{body}");
    assert_eq!(body["affinity"]["event"], "hit", "{body}");
    assert_eq!(body["decision"]["stack"], "green", "{body}");
    assert_eq!(body["decision"]["how"], "affinity", "{body}");

    // The same cookie while green is evacuated: genuine, but the user moves.
    cli(
        &server,
        &["stacks", "evacuate", "green", "--reason", "test"],
    );
    let body = explain(format!("sy_aff={green}")).await;
    assert_eq!(body["affinity"]["verdict"], "valid", "{body}");
    assert_eq!(body["affinity"]["event"], "miss", "{body}");
    assert_eq!(body["decision"]["stack"], "blue", "{body}");
    let text = body["affinity"]["explanation"].as_str().unwrap();
    assert!(
        text.contains("pins green") && text.contains("evacuating") && text.contains("reassigned"),
        "{text}"
    );
    cli(&server, &["stacks", "undrain", "green"]);

    // Forged, expired, from another epoch, signed with a key we do not hold.
    // One character of the signature changed (never the last: its low bits must be 0).
    let mut forged = green.clone();
    let at = forged.len() - 5;
    let flipped = if &forged[at..=at] == "A" { "B" } else { "A" };
    forged.replace_range(at..=at, flipped);
    let other = Keyring::parse("k9=some-other-secret-9999").unwrap();
    for (cookie, verdict) in [
        (forged, "forged"),
        (keys.sign("green", 3, now_s.saturating_sub(10)), "expired"),
        (keys.sign("green", 2, now_s + 600), "stale"),
        (other.sign("green", 3, now_s + 600), "unknown_key"),
    ] {
        let body = explain(format!("sy_aff={cookie}")).await;
        assert_eq!(body["affinity"]["verdict"], verdict, "{cookie}: {body}");
        assert_ne!(body["decision"]["how"], "affinity", "{body}");
    }
    // Twice: hostile.
    let body = explain(format!("sy_aff={green}; sy_aff={green}")).await;
    assert_eq!(body["affinity"]["cookie"], "repeated", "{body}");
    // None: a new visitor.
    let body = explain(String::new()).await;
    assert_eq!(body["affinity"]["cookie"], "absent", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_without_keys_reports_the_cookie_unverified() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let (status, body) = post(
        &server,
        "/api/v1/explain",
        json!({ "cookie": "sy_aff=v1.k1.green.1.99999999999.AAAAAAAAAAAAAAAAAAAAAA" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["affinity"]["verified"], false, "{body}");
    assert_eq!(body["affinity"]["claims_stack"], "green", "{body}");
    assert_ne!(body["decision"]["how"], "affinity", "never trusted: {body}");
    assert!(
        body["affinity"]["explanation"]
            .as_str()
            .unwrap()
            .contains("SWITCHYARD_AFFINITY_KEYS"),
        "{body}"
    );
}

/// An open `GET /api/v1/stream` read as raw bytes.
struct Stream {
    s: tokio::net::TcpStream,
    seen: String,
}

impl Stream {
    async fn open(server: &ServerProcess) -> Stream {
        let host = server.http.strip_prefix("http://").unwrap().to_string();
        let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
        let req = format!(
            "GET /api/v1/stream HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut st = Stream {
            s,
            seen: String::new(),
        };
        st.read_until("event: hello").await;
        assert!(
            st.seen
                .to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{}",
            st.seen
        );
        st
    }

    /// Read until `want` has arrived (after what was already read).
    async fn read_until(&mut self, want: &str) {
        let mut buf = [0u8; 4096];
        while !self.seen.contains(want) {
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {want:?} on the stream; got {}", self.seen))
                .unwrap();
            assert!(n > 0, "stream closed; got {}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_announces_a_cli_change_to_every_open_console() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let mut a = Stream::open(&server).await;
    let mut b = Stream::open(&server).await;
    cli(&server, &["stacks", "weight", "blue", "30"]);
    for s in [&mut a, &mut b] {
        s.read_until("event: version\ndata: {\"version\":2}").await;
        s.read_until("event: audit").await;
    }
    // One console leaves; the other still hears the brain (the shared poller keeps
    // running while any stream listens).
    drop(a);
    cli(
        &server,
        &[
            "rollout", "start", "--stack", "green", "--stable", "blue", "--plan", "10,100",
            "--step", "10m", "--id", "r9",
        ],
    );
    b.read_until("event: rollouts").await;
    // A console opened later starts the poller again if it had stopped.
    drop(b);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut c = Stream::open(&server).await;
    cli(&server, &["rollout", "pause", "r9"]);
    c.read_until("event: rollouts").await;
}
