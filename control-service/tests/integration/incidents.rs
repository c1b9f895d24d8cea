//! The incident workflow, events and the Alertmanager webhook through the real
//! `switchyard-control` binary, its HTTP API and the `switchyard` CLI.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn cli(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--server")
        .arg(server)
        .args(["--actor", "carol"])
        .args(args)
        .output()
        .expect("run switchyard")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_ok(o: Output) -> Value {
    serde_json::from_str(&ok(o)).expect("json")
}

/// HTTP/1.1 request with a JSON body: status and parsed body.
async fn http_send(method: &str, url: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A server with a fast brain: ticks every 50 ms, re-checks at once, verifies after
/// 300 ms, freezes for 10 minutes.
fn start(dir: &Path) -> ServerProcess {
    start_on(dir, "memory")
}

fn start_on(dir: &Path, store: &str) -> ServerProcess {
    let cfg = dir.join("control.toml");
    std::fs::write(
        &cfg,
        format!(
            "store = \"{store}\"\n[autopilot]\ntick_ms = 50\nincident_validate_ms = 0\n\
             incident_verify_ms = 300\nincident_freeze_ms = 600000\n"
        ),
    )
    .unwrap();
    let data = dir.join("data");
    ServerProcess::spawn(&data, &["--config", cfg.to_str().unwrap()])
}

async fn apply_policy(server: &ServerProcess, dir: &Path) {
    let p = dir.join("policy.json");
    std::fs::write(&p, policy("shop", &["blue", "green"])).unwrap();
    ok(cli(&server.grpc, &["policy", "apply", p.to_str().unwrap()]));
}

fn alert(name: &str, fingerprint: &str, stack: &str) -> String {
    json!({
        "version": "4",
        "status": "firing",
        "receiver": "switchyard",
        "groupKey": "{}:{}",
        "alerts": [{
            "status": "firing",
            "labels": { "alertname": name, "stack": stack, "severity": "page" },
            "annotations": { "summary": format!("{name} on {stack}") },
            "startsAt": "2026-01-01T00:00:00Z",
            "fingerprint": fingerprint,
        }],
    })
    .to_string()
}

async fn weight(server: &ServerProcess, stack: &str) -> u64 {
    let v = http_json(&format!("{}/api/v1/stacks", server.http)).await;
    v["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stack)
        .unwrap()["weight_percent"]
        .as_u64()
        .unwrap()
}

async fn phase(server: &ServerProcess, id: u64) -> String {
    let v = http_json(&format!("{}/api/v1/incidents/{id}", server.http)).await;
    v["incident"]["phase"].as_str().unwrap().to_string()
}

async fn wait_phase(server: &ServerProcess, id: u64, want: &str) {
    for _ in 0..400 {
        if phase(server, id).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "incident {id} never reached {want} (is {})",
        phase(server, id).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_add_list_remove_and_bad_input_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let g = server.grpc.clone();
    let e = json_ok(cli(
        &g,
        &[
            "--json",
            "events",
            "add",
            "--kind",
            "campaign",
            "--scope",
            "eu",
            "--from",
            "now",
            "--to",
            "+2h",
            "--description",
            "black friday",
            "--id",
            "bf",
        ],
    ));
    assert_eq!(e["id"], "bf");
    assert_eq!(e["scope"], "segment:eu");
    assert_eq!(e["actor"], "carol");
    let listed = ok(cli(&g, &["events", "list"]));
    assert!(
        listed.contains("bf") && listed.contains("black friday"),
        "{listed}"
    );

    // Bad input through the CLI: clear error, exit 1, nothing registered.
    let o = cli(
        &g,
        &[
            "events", "add", "--kind", "party", "--scope", "eu", "--from", "now", "--to", "+1h",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("kind"), "{err}");
    let o = cli(
        &g,
        &[
            "events",
            "add",
            "--kind",
            "deployment",
            "--scope",
            "all",
            "--from",
            "+2h",
            "--to",
            "now",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "to before from");
    // …and through HTTP: every problem with its field path.
    let (status, body) = http_send(
        "POST",
        &format!("{}/api/v1/events", server.http),
        r#"{"kind":"nope","scope":{"planet":"mars"},"from":"yesterday","actor":"x"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_argument");
    let fields: Vec<&str> = body["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    for f in ["kind", "scope", "from", "to"] {
        assert!(fields.contains(&f), "{f} not named: {body}");
    }
    let (status, body) = http_send("POST", &format!("{}/api/v1/events", server.http), "{").await;
    assert_eq!(status, 400, "{body}");
    let all = http_json(&format!("{}/api/v1/events", server.http)).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 1, "{all}");

    // A good event through HTTP.
    let (status, body) = http_send(
        "POST",
        &format!("{}/api/v1/events", server.http),
        r#"{"id":"deploy-7","kind":"deployment","scope":{"stacks":["green"]},"from":1000,"to":2000,"actor":"ci"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = http_send(
        "POST",
        &format!("{}/api/v1/events", server.http),
        r#"{"id":"deploy-7","kind":"deployment","scope":"all","from":1000,"to":2000,"actor":"ci"}"#,
    )
    .await;
    assert_eq!(status, 409, "duplicate id");

    ok(cli(&g, &["events", "rm", "bf"]));
    let o = cli(&g, &["events", "rm", "bf"]);
    assert_eq!(o.status.code(), Some(1), "removing twice");
    let left = json_ok(cli(&g, &["--json", "events", "list"]));
    let ids: Vec<&str> = left["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["deploy-7"]);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_opens_an_incident_approval_moves_traffic_freeze_refuses_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    apply_policy(&server, tmp.path()).await;
    let g = server.grpc.clone();
    let alerts = format!("{}/api/v1/alerts", server.http);

    // Malformed webhooks: rejected, nothing opened.
    for bad in [
        "not json",
        r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"stack":"blue"}}]}"#,
        r#"{"version":"3","status":"firing","alerts":[]}"#,
    ] {
        let (status, body) = http_send("POST", &alerts, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("webhook rejected"),
            "{body}"
        );
    }
    let none = http_json(&format!("{}/api/v1/incidents", server.http)).await;
    assert_eq!(none["incidents"], json!([]));

    // A firing alert on blue opens incident 1; it proposes moving blue's traffic.
    let (status, body) = http_send("POST", &alerts, &alert("BlueLatency", "fp-1", "blue")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["incidents"], json!([1]));
    wait_phase(&server, 1, "awaiting_approval").await;
    let shown = json_ok(cli(&g, &["--json", "incidents", "show", "1"]));
    let inc = &shown["incident"];
    assert_eq!(inc["stack"], "blue");
    assert_eq!(inc["evidence"]["delta_stack"], "blue");
    assert_eq!(inc["evidence"]["proposed"]["kind"], "shift");
    assert_eq!(inc["evidence"]["proposed"]["from"], "blue");
    // Nothing moves before approval.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(weight(&server, "blue").await, 100);
    assert_eq!(weight(&server, "green").await, 100);

    let list = ok(cli(&g, &["incidents", "list"]));
    assert!(
        list.contains("awaiting_approval") && list.contains("blue"),
        "{list}"
    );

    // Approve: blue's operator factor halves at once, as one version.
    let approved = json_ok(cli(
        &g,
        &["--json", "incidents", "approve", "1", "--comment", "go"],
    ));
    assert_eq!(approved["incident"]["approvals"][0]["actor"], "carol");
    assert_eq!(weight(&server, "blue").await, 50);
    assert_eq!(weight(&server, "green").await, 100);
    // No findings on blue: it verifies as recovered and resolves.
    wait_phase(&server, 1, "resolved").await;

    // A second alert on blue: a new incident, whose approval the freeze window refuses.
    let (status, body) = http_send("POST", &alerts, &alert("BlueErrors", "fp-2", "blue")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["incidents"], json!([2]));
    wait_phase(&server, 2, "awaiting_approval").await;
    let o = cli(&g, &["incidents", "approve", "2", "--comment", "again"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("frozen") && err.contains("blue"), "{err}");
    assert_eq!(
        weight(&server, "blue").await,
        50,
        "the refused action moved traffic"
    );
    assert_eq!(phase(&server, 2).await, "awaiting_approval");

    // Reject needs a comment; with one, the incident closes.
    let o = cli(&g, &["incidents", "reject", "2"]);
    assert_eq!(o.status.code(), Some(2), "--comment is required");
    let rejected = json_ok(cli(
        &g,
        &[
            "--json",
            "incidents",
            "reject",
            "2",
            "--comment",
            "known flake",
        ],
    ));
    assert_eq!(rejected["summary"]["phase"], "rejected");
    let o = cli(&g, &["incidents", "approve", "2"]);
    assert_eq!(o.status.code(), Some(1), "approving a rejected incident");
    let o = cli(&g, &["incidents", "show", "99"]);
    assert_eq!(o.status.code(), Some(1));

    // Every decision is in the audit chain, which verifies.
    let audit = http_json(&format!("{}/api/v1/audit?limit=200", server.http)).await;
    let kinds: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["subject"].as_str().unwrap_or_default().to_string(),
                e["kind"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (subject, kind) in [
        ("incident/1", "recommendation"),
        ("incident/1", "approval"),
        ("incident/1", "execution"),
        ("incident/2", "refusal"),
        ("incident/2", "rejection"),
    ] {
        assert!(
            kinds.iter().any(|(s, k)| s == subject && k == kind),
            "{subject} {kind} not audited: {kinds:?}"
        );
    }
    let v = http_json(&format!("{}/api/v1/audit/verify", server.http)).await;
    assert_eq!(v["ok"], true, "{v}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_service_resumes_an_open_incident() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_on(tmp.path(), "redb");
    apply_policy(&server, tmp.path()).await;
    let alerts = format!("{}/api/v1/alerts", server.http);
    let (status, body) = http_send("POST", &alerts, &alert("GreenDown", "fp-g", "green")).await;
    assert_eq!(status, 200, "{body}");
    wait_phase(&server, 1, "awaiting_approval").await;
    let before = http_json(&format!("{}/api/v1/incidents/1", server.http)).await;
    assert!(server.terminate().success());

    let server = start_on(tmp.path(), "redb");
    let after = http_json(&format!("{}/api/v1/incidents/1", server.http)).await;
    assert_eq!(after, before, "the incident came back as it was");
    ok(cli(
        &server.grpc,
        &["incidents", "approve", "1", "--comment", "after restart"],
    ));
    assert_eq!(weight(&server, "green").await, 50);
    wait_phase(&server, 1, "resolved").await;
    server.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_action_that_cannot_run_says_so_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    apply_policy(&server, tmp.path()).await;
    // An alert about a stack the policy does not have: the proposal cannot be applied.
    let alerts = format!("{}/api/v1/alerts", server.http);
    let (status, body) = http_send("POST", &alerts, &alert("Old", "fp-p", "purple")).await;
    assert_eq!(status, 200, "{body}");
    wait_phase(&server, 1, "awaiting_approval").await;
    let o = cli(&server.grpc, &["incidents", "approve", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not carried out") && err.contains("purple"),
        "{err}"
    );
    assert_eq!(phase(&server, 1).await, "awaiting_approval");
    let v = http_json(&format!("{}/api/v1/stacks", server.http)).await;
    assert_eq!(v["version"], 1, "nothing changed: {v}");
    server.terminate();
}
