//! The access table: every gRPC method and HTTP route, and the permission it needs.
//!
//! One table, read by the enforcement layer for every request. An endpoint missing from
//! it is refused (fail closed), and `tests/integration/access.rs` fails when a service in the protos
//! or a route in the sources has no rule here.

/// What an endpoint needs. [`super::Role::grants`] says which roles have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// No credentials: probes and metrics (and gRPC health and reflection).
    Open,
    /// Any valid credential (e.g. "who am I").
    Authenticated,
    /// Read the routing state, fleet, audit log, incidents, rollouts, events.
    Read,
    /// Follow the Watch stream of snapshots.
    Watch,
    /// Send telemetry (Envoys).
    Report,
    /// Change routing: policies, stacks, rollouts, events, alerts.
    Operate,
    /// Approve or reject the brain's proposals.
    Approve,
    /// Manage credentials.
    Admin,
}

/// gRPC services that stay open: a kubelet or load balancer probe has no token
/// (`grpc.health.v1`), and reflection only describes the API (grpcurl's `list`).
pub const OPEN_GRPC_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Every method of our own services (`/package.Service/Method`) and what it needs.
pub const GRPC: &[(&str, Permission)] = {
    use Permission::*;
    &[
        ("/switchyard.v1.DataPlane/Watch", Watch),
        ("/switchyard.v1.DataPlane/Report", Report),
        ("/switchyard.v1.Policies/Validate", Read),
        ("/switchyard.v1.Policies/Apply", Operate),
        ("/switchyard.v1.Policies/Get", Read),
        ("/switchyard.v1.Policies/History", Read),
        ("/switchyard.v1.Policies/Rollback", Operate),
        ("/switchyard.v1.Stacks/List", Read),
        ("/switchyard.v1.Stacks/Register", Operate),
        ("/switchyard.v1.Stacks/Deregister", Operate),
        ("/switchyard.v1.Stacks/SetWeight", Operate),
        ("/switchyard.v1.Stacks/Drain", Operate),
        ("/switchyard.v1.Stacks/Evacuate", Operate),
        ("/switchyard.v1.Stacks/Undrain", Operate),
        ("/switchyard.v1.Stacks/MarkUnhealthy", Operate),
        ("/switchyard.v1.Stacks/MarkHealthy", Operate),
        ("/switchyard.v1.Fleet/Status", Read),
        ("/switchyard.v1.Audit/List", Read),
        ("/switchyard.v1.Audit/Verify", Read),
        ("/switchyard.v1.Rollouts/Start", Operate),
        ("/switchyard.v1.Rollouts/Get", Read),
        ("/switchyard.v1.Rollouts/List", Read),
        ("/switchyard.v1.Rollouts/Command", Operate),
        ("/switchyard.v1.Incidents/List", Read),
        ("/switchyard.v1.Incidents/Get", Read),
        ("/switchyard.v1.Incidents/Approve", Approve),
        ("/switchyard.v1.Incidents/Reject", Approve),
        ("/switchyard.v1.Events/Add", Operate),
        ("/switchyard.v1.Events/List", Read),
        ("/switchyard.v1.Events/Remove", Operate),
        ("/switchyard.v1.Tokens/Create", Admin),
        ("/switchyard.v1.Tokens/List", Admin),
        ("/switchyard.v1.Tokens/Revoke", Admin),
        ("/switchyard.v1.Tokens/WhoAmI", Authenticated),
    ]
};

/// One HTTP route (the pattern as axum matches it): what reading it (GET, HEAD) needs,
/// and what any other method needs.
#[derive(Debug, Clone, Copy)]
pub struct HttpRule {
    pub path: &'static str,
    pub read: Permission,
    pub write: Permission,
}

const fn rule(path: &'static str, read: Permission, write: Permission) -> HttpRule {
    HttpRule { path, read, write }
}

/// Every HTTP route. `/`, `/healthz` and `/metrics` stay open (an index of endpoints, a
/// liveness probe, Prometheus' scrape).
pub const HTTP: &[HttpRule] = {
    use Permission::*;
    &[
        rule("/", Open, Open),
        rule("/healthz", Open, Open),
        rule("/metrics", Open, Open),
        rule("/api/v1/status", Read, Operate),
        rule("/api/v1/policy", Read, Operate),
        rule("/api/v1/stacks", Read, Operate),
        rule("/api/v1/history", Read, Operate),
        rule("/api/v1/telemetry", Read, Operate),
        rule("/api/v1/rollouts", Read, Operate),
        rule("/api/v1/rollouts/{id}", Read, Operate),
        rule("/api/v1/incidents", Read, Operate),
        rule("/api/v1/incidents/{id}", Read, Operate),
        rule("/api/v1/events", Read, Operate),
        rule("/api/v1/events/{id}", Read, Operate),
        // Alertmanager's webhook: a token with role operator (credentials_file).
        rule("/api/v1/alerts", Operate, Operate),
        rule("/api/v1/audit", Read, Operate),
        rule("/api/v1/audit/verify", Read, Operate),
        rule("/api/v1/health", Read, Operate),
        // The web console's pages: static files holding no data (the sign-in box must
        // load without a token); every call they make is checked like any other.
        rule("/console", Open, Open),
        rule("/console/", Open, Open),
        rule("/console/{*path}", Open, Open),
        // The console's API (control-service/src/console/api.rs), as the gRPC methods
        // of the same operations.
        rule("/api/v1/rollouts/{id}/{action}", Read, Operate),
        rule("/api/v1/incidents/{id}/{decision}", Read, Approve),
        rule("/api/v1/stacks/{name}/{op}", Read, Operate),
        rule("/api/v1/policy/validate", Read, Read),
        rule("/api/v1/policy/apply", Read, Operate),
        rule("/api/v1/policy/diff", Read, Read),
        rule("/api/v1/split", Read, Read),
        rule("/api/v1/explain", Read, Read),
        rule("/api/v1/stream", Read, Read),
        // Who the caller is and which console actions their role allows (any role).
        rule("/api/v1/whoami", Authenticated, Authenticated),
    ]
};

/// What a gRPC call to `path` needs; `None`: no rule (refused).
pub fn grpc(path: &str) -> Option<Permission> {
    let service = path.trim_start_matches('/').split('/').next()?;
    if OPEN_GRPC_SERVICES.contains(&service) {
        return Some(Permission::Open);
    }
    GRPC.iter().find(|(p, _)| *p == path).map(|(_, perm)| *perm)
}

/// What an HTTP request needs, by its matched route pattern; `None`: no rule (refused).
pub fn http(matched: &str, method: &axum::http::Method) -> Option<Permission> {
    let r = HTTP.iter().find(|r| r.path == matched)?;
    Some(
        if *method == axum::http::Method::GET || *method == axum::http::Method::HEAD {
            r.read
        } else {
            r.write
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn lookups_follow_the_tables_and_fail_closed() {
        assert_eq!(
            grpc("/switchyard.v1.Stacks/SetWeight"),
            Some(Permission::Operate)
        );
        assert_eq!(grpc("/grpc.health.v1.Health/Check"), Some(Permission::Open));
        assert_eq!(grpc("/switchyard.v1.Stacks/Nuke"), None);
        assert_eq!(grpc("garbage"), None);
        assert_eq!(
            http("/api/v1/events", &Method::POST),
            Some(Permission::Operate)
        );
        assert_eq!(http("/api/v1/events", &Method::GET), Some(Permission::Read));
        assert_eq!(
            http("/api/v1/alerts", &Method::POST),
            Some(Permission::Operate)
        );
        assert_eq!(http("/metrics", &Method::GET), Some(Permission::Open));
        assert_eq!(http("/api/v1/secret", &Method::GET), None);
    }

    #[test]
    fn no_endpoint_is_listed_twice() {
        let mut g: Vec<_> = GRPC.iter().map(|(p, _)| *p).collect();
        g.sort_unstable();
        g.dedup();
        assert_eq!(g.len(), GRPC.len());
        let mut h: Vec<_> = HTTP.iter().map(|r| r.path).collect();
        h.sort_unstable();
        h.dedup();
        assert_eq!(h.len(), HTTP.len());
    }
}
