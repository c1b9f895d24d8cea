//! The `switchyard` CLI against the real `switchyard-control` binary.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

fn cli(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--server")
        .arg(server)
        .args(["--actor", "carol"])
        .args(args)
        .output()
        .expect("run switchyard")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().to_string()
}

#[test]
fn validate_offline_needs_no_server() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write(tmp.path(), "good.json", &policy("p", &["blue", "green"]));
    let bad = write(tmp.path(), "bad.json", INVALID);
    let unreachable = "http://127.0.0.1:9";
    let out = ok(cli(
        unreachable,
        &["policy", "validate", "--offline", &good],
    ));
    assert_eq!(out.trim(), "valid: 2 stack(s): blue, green");

    let o = cli(unreachable, &["policy", "validate", "--offline", &bad]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("invalid policy (3 problems):"), "{err}");
    for path in [
        "stacks[1].name",
        "stacks[1].region",
        "default.targets[0].stack",
    ] {
        assert!(err.contains(&format!("  {path}: ")), "{path} in {err}");
    }
    let o = cli(
        unreachable,
        &["--json", "policy", "validate", "--offline", &bad],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 3);
}

#[test]
fn unreachable_server_exits_3() {
    let o = cli("http://127.0.0.1:9", &["--timeout", "2", "status"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot reach the control service"));
}

#[test]
fn operator_workflow_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let s = server.grpc.as_str();
    let p1 = write(tmp.path(), "p1.json", &policy("one", &["blue", "green"]));
    let p2 = write(tmp.path(), "p2.json", &policy("two", &["blue", "green"]));
    let bad = write(tmp.path(), "bad.json", INVALID);

    let out = ok(cli(s, &["policy", "validate", &p1]));
    assert!(out.contains("valid: 2 stack(s)"));
    let out = ok(cli(s, &["policy", "apply", &p1, "--comment", "first"]));
    assert!(out.starts_with("version 1: policy one ["), "{out}");
    let out = ok(cli(s, &["policy", "apply", &p1]));
    assert_eq!(out.trim(), "unchanged: version 1 already has this policy");
    ok(cli(s, &["policy", "apply", &p2]));

    // Invalid: every field path, exit 1, nothing changes.
    let o = cli(s, &["policy", "apply", &bad]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("  default.targets[0].stack: unknown stack"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("  stacks[1].region: "));

    // get round-trips the document.
    let o = cli(s, &["policy", "get"]);
    assert_eq!(stdout(&o).trim(), policy("two", &["blue", "green"]));
    assert!(stderr(&o).starts_with("# version 2 (policy set at v2: two ["));
    let v: serde_json::Value =
        serde_json::from_str(&ok(cli(s, &["--json", "policy", "get", "--version", "1"]))).unwrap();
    assert_eq!(v["policy"]["name"], "one");
    assert_eq!(v["info"]["version"], 1);

    let out = ok(cli(
        s,
        &["stacks", "weight", "green", "20", "--reason", "canary"],
    ));
    assert!(
        out.starts_with("version 3: green weight 100% -> 20%: canary"),
        "{out}"
    );
    ok(cli(s, &["stacks", "drain", "blue", "--reason", "patching"]));
    ok(cli(
        s,
        &["stacks", "unhealthy", "green", "--reason", "5xx burst"],
    ));
    let out = ok(cli(s, &["stacks", "list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("STACK  REGION  POLICY  FACTOR  SHARE  STATE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("blue ")
            && lines[1].contains("draining")
            && lines[1].contains("patching"),
        "{out}"
    );
    assert!(
        lines[2].contains("20%")
            && lines[2].contains("unhealthy")
            && lines[2].contains("5xx burst"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(cli(s, &["--json", "stacks", "list"]))).unwrap();
    assert_eq!(v["stacks"][1]["weight_percent"], 20);
    assert_eq!(v["stacks"][1]["effective_weight_percent"], 0);
    ok(cli(s, &["stacks", "healthy", "green"]));
    ok(cli(s, &["stacks", "undrain", "blue"]));
    ok(cli(
        s,
        &["stacks", "deregister", "blue", "--reason", "rebuild"],
    ));
    ok(cli(
        s,
        &[
            "stacks",
            "register",
            "blue",
            "--endpoint",
            "http://blue.internal:8080",
        ],
    ));

    let o = cli(s, &["stacks", "drain", "purple"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not found: stack \"purple\" is not in the current policy"),
        "{}",
        stderr(&o)
    );

    let out = ok(cli(
        s,
        &["policy", "rollback", "1", "--comment", "back to one"],
    ));
    assert!(out.starts_with("version 10: policy one ["), "{out}");
    assert!(out.contains("rolled back to the policy of v1"), "{out}");

    let out = ok(cli(s, &["policy", "history", "--limit", "3"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].contains("VERSION") && lines[0].contains("SUMMARY"));
    assert!(
        lines[1].starts_with("*  10 ")
            && lines[1].contains("policy_rollback")
            && lines[1].contains("carol"),
        "{out}"
    );
    assert!(lines[1].ends_with("— back to one"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(cli(s, &["--json", "policy", "history"]))).unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len(), 10);

    let out = ok(cli(s, &["status"]));
    assert!(
        out.starts_with("version 10 · 0 of 0 connected node(s) on it · store redb:"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(cli(s, &["--json", "status"]))).unwrap();
    assert_eq!(v["current_version"], 10);

    // Stdin works for apply.
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--server", s, "policy", "apply", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(policy("three", &["blue"]).as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        stdout(&o).contains("version 11: policy three"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("stacks removed: green"));

    // `watch` follows the stream like an Envoy and acknowledges; status shows the node.
    let out = ok(cli(s, &["watch", "--node-id", "cli-node", "--count", "1"]));
    assert!(out.starts_with("v11  "), "{out}");
    assert!(out.contains("stacks: blue 100%"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&ok(cli(s, &["--json", "status"]))).unwrap();
    assert_eq!(v["nodes"][0]["node_id"], "cli-node");
    assert_eq!(v["nodes"][0]["sent_version"], 11);
    let out = ok(cli(s, &["status"]));
    assert!(out.contains("NODE") && out.contains("cli-node"), "{out}");
    drop(server);
}

#[test]
fn drain_with_deadline_evacuate_and_undrain_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let s = server.grpc.as_str();
    let p = write(tmp.path(), "p.json", &policy("p", &["blue", "green"]));
    ok(cli(s, &["policy", "apply", &p]));

    let out = ok(cli(
        s,
        &[
            "stacks",
            "drain",
            "blue",
            "--deadline",
            "1h30m",
            "--reason",
            "patching",
        ],
    ));
    assert!(
        out.starts_with("version 2: blue draining, sticky sessions for at most 5400s: patching"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(cli(s, &["--json", "stacks", "list"]))).unwrap();
    let deadline = v["stacks"][0]["drain_deadline_unix_ms"]
        .as_str()
        .map(|d| d.parse::<u64>().unwrap())
        .or_else(|| v["stacks"][0]["drain_deadline_unix_ms"].as_u64())
        .unwrap();
    let now = switchyard_control::model::now_unix_ms();
    assert!(
        deadline > now + 5_300_000 && deadline <= now + 5_400_000,
        "{v}"
    );
    let until = switchyard_filter::schedule::format_utc((deadline / 1000) as i64);
    let out = ok(cli(s, &["stacks", "list"]));
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .contains(&format!("draining (sticky until {until} UTC)")),
        "{out}"
    );

    let out = ok(cli(s, &["stacks", "drain", "blue"]));
    assert!(
        out.contains("blue draining, sticky sessions until their cookies expire"),
        "{out}"
    );
    let out = ok(cli(s, &["stacks", "list"]));
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .contains("draining (sticky until cookies expire)"),
        "{out}"
    );

    let out = ok(cli(
        s,
        &["stacks", "evacuate", "green", "--reason", "rolled back"],
    ));
    assert!(
        out.starts_with("version 4: green evacuating: rolled back"),
        "{out}"
    );
    let out = ok(cli(s, &["stacks", "list"]));
    let green = out.lines().nth(2).unwrap();
    assert!(
        green.contains("evacuating") && green.contains("rolled back"),
        "{out}"
    );
    let out = ok(cli(s, &["policy", "history", "--limit", "1"]));
    assert!(out.contains("stack_evacuate"), "{out}");

    // A deadline that is not a duration is a usage error; nothing changes.
    let o = cli(s, &["stacks", "drain", "green", "--deadline", "soon"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is not a duration"), "{}", stderr(&o));

    // Past its deadline a drain shows as what it has become (waited for by polling).
    ok(cli(s, &["stacks", "drain", "green", "--deadline", "1s"]));
    let start = std::time::Instant::now();
    loop {
        let out = ok(cli(s, &["stacks", "list"]));
        if out
            .lines()
            .nth(2)
            .unwrap()
            .contains("draining (deadline passed: evacuated)")
        {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    ok(cli(s, &["stacks", "undrain", "green"]));
    ok(cli(s, &["stacks", "undrain", "blue"]));
    let out = ok(cli(s, &["stacks", "list"]));
    for line in out.lines().skip(1) {
        assert!(line.contains("serving"), "{out}");
    }
    drop(server);
}

#[test]
fn server_accepts_host_port_and_rejects_other_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let bare = server.grpc.trim_start_matches("http://");
    assert!(!bare.contains("://"), "{bare}");
    let v: serde_json::Value = serde_json::from_str(&ok(cli(bare, &["--json", "status"]))).unwrap();
    assert_eq!(v["current_version"], 0);
    ok(cli(&server.grpc, &["status"]));

    let o = cli("ftp://127.0.0.1:1", &["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("use host:port (e.g. 127.0.0.1:18000)"),
        "{}",
        stderr(&o)
    );
    drop(server);
}

/// `--json` output of a failed command: exactly one JSON object on stdout, nothing on
/// stderr, with the documented `code`; the exit code is the one without `--json`.
fn json_failure(o: &Output, exit: i32, code: &str) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(exit), "{}{}", stdout(o), stderr(o));
    assert_eq!(stderr(o), "", "nothing on stderr with --json");
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)));
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["exit_code"], exit, "{v}");
    assert!(!v["message"].as_str().unwrap().is_empty(), "{v}");
    v
}

#[test]
fn json_covers_every_failure_with_a_stable_code() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let s = server.grpc.as_str();
    let j = |args: &[&str]| cli(s, &[&["--json"], args].concat());

    json_failure(&j(&["stacks", "drain", "blue"]), 1, "failed_precondition");
    let p = write(tmp.path(), "p.json", &policy("p", &["blue", "green"]));
    ok(cli(s, &["policy", "apply", &p]));
    let v = json_failure(&j(&["stacks", "drain", "purple"]), 1, "not_found");
    assert!(v["message"].as_str().unwrap().contains("purple"), "{v}");
    json_failure(&j(&["policy", "get", "--version", "99"]), 1, "not_found");
    json_failure(
        &j(&["policy", "apply", &p, "--expect-version", "7"]),
        1,
        "aborted",
    );
    let bad = write(tmp.path(), "bad.json", INVALID);
    let v = json_failure(&j(&["policy", "apply", &bad]), 1, "invalid_policy");
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 3, "{v}");
    json_failure(
        &j(&["policy", "validate", "/nonexistent/p.json"]),
        1,
        "failed",
    );
    json_failure(
        &j(&["stacks", "weight", "green", "101"]),
        2,
        "invalid_value",
    );
    json_failure(&j(&["stacks", "frobnicate"]), 2, "usage");
    json_failure(
        &cli(
            "http://127.0.0.1:9",
            &["--json", "--timeout", "2", "status"],
        ),
        3,
        "unreachable",
    );
    // Without --json the same failure is one line on stderr and nothing on stdout.
    let o = cli(s, &["stacks", "drain", "purple"]);
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(1), ""));
    drop(server);
}

#[test]
fn weights_have_one_parser_and_one_message() {
    let unreachable = "http://127.0.0.1:9";
    let message = |args: &[&str]| {
        let o = cli(
            unreachable,
            &[&["stacks", "weight", "green"], args].concat(),
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("a weight is a whole percent 0..=100"),
            "{args:?}: {err}"
        );
        err.replace(args[args.len() - 1], "X")
    };
    let over = message(&["101"]);
    assert_eq!(message(&["--", "-1"]), over);
    assert_eq!(message(&["-1"]), over);
    assert_eq!(message(&["4294967296"]), over);
    assert_eq!(message(&["ten"]), over);
}

#[test]
fn rollback_to_zero_says_version_not_to_version() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let s = server.grpc.as_str();
    ok(cli(
        s,
        &[
            "policy",
            "apply",
            &write(tmp.path(), "p.json", &policy("p", &["blue"])),
        ],
    ));
    let o = cli(s, &["policy", "rollback", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        "switchyard: invalid argument: the version to roll back to must be 1 or more"
    );
    drop(server);
}

/// A row's cells (the table's columns are separated by at least two spaces).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn stacks_list_shows_what_routing_does() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let s = server.grpc.as_str();
    let doc = r#"{"name":"p","stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"},
      {"name":"canary","region":"us"}],
      "default":{"targets":[{"stack":"blue","weight":75},{"stack":"green","weight":25},
        {"stack":"canary","weight":0}]}}"#;
    ok(cli(
        s,
        &["policy", "apply", &write(tmp.path(), "p.json", doc)],
    ));
    let table = |args: &[&str]| {
        let out = ok(cli(s, args));
        out.lines()
            .map(|l| cells(l).into_iter().map(String::from).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let t = table(&["stacks", "list"]);
    assert_eq!(
        t[0][..6],
        ["STACK", "REGION", "POLICY", "FACTOR", "SHARE", "STATE"]
    );
    assert_eq!(t[1][..6], ["blue", "us", "75", "100%", "75%", "serving"]);
    assert_eq!(t[2][..6], ["green", "us", "25", "100%", "25%", "serving"]);
    // Canary: the operator factor is 100% but the policy gives it nothing.
    assert_eq!(
        t[3][..6],
        ["canary", "us", "0", "100%", "0%", "out (policy weight 0)"]
    );

    // Weight factor 0: green's share goes to blue and green is not `serving`.
    let t = table(&["stacks", "weight", "green", "0", "--reason", "bad deploy"]);
    assert_eq!(t.len(), 3, "the change, the header, green's row: {t:?}");
    assert_eq!(
        t[2][..6],
        ["green", "us", "25", "0%", "0%", "out (weight 0)"]
    );
    let t = table(&["stacks", "list"]);
    assert_eq!(t[1][..6], ["blue", "us", "75", "100%", "100%", "serving"]);
    assert_eq!(t[2][5], "out (weight 0)");
    // Half of green: 75*100 : 25*50.
    ok(cli(s, &["stacks", "weight", "green", "50"]));
    let t = table(&["stacks", "list"]);
    assert_eq!(t[1][4], "86%");
    assert_eq!(t[2][..6], ["green", "us", "25", "50%", "14%", "serving"]);
    ok(cli(s, &["stacks", "unhealthy", "blue", "--reason", "5xx"]));
    let t = table(&["stacks", "list"]);
    assert_eq!(t[1][..6], ["blue", "us", "75", "100%", "0%", "unhealthy"]);
    assert_eq!(t[2][4], "100%");
    drop(server);
}

#[test]
fn json_status_is_the_http_status_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let s = server.grpc.as_str();
    ok(cli(
        s,
        &[
            "policy",
            "apply",
            &write(tmp.path(), "p.json", &policy("p", &["blue"])),
        ],
    ));
    ok(cli(s, &["watch", "--node-id", "envoy-a", "--count", "1"]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut dp = switchyard_control::proto::v1::data_plane_client::DataPlaneClient::new(
            connect(s).await,
        );
        dp.report(switchyard_control::proto::v1::TelemetryBatch {
            node_id: "envoy-b".into(),
            window_end_unix_ms: 5_000,
            window_ms: 1_000,
            dropped: 1,
            stacks: vec![switchyard_control::proto::v1::StackTelemetry {
                stack: "blue".into(),
                requests: 7,
                status_5xx: 2,
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    });
    let from_cli: serde_json::Value =
        serde_json::from_str(&ok(cli(s, &["--json", "status"]))).unwrap();
    let (code, body) = rt.block_on(http_get(&format!("{}/api/v1/status", server.http)));
    assert_eq!(code, 200, "{body}");
    let from_http: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(from_cli, from_http, "one schema for both edges");
    // And it is the documented one: flat node fields, telemetry as an object.
    let b = &from_cli["nodes"][1];
    assert_eq!(b["node_id"], "envoy-b");
    assert_eq!(b["telemetry"]["stacks"]["blue"]["requests"], 7);
    assert_eq!(b["telemetry"]["window_ms"], 1_000);
    assert_eq!(from_cli["nodes"][0]["telemetry"], serde_json::Value::Null);
    assert_eq!(from_cli["watch_streams"], 0);
    assert_eq!(from_cli["nodes_current"], 0);
    let decoded: switchyard_control::fleet::FleetStatus =
        serde_json::from_value(from_cli).expect("the domain type reads it back");
    assert_eq!(decoded.current_version, 1);
    drop(server);
}

/// The CLI with a controlled environment and no `--actor`.
fn cli_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    for k in ["SWITCHYARD_SERVER", "SWITCHYARD_ACTOR", "USER", "LOGNAME"] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run switchyard")
}

#[test]
fn actor_defaults_to_the_login_name_and_env_is_not_a_required_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let p = write(tmp.path(), "p.json", &policy("p", &["blue", "green"]));
    let s = server.grpc.as_str();
    let last_actor = || {
        let v: serde_json::Value = serde_json::from_str(&ok(cli(
            s,
            &["--json", "policy", "history", "--limit", "1"],
        )))
        .unwrap();
        v["versions"][0]["actor"].as_str().unwrap().to_string()
    };
    ok(cli_env(
        &[("SWITCHYARD_SERVER", s), ("USER", ""), ("LOGNAME", "dave")],
        &["policy", "apply", &p],
    ));
    assert_eq!(
        last_actor(),
        "dave",
        "an empty USER falls through to LOGNAME"
    );
    ok(cli_env(
        &[
            ("SWITCHYARD_SERVER", s),
            ("USER", "erin"),
            ("SWITCHYARD_ACTOR", "bot"),
        ],
        &["stacks", "weight", "green", "50"],
    ));
    assert_eq!(last_actor(), "bot", "SWITCHYARD_ACTOR before USER");
    ok(cli_env(
        &[("SWITCHYARD_SERVER", s), ("USER", "erin")],
        &["stacks", "weight", "green", "40", "--actor", "frank"],
    ));
    assert_eq!(last_actor(), "frank");
    ok(cli_env(
        &[("SWITCHYARD_SERVER", s)],
        &["stacks", "weight", "green", "30"],
    ));
    assert_ne!(
        last_actor(),
        "",
        "without USER and LOGNAME: the process's user name, else cli"
    );

    // Options taken from the environment are not listed as required in usage.
    let o = cli_env(
        &[("SWITCHYARD_SERVER", s), ("SWITCHYARD_ACTOR", "bot")],
        &["stacks", "unhealthy", "green"],
    );
    assert_eq!(o.status.code(), Some(2));
    let usage = stderr(&o);
    let usage = usage.lines().find(|l| l.starts_with("Usage:")).unwrap();
    assert_eq!(
        usage,
        "Usage: switchyard stacks unhealthy --reason <REASON> <STACK>"
    );
    drop(server);
}

#[test]
fn audit_list_and_verify_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProcess::spawn(&data, &[]);
    let s = server.grpc.as_str();
    let p = write(tmp.path(), "p.json", &policy("p", &["blue", "green"]));
    ok(cli(s, &["policy", "apply", &p, "--comment", "first"]));
    ok(cli(
        s,
        &["stacks", "weight", "green", "20", "--reason", "canary"],
    ));

    let out = ok(cli(s, &["audit", "list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        cells(lines[0]),
        ["SEQ", "TIME (UTC)", "KIND", "ACTOR", "SUBJECT", "SUMMARY"]
    );
    // Newest first.
    assert!(
        lines[1].starts_with("2 ") && lines[1].contains("stack/green"),
        "{out}"
    );
    assert!(
        lines[1].contains("manual_change") && lines[1].contains("carol"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("1 ") && lines[2].contains("policy"),
        "{out}"
    );

    let v: serde_json::Value =
        serde_json::from_str(&ok(cli(s, &["--json", "audit", "list", "--after", "0"]))).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["subject"], "stack/green");
    let before: serde_json::Value =
        serde_json::from_str(entries[1]["before_json"].as_str().unwrap()).unwrap();
    assert_eq!(before["weight_percent"], 100);
    assert_eq!(entries[1]["prev_hash"], entries[0]["hash"]);
    let only: serde_json::Value = serde_json::from_str(&ok(cli(
        s,
        &["--json", "audit", "list", "--subject", "policy"],
    )))
    .unwrap();
    assert_eq!(only["entries"].as_array().unwrap().len(), 1);

    let out = ok(cli(s, &["audit", "verify"]));
    assert!(
        out.starts_with("audit chain intact: 2 entries, head "),
        "{out}"
    );

    // Tamper with the stored chain while the server is stopped: verify names entry 1.
    drop(server);
    {
        use switchyard_control::store::{Batch, RedbStore, Store};
        let store = RedbStore::open(&data).unwrap();
        let (k, v) = store.scan("audit/", None, 1).unwrap().remove(0);
        let text = String::from_utf8(v).unwrap().replace("first", "forged");
        store
            .commit(&Batch::new().put(k, text.into_bytes()))
            .unwrap();
    }
    let server = ServerProcess::spawn(&data, &[]);
    let o = cli(server.grpc.as_str(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("audit chain broken at entry 1: content does not match its hash"),
        "{}",
        stderr(&o)
    );
    let f = json_failure(
        &cli(server.grpc.as_str(), &["--json", "audit", "verify"]),
        1,
        "audit_broken",
    );
    assert!(f["message"].as_str().unwrap().contains("entry 1"), "{f}");
}

#[test]
fn validate_lists_every_problem_of_a_huge_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let rules: Vec<String> = (0..3_000)
        .map(|i| {
            format!(
                r#"{{"id":"r{i}","match":{{"path_prefixes":["/p{i}"]}},"route":{{"targets":[{{"stack":"missing-{i}"}}]}}}}"#
            )
        })
        .collect();
    let doc = format!(
        r#"{{"name":"big","stacks":[{{"name":"blue","region":"us"}}],"rules":[{}],"default":{{"targets":[{{"stack":"blue"}}]}}}}"#,
        rules.join(",")
    );
    let p = write(tmp.path(), "big.json", &doc);
    let o = cli(server.grpc.as_str(), &["policy", "validate", &p]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        !err.contains("h2 protocol error"),
        "{}",
        &err[..err.len().min(500)]
    );
    assert_eq!(
        err.matches("route.targets[0].stack").count(),
        3_000,
        "{}",
        &err[..500]
    );
    let f = json_failure(
        &cli(server.grpc.as_str(), &["--json", "policy", "validate", &p]),
        1,
        "invalid_policy",
    );
    assert_eq!(f["errors"].as_array().unwrap().len(), 3_000);
    // Apply is refused with the first problems and the count.
    let o = cli(server.grpc.as_str(), &["policy", "apply", &p]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("3000 problems"),
        "{}",
        &stderr(&o)[..300]
    );
}

/// Degraded mode (docs/degraded-mode.md): once no stack the `checkout` rule may use is
/// left, `status` says that its requests are queued, with why; CLI and HTTP agree; it
/// clears when a stack is back.
#[test]
fn status_names_the_rules_in_degraded_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&tmp.path().join("data"), &[]);
    let s = server.grpc.as_str();
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/intake/policy.json"
    );
    ok(cli(s, &["policy", "apply", policy]));
    assert!(!ok(cli(s, &["status"])).contains("DEGRADED"));

    ok(cli(s, &["stacks", "unhealthy", "blue", "--reason", "down"]));
    assert!(
        !ok(cli(s, &["status"])).contains("DEGRADED"),
        "green still serves"
    );
    ok(cli(
        s,
        &["stacks", "drain", "green", "--reason", "patching"],
    ));
    let out = ok(cli(s, &["status"]));
    assert!(
        out.contains(
            "DEGRADED: rule checkout queues its requests at intake_us \
             (no stack left: blue: unhealthy, green: draining)"
        ),
        "{out}"
    );
    let from_cli: serde_json::Value =
        serde_json::from_str(&ok(cli(s, &["--json", "status"]))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (code, body) = rt.block_on(http_get(&format!("{}/api/v1/status", server.http)));
    assert_eq!(code, 200, "{body}");
    let from_http: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(from_cli["degraded"], from_http["degraded"]);
    assert_eq!(
        from_http["degraded"],
        serde_json::json!([{ "rule": "checkout", "queue": "intake_us",
                             "reason": "blue: unhealthy, green: draining" }])
    );

    ok(cli(s, &["stacks", "healthy", "blue"]));
    let from_cli: serde_json::Value =
        serde_json::from_str(&ok(cli(s, &["--json", "status"]))).unwrap();
    assert_eq!(from_cli.get("degraded"), None, "{from_cli}");
    drop(server);
}
