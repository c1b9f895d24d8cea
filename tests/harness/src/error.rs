//! What can go wrong while starting or waiting for a process. Every error names the
//! process and carries the tail of its logs, so a failing CI run explains itself.

use std::time::Duration;

/// A harness failure.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The process did not get ready within the bound.
    #[error("{name}: not ready after {waited:?}: {what}\n{tail}")]
    Timeout {
        name: String,
        what: String,
        waited: Duration,
        tail: String,
    },
    /// The process exited while we waited for it.
    #[error("{name}: exited ({status}) while waiting for {what}\n{tail}")]
    Exited {
        name: String,
        what: String,
        status: String,
        tail: String,
    },
    /// An I/O error (spawning, files, sockets).
    #[error("{name}: {what}: {source}")]
    Io {
        name: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else, already worded.
    #[error("{0}")]
    Other(String),
}

impl HarnessError {
    /// Whether the process failed because its port was taken: the cue to retry on another.
    pub fn is_addr_in_use(&self) -> bool {
        let text = match self {
            HarnessError::Io { source, .. } => {
                return source.kind() == std::io::ErrorKind::AddrInUse;
            }
            HarnessError::Timeout { tail, .. } | HarnessError::Exited { tail, .. } => tail,
            HarnessError::Other(s) => s,
        };
        let lower = text.to_ascii_lowercase();
        lower.contains("address already in use") || lower.contains("addrinuse")
    }

    pub(crate) fn io(name: &str, what: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            name: name.to_string(),
            what: what.into(),
            source,
        }
    }
}
