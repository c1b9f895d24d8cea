//! What every command needs from the global options: the channel to the control
//! service (the one place `--server` becomes a connection — TLS or not, with which CA and
//! client certificate — and the one place the bearer token is attached to every call)
//! and the actor.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::args::Cli;
use super::output::Failure;

/// Adds `authorization: Bearer <token>` to every call (when there is a token).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// A connection to the control service that carries the credentials.
pub type Conn = InterceptedService<Channel, Bearer>;

/// The token file `make run` writes, used when no other credential is given.
pub const DEMO_TOKEN_FILE: &str = ".run/admin.token";

/// The CA and admin client certificate `make run` writes (`switchyard-control certs demo
/// --out .run/tls`), used when no other is given.
pub const DEMO_CA: &str = ".run/tls/ca.pem";
pub const DEMO_CERT: &str = ".run/tls/admin.pem";
pub const DEMO_KEY: &str = ".run/tls/admin.key";

/// The TLS files of one invocation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    /// Client certificate and key, both or neither.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The global options of one invocation and its connection, opened on first use.
pub struct Ctx<'a> {
    pub cli: &'a Cli,
    channel: Option<Conn>,
}

impl<'a> Ctx<'a> {
    pub fn new(cli: &'a Cli) -> Self {
        Self { cli, channel: None }
    }

    /// Print JSON instead of tables.
    pub fn json(&self) -> bool {
        self.cli.json
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cli.timeout.max(1))
    }

    /// The channel for unary calls: each call times out after `--timeout`.
    pub async fn channel(&mut self) -> Result<Conn, Failure> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let channel = self.connect(Some(self.timeout())).await?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// A channel for a stream that lives for hours: connecting still times out, calls
    /// do not.
    pub async fn stream_channel(&self) -> Result<Conn, Failure> {
        self.connect(None).await
    }

    /// The bearer token: `--token`, `--token-file`, `SWITCHYARD_TOKEN`,
    /// `SWITCHYARD_TOKEN_FILE`, else [`DEMO_TOKEN_FILE`] if it exists; none at all is
    /// fine for a server without authentication (it answers UNAUTHENTICATED otherwise).
    pub fn token(&self) -> Result<Option<String>, Failure> {
        let env = |k: &str| std::env::var(k).ok();
        let from_file = |p: PathBuf| -> Result<Option<String>, Failure> {
            let text = std::fs::read_to_string(&p).map_err(|e| {
                Failure::usage(format!("cannot read the token file {}: {e}", p.display()))
            })?;
            let t = text.trim().to_string();
            if t.is_empty() {
                return Err(Failure::usage(format!(
                    "the token file {} is empty",
                    p.display()
                )));
            }
            Ok(Some(t))
        };
        if let Some(t) = first_set([self.cli.token.clone()]) {
            return Ok(Some(t));
        }
        if let Some(p) = &self.cli.token_file {
            return from_file(p.clone());
        }
        if let Some(t) = first_set([env("SWITCHYARD_TOKEN")]) {
            return Ok(Some(t));
        }
        if let Some(p) = first_set([env("SWITCHYARD_TOKEN_FILE")]) {
            return from_file(PathBuf::from(p));
        }
        let demo = PathBuf::from(DEMO_TOKEN_FILE);
        if demo.is_file() {
            return from_file(demo);
        }
        Ok(None)
    }

    /// `--ca`, `--cert`, `--key`, else `SWITCHYARD_CA`, `SWITCHYARD_CERT`,
    /// `SWITCHYARD_KEY`, else make run's files in `.run/tls/` when they exist.
    pub fn tls_files(&self) -> Result<TlsFiles, Failure> {
        let env = |k: &str| std::env::var(k).ok().map(PathBuf::from);
        let demo = |p: &str| Some(PathBuf::from(p)).filter(|p| p.is_file());
        let ca = self.cli.ca.clone().or_else(|| env("SWITCHYARD_CA"));
        let cert = self.cli.cert.clone().or_else(|| env("SWITCHYARD_CERT"));
        let key = self.cli.key.clone().or_else(|| env("SWITCHYARD_KEY"));
        let identity =
            match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (Some(_), None) => return Err(Failure::usage(
                    "--cert needs --key (or SWITCHYARD_KEY): the client certificate's private key",
                )),
                (None, Some(_)) => {
                    return Err(Failure::usage(
                        "--key needs --cert (or SWITCHYARD_CERT): the client certificate",
                    ))
                }
                (None, None) => demo(DEMO_CERT).zip(demo(DEMO_KEY)),
            };
        Ok(TlsFiles {
            ca: ca.or_else(|| demo(DEMO_CA)),
            identity,
        })
    }

    async fn connect(&self, call_timeout: Option<Duration>) -> Result<Conn, Failure> {
        let bearer = match self.token()? {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        Failure::usage("the token has characters a header cannot carry")
                    })?,
            ),
            None => None,
        };
        let server = &self.server();
        let (authority, scheme) = server_uri(server).map_err(Failure::usage)?;
        let files = self.tls_files()?;
        let tls = match scheme {
            Scheme::Https => true,
            Scheme::Http => false,
            Scheme::Unspecified => files.ca.is_some(),
        };
        let uri = format!("{}://{authority}", if tls { "https" } else { "http" });
        let mut endpoint = Channel::from_shared(uri.clone())
            .map_err(|e| Failure::usage(format!("bad --server {server:?}: {e}")))?
            .connect_timeout(self.timeout());
        if tls {
            endpoint = endpoint
                .tls_config(client_tls(&files)?)
                .map_err(|e| Failure::usage(format!("TLS settings: {e}")))?;
        }
        if let Some(t) = call_timeout {
            endpoint = endpoint.timeout(t);
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let hint = match (&files.ca, tls) {
                (Some(ca), true) => format!(
                    " (TLS with CA {}; use http://{authority} for a plain-text server)",
                    ca.display()
                ),
                _ => String::new(),
            };
            Failure::unreachable(format!(
                "cannot reach the control service at {uri}: {}{hint}",
                error_chain(&e)
            ))
        })?;
        Ok(InterceptedService::new(channel, Bearer(bearer)))
    }

    /// `--server`, else `SWITCHYARD_SERVER`, else [`DEFAULT_SERVER`].
    pub fn server(&self) -> String {
        first_set([
            self.cli.server.clone(),
            std::env::var("SWITCHYARD_SERVER").ok(),
        ])
        .unwrap_or_else(|| DEFAULT_SERVER.to_string())
    }

    /// Who makes the change: `--actor`, else `SWITCHYARD_ACTOR`, `USER`, `LOGNAME`, the
    /// user name of the process, `cli` — the first that is set and not empty.
    pub fn actor(&self) -> String {
        let env = |k: &str| std::env::var(k).ok();
        first_set([
            self.cli.actor.clone(),
            env("SWITCHYARD_ACTOR"),
            env("USER"),
            env("LOGNAME"),
        ])
        .or_else(process_user_name)
        .unwrap_or_else(|| "cli".into())
    }
}

/// Where the control service listens unless told otherwise (what `make run` prints).
pub const DEFAULT_SERVER: &str = "127.0.0.1:18000";

/// The first value that is present and not blank, trimmed.
fn first_set<const N: usize>(candidates: [Option<String>; N]) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

/// The name of the user owning this process, from the password database (Unix), when
/// neither `USER` nor `LOGNAME` is set (cron, containers, `env -i`).
fn process_user_name() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // The owner of /proc/self is the process's user (Linux); no libc call needed.
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let id: u32 = f.nth(1)?.parse().ok()?;
            (id == uid && !name.is_empty()).then(|| name.to_string())
        })
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The TLS settings of a connection: the CA (required: a control service's certificate
/// comes from a private CA, never the web's) and the client certificate, if any.
fn client_tls(files: &TlsFiles) -> Result<ClientTlsConfig, Failure> {
    let read = |what: &str, p: &PathBuf| {
        std::fs::read(p)
            .map_err(|e| Failure::usage(format!("cannot read the {what} {}: {e}", p.display())))
    };
    let ca = files.ca.as_ref().ok_or_else(|| {
        Failure::usage(
            "an https:// server needs the CA that signed its certificate: --ca FILE or \
             SWITCHYARD_CA",
        )
    })?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA", ca)?));
    if let Some((cert, key)) = &files.identity {
        tls = tls.identity(Identity::from_pem(
            read("client certificate", cert)?,
            read("client key", key)?,
        ));
    }
    Ok(tls)
}

/// An error and its causes, `: `-separated (tonic's top-level transport error says
/// little; the TLS reason is in its sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// How a `--server` value asks to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `https://…`: TLS.
    Https,
    /// `http://…`: plain text.
    Http,
    /// `host:port`: TLS when a CA is known, else plain text.
    Unspecified,
}

/// The authority (`host:port`) of a `--server` value and how it asks to connect:
/// `host:port` (what `make run` prints and `serve --grpc` takes), `http://host:port` or
/// `https://host:port`. Anything else is a usage error that says which forms work.
pub fn server_uri(server: &str) -> Result<(String, Scheme), String> {
    let bad = |why: &str| {
        format!(
            "bad --server {server:?}: {why}; use host:port (e.g. 127.0.0.1:18000), \
             https://host:port or http://host:port"
        )
    };
    let s = server.trim();
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => (String::new(), s),
    };
    let scheme = match scheme.as_str() {
        "" => Scheme::Unspecified,
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(bad(&format!("unsupported scheme {other:?}"))),
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains('/') || authority.contains(char::is_whitespace) {
        return Err(bad("expected only a host and port"));
    }
    let uri = format!("http://{authority}");
    match uri.parse::<tonic::transport::Uri>() {
        Ok(u) if u.host().is_some_and(|h| !h.is_empty()) => Ok((authority.to_string(), scheme)),
        _ => Err(bad("not a host:port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_set_skips_missing_and_empty_values() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            first_set([None, s(""), s("  "), s("dave"), s("eve")]),
            s("dave")
        );
        assert_eq!(first_set([None, s("")]), None);
    }

    #[test]
    fn accepts_host_port_and_http_and_https_urls() {
        let ok = |s: &str| server_uri(s).unwrap();
        let a = |s: &str, scheme| (s.to_string(), scheme);
        assert_eq!(
            ok("127.0.0.1:18000"),
            a("127.0.0.1:18000", Scheme::Unspecified)
        );
        assert_eq!(
            ok("localhost:18000"),
            a("localhost:18000", Scheme::Unspecified)
        );
        assert_eq!(ok("[::1]:18000"), a("[::1]:18000", Scheme::Unspecified));
        assert_eq!(
            ok("http://127.0.0.1:18000"),
            a("127.0.0.1:18000", Scheme::Http)
        );
        assert_eq!(
            ok("http://127.0.0.1:18000/"),
            a("127.0.0.1:18000", Scheme::Http)
        );
        assert_eq!(
            ok("HTTPS://control.example:443"),
            a("control.example:443", Scheme::Https)
        );
    }

    #[test]
    fn rejects_other_forms_with_the_accepted_ones() {
        for bad in [
            "",
            "ftp://host:1",
            "http://",
            "host:1/path",
            "a b:1",
            "grpc://x:1",
        ] {
            let e = server_uri(bad).unwrap_err();
            assert!(e.contains("use host:port"), "{bad}: {e}");
        }
    }
}
