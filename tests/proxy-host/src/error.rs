//! Errors the host reports to a test.

/// Why the host could not do what the test asked.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("loading {what}: {message}")]
    Load { what: String, message: String },
    /// Includes wasmtime's message, which names a missing import.
    #[error("instantiating {0}")]
    Instantiate(String),
    #[error("VM {vm}: the guest trapped in {callback}: {message}")]
    Trap {
        vm: String,
        callback: &'static str,
        message: String,
    },
    #[error("VM {vm}: proxy_on_vm_start returned false")]
    VmStartRejected { vm: String, logs: String },
    #[error("VM {vm}: proxy_on_configure rejected the plugin configuration; guest logs:\n{logs}")]
    ConfigureRejected { vm: String, logs: String },
    #[error("VM {0} trapped earlier and is unusable, as Envoy would leave it")]
    VmFailed(String),
    #[error("{0}")]
    Usage(String),
}

impl HostError {
    pub fn is_trap(&self) -> bool {
        matches!(self, HostError::Trap { .. })
    }
}
