//! The web console in a real headless Chromium against the real control service: the
//! fleet page shows the stacks; a change made with the CLI appears on the open page
//! within the live stream's reach, without a reload; every page renders against the
//! running system. Screenshots of each page are saved under
//! `target/console-screenshots/` as test artefacts.
//!
//! Skipped with a message when Chromium or chromedriver is not installed
//! (`make .tools/.chromium`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use switchyard_harness::browser::{self, Browser};
use switchyard_harness::{workspace_root, Client, Proc, ReservedPort, TestDir};

const POLICY: &str = r#"{
  "name": "shop",
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "green", "region": "us" },
              { "name": "canary", "region": "us" } ],
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" }, { "stack": "canary" } ] }
}"#;

/// Every bounded wait here (a live update arrives within a second; this is the ceiling
/// on a loaded CI machine, never an expectation).
const WAIT: Duration = Duration::from_secs(20);

struct Control {
    proc: Proc,
    config: std::path::PathBuf,
    dir: std::path::PathBuf,
    http: u16,
    // Held for the test's life: the service binds them with SO_REUSEADDR, and a restart
    // finds them free.
    _http_port: ReservedPort,
    grpc: ReservedPort,
}

impl Control {
    /// The real service on a redb store in `dir` (so a restart keeps the state).
    fn start(dir: &TestDir) -> Control {
        Self::start_with_policy(dir, POLICY)
    }

    /// The same with `policy` applied at start.
    fn start_with_policy(dir: &TestDir, policy: &str) -> Control {
        let grpc = ReservedPort::new().unwrap();
        let http = ReservedPort::new().unwrap();
        std::fs::write(dir.join("policy.json"), policy).unwrap();
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!(
                "store = \"redb\"\ndata_dir = \"{}\"\ngrpc = \"127.0.0.1:{}\"\n\
                 http = \"127.0.0.1:{}\"\nbootstrap_policy = \"policy.json\"\n\n\
                 [autopilot]\ntick_ms = 100\nincident_validate_ms = 0\n\
                 incident_verify_ms = 300\nincident_freeze_ms = 600000\n",
                dir.join("data").display(),
                grpc.port(),
                http.port()
            ),
        )
        .unwrap();
        // Tokens, written into the store before the server opens it: an admin who
        // signs in to the console (and runs the CLI), a viewer and an approver.
        for (name, role) in [("dora", "admin"), ("vera", "viewer"), ("april", "approver")] {
            let out = Command::new(switchyard_harness::workspace_bin("switchyard-control"))
                .args([
                    "token", "create", "--name", name, "--role", role, "--output",
                ])
                .arg(dir.join(format!("{name}.token")))
                .arg("--data-dir")
                .arg(dir.join("data"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "token create {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let proc = Self::spawn(&config, dir.path(), "control");
        Control {
            proc,
            config,
            dir: dir.path().to_path_buf(),
            http: http.port(),
            _http_port: http,
            grpc,
        }
    }

    fn spawn(config: &std::path::Path, dir: &std::path::Path, name: &str) -> Proc {
        let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard-control"));
        cmd.args(["serve", "--config", config.to_str().unwrap()]);
        let mut proc = Proc::spawn(name, cmd, dir).unwrap_or_else(|e| panic!("{e}"));
        proc.wait_for_line("its `http listening on` line", WAIT, |l| {
            l.starts_with("http listening on")
        })
        .unwrap_or_else(|e| panic!("{e}"));
        proc
    }

    /// SIGKILL the service.
    fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start it again on the same ports and store.
    fn restart(&mut self) {
        self.proc = Self::spawn(&self.config, &self.dir, "control-restarted");
    }

    fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.token")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// An API call as `who`: status and body.
    fn call_as(
        &self,
        who: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {}", self.token(who));
        let r = Client::connect(self.http)
            .unwrap()
            .request_with_body(
                method,
                path,
                &[
                    ("content-type", b"application/json"),
                    ("authorization", auth.as_bytes()),
                ],
                body.map(str::as_bytes),
            )
            .unwrap();
        (
            r.status,
            serde_json::from_str(&r.text()).unwrap_or_default(),
        )
    }

    /// An API call as the admin; must succeed.
    fn api(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let (status, v) = self.call_as("dora", method, path, body);
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }

    fn weight(&self, stack: &str) -> u64 {
        let v = self.api("GET", "/api/v1/stacks", None);
        v["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stack)
            .unwrap()["weight_percent"]
            .as_u64()
            .unwrap()
    }

    fn cli(&self, args: &[&str]) {
        let o = Command::new(switchyard_harness::workspace_bin("switchyard"))
            .args([
                "--server",
                &format!("http://127.0.0.1:{}", self.grpc.port()),
            ])
            .arg("--token-file")
            .arg(self.dir.join("dora.token"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "switchyard {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Sign in through the box (the token lands in sessionStorage and rides every call) and
/// wait until the header names who the server says signed in.
fn sign_in(b: &mut Browser, control: &Control, who: &str) {
    b.execute(
        "document.getElementById('token').value = arguments[0];
         document.getElementById('signin').requestSubmit();",
        &[json!(control.token(who))],
    )
    .unwrap();
    b.wait_for(
        &format!("{who} named in the header"),
        &format!("document.getElementById('whoami').textContent.startsWith('{who} (')"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Go to a page (from another one: the move is what renders it) and wait until it
/// rendered after the move.
fn open_page(b: &mut Browser, page: &str) {
    let here = b.execute("return location.hash", &[]).unwrap();
    assert_ne!(
        here,
        format!("#/{page}"),
        "already on {page}: nothing would render"
    );
    let before = b
        .execute("return Number(document.body.dataset.rendered || 0)", &[])
        .unwrap()
        .as_u64()
        .unwrap_or(0);
    b.execute(&format!("location.hash = '#/{page}'; return 1;"), &[])
        .unwrap();
    b.wait_for(
        &format!("the {page} page"),
        &format!("Number(document.body.dataset.rendered) > {before} && document.querySelector('#page > #{page}')"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// An Alertmanager webhook body with one firing alert on `stack`.
fn alert_on(stack: &str) -> String {
    json!({
        "version": "4", "status": "firing", "receiver": "switchyard", "groupKey": "{}:{}",
        "alerts": [{ "status": "firing",
            "labels": { "alertname": "Errors", "stack": stack, "severity": "page" },
            "annotations": { "summary": format!("errors on {stack}") },
            "startsAt": "2026-01-01T00:00:00Z", "fingerprint": format!("console-e2e-{stack}") }],
    })
    .to_string()
}

fn cell(stack: &str, col: &str) -> String {
    format!(
        "(document.querySelector('#stacks tr[data-stack=\"{stack}\"] [data-col=\"{col}\"]') || {{}}).textContent"
    )
}

#[test]
fn fleet_page_updates_live_after_a_cli_change_and_every_page_renders() {
    if browser::available().is_none() {
        eprintln!("skipped: chromium or chromedriver not installed (make .tools/.chromium)");
        return;
    }
    let dir = TestDir::new("console");
    let mut control = Control::start(&dir);
    let mut b = Browser::start(&dir).unwrap_or_else(|e| panic!("{e}"));
    let shots = workspace_root().join("target/console-screenshots");
    let base = format!("http://127.0.0.1:{}/console/", control.http);

    b.goto(&format!("{base}#/fleet")).unwrap();
    // Sign in through the box: the token lands in sessionStorage and rides every call.
    b.execute(
        "document.getElementById('token').value = arguments[0];
         document.getElementById('signin').requestSubmit();",
        &[json!(control.token("dora"))],
    )
    .unwrap();
    let stored = b
        .wait_for(
            "the token in sessionStorage",
            "sessionStorage.getItem('switchyard.token')",
            WAIT,
        )
        .unwrap();
    assert_eq!(stored, control.token("dora"));

    let w = b
        .wait_for(
            "blue's weight on the fleet page",
            &cell("blue", "weight"),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w, "100%");
    assert_eq!(
        b.wait_for("green's effective share", &cell("green", "share"), WAIT)
            .unwrap(),
        "33.3%"
    );
    b.wait_for(
        "the live stream",
        "document.getElementById('live').textContent === 'live'",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    b.screenshot(&shots.join("fleet.png")).unwrap();

    // A change from the CLI reaches the open page through the stream (the page saw the
    // `version` event) without reload (the marker set on this window survives).
    b.execute("window.__console_marker = 'still here'; return 1;", &[])
        .unwrap();
    control.cli(&["stacks", "weight", "blue", "40", "--reason", "console e2e"]);
    b.wait_for(
        "the version event for v2",
        "document.getElementById('live').dataset.version === '2'",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    b.wait_for(
        "blue's new weight without reload",
        &format!("{} === '40%'", cell("blue", "weight")),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        b.execute("return window.__console_marker", &[]).unwrap(),
        "still here",
        "the page reloaded"
    );
    // The control service goes away and comes back: the page says so, reconnects by
    // itself, and the next change shows without reload.
    control.kill();
    b.wait_for(
        "the offline indicator",
        "document.getElementById('live').textContent === 'offline'",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    control.restart();
    b.wait_for(
        "the stream back",
        "document.getElementById('live').textContent === 'live'",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    control.cli(&["stacks", "weight", "blue", "30", "--reason", "console e2e"]);
    b.wait_for(
        "the version event for v3",
        "document.getElementById('live').dataset.version === '3'",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    b.wait_for(
        "blue's weight after the restart",
        &format!("{} === '30%'", cell("blue", "weight")),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        b.execute("return window.__console_marker", &[]).unwrap(),
        "still here",
        "the page reloaded across the restart"
    );
    let share = b
        .execute(&format!("return {}", cell("blue", "share")), &[])
        .unwrap();
    assert_eq!(share, "13.0%", "30 / (30 + 100 + 100)");

    // A campaign registered from the CLI: marked on the traffic page.
    control.cli(&[
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
    ]);

    // Every page renders against the running system (no load error), with a screenshot.
    for page in [
        "traffic",
        "rollouts",
        "incidents",
        "audit",
        "policy",
        "explain",
    ] {
        let before = b
            .execute("return Number(document.body.dataset.rendered || 0)", &[])
            .unwrap()
            .as_u64()
            .unwrap();
        b.execute(&format!("location.hash = '#/{page}'; return 1;"), &[])
            .unwrap();
        b.wait_for(
            &format!("the {page} page"),
            &format!(
                "Number(document.body.dataset.rendered) > {before} && document.querySelector('#page > #{page}, #page > section')"
            ),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = b
            .execute("return document.getElementById('page').innerText", &[])
            .unwrap();
        assert!(
            !text.as_str().unwrap().contains("Could not load"),
            "{page}: {text}"
        );
        b.screenshot(&shots.join(format!("{page}.png"))).unwrap();
    }

    // The audit page verifies the chain; the traffic page drew its chart.
    b.execute("location.hash = '#/audit'; return 1;", &[])
        .unwrap();
    let verified = b
        .wait_for(
            "the chain verdict",
            "document.getElementById('audit-verify').textContent",
            WAIT,
        )
        .unwrap();
    assert!(
        verified.as_str().unwrap().starts_with("Chain verified"),
        "{verified}"
    );
    b.execute("location.hash = '#/traffic'; return 1;", &[])
        .unwrap();
    b.wait_for(
        "the campaign among the traffic page's events",
        "document.getElementById('traffic').innerText.includes('campaign bf starts: black friday')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    b.wait_for(
        "the uPlot chart",
        "document.querySelector('#split-chart .uplot canvas')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Rollouts: the buttons call the brain; the card follows.
    control.cli(&[
        "rollout",
        "start",
        "--stack",
        "canary",
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
    ]);
    b.execute("location.hash = '#/rollouts'; return 1;", &[])
        .unwrap();
    let pause = "document.querySelector('button[data-rollout=\"r1\"][data-command=\"pause\"]')";
    b.wait_for("the Pause button of r1", pause, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    b.execute(&format!("{pause}.click(); return 1;"), &[])
        .unwrap();
    let phase = "document.querySelector('[data-rollout=\"r1\"] .phase').textContent";
    b.wait_for(
        "r1 paused on the page",
        &format!("{phase} === 'paused'"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r1 = control.api("GET", "/api/v1/rollouts/r1", None);
    assert_eq!(r1["rollout"]["phase"]["state"], "paused", "{r1}");
    b.screenshot(&shots.join("rollouts.png")).unwrap();
    // Resumed from the CLI: the open page follows by itself.
    control.cli(&["rollout", "abort", "r1"]);
    b.wait_for(
        "r1 no longer paused",
        &format!("{phase} !== 'paused'"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Incidents: an alert on green opens one; Approve (with a comment) in the page
    // carries out the proposed shift, audited with the comment.
    let alert = json!({
        "version": "4", "status": "firing", "receiver": "switchyard", "groupKey": "{}:{}",
        "alerts": [{ "status": "firing",
            "labels": { "alertname": "GreenErrors", "stack": "green", "severity": "page" },
            "annotations": { "summary": "errors on green" },
            "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "console-e2e" }],
    });
    control.api("POST", "/api/v1/alerts", Some(&alert.to_string()));
    b.execute("location.hash = '#/incidents'; return 1;", &[])
        .unwrap();
    let approve = "document.querySelector('button[data-decision=\"approve\"]')";
    b.wait_for("an Approve button", approve, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    b.screenshot(&shots.join("incidents.png")).unwrap();
    assert_eq!(control.weight("green"), 100);
    // A viewer's approval, forged straight at the API, is refused and changes nothing.
    let (status, body) = control.call_as(
        "vera",
        "POST",
        "/api/v1/incidents/1/approve",
        Some(r#"{"comment": "not mine to approve"}"#),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(control.weight("green"), 100);
    b.execute(
        &format!(
            "document.querySelector('[data-incident] input').value = 'approved in the console e2e';
             {approve}.click(); return 1;"
        ),
        &[],
    )
    .unwrap();
    b.wait_for(
        "the incident to leave awaiting_approval",
        "!document.querySelector('[data-phase=\"awaiting_approval\"]')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        control.weight("green") < 100,
        "the approved shift did not move green"
    );
    let audit = control
        .api("GET", "/api/v1/audit?limit=50", None)
        .to_string();
    assert!(audit.contains("approved in the console e2e"), "{audit}");

    // Explain: the filter's router on the state in force.
    b.execute("location.hash = '#/explain'; return 1;", &[])
        .unwrap();
    b.wait_for(
        "the explain form",
        "document.getElementById('explain-run')",
        WAIT,
    )
    .unwrap();
    control.cli(&["stacks", "unhealthy", "blue", "--reason", "console e2e"]);
    b.execute(
        "document.getElementById('explain-headers').value = ':path: /cart\\nuser-agent: curl/8';
         document.getElementById('explain-run').click(); return 1;",
        &[],
    )
    .unwrap();
    let decision = b
        .wait_for(
            "the decision",
            "document.getElementById('explain-decision').textContent",
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // The page shows the API's answer: an eligible stack, never the unhealthy blue.
    let api = control.api(
        "POST",
        "/api/v1/explain",
        Some(r#"{"headers": [[":path", "/cart"], ["user-agent", "curl/8"]]}"#),
    );
    let stack = api["decision"]["stack"].as_str().unwrap();
    assert_ne!(stack, "blue", "{api}");
    assert_eq!(decision, format!("{stack} (weighted)"));
    b.screenshot(&shots.join("explain.png")).unwrap();

    // Policy: an invalid edit is refused with its field paths and Apply stays off; a
    // valid one validates, applies (compare-and-set on the version shown) and diffs.
    b.execute("location.hash = '#/policy'; return 1;", &[])
        .unwrap();
    b.wait_for(
        "the policy editor",
        "document.getElementById('policy-text').value",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Paste a document into the editor and press Validate.
    let edit = "const t = document.getElementById('policy-text'); t.value = arguments[0];
                t.dispatchEvent(new Event('input'));
                document.getElementById('policy-validate').click(); return 1;";
    let broken = POLICY.replace("\"stack\": \"canary\"", "\"stack\": \"purple\"");
    b.execute(edit, &[json!(broken)]).unwrap();
    let verdict = b
        .wait_for(
            "the invalid verdict",
            "document.querySelector('#policy-verdict .bad') && document.getElementById('policy-verdict').innerText",
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(verdict.as_str().unwrap().contains("purple"), "{verdict}");
    assert_eq!(
        b.execute(
            "return document.getElementById('policy-apply').disabled",
            &[]
        )
        .unwrap(),
        true
    );
    let renamed = POLICY.replace("\"shop\"", "\"shop-v2\"");
    b.execute(edit, &[json!(renamed)]).unwrap();
    b.wait_for(
        "Apply enabled by a valid policy",
        "!document.getElementById('policy-apply').disabled",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    b.execute(
        "document.getElementById('policy-apply').click(); return 1;",
        &[],
    )
    .unwrap();
    b.wait_for(
        "the applied policy's diff",
        "document.getElementById('diff').innerText.includes('shop-v2')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let info = &control.api("GET", "/api/v1/policy", None)["info"];
    assert_eq!(info["policy_name"], "shop-v2", "{info}");
    assert_eq!(info["actor"], "dora", "the signed-in identity: {info}");
    b.screenshot(&shots.join("policy.png")).unwrap();

    // A stack action from the fleet page: Drain canary, as `switchyard stacks drain`. The
    // approved incident froze its stacks (incident_freeze_ms): the page shows the freeze
    // guardrail's refusal with when it would be allowed, and canary is untouched.
    b.execute("location.hash = '#/fleet'; return 1;", &[])
        .unwrap();
    let button = |op: &str| {
        format!("document.querySelector('button[data-stack=\"canary\"][data-op=\"{op}\"]')")
    };
    let drain = button("drain");
    b.wait_for("canary's Drain button", &drain, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    b.execute(&format!("{drain}.click(); return 1;"), &[])
        .unwrap();
    b.wait_for(
        "the freeze refusal on the page",
        "document.body.innerText.includes('refused by freeze') \
         && document.body.innerText.includes('allowed from')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let canary = |control: &Control| {
        control.api("GET", "/api/v1/stacks", None)["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "canary")
            .cloned()
            .unwrap()
    };
    assert_eq!(canary(&control)["draining"], false, "refused, so unchanged");
    // Evacuate is an emergency action no guardrail holds: it goes through, audited
    // under the signed-in identity.
    let evacuate = button("evacuate");
    b.execute(&format!("{evacuate}.click(); return 1;"), &[])
        .unwrap();
    b.wait_for(
        "canary evacuating on the page",
        &format!("{} .startsWith('evacuating')", cell("canary", "health")),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = canary(&control);
    assert_eq!(c["evacuating"], true, "{c}");
    assert_eq!(c["changed_by"], "dora", "the signed-in identity: {c}");
}

/// How many elements match `selector`.
fn count(b: &mut Browser, selector: &str) -> u64 {
    b.execute(
        "return document.querySelectorAll(arguments[0]).length",
        &[json!(selector)],
    )
    .unwrap()
    .as_u64()
    .unwrap()
}

#[test]
fn buttons_follow_the_signed_in_role() {
    if browser::available().is_none() {
        eprintln!("skipped: chromium or chromedriver not installed (make .tools/.chromium)");
        return;
    }
    let dir = TestDir::new("console-roles");
    let control = Control::start(&dir);
    control.api("POST", "/api/v1/alerts", Some(&alert_on("green")));
    let mut b = Browser::start(&dir).unwrap_or_else(|e| panic!("{e}"));
    let shots = workspace_root().join("target/console-screenshots");
    b.goto(&format!(
        "http://127.0.0.1:{}/console/#/fleet",
        control.http
    ))
    .unwrap();

    // A viewer: the incident and its Approve button are shown, but no Approve is enabled;
    // the fleet page offers no stack action; the policy editor validates but never applies.
    sign_in(&mut b, &control, "vera");
    assert_eq!(
        b.execute("return document.getElementById('whoami').textContent", &[])
            .unwrap(),
        "vera (viewer)"
    );
    open_page(&mut b, "incidents");
    b.wait_for(
        "the incident awaiting approval",
        "document.querySelector('[data-phase=\"awaiting_approval\"] button[data-decision=\"approve\"]')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        count(&mut b, "button[data-decision]:not(:disabled)"),
        0,
        "a viewer has an enabled Approve or Reject"
    );
    let why = b
        .execute(
            "return document.querySelector('button[data-decision=\"approve\"]').title",
            &[],
        )
        .unwrap();
    assert_eq!(why, "your role (viewer) may not do this");
    b.screenshot(&shots.join("incidents-viewer.png")).unwrap();
    open_page(&mut b, "fleet");
    b.wait_for(
        "the stacks",
        "document.querySelectorAll('#stacks tr[data-stack]').length === 3",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        count(&mut b, "button[data-op]"),
        0,
        "stack actions for a viewer"
    );
    open_page(&mut b, "policy");
    b.execute(
        "document.getElementById('policy-validate').click(); return 1;",
        &[],
    )
    .unwrap();
    b.wait_for(
        "the valid verdict",
        "document.querySelector('#policy-verdict .good')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        b.execute(
            "return document.getElementById('policy-apply').disabled",
            &[]
        )
        .unwrap(),
        true,
        "a viewer's Apply is enabled"
    );

    // An approver: Approve and Reject enabled; still no stack actions (operate is not
    // theirs: four eyes).
    b.execute("document.getElementById('signout').click(); return 1;", &[])
        .unwrap();
    sign_in(&mut b, &control, "april");
    open_page(&mut b, "incidents");
    b.wait_for(
        "an enabled Approve button",
        "document.querySelector('button[data-decision=\"approve\"]:not(:disabled)')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&mut b, "button[data-decision]:not(:disabled)"), 2);
    open_page(&mut b, "fleet");
    b.wait_for(
        "the stacks",
        "document.querySelectorAll('#stacks tr[data-stack]').length === 3",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        count(&mut b, "button[data-op]"),
        0,
        "stack actions for an approver"
    );
    // The page's word is the server's: the approver's approval goes through.
    open_page(&mut b, "incidents");
    b.execute(
        "document.querySelector('[data-incident] input').value = 'approved by april';
         document.querySelector('button[data-decision=\"approve\"]').click(); return 1;",
        &[],
    )
    .unwrap();
    b.wait_for(
        "the incident to leave awaiting_approval",
        "!document.querySelector('[data-phase=\"awaiting_approval\"]')",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let audit = control
        .api("GET", "/api/v1/audit?limit=20", None)
        .to_string();
    assert!(audit.contains("approved by april"), "{audit}");
}

/// 16 stacks (the most a policy's bitsets hold is 64; 16 is a large real fleet's).
fn many_stacks_policy(n: usize) -> String {
    let stacks: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{ "name": "stack-{i:02}", "region": "region-{}" }}"#,
                i % 4
            )
        })
        .collect();
    let targets: Vec<String> = (0..n)
        .map(|i| format!(r#"{{ "stack": "stack-{i:02}" }}"#))
        .collect();
    format!(
        r#"{{ "name": "big", "stacks": [{}], "default": {{ "targets": [{}] }} }}"#,
        stacks.join(", "),
        targets.join(", ")
    )
}

#[test]
fn the_fleet_page_holds_16_stacks_and_50_envoys() {
    if browser::available().is_none() {
        eprintln!("skipped: chromium or chromedriver not installed (make .tools/.chromium)");
        return;
    }
    const STACKS: usize = 16;
    const ENVOYS: usize = 50;
    let dir = TestDir::new("console-scale");
    let control = Control::start_with_policy(&dir, &many_stacks_policy(STACKS));
    // 50 Envoys as real Watch clients: `switchyard watch` follows the stream and
    // acknowledges every version as an Envoy's singleton does.
    let envoys: Vec<Proc> = (0..ENVOYS)
        .map(|i| {
            let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard"));
            cmd.args([
                "--server",
                &format!("127.0.0.1:{}", control.grpc.port()),
                "--token-file",
            ])
            .arg(dir.join("dora.token"))
            .args(["watch", "--node-id", &format!("envoy-{i:02}")]);
            Proc::spawn(&format!("envoy-{i:02}"), cmd, dir.path()).unwrap()
        })
        .collect();
    let start = std::time::Instant::now();
    loop {
        let status = control.api("GET", "/api/v1/status", None);
        if status["nodes_current"] == ENVOYS as u64 {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "not every Envoy connected and applied the version: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut b = Browser::start(&dir).unwrap_or_else(|e| panic!("{e}"));
    b.goto(&format!(
        "http://127.0.0.1:{}/console/#/fleet",
        control.http
    ))
    .unwrap();
    // The admin's page is the widest: every stack has its (folded) actions.
    sign_in(&mut b, &control, "dora");
    b.wait_for(
        "every stack row",
        &format!("document.querySelectorAll('#stacks tbody tr[data-stack]').length === {STACKS}"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..STACKS {
        assert_eq!(
            count(&mut b, &format!("#stacks tr[data-stack=\"stack-{i:02}\"]")),
            1,
            "stack-{i:02}"
        );
    }
    // The Envoy list is one page of 20, the rest behind the pager, with a summary.
    b.wait_for(
        "the Envoy pager",
        &format!("document.getElementById('nodes-range').textContent === '1–20 of {ENVOYS}'"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&mut b, "#nodes tbody tr"), 20);
    assert_eq!(
        b.execute(
            "return document.getElementById('nodes-summary').textContent",
            &[]
        )
        .unwrap(),
        format!("{ENVOYS} connected, 0 away, 0 behind")
    );
    // Nothing runs off the page sideways: not the page, not the stacks table.
    let widths = b
        .execute(
            "const d = document.documentElement; const t = document.getElementById('stacks');
             return [d.scrollWidth, d.clientWidth, t.scrollWidth, t.parentElement.clientWidth];",
            &[],
        )
        .unwrap();
    let w: Vec<u64> = widths
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(w[0] <= w[1], "the page scrolls sideways: {widths}");
    assert!(w[2] <= w[3], "the stacks table overflows its box: {widths}");
    // The screenshot shows the end of the stacks and the paged Envoys.
    b.execute(
        "document.getElementById('nodes-summary').scrollIntoView(); return 1;",
        &[],
    )
    .unwrap();
    b.screenshot(
        &workspace_root().join("target/console-screenshots/fleet-16-stacks-50-envoys.png"),
    )
    .unwrap();
    // The pager moves, and the page it shows survives a live re-render.
    b.execute(
        "document.getElementById('nodes-next').click(); return 1;",
        &[],
    )
    .unwrap();
    b.wait_for(
        "the second page of Envoys",
        &format!("document.getElementById('nodes-range').textContent === '21–40 of {ENVOYS}'"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        count(&mut b, "#nodes tbody tr[data-node=\"envoy-20\"]"),
        1,
        "sorted by node id"
    );
    control.cli(&[
        "stacks",
        "weight",
        "stack-03",
        "50",
        "--reason",
        "scale e2e",
    ]);
    b.wait_for(
        "the change, on the same Envoy page",
        &format!(
            "{} === '50%' && document.getElementById('nodes-range').textContent === '21–40 of {ENVOYS}'",
            cell("stack-03", "weight")
        ),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(envoys);
}
