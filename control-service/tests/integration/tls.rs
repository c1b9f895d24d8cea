//! TLS and mTLS on both listeners, with real rustls on loopback and certificates made by
//! the same code as `switchyard-control certs demo`: a mapped client certificate is an
//! identity (the audit actor, its role's permissions); a forged or expired one is refused
//! at the handshake and changes nothing; an unmapped one gets no role; bearer tokens keep
//! working over TLS; `require_client_cert` refuses a client without one.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switchyard_control::auth::certs::{CertIdentities, CertIdentity};
use switchyard_control::auth::{Role, Tokens};
use switchyard_control::config::ServeConfig;
use switchyard_control::proto::v1;
use switchyard_control::server::{self, RunningServer};
use switchyard_control::tls::pki::{Ca, Issued, Validity};
use switchyard_control::tls::TlsSettings;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

/// A server with TLS, client certificates verified against `ca`, and three mappings:
/// `CN=admin` → ada (admin), `CN=vera` → vera (viewer), `CN=envoy` → envoy-1 (dataplane).
struct Secure {
    server: RunningServer,
    ca: Ca,
    _dir: tempfile::TempDir,
}

impl Secure {
    async fn start(require_client_cert: bool) -> Secure {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA", Validity::days(30)).unwrap();
        let srv = ca
            .server(&["localhost", "127.0.0.1"], Validity::days(30))
            .unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let mut tls = TlsSettings::new(
            write("server.pem", &srv.cert_pem),
            write("server.key", &srv.key_pem),
        );
        tls.client_ca = Some(write("ca.pem", ca.cert_pem()));
        tls.require_client_cert = require_client_cert;
        tls.identities = CertIdentities::new(
            [
                "CN=admin=ada:admin",
                "CN=vera=vera:viewer",
                "CN=envoy=envoy-1:dataplane",
            ]
            .iter()
            .map(|f| CertIdentity::parse_flag(f).unwrap())
            .collect(),
        )
        .unwrap();
        let mut cfg = ServeConfig::ephemeral(&dir.path().join("data"));
        cfg.auth.enabled = true;
        cfg.tls = Some(tls);
        let server = server::start(cfg).await.expect("server starts with TLS");
        assert!(server.grpc_url().starts_with("https://"));
        Secure {
            server,
            ca,
            _dir: dir,
        }
    }

    /// A client certificate `CN=<cn>` from this server's CA.
    fn client(&self, cn: &str) -> Issued {
        self.ca.client(cn, Validity::days(30)).unwrap()
    }

    /// A TLS channel that trusts the server's CA and presents `identity`, if any. The
    /// handshake's verdict on the client certificate arrives with the first call (TLS 1.3),
    /// so a refused certificate shows as a failed call.
    async fn channel(&self, identity: Option<&Issued>) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("localhost");
        if let Some(i) = identity {
            tls = tls.identity(Identity::from_pem(&i.cert_pem, &i.key_pem));
        }
        Channel::from_shared(self.server.grpc_url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    }

    fn version(&self) -> u64 {
        self.server.control.current_version()
    }
}

async fn apply(
    channel: Channel,
    token: Option<&str>,
    name: &str,
) -> Result<v1::ChangeResponse, tonic::Status> {
    let mut req = tonic::Request::new(v1::ApplyPolicyRequest {
        policy_json: crate::common::policy(name, &["blue", "green"]),
        actor: "mallory".into(),
        ..Default::default()
    });
    if let Some(t) = token {
        let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
        req.metadata_mut().insert("authorization", v);
    }
    v1::policies_client::PoliciesClient::new(channel)
        .apply(req)
        .await
        .map(|r| r.into_inner())
}

async fn who_am_i(channel: Channel) -> Result<v1::WhoAmIResponse, tonic::Status> {
    v1::tokens_client::TokensClient::new(channel)
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner())
}

/// A certificate refused at the handshake: the channel cannot be built, or its first
/// call fails without reaching a handler (never OK, never a handler's own answer).
async fn refused(s: &Secure, identity: &Issued) {
    let before = s.version();
    if let Ok(channel) = s.channel(Some(identity)).await {
        let r = apply(channel, None, "forged").await;
        match r {
            Ok(r) => panic!("a refused certificate changed routing: {r:?}"),
            Err(status) => assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal
                ),
                "refused at the handshake, not by a handler: {status:?}"
            ),
        }
    }
    assert_eq!(s.version(), before, "nothing changed");
}

#[tokio::test]
async fn a_mapped_client_certificate_is_the_identity_and_the_audit_actor() {
    let s = Secure::start(false).await;
    let admin = s.client("admin");
    let channel = s.channel(Some(&admin)).await.unwrap();
    let r = apply(channel.clone(), None, "by-cert")
        .await
        .expect("admin by certificate");
    assert!(r.changed);
    assert_eq!(
        r.info.unwrap().actor,
        "ada",
        "the mapped name, not the claimed actor"
    );
    let me = who_am_i(channel).await.unwrap();
    assert_eq!(
        (me.name.as_str(), me.role.as_str(), me.credential.as_str()),
        ("ada", "admin", "certificate CN=admin")
    );
    let entries = s.server.control.audit().recent(100).unwrap();
    assert!(
        entries.iter().any(|e| e.draft.actor == "ada"),
        "{entries:?}"
    );
    assert!(entries.iter().all(|e| e.draft.actor != "mallory"));

    // Envoy's certificate (role dataplane) follows Watch over mTLS.
    let envoy = s.client("envoy");
    let dp = v1::data_plane_client::DataPlaneClient::new(s.channel(Some(&envoy)).await.unwrap());
    let mut watch = crate::common::Watch::open(dp, "envoy-tls", 0).await;
    assert_eq!(watch.next().await.version, s.version());
    s.server.shutdown().await;
}

#[tokio::test]
async fn forged_and_expired_certificates_are_refused_at_the_handshake_and_change_nothing() {
    let s = Secure::start(false).await;
    apply(
        s.channel(Some(&s.client("admin"))).await.unwrap(),
        None,
        "first",
    )
    .await
    .unwrap();
    let audit_head = || s.server.control.audit().head().unwrap().map(|e| e.seq);
    let head = audit_head();
    // Same subject, another CA.
    let other = Ca::new("test CA", Validity::days(30)).unwrap();
    refused(&s, &other.client("admin", Validity::days(30)).unwrap()).await;
    // Self-signed.
    refused(
        &s,
        &Issued::self_signed("admin", Validity::days(30)).unwrap(),
    )
    .await;
    // The right CA, but expired.
    refused(&s, &s.ca.client("admin", Validity::expired()).unwrap()).await;
    assert_eq!(audit_head(), head, "nothing audited either");
    s.server.shutdown().await;
}

#[tokio::test]
async fn roles_come_from_the_mapping_and_an_unmapped_certificate_gets_none() {
    let s = Secure::start(false).await;
    apply(
        s.channel(Some(&s.client("admin"))).await.unwrap(),
        None,
        "first",
    )
    .await
    .unwrap();
    let before = s.version();
    let vera = s.channel(Some(&s.client("vera"))).await.unwrap();
    let status = v1::fleet_client::FleetClient::new(vera.clone())
        .status(v1::StatusRequest {})
        .await;
    assert!(status.is_ok(), "a viewer reads: {status:?}");
    let err = apply(vera, None, "by-viewer").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("vera (role viewer)"), "{err:?}");

    let stranger = s.channel(Some(&s.client("stranger"))).await.unwrap();
    let err = who_am_i(stranger.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("CN=stranger") && err.message().contains("maps to no identity"),
        "{err:?}"
    );
    let err = apply(stranger, None, "by-stranger").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(s.version(), before, "nothing changed");
    s.server.shutdown().await;
}

#[tokio::test]
async fn bearer_tokens_work_over_tls_and_win_over_the_certificate() {
    let s = Secure::start(false).await;
    let store = s.server.control.store();
    let (olga, _) = Tokens::new(&*store)
        .create("olga", Role::Operator, "test", 1)
        .unwrap();
    let plain = s.channel(None).await.unwrap();
    let err = apply(plain.clone(), None, "nobody").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let r = apply(plain, Some(&olga), "by-token").await.unwrap();
    assert_eq!(r.info.unwrap().actor, "olga");
    // A viewer's certificate and an operator's token: the token names the caller.
    let vera = s.channel(Some(&s.client("vera"))).await.unwrap();
    let r = apply(vera, Some(&olga), "token-wins").await.unwrap();
    assert_eq!(r.info.unwrap().actor, "olga");
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_required_client_certificate_is_checked_at_the_handshake() {
    let s = Secure::start(true).await;
    let store = s.server.control.store();
    let (root, _) = Tokens::new(&*store)
        .create("root", Role::Admin, "test", 1)
        .unwrap();
    // A valid token is not enough without a certificate.
    if let Ok(plain) = s.channel(None).await {
        let err = apply(plain, Some(&root), "no-cert").await.unwrap_err();
        assert!(
            matches!(
                err.code(),
                Code::Unavailable | Code::Unknown | Code::Internal
            ),
            "{err:?}"
        );
    }
    assert_eq!(s.version(), 0);
    let r = apply(
        s.channel(Some(&s.client("admin"))).await.unwrap(),
        None,
        "with-cert",
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    s.server.shutdown().await;
}

/// A TLS connection to `addr` (trusting `ca_pem`, presenting `identity`), or why the
/// handshake failed.
async fn connect_tls(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Issued>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match identity {
        Some(i) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(i.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The certificate the server presented on a connection (DER).
fn presented(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request (`Connection: close`) on a TLS connection: status and body.
async fn request(
    mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// One HTTP/1.1 request over a new TLS connection (trusting `ca_pem`, presenting
/// `identity`): status and body, or why the connection failed.
async fn https(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Issued>,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    request(
        connect_tls(addr, ca_pem, identity).await?,
        method,
        path,
        body,
    )
    .await
}

#[tokio::test]
async fn a_rotated_server_certificate_serves_new_connections_and_old_ones_keep_working() {
    let s = Secure::start(false).await;
    let (http, grpc) = (s.server.http_addr.unwrap(), s.server.grpc_addr);
    let ca = s.ca.cert_pem().to_string();
    let der = |pem: &str| {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    let first = der(&std::fs::read_to_string(s._dir.path().join("server.pem")).unwrap());
    // Connections made before the rotation: raw HTTPS, and a gRPC channel as the admin.
    let old_http = connect_tls(http, &ca, None).await.unwrap();
    assert_eq!(presented(&old_http), first);
    let old_grpc = s.channel(Some(&s.client("admin"))).await.unwrap();
    assert_eq!(who_am_i(old_grpc.clone()).await.unwrap().name, "ada");

    // cert-manager's way: the files rewritten in place, the key after the certificate.
    let next =
        s.ca.server(
            &["localhost", "127.0.0.1", "next.example"],
            Validity::days(30),
        )
        .unwrap();
    std::fs::write(s._dir.path().join("server.pem"), &next.cert_pem).unwrap();
    // Half-way (the new certificate, the old key): the old pair still serves.
    let mid = connect_tls(http, &ca, None).await.unwrap();
    assert_eq!(
        presented(&mid),
        first,
        "a mismatched pair is never presented"
    );
    std::fs::write(s._dir.path().join("server.key"), &next.key_pem).unwrap();

    // New connections on both listeners present the new certificate, no restart.
    let second = der(&next.cert_pem);
    assert_ne!(first, second);
    let new_http = connect_tls(http, &ca, None).await.unwrap();
    assert_eq!(presented(&new_http), second, "HTTP listener");
    let new_grpc = connect_tls(grpc, &ca, None).await.unwrap();
    assert_eq!(presented(&new_grpc), second, "gRPC listener");
    let (code, body) = request(new_http, "GET", "/healthz", "").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let me = who_am_i(s.channel(Some(&s.client("admin"))).await.unwrap())
        .await
        .unwrap();
    assert_eq!(me.name, "ada", "a new gRPC channel after the rotation");

    // The connections made before keep working (with the certificate they were made with).
    let (code, body) = request(old_http, "GET", "/healthz", "").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(who_am_i(old_grpc).await.unwrap().name, "ada");
    s.server.shutdown().await;
}

#[tokio::test]
async fn the_http_listener_speaks_tls_and_maps_certificates_too() {
    let s = Secure::start(false).await;
    let addr = s.server.http_addr.unwrap();
    let ca = s.ca.cert_pem().to_string();
    let admin = s.client("admin");
    let (code, body) = https(addr, &ca, Some(&admin), "GET", "/api/v1/status", "")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = https(addr, &ca, None, "GET", "/api/v1/status", "")
        .await
        .unwrap();
    assert_eq!(code, 401, "{body}");
    let (code, _) = https(addr, &ca, None, "GET", "/healthz", "").await.unwrap();
    assert_eq!(code, 200, "probes stay open");
    let event = r#"{"id":"e1","kind":"deployment","scope":"all","from":"2026-01-01T00:00:00Z","to":"2026-01-01T01:00:00Z"}"#;
    let vera = s.client("vera");
    let (code, body) = https(addr, &ca, Some(&vera), "POST", "/api/v1/events", event)
        .await
        .unwrap();
    assert_eq!(code, 403, "{body}");
    let (code, body) = https(addr, &ca, Some(&admin), "POST", "/api/v1/events", event)
        .await
        .unwrap();
    assert_eq!(code, 201, "{body}");
    assert!(body.contains("\"actor\":\"ada\""), "{body}");
    // Forged: another CA's certificate never gets an HTTP answer.
    let other = Ca::new("test CA", Validity::days(30)).unwrap();
    let forged = other.client("admin", Validity::days(30)).unwrap();
    let r = https(addr, &ca, Some(&forged), "POST", "/api/v1/events", event).await;
    assert!(r.is_err(), "{r:?}");
    // Plain text to a TLS listener gets no HTTP answer either.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf).await;
        assert!(
            !buf.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    s.server.shutdown().await;
}
