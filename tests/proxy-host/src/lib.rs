//! Switchyard's own proxy-wasm host: the ABI 0.2.1 on wasmtime, with a virtual clock,
//! several VMs per simulated process, shared data and queues, gRPC with a test-side peer.
//! See `README.md` in this crate for the API tour.

pub mod abi;
pub mod grpc;
mod host;
pub mod props;
pub mod shared;
pub mod state;
pub mod wasi;

pub use abi::{Action, LogLevel, MapType, MetricKind, Status};
pub use host::HostTrap;
pub use state::{LocalResponse, LogEntry};

pub mod error;
pub mod http;
pub mod module;
pub mod vm;

pub use error::HostError;
pub use http::{Exchange, Request, Response, SetCookie};
pub use module::WasmModule;
pub use props::PropValue;
pub use vm::{Vm, VmSpec};
pub mod process;
pub use process::{GrpcPeer, Process, VmId};
pub mod build;
pub mod fixture;
pub use fixture::Switchyard;
pub mod peer;
pub use peer::{Reply, ScriptHandle, ScriptedPeer};
pub mod bridge;
pub use bridge::TonicBridge;
pub mod scenario;
