//! What every command needs from the global options: the channel to the control
//! service (the one place `--server` becomes a connection) and the actor.

use std::time::Duration;

use tonic::transport::Channel;

use super::args::Cli;
use super::output::Failure;

/// The global options of one invocation and its connection, opened on first use.
pub struct Ctx<'a> {
    pub cli: &'a Cli,
    channel: Option<Channel>,
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
    pub async fn channel(&mut self) -> Result<Channel, Failure> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let channel = self.connect(Some(self.timeout())).await?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// A channel for a stream that lives for hours: connecting still times out, calls
    /// do not.
    pub async fn stream_channel(&self) -> Result<Channel, Failure> {
        self.connect(None).await
    }

    async fn connect(&self, call_timeout: Option<Duration>) -> Result<Channel, Failure> {
        let server = &self.cli.server;
        let uri = server_uri(server).map_err(Failure::usage)?;
        let mut endpoint = Channel::from_shared(uri)
            .map_err(|e| Failure::usage(format!("bad --server {server:?}: {e}")))?
            .connect_timeout(self.timeout());
        if let Some(t) = call_timeout {
            endpoint = endpoint.timeout(t);
        }
        endpoint.connect().await.map_err(|e| {
            Failure::unreachable(format!("cannot reach the control service at {server}: {e}"))
        })
    }

    /// Who makes the change: `--actor`, else the login name, else `cli`.
    pub fn actor(&self) -> String {
        self.cli
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "cli".into())
    }
}

/// The URI to dial for a `--server` value: `host:port` (what `make run` prints and
/// `serve --grpc` takes) means plain HTTP/2; `http://…` and `https://…` are used as they
/// are. Anything else is a usage error that says which forms work.
pub fn server_uri(server: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "bad --server {server:?}: {why}; use host:port (e.g. 127.0.0.1:18000), \
             http://host:port or https://host:port"
        )
    };
    let s = server.trim();
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_string(), s),
    };
    if scheme != "http" && scheme != "https" {
        return Err(bad(&format!("unsupported scheme {scheme:?}")));
    }
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains('/') || authority.contains(char::is_whitespace) {
        return Err(bad("expected only a host and port"));
    }
    let uri = format!("{scheme}://{authority}");
    match uri.parse::<tonic::transport::Uri>() {
        Ok(u) if u.host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        _ => Err(bad("not a host:port")),
    }
}

#[cfg(test)]
mod tests {
    use super::server_uri;

    #[test]
    fn accepts_host_port_and_http_urls() {
        let ok = |s: &str| server_uri(s).unwrap();
        assert_eq!(ok("127.0.0.1:18000"), "http://127.0.0.1:18000");
        assert_eq!(ok("localhost:18000"), "http://localhost:18000");
        assert_eq!(ok("[::1]:18000"), "http://[::1]:18000");
        assert_eq!(ok("http://127.0.0.1:18000"), "http://127.0.0.1:18000");
        assert_eq!(ok("http://127.0.0.1:18000/"), "http://127.0.0.1:18000");
        assert_eq!(
            ok("https://control.example:443"),
            "https://control.example:443"
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
