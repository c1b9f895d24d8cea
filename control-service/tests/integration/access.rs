//! Authentication and authorisation end to end: the access table covers every RPC in the
//! protos and every HTTP route in the sources; every endpoint refuses calls without a
//! token, with a revoked or forged one, and with too weak a role — before any handler
//! runs, changing nothing; the authenticated identity is the audit actor; tokens are
//! managed through the CLI and created offline.

use std::process::Command;
use std::str::FromStr;

use crate::common::{policy, Harness};
use prost::Message;
use switchyard_control::auth::{access, Permission, Role, Tokens};
use switchyard_control::proto::v1;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

// ----- the table covers everything -------------------------------------------------

/// `/package.Service/Method` of every method in our descriptor set.
fn proto_methods() -> Vec<String> {
    let fds =
        prost_types::FileDescriptorSet::decode(switchyard_control::proto::FILE_DESCRIPTOR_SET)
            .unwrap();
    let mut out = Vec::new();
    for file in &fds.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                out.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    assert!(out.len() > 30, "{out:?}");
    out
}

/// The path of every `.route("…", …)` in the control service's sources.
fn source_routes() -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices(".route(") {
                    let rest = text[i + 7..].trim_start();
                    if let Some(lit) = rest.strip_prefix('"') {
                        out.push(lit[..lit.find('"').unwrap()].to_string());
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut out,
    );
    assert!(out.len() > 15, "{out:?}");
    out
}

#[test]
fn every_rpc_and_route_has_an_access_rule_and_every_rule_an_endpoint() {
    let methods = proto_methods();
    for m in &methods {
        let need = access::grpc(m).unwrap_or_else(|| {
            panic!("{m} has no access rule: add it to control-service/src/auth/access.rs")
        });
        assert_ne!(need, Permission::Open, "{m} must not be open");
    }
    for (path, _) in access::GRPC {
        assert!(methods.iter().any(|m| m == path), "stale rule {path}");
    }
    let routes = source_routes();
    for r in &routes {
        assert!(
            access::HTTP.iter().any(|rule| rule.path == r),
            "route {r} has no access rule: add it to control-service/src/auth/access.rs"
        );
    }
    for rule in access::HTTP {
        assert!(
            routes.iter().any(|r| r == rule.path),
            "stale rule {}",
            rule.path
        );
    }
    // The decided exceptions: probes, metrics, the index and the webhook.
    let open: Vec<&str> = access::HTTP
        .iter()
        .filter(|r| r.read == Permission::Open)
        .map(|r| r.path)
        .collect();
    assert_eq!(
        open,
        [
            "/",
            "/healthz",
            "/metrics",
            "/console",
            "/console/",
            "/console/{*path}"
        ]
    );
    assert_eq!(
        access::http("/api/v1/alerts", &tonic::codegen::http::Method::POST),
        Some(Permission::Operate)
    );
}

// ----- enforcement -----------------------------------------------------------------

/// A server with authentication on, and a token per role (plus a revoked one).
struct Secured {
    h: Harness,
    admin: String,
    viewer: String,
    operator: String,
    approver: String,
    dataplane: String,
    revoked: String,
}

impl Secured {
    async fn start() -> Self {
        let h = Harness::start_with(tempfile::tempdir().unwrap(), |c| {
            c.auth.enabled = true;
            // Mounts /api/v1/health too.
            c.health =
                Some(switchyard_control::health::config::compile(&Default::default()).unwrap());
            // Open Watch streams re-check their token this often (default 5 s).
            c.watch.credential_recheck = std::time::Duration::from_millis(100);
        })
        .await;
        let store = h.server.control.store();
        let t = Tokens::new(&*store);
        let mk = |name: &str, role| t.create(name, role, "test", 1).unwrap().0;
        Secured {
            admin: mk("root", Role::Admin),
            viewer: mk("vera", Role::Viewer),
            operator: mk("olga", Role::Operator),
            approver: mk("april", Role::Approver),
            dataplane: mk("envoy-1", Role::Dataplane),
            revoked: {
                let (tok, rec) = t.create("gone", Role::Admin, "test", 1).unwrap();
                t.revoke(&rec.id, 2).unwrap();
                tok
            },
            h,
        }
    }

    fn token_for(&self, role: Role) -> &str {
        match role {
            Role::Admin => &self.admin,
            Role::Viewer => &self.viewer,
            Role::Operator => &self.operator,
            Role::Approver => &self.approver,
            Role::Dataplane => &self.dataplane,
        }
    }

    fn channel(
        &self,
        token: &str,
    ) -> InterceptedService<Channel, impl tonic::service::Interceptor + Clone> {
        let v: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        InterceptedService::new(self.h.channel.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", v.clone());
            Ok(r)
        })
    }

    /// What a refused call must leave unchanged.
    fn state(&self) -> (u64, u64, usize, String) {
        let c = &self.h.server.control;
        let store = c.store();
        let tokens = Tokens::new(&*store).list().unwrap();
        let events = store.scan("event", None, 1000).unwrap().len();
        (
            c.current_version(),
            c.audit().head().unwrap().map(|e| e.seq).unwrap_or(0),
            tokens.len() + events,
            serde_json::to_string(&tokens).unwrap(),
        )
    }
}

/// One unary call to `path` with an empty message: the status code (OK if it passed).
async fn raw_call(channel: &Channel, path: &str, token: Option<&str>) -> (Code, String) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc
        .unary(req, PathAndQuery::from_str(path).unwrap(), codec)
        .await
    {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// A role that does not have `p`, if any.
fn too_weak_for(p: Permission) -> Option<Role> {
    Role::ALL.into_iter().find(|r| !r.grants(p))
}

/// HTTP/1.1 request with optional bearer token and body: status and body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

#[tokio::test]
async fn every_rpc_refuses_missing_revoked_forged_and_too_weak_credentials_and_changes_nothing() {
    let s = Secured::start().await;
    // Some state to (not) change.
    let mut policies = v1::policies_client::PoliciesClient::new(s.channel(&s.admin));
    policies
        .apply(v1::ApplyPolicyRequest {
            policy_json: policy("p", &["blue", "green"]),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = s.state();
    let forged = format!("syt_{}", "ab".repeat(32));
    let ch = s.h.channel.clone();
    let mut checked = 0;
    for path in proto_methods() {
        let need = access::grpc(&path).unwrap();
        for (what, token) in [
            ("no token", None),
            ("revoked token", Some(s.revoked.as_str())),
            ("forged token", Some(forged.as_str())),
            ("not a token", Some("hunter2")),
        ] {
            let (code, msg) = raw_call(&ch, &path, token).await;
            assert_eq!(code, Code::Unauthenticated, "{path} with {what}: {msg}");
        }
        if let Some(weak) = too_weak_for(need) {
            let (code, msg) = raw_call(&ch, &path, Some(s.token_for(weak))).await;
            assert_eq!(code, Code::PermissionDenied, "{path} as {weak}: {msg}");
            assert!(msg.contains(weak.as_str()), "{msg}");
        }
        checked += 1;
    }
    assert!(checked > 30);
    assert_eq!(s.state(), before, "a refused call changed something");

    // Health and reflection stay open.
    let (code, _) = raw_call(&ch, "/grpc.health.v1.Health/Check", None).await;
    assert_eq!(code, Code::Ok);
    s.h.server.shutdown_token().cancel();
}

#[tokio::test]
async fn every_route_refuses_missing_revoked_and_too_weak_credentials_and_changes_nothing() {
    let s = Secured::start().await;
    let addr = s.h.server.http_addr.unwrap();
    let before = s.state();
    let event = r#"{"id":"e1","kind":"deployment","scope":"all","from":"2026-01-01T00:00:00Z","to":"2026-01-01T01:00:00Z","actor":"x"}"#;
    for rule in access::HTTP {
        let path = rule.path.replace("{id}", "1");
        for (method, need) in [
            ("GET", rule.read),
            ("POST", rule.write),
            ("DELETE", rule.write),
        ] {
            if need == Permission::Open {
                continue;
            }
            for token in [None, Some(s.revoked.as_str()), Some("syt_00")] {
                let (status, body) = http(addr, method, &path, token, event).await;
                assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], "unauthenticated", "{body}");
            }
            if let Some(weak) = too_weak_for(need) {
                let (status, body) =
                    http(addr, method, &path, Some(s.token_for(weak)), event).await;
                assert_eq!(status, 403, "{method} {path} as {weak}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], "permission_denied", "{body}");
            }
        }
    }
    assert_eq!(s.state(), before, "a refused request changed something");
    for open in ["/healthz", "/metrics", "/"] {
        assert_eq!(http(addr, "GET", open, None, "").await.0, 200, "{open}");
    }
    s.h.server.shutdown_token().cancel();
}

#[tokio::test]
async fn whoami_names_the_caller_and_only_the_actions_the_middleware_lets_through() {
    let s = Secured::start().await;
    let addr = s.h.server.http_addr.unwrap();
    for (role, name) in [
        (Role::Viewer, "vera"),
        (Role::Operator, "olga"),
        (Role::Approver, "april"),
        (Role::Admin, "root"),
        (Role::Dataplane, "envoy-1"),
    ] {
        let token = s.token_for(role);
        let (status, body) = http(addr, "GET", "/api/v1/whoami", Some(token), "").await;
        assert_eq!(status, 200, "{role}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["name"], name, "{body}");
        assert_eq!(v["role"], role.as_str(), "{body}");
        assert_eq!(v["authenticated"], true, "{body}");
        // What whoami allows is what the middleware lets through, action by action: a
        // POST the answer forbids is refused with 403 before any handler runs.
        for (action, route) in switchyard_control::console::whoami::ACTIONS {
            let allowed = v["actions"][action].as_bool().unwrap();
            let path = route
                .replace("{id}", "1")
                .replace("{decision}", "approve")
                .replace("{action}", "pause")
                .replace("{name}", "blue")
                .replace("{op}", "drain");
            let (status, body) = http(addr, "POST", &path, Some(token), "{}").await;
            assert_eq!(
                status == 403,
                !allowed,
                "{role} {action}: whoami says {allowed}, POST {path} answered {status} {body}"
            );
        }
    }
    assert_eq!(
        http(addr, "GET", "/api/v1/whoami", None, "").await.0,
        401,
        "no token, no answer"
    );
    let (_, body) = http(addr, "GET", "/api/v1/whoami", Some(&s.viewer), "").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["actions"]["incident_decision"], false, "{body}");
    assert_eq!(v["permissions"]["read"], true, "{body}");
    assert!(!body.contains(&s.viewer), "the secret is never echoed");
    s.h.server.shutdown_token().cancel();
}

#[tokio::test]
async fn the_authenticated_identity_is_the_audit_actor_not_the_claimed_one() {
    let s = Secured::start().await;
    let mut policies = v1::policies_client::PoliciesClient::new(s.channel(&s.operator));
    let r = policies
        .apply(v1::ApplyPolicyRequest {
            policy_json: policy("p", &["blue", "green"]),
            actor: "mallory".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.info.unwrap().actor, "olga");
    let mut stacks = v1::stacks_client::StacksClient::new(s.channel(&s.operator));
    let r = stacks
        .set_weight(v1::SetWeightRequest {
            stack: "green".into(),
            weight_percent: 0,
            actor: "mallory".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.info.unwrap().actor, "olga");

    // HTTP: an event registered with an operator token is the operator's.
    let addr = s.h.server.http_addr.unwrap();
    let event = r#"{"id":"deploy-1","kind":"deployment","scope":"all","from":"2026-01-01T00:00:00Z","to":"2026-01-01T01:00:00Z","actor":"mallory"}"#;
    let (status, body) = http(addr, "POST", "/api/v1/events", Some(&s.operator), event).await;
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["event"]["actor"], "olga", "{body}");

    // The audit log names olga and never mallory.
    let entries = s.h.server.control.audit().recent(100).unwrap();
    assert!(entries.iter().any(|e| e.draft.actor == "olga"));
    assert!(
        entries.iter().all(|e| e.draft.actor != "mallory"),
        "{entries:?}"
    );

    // A dataplane token watches; an approver cannot approve what does not exist, but
    // gets that far (its role passes the layer).
    let mut dp = v1::data_plane_client::DataPlaneClient::new(s.channel(&s.dataplane));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(v1::WatchRequest {
        node_id: "envoy-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = dp
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let snap = stream.message().await.unwrap().unwrap();
    assert!(snap.version >= 2);
    let mut inc = v1::incidents_client::IncidentsClient::new(s.channel(&s.approver));
    let err = inc
        .approve(v1::IncidentDecisionRequest {
            id: 42,
            comment: "ok".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_ne!(err.code(), Code::Unauthenticated, "{err:?}");
    s.h.server.shutdown_token().cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_stream_ends_when_its_token_is_revoked_and_others_go_on() {
    let s = Secured::start().await;
    let store = s.h.server.control.store();
    let (doomed, rec) = Tokens::new(&*store)
        .create("envoy-9", Role::Dataplane, "test", 1)
        .unwrap();
    let open = |token: String, node: &'static str| {
        let channel = s.channel(&token);
        async move {
            let mut dp = v1::data_plane_client::DataPlaneClient::new(channel);
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(v1::WatchRequest {
                node_id: node.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            let mut stream = dp
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let first = stream.message().await.unwrap().unwrap();
            (stream, first.version, tx)
        }
    };
    let mut policies = v1::policies_client::PoliciesClient::new(s.channel(&s.operator));
    policies
        .apply(v1::ApplyPolicyRequest {
            policy_json: policy("p", &["blue", "green"]),
            ..Default::default()
        })
        .await
        .unwrap();
    let (mut doomed_stream, v, _keep1) = open(doomed, "envoy-9").await;
    let (mut other, _, _keep2) = open(s.dataplane.clone(), "envoy-1").await;
    assert!(v >= 1);

    Tokens::new(&*store).revoke(&rec.id, 2).unwrap();
    // Bounded: the stream ends (it does not wait for the next version) with
    // UNAUTHENTICATED; the stream of a valid token goes on receiving versions.
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), doomed_stream.message())
        .await
        .expect("the revoked token's stream ended");
    let err = end.expect_err("ended with a status");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("no longer valid"), "{err:?}");

    let c = &s.h.server.control;
    c.stack_op(
        "blue",
        switchyard_control::control::StackOp::SetWeight {
            percent: 40,
            reason: "after the revocation".into(),
        },
        switchyard_control::control::Change {
            actor: "test".into(),
            comment: "after the revocation".into(),
            origin: switchyard_control::brain::audit::AuditKind::ManualChange,
        },
    )
    .await
    .unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), other.message())
        .await
        .expect("the valid stream receives the next version")
        .unwrap()
        .unwrap();
    assert_eq!(next.version, c.current_version());
    s.h.server.shutdown_token().cancel();
}

// ----- tokens through the CLI and offline ------------------------------------------

fn cli(server: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.args(["--server", server, "--json"])
        .args(args)
        .env_remove("SWITCHYARD_TOKEN")
        .env_remove("SWITCHYARD_TOKEN_FILE")
        // No demo token file from the working directory.
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn json_out(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_created_listed_revoked_through_the_cli_and_offline() {
    // The first admin token, offline, on a fresh data directory.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-control"))
        .args([
            "token",
            "create",
            "--name",
            "root",
            "--role",
            "admin",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--output")
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
    }
    let h = Harness::start_with(dir, |c| c.auth.enabled = true).await;
    let server = h.server.grpc_url();
    let file = token_file.to_str().unwrap();

    let out = cli(&server, &["tokens", "list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_out(&out)["code"], "unauthenticated");

    let who = json_out(&cli(
        &server,
        &["--token-file", file, "tokens", "whoami"],
        &[],
    ));
    assert_eq!(
        (who["name"].as_str(), who["role"].as_str()),
        (Some("root"), Some("admin"))
    );

    let created = json_out(&cli(
        &server,
        &[
            "--token-file",
            file,
            "tokens",
            "create",
            "--name",
            "vera",
            "--role",
            "viewer",
        ],
        &[],
    ));
    let vera = created["token"].as_str().unwrap().to_string();
    let id = created["info"]["id"].as_str().unwrap().to_string();
    // The viewer reads, and may not manage tokens.
    let out = cli(&server, &["status"], &[("SWITCHYARD_TOKEN", &vera)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&server, &["--token", &vera, "tokens", "list"], &[]);
    assert_eq!(json_out(&out)["code"], "permission_denied");

    let listed = json_out(&cli(
        &server,
        &["--token-file", file, "tokens", "list"],
        &[],
    ));
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{listed}");
    assert!(names.contains(&"root") && names.contains(&"vera"));
    assert!(
        !listed.to_string().contains(&vera[4..]),
        "a secret was listed"
    );

    let revoked = json_out(&cli(
        &server,
        &["--token-file", file, "tokens", "revoke", &id[..8]],
        &[],
    ));
    assert_ne!(revoked["revoked_unix_ms"], 0);
    let out = cli(&server, &["status"], &[("SWITCHYARD_TOKEN", &vera)]);
    assert_eq!(json_out(&out)["code"], "unauthenticated");

    // Every token change is in the audit log, by whom.
    let audit = h.server.control.audit().recent(10).unwrap();
    assert!(audit
        .iter()
        .any(|e| e.draft.actor == "root" && e.draft.summary.contains("revoked")));
    h.server.shutdown_token().cancel();
}
