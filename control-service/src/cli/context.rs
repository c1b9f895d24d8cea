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
        let mut endpoint = Channel::from_shared(server.clone())
            .map_err(|e| Failure::rejected(format!("bad --server {server:?}: {e}")))?
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
