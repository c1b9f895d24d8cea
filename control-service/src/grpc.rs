//! gRPC front end: the data plane (Watch, Report) for Envoys and the operator services,
//! one module per service. Thin: every decision is the control core's; this module
//! holds what they share (errors to statuses, the caller's identity, change responses).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use switchyard_filter::snapshot::Snapshot;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService, UnaryService};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::auth::layer::StreamCredential;
use crate::auth::Identity;
use crate::codec::{Encoded, SmallBufferCodec};
use crate::control::{Change, Control, ControlError, Outcome, StackOp};
use crate::fleet::MAX_NAME_LEN;
use crate::proto::{self, v1};

mod audit;
mod data_plane;
mod events;
mod fleet;
mod incidents;
mod policies;
mod rollouts;
mod stacks;
mod tokens;

pub use audit::AuditService;
pub use data_plane::{DataPlaneService, WatchSettings};
pub use events::EventsService;
pub use fleet::{status, FleetService};
pub use incidents::IncidentsService;
pub use policies::PoliciesService;
pub use rollouts::RolloutsService;
pub use stacks::StacksService;
pub use tokens::TokensService;

/// Limits on history pages.
const DEFAULT_HISTORY: usize = 20;
const MAX_HISTORY: usize = 1000;

/// At most this many policy problems go into a status (message and details).
pub const MAX_STATUS_ISSUES: usize = 50;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::InvalidPolicy(issues) => {
                // Status message and details travel in HTTP/2 trailers, whose size is
                // limited: send the first problems and the count, never all of them.
                let shown = &issues[..issues.len().min(MAX_STATUS_ISSUES)];
                let violations: Vec<FieldViolation> = shown
                    .iter()
                    .map(|i| FieldViolation::new(&i.path, &i.message))
                    .collect();
                let mut message = format!(
                    "invalid policy ({} problem{}):\n{}",
                    issues.len(),
                    if issues.len() == 1 { "" } else { "s" },
                    shown
                        .iter()
                        .map(|i| format!("  {}", clip(&i.to_string(), 300)))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                if issues.len() > shown.len() {
                    message.push_str(&format!(
                        "\n  … and {} more (`switchyard policy validate FILE` lists every one)",
                        issues.len() - shown.len()
                    ));
                }
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ControlError::InvalidArgument(m) => Status::invalid_argument(m),
            ControlError::NotFound(m) => Status::not_found(m),
            ControlError::FailedPrecondition(m) => Status::failed_precondition(m),
            ControlError::Conflict(m) => Status::aborted(m),
            ControlError::Unavailable(m) => Status::unavailable(m),
            e @ (ControlError::Store(_) | ControlError::Task(_)) => {
                tracing::error!(error = %e, "store failure");
                Status::internal(format!("nothing was changed: {e}"))
            }
        }
    }
}

/// The authenticated caller (put there by the auth layer); `None` with authentication off.
fn identity<T>(request: &Request<T>) -> Option<Identity> {
    request.extensions().get::<Identity>().cloned()
}

fn change_response(o: Outcome) -> v1::ChangeResponse {
    v1::ChangeResponse {
        version: o.record.version,
        changed: o.changed,
        warnings: proto::field_issues(&o.warnings),
        info: Some(proto::version_info(&o.record)),
    }
}
