//! TLS on the control service's listeners: the `[tls]` settings, the rustls server
//! configuration built from them (ring, never aws-lc), and the TLS handshake that
//! [`crate::net`]'s accept loop puts in front of both the gRPC and the HTTP listener.
//!
//! Decides: whether the service speaks TLS, which certificate it presents, whether and
//! against which CA it verifies client certificates (mTLS), and whether a connection
//! without one is refused at the handshake (`require_client_cert`). Which identity a
//! verified certificate is, is [`crate::auth::certs`]'s call.
//!
//! Never: serves plain text with authentication on a non-loopback address unless told to
//! (`--insecure-plaintext`, checked in [`crate::config`]), lets a slow handshake hold up
//! other connections (each runs in its own task, with a deadline: `[limits]`
//! `first_byte_timeout_ms`), or starts with a certificate or key it cannot read (start
//! fails, naming the field and the file).

pub mod pki;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use tokio_rustls::server::TlsStream;

use crate::auth::certs::{CertIdentities, CertIdentity};
use crate::auth::layer::PeerCerts;
use crate::net::Conn;

/// `[tls]` in the config file (docs/security.md). Paths are relative to the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsDoc {
    /// The server's certificate chain (PEM). With `key`, turns TLS on for both listeners.
    pub cert: Option<PathBuf>,
    /// The server certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates are verified against (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Refuse, at the handshake, a client without a valid certificate (default false:
    /// bearer tokens over TLS keep working without one).
    pub require_client_cert: Option<bool>,
    /// Client certificate subjects mapped to identities (`[[tls.identity]]`).
    #[serde(default)]
    pub identity: Vec<TlsIdentityDoc>,
}

/// `[[tls.identity]]`: `subject = "CN=envoy"` (or `DNS:…`, `URI:…`), `name`, `role`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsIdentityDoc {
    pub subject: String,
    pub name: String,
    pub role: String,
}

/// TLS flags of `switchyard-control serve` (they override `[tls]`).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Serve TLS on both listeners with this certificate chain (PEM) [config: tls.cert].
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM) [config: tls.key].
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Verify client certificates against this CA bundle (PEM): mTLS [config: tls.client_ca].
    #[arg(long, value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse connections without a valid client certificate (needs --tls-client-ca)
    /// [config: tls.require_client_cert].
    #[arg(long)]
    pub tls_require_client_cert: bool,
    /// Map a client certificate to an identity, SUBJECT=NAME:ROLE, e.g.
    /// `CN=envoy=envoy:dataplane` or `URI:spiffe://example.org/ci=ci:operator`
    /// (repeatable; added to [[tls.identity]]).
    #[arg(long, value_name = "SUBJECT=NAME:ROLE")]
    pub tls_identity: Vec<String>,
    /// Serve plain text on a non-loopback address with authentication on: tokens then
    /// cross the network readable by anyone on the path. Only behind a TLS-terminating
    /// proxy or on a network you trust (docs/security.md).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// Resolved TLS settings: TLS is on when this exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
    pub identities: CertIdentities,
}

impl TlsSettings {
    /// Server certificate and key, no client certificates (tests add the rest).
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            require_client_cert: false,
            identities: CertIdentities::default(),
        }
    }
}

/// Flags over `[tls]`: `None` for plain text, or every problem, each naming its field.
pub fn resolve(
    doc: Option<&TlsDoc>,
    args: &TlsArgs,
    base: &Path,
) -> Result<Option<TlsSettings>, Vec<String>> {
    let empty = TlsDoc::default();
    let doc = doc.unwrap_or(&empty);
    let file = |p: &Option<PathBuf>| p.as_ref().map(|p| base.join(p));
    let cert = args.tls_cert.clone().or_else(|| file(&doc.cert));
    let key = args.tls_key.clone().or_else(|| file(&doc.key));
    let client_ca = args.tls_client_ca.clone().or_else(|| file(&doc.client_ca));
    let require = args.tls_require_client_cert || doc.require_client_cert.unwrap_or(false);
    let mut problems = Vec::new();
    let mut identities = Vec::new();
    for (i, d) in doc.identity.iter().enumerate() {
        match CertIdentity::new(&d.subject, &d.name, &d.role) {
            Ok(m) => identities.push(m),
            Err(e) => problems.push(format!("tls.identity[{i}].{e}")),
        }
    }
    for flag in &args.tls_identity {
        match CertIdentity::parse_flag(flag) {
            Ok(m) => identities.push(m),
            Err(e) => problems.push(format!("--tls-identity {e}")),
        }
    }
    let any_identity = !doc.identity.is_empty() || !args.tls_identity.is_empty();
    match (&cert, &key) {
        (Some(_), None) => problems.push("tls.key: required with tls.cert".into()),
        (None, Some(_)) => problems.push("tls.cert: required with tls.key".into()),
        (None, None) => {
            if client_ca.is_some() || require || any_identity {
                problems.push(
                    "tls.cert, tls.key: required for tls.client_ca, tls.require_client_cert \
                     and tls.identity (client certificates need TLS)"
                        .into(),
                );
            }
        }
        (Some(_), Some(_)) => {}
    }
    if client_ca.is_none() {
        if require {
            problems.push("tls.require_client_cert: needs tls.client_ca".into());
        }
        if any_identity {
            problems.push(
                "tls.identity: needs tls.client_ca (without it no client certificate is \
                 asked for or verified)"
                    .into(),
            );
        }
    }
    let identities = match CertIdentities::new(identities) {
        Ok(m) => m,
        Err(dups) => {
            problems.extend(dups.into_iter().map(|d| format!("tls.identity: {d}")));
            CertIdentities::default()
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsSettings {
            cert,
            key,
            client_ca,
            require_client_cert: require,
            identities,
        }),
        _ => None,
    })
}

/// The rustls configurations of the two listeners: gRPC (ALPN h2) and HTTP (h2 and
/// http/1.1), from the files the settings name. Errors name the field and the file. The
/// server certificate is shared and follows its files ([`reload::ServerCert`]): a rotated
/// pair serves new connections without a restart.
pub fn server_configs(
    s: &TlsSettings,
) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Read now (a bad file fails the start), and again whenever the files change.
    let cert = Arc::new(reload::ServerCert::load(&s.cert, &s.key, provider.clone())?);
    let verifier = match &s.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs("tls.client_ca", path)? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca {}: {e}", path.display()))?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if s.require_client_cert {
                b
            } else {
                b.allow_unauthenticated()
            };
            b.build()
                .map_err(|e| format!("tls.client_ca {}: {e}", path.display()))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut grpc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    let mut http = grpc.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(grpc), Arc::new(http)))
}

/// Every certificate in a PEM file; at least one.
fn read_certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{field} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{field} {}: no CERTIFICATE in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The TLS handshake every connection to a TLS listener must finish before it is served
/// (under the listener's first-byte deadline, [`crate::net::accept`]). A refused
/// handshake (no or a forged, expired or unmapped-CA client certificate when one is
/// required or presented) is logged and the connection dropped.
pub struct Handshake(tokio_rustls::TlsAcceptor);

impl Handshake {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(tokio_rustls::TlsAcceptor::from(config))
    }
}

impl crate::net::Handshake for Handshake {
    type Io = TlsStream<Conn>;
    async fn handshake(&self, conn: Conn) -> Result<Self::Io, crate::net::Refused> {
        self.0
            .accept(conn)
            .await
            .map_err(|e| crate::net::Refused::Handshake(e.to_string()))
    }
}

/// The HTTP listener over TLS, for `axum::serve`: connections whose handshake finished.
pub type TlsListener = crate::net::Admitted<TlsStream<Conn>>;

/// Each HTTP request carries the client certificate its connection presented.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerCerts
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref();
        PeerCerts(session.peer_certificates().map(|c| Arc::new(c.to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str, args: &TlsArgs) -> Vec<String> {
        let doc: TlsDoc = toml::from_str(toml_text).unwrap();
        resolve(Some(&doc), args, Path::new("/etc/sy")).unwrap_err()
    }

    #[test]
    fn settings_resolve_relative_to_the_file_and_flags_win() {
        let doc: TlsDoc = toml::from_str(
            "cert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\n\
             [[identity]]\nsubject = \"CN=envoy\"\nname = \"envoy\"\nrole = \"dataplane\"\n",
        )
        .unwrap();
        let args = TlsArgs {
            tls_key: Some("/other/k.pem".into()),
            tls_identity: vec!["CN=admin=root-admin:admin".into()],
            ..Default::default()
        };
        let s = resolve(Some(&doc), &args, Path::new("/etc/sy"))
            .unwrap()
            .unwrap();
        assert_eq!(s.cert, Path::new("/etc/sy/s.pem"));
        assert_eq!(s.key, Path::new("/other/k.pem"));
        assert_eq!(s.client_ca.as_deref(), Some(Path::new("/etc/sy/ca.pem")));
        assert!(!s.require_client_cert);
        assert_eq!(s.identities.iter().count(), 2);
        assert_eq!(
            resolve(None, &TlsArgs::default(), Path::new("")),
            Ok(None),
            "plain text by default"
        );
    }

    #[test]
    fn every_problem_is_named() {
        let p = problems(
            "cert = \"s.pem\"\nrequire_client_cert = true\n\
             [[identity]]\nsubject = \"envoy\"\nname = \"envoy\"\nrole = \"dataplane\"\n\
             [[identity]]\nsubject = \"CN=x\"\nname = \"brain\"\nrole = \"admin\"\n\
             [[identity]]\nsubject = \"CN=y\"\nname = \"y\"\nrole = \"root\"\n",
            &TlsArgs {
                tls_identity: vec!["CN=z".into()],
                ..Default::default()
            },
        );
        let all = p.join("\n");
        for want in [
            "tls.identity[0].subject \"envoy\": expected CN=",
            "tls.identity[1].name \"brain\" is reserved",
            "tls.identity[2].role \"root\"",
            "--tls-identity \"CN=z\": expected SUBJECT=NAME:ROLE",
            "tls.key: required with tls.cert",
            "tls.require_client_cert: needs tls.client_ca",
            "tls.identity: needs tls.client_ca",
        ] {
            assert!(all.contains(want), "{want} in:\n{all}");
        }
        let p = problems("client_ca = \"ca.pem\"\n", &TlsArgs::default());
        assert!(p[0].starts_with("tls.cert, tls.key: required"), "{p:?}");
        let p = problems(
            "cert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\n",
            &TlsArgs {
                tls_identity: vec!["CN=a=a:viewer".into(), "CN=a=b:admin".into()],
                ..Default::default()
            },
        );
        assert_eq!(p, ["tls.identity: subject CN=a is mapped more than once"]);
        let bad: Result<TlsDoc, _> = toml::from_str("cert = \"a\"\nclient_cert = \"b\"\n");
        assert!(bad.is_err(), "unknown keys are refused");
    }
}
