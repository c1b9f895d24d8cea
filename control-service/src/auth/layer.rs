//! Enforcement, in one place per protocol: a tower layer in front of every gRPC service
//! and an axum middleware in front of every HTTP route. Each looks up the endpoint in
//! the [access table](super::access), checks the bearer token (or, without one, the
//! client certificate the TLS handshake verified), and either answers
//! UNAUTHENTICATED / PERMISSION_DENIED (401 / 403) before any handler runs, or puts the
//! caller's [`Identity`] into the request's extensions for the handler's audit actor.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use rustls_pki_types::CertificateDer;

use super::certs::CertIdentities;
use super::{access, AuthError, Identity, Permission, Tokens};
use crate::store::Store;

/// Checks credentials: tokens against the store, client certificates against the
/// configured mappings. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    certs: Arc<CertIdentities>,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
}

/// A verified token (by its SHA-256): who it is, when it was verified, and the revocation
/// count of this process then.
type Cached = (Identity, Instant, u64);

/// A verified token is trusted this long without reading the store again: a revocation
/// takes effect on every replica within this time (docs/security.md).
pub const TOKEN_CACHE_FRESH: Duration = Duration::from_secs(5);
/// While the store cannot be read (etcd without quorum), a token verified within this
/// time keeps working, so reads and Watch go on serving; unknown tokens get UNAVAILABLE.
pub const TOKEN_CACHE_STALE_OK: Duration = Duration::from_secs(600);
/// Bound of the cache (distinct tokens); when full it starts again empty.
const TOKEN_CACHE_MAX: usize = 10_000;

/// The certificate chain a client presented and the TLS handshake verified (end entity
/// first); `None` on a plain-text connection or when the client sent none. The HTTP
/// listener's connect info (`ConnectInfo<PeerCerts>`); gRPC has tonic's `TlsConnectInfo`.
#[derive(Debug, Clone, Default)]
pub struct PeerCerts(pub Option<Arc<Vec<CertificateDer<'static>>>>);

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No usable credential: 401 / UNAUTHENTICATED.
    Unauthenticated(String),
    /// A valid credential whose role does not allow this: 403 / PERMISSION_DENIED.
    Forbidden(String),
    /// The credential cannot be checked now (the store is unreachable and the token was
    /// not verified recently): 503 / UNAVAILABLE — retry, nothing is wrong with it.
    Unavailable(String),
}

impl Denied {
    pub fn grpc_status(&self) -> tonic::Status {
        match self {
            Denied::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
            Denied::Forbidden(m) => tonic::Status::permission_denied(m.clone()),
            Denied::Unavailable(m) => tonic::Status::unavailable(m.clone()),
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Denied::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, "unauthenticated", m),
            Denied::Forbidden(m) => (StatusCode::FORBIDDEN, "permission_denied", m),
            Denied::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        };
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let mut r = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(value: Option<&HeaderValue>) -> Result<&str, AuthError> {
    let v = value.ok_or(AuthError::Missing)?;
    let v = v.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = v.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            certs: Arc::new(CertIdentities::default()),
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Map verified client certificates to identities (`[[tls.identity]]`).
    pub fn with_certs(mut self, certs: CertIdentities) -> Self {
        self.certs = Arc::new(certs);
        self
    }

    /// The identity of an `authorization` header value. Blocking (reads the store, unless
    /// the token was verified within [`TOKEN_CACHE_FRESH`]; a token verified within
    /// [`TOKEN_CACHE_STALE_OK`] is still accepted while the store cannot be read).
    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Identity, AuthError> {
        let token = bearer(authorization)?;
        let key = super::tokens::hash(token);
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        // A revocation made in this process invalidates every cached entry at once.
        let epoch = super::tokens::REVOCATIONS.load(Ordering::Acquire);
        if let Some((who, at, seen)) = &cached {
            if *seen == epoch && at.elapsed() < TOKEN_CACHE_FRESH {
                return Ok(who.clone());
            }
        }
        let verified = Tokens::new(&*self.store).verify(token);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match verified {
            Ok(who) => {
                if cache.len() >= TOKEN_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, (who.clone(), Instant::now(), epoch));
                Ok(who)
            }
            Err(AuthError::Store(e)) => match cached {
                Some((who, at, seen)) if seen == epoch && at.elapsed() < TOKEN_CACHE_STALE_OK => {
                    tracing::debug!(error = %e, "store unreachable: a recently verified token is accepted");
                    Ok(who)
                }
                _ => Err(AuthError::Store(e)),
            },
            Err(e) => {
                cache.remove(&key);
                Err(e)
            }
        }
    }

    /// Whether a request for `what` that needs `need` (`None`: no access rule) may
    /// proceed, and as whom (`None` for open endpoints). An `authorization` header is the
    /// credential when present (per call); else a verified client certificate (`peer`)
    /// is, through its `[[tls.identity]]` mapping: a certificate without one is refused
    /// with PERMISSION_DENIED (it is genuine, it grants nothing).
    pub async fn decide(
        &self,
        need: Option<Permission>,
        what: &str,
        authorization: Option<HeaderValue>,
        peer: &PeerCerts,
    ) -> Result<Option<Identity>, Denied> {
        let Some(need) = need else {
            tracing::error!(endpoint = %what, "refused: no access rule for this endpoint");
            return Err(Denied::Forbidden(format!(
                "no access rule for {what}: refused"
            )));
        };
        if need == Permission::Open {
            return Ok(None);
        }
        if authorization.is_none() {
            if let Some(cert) = peer.0.as_ref().and_then(|chain| chain.first()) {
                let who = self.certs.identify(cert).map_err(|e| {
                    tracing::info!(endpoint = %what, error = %e, "call refused: unmapped certificate");
                    Denied::Forbidden(e)
                })?;
                return self.grant(who, need, what).map(Some);
            }
        }
        let me = self.clone();
        let who = tokio::task::spawn_blocking(move || me.authenticate(authorization.as_ref()))
            .await
            .map_err(|e| Denied::Unauthenticated(format!("cannot check credentials: {e}")))?;
        let who = who.map_err(|e| {
            tracing::info!(endpoint = %what, error = %e, "unauthenticated call refused");
            match e {
                AuthError::Store(_) => Denied::Unavailable(e.to_string()),
                e => Denied::Unauthenticated(e.to_string()),
            }
        })?;
        self.grant(who, need, what).map(Some)
    }

    fn grant(&self, who: Identity, need: Permission, what: &str) -> Result<Identity, Denied> {
        if !who.role.grants(need) {
            tracing::info!(endpoint = %what, name = %who.name, role = %who.role, "call refused: role too weak");
            return Err(Denied::Forbidden(format!(
                "{} (role {}) may not call {what}",
                who.name, who.role
            )));
        }
        Ok(who)
    }
}

/// The bearer token a call was admitted with, kept in the request's extensions for
/// streams that outlive the check at their start: Watch re-checks it now and then, and a
/// token revoked or expired since ends the stream with UNAUTHENTICATED.
#[derive(Clone)]
pub struct StreamCredential {
    auth: Authenticator,
    authorization: HeaderValue,
}

impl StreamCredential {
    /// `Err(reason)` once the token no longer authenticates (revoked, expired, deleted).
    /// A store that cannot be read is no reason: the caller keeps serving, as Watch does
    /// without its store.
    pub async fn still_valid(&self) -> Result<(), String> {
        let c = self.clone();
        match tokio::task::spawn_blocking(move || c.auth.authenticate(Some(&c.authorization))).await
        {
            Ok(Ok(_)) | Ok(Err(AuthError::Store(_))) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }
}

/// The gRPC layer: `Server::builder().layer(GrpcAuthLayer::new(…))`. With `None`
/// (authentication disabled) every call passes through without an identity.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    auth: Option<Authenticator>,
}

impl GrpcAuthLayer {
    pub fn new(auth: Option<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> tower_layer::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`GrpcAuthLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Option<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<axum::http::Request<B>> for GrpcAuth<S>
where
    S: tower_service::Service<
            axum::http::Request<B>,
            Response = axum::http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        // The ready service answers this call; a fresh clone waits for the next one.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let Some(auth) = self.auth.clone() else {
            return Box::pin(inner.call(req));
        };
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let header = req.headers().get(header::AUTHORIZATION).cloned();
            // Present when the listener speaks TLS (tonic puts the connect info there).
            let peer = PeerCerts(
                req.extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .and_then(|i| i.peer_certs()),
            );
            let permission = access::grpc(&path);
            // Only Watch outlives its first check (and re-checks its token); a unary call
            // is done with its credential once it is let in.
            let credential = header
                .clone()
                .filter(|_| permission == Some(access::Permission::Watch))
                .map(|authorization| StreamCredential {
                    auth: auth.clone(),
                    authorization,
                });
            match auth.decide(permission, &path, header, &peer).await {
                Ok(who) => {
                    if let Some(who) = who {
                        req.extensions_mut().insert(who);
                        if let Some(c) = credential {
                            req.extensions_mut().insert(c);
                        }
                    }
                    inner.call(req).await
                }
                Err(denied) => Ok(denied.grpc_status().into_http()),
            }
        })
    }
}

/// The HTTP middleware (`route_layer(from_fn_with_state(auth, http_auth))`): runs after
/// routing, so the matched route pattern names the rule.
pub async fn http_auth(
    State(auth): State<Authenticator>,
    mut req: Request,
    next: Next,
) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let what = format!(
        "{} {}",
        req.method(),
        matched.as_deref().unwrap_or(req.uri().path())
    );
    let need = matched
        .as_deref()
        .and_then(|m| access::http(m, req.method()));
    let header = req.headers().get(header::AUTHORIZATION).cloned();
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<PeerCerts>>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    match auth.decide(need, &what, header, &peer).await {
        Ok(who) => {
            if let Some(who) = who {
                req.extensions_mut().insert(who);
            }
            next.run(req).await
        }
        Err(denied) => denied.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_token_is_refused_at_once_when_revoked_here_and_unknown_tokens_stay_refused() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new());
        let tokens = Tokens::new(&*store);
        let (secret, record) = tokens
            .create("alice", super::super::Role::Operator, "test", 1)
            .unwrap();
        let auth = Authenticator::new(store.clone());
        let header = HeaderValue::from_str(&format!("Bearer {secret}")).unwrap();
        // Verified, then served from the cache.
        assert_eq!(auth.authenticate(Some(&header)).unwrap().name, "alice");
        assert_eq!(auth.authenticate(Some(&header)).unwrap().name, "alice");
        tokens.revoke(&record.id, 2).unwrap();
        assert_eq!(
            auth.authenticate(Some(&header)).unwrap_err(),
            AuthError::Revoked(record.id.clone())
        );
        let forged = HeaderValue::from_static("Bearer syt_0000");
        assert_eq!(
            auth.authenticate(Some(&forged)).unwrap_err(),
            AuthError::Unknown
        );
    }

    #[test]
    fn bearer_header_forms() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(Some(&h("Bearer syt_abc"))), Ok("syt_abc"));
        assert_eq!(bearer(Some(&h("bearer  syt_abc "))), Ok("syt_abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(
            bearer(Some(&h("Basic dXNlcg=="))),
            Err(AuthError::Malformed)
        );
        assert_eq!(bearer(Some(&h("syt_abc"))), Err(AuthError::Malformed));
        assert_eq!(bearer(Some(&h("Bearer "))), Err(AuthError::Malformed));
    }
}
