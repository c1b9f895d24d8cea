//! The web console: static pages embedded in the binary and served under `/console/`,
//! plus the JSON endpoints only the console needed (actions, live stream, explain).
//!
//! The console decides nothing: every action calls the same control and autopilot
//! functions as the gRPC services, with the same guardrails. The pages are plain
//! HTML/CSS/JS modules under `control-service/console/` (no build step); uPlot is
//! vendored there as its release file. Authentication is not this module's: the auth
//! middleware checks tokens on every route (`auth/access.rs`: the pages are open, the
//! API is not); the pages send `Authorization: Bearer …` on every call, the stream
//! included (fetch streaming, not `EventSource`), and actions are audited under the
//! caller's identity.

pub mod api;
mod diff;
mod explain;
mod stream;
pub mod whoami;

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::control::Control;

/// One embedded file: path under `/console/`, content type, bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../console/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the console serves. A file not listed here is not served.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("pages.js", JS),
    asset!("style.css", CSS),
    asset!("vendor/uplot/uPlot.iife.min.js", JS),
    asset!("vendor/uplot/uPlot.min.css", CSS),
    asset!("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
];

/// The console's routes: the pages under `/console/` and its API under `/api/v1/`.
/// Merged into [`crate::http::router`] by one line.
pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(|| async { serve("index.html") }))
        .route(
            "/console/{*path}",
            get(|Path(path): Path<String>| async move { serve(&path) }),
        )
        .merge(api::routes())
}

fn serve(path: &str) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                // Assets change with the binary: revalidate, never serve a stale page.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => api::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such console file: /console/{path}"),
        )
        .into_response(),
    }
}
