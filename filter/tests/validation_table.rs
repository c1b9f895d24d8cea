//! Policy validation, table-driven: one row per problem the validator reports. A row is a
//! JSON merge patch applied to a known-good base policy (or a whole document as text, for
//! JSON-shape errors), the exact field path it must be reported at, a substring of the
//! message, and whether it is an error or a warning.
//!
//! `every_report_site_has_a_row` reads the compiler's source (`src/policy/**`): every
//! `ctx.err(…)` / `ctx.warn(…)` call is a site with a (path pattern, message pattern)
//! derived from its arguments, and each site must be matched by the issue some row
//! expects. A new check without a row fails the test.
//!
//! Native only: it reads the compiler's source files, and JSON-shape errors name their
//! field path only in the native build (the control service's validator).
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use serde_json::{json, Value};
use switchyard_filter::policy::{validate_json, FieldIssue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Warning,
}

#[derive(Debug)]
enum Doc {
    /// Merged into [`base`] as an RFC 7386 merge patch (objects merge, `null` deletes,
    /// everything else replaces).
    Patch(Value),
    /// A whole document, as text.
    Text(String),
}

#[derive(Debug)]
struct Case {
    doc: Doc,
    kind: Kind,
    path: &'static str,
    message: &'static str,
}

/// A valid policy without warnings: three stacks in two regions, a default route.
fn base() -> Value {
    json!({
        "stacks": [
            { "name": "blue", "region": "us" },
            { "name": "green", "region": "us" },
            { "name": "eu", "region": "eu" }
        ],
        "default": { "targets": [ { "stack": "blue" } ] }
    })
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    into.remove(k);
                } else {
                    merge(into.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

fn err(patch: Value, path: &'static str, message: &'static str) -> Case {
    Case {
        doc: Doc::Patch(patch),
        kind: Kind::Error,
        path,
        message,
    }
}

fn warning(patch: Value, path: &'static str, message: &'static str) -> Case {
    Case {
        doc: Doc::Patch(patch),
        kind: Kind::Warning,
        path,
        message,
    }
}

fn text(text: impl Into<String>, path: &'static str, message: &'static str) -> Case {
    Case {
        doc: Doc::Text(text.into()),
        kind: Kind::Error,
        path,
        message,
    }
}

/// One rule `r` with this match, routed to `blue`.
fn rule_match(m: Value) -> Value {
    json!({ "rules": [ { "id": "r", "match": m, "route": { "targets": [ { "stack": "blue" } ] } } ] })
}

/// The default route replaced by this one.
fn default(route: Value) -> Value {
    json!({ "default": route })
}

fn breaker(patch: Value) -> Value {
    json!({ "breaker": patch })
}

fn classify(patch: Value) -> Value {
    json!({ "classify": patch })
}

fn cases() -> Vec<Case> {
    let blue = json!([ { "stack": "blue" } ]);
    vec![
        // ---- JSON shape (the parser, then the shape table: every problem, with its path) ----
        text("<policy/>", "$", "expected value at line 1 column 1"),
        text(
            r#"{ "stacks": [], "default": { "targets": [] } } x"#,
            "$",
            "trailing characters at line 1",
        ),
        text(
            r#"{ "stacks": [ { "name": "blue", "region": "us" } ], "stacks": [],
                 "default": { "targets": [ { "stack": "blue" } ] } }"#,
            "$",
            "duplicate field `stacks`",
        ),
        text("[]", "$", "invalid type: a list, expected an object"),
        err(json!({ "bogus": 1 }), "bogus", "unknown field `bogus`, expected one of `name`, `stacks`"),
        err(
            default(json!({ "targets": blue, "afinity": true })),
            "default.afinity",
            "unknown field `afinity`, did you mean `affinity`?",
        ),
        err(
            default(json!({ "targets": [ { "stack": "blue", "weight": "heavy" } ] })),
            "default.targets[0].weight",
            "invalid type: string \"heavy\", expected an integer in 0..=4294967295",
        ),
        err(
            rule_match(json!({ "regions": "us" })),
            "rules[0].match.regions",
            "invalid type: string \"us\", expected a list of strings",
        ),
        err(
            json!({ "rules": [ { "id": "r", "route": { "targets": "blue" } } ] }),
            "rules[0].route.targets",
            "invalid type: string \"blue\", expected a list of objects",
        ),
        err(
            json!({ "stacks": [ { "name": "blue" } ] }),
            "stacks[0].region",
            "missing field `region`",
        ),
        err(json!({ "default": null }), "default", "missing field `default`"),
        err(
            default(json!({ "targets": blue, "balance": { "mode": "random" } })),
            "default.balance.mode",
            "unknown variant `random`, expected `weighted` or `hash`",
        ),
        err(
            default(json!({ "targets": blue, "balance": { "key": "user" } })),
            "default.balance.mode",
            "missing field `mode`",
        ),
        err(
            default(json!({ "targets": blue, "balance": { "mode": "hash", "key": { "heder": "x-user" } } })),
            "default.balance.key",
            "unknown variant `heder`, did you mean `header`?",
        ),
        err(
            classify(json!({ "user_key": [ "header" ] })),
            "classify.user_key[0]",
            "expected exactly one of `client_ip`, {\"header\": …} or {\"cookie\": …}",
        ),
        err(
            classify(json!({ "user_key": [ { "header": "x-user", "cookie": "session" } ] })),
            "classify.user_key[0]",
            "expected exactly one of `client_ip`",
        ),
        err(
            json!({ "breaker": { "window_ms": -1 } }),
            "breaker.window_ms",
            "invalid value: integer `-1`, expected an integer in 0..=18446744073709551615",
        ),
        err(
            default(json!({ "targets": blue, "fallback": { "local": { "status": 70_000 } } })),
            "default.fallback.local.status",
            "invalid value: integer `70000`, expected an integer in 0..=65535",
        ),
        err(
            json!({ "breaker": { "consecutive_failures": 2.5 } }),
            "breaker.consecutive_failures",
            "invalid type: floating point `2.5`, expected an integer in 0..=4294967295",
        ),
        // ---- stacks ----
        err(json!({ "stacks": [], "default": { "targets": [] } }), "stacks", "at least one stack is required"),
        err(
            json!({ "stacks": (0..65).map(|i| json!({ "name": format!("s{i}"), "region": "us" })).collect::<Vec<_>>(),
                    "default": { "targets": [ { "stack": "s0" } ] } }),
            "stacks",
            "at most 64 stacks are supported, got 65",
        ),
        err(
            json!({ "stacks": [ { "name": "blue sky", "region": "us" } ], "default": { "targets": [ { "stack": "blue sky" } ] } }),
            "stacks[0].name",
            "'blue sky' must be 1-48 characters of [A-Za-z0-9_-]",
        ),
        err(
            json!({ "stacks": [ { "name": "blue", "region": "us" }, { "name": "blue", "region": "eu" } ] }),
            "stacks[1].name",
            "duplicate stack 'blue'",
        ),
        err(
            json!({ "stacks": [ { "name": "blue", "region": "us", "cluster": "" } ] }),
            "stacks[0].cluster",
            "must not be empty",
        ),
        err(
            json!({ "stacks": [ { "name": "blue", "region": "" } ] }),
            "stacks[0].region",
            "must not be empty",
        ),
        err(
            json!({ "stacks": [ { "name": "blue", "region": "us", "health_path": "healthz" } ] }),
            "stacks[0].health_path",
            "'healthz' must be a path starting with '/'",
        ),
        err(
            json!({ "stacks": [ { "name": "blue", "region": "us", "health_path": "/health z" } ] }),
            "stacks[0].health_path",
            "'/health z' must be a path starting with '/'",
        ),
        // ---- classify: geo ----
        err(
            classify(json!({ "geo": { "header": "x geo" } })),
            "classify.geo.header",
            "'x geo' is not an HTTP header name",
        ),
        err(
            classify(json!({ "geo": { "header": "x-switchyard-decision" } })),
            "classify.geo.header",
            "'x-switchyard-decision' is set by Switchyard itself and cannot be an input",
        ),
        // ---- classify: geo.ambiguous (a geo header with more than one value) ----
        err(
            classify(json!({ "geo": { "header": "x-geo", "ambiguous": { "mode": "strictest" } } })),
            "classify.geo.ambiguous.mode",
            "must be one of `unknown`, `reject`, `most_restrictive`, `assume`",
        ),
        err(
            classify(json!({ "geo": { "header": "x-geo", "ambiguous": { "region": "eu" } } })),
            "classify.geo.ambiguous.mode",
            "missing field `mode`",
        ),
        err(
            classify(json!({ "geo": { "header": "x-geo", "ambiguous": { "mode": "assume" } } })),
            "classify.geo.ambiguous.region",
            "required with mode `assume`",
        ),
        err(
            classify(json!({ "geo": { "header": "x-geo", "ambiguous": { "mode": "assume", "region": "mars" } } })),
            "classify.geo.ambiguous.region",
            "unknown region",
        ),
        err(
            classify(json!({ "geo": { "header": "x-geo", "ambiguous": { "mode": "reject", "region": "eu" } } })),
            "classify.geo.ambiguous.region",
            "only with mode `assume`",
        ),
        err(
            classify(json!({ "geo": { "header": "x-geo", "ambiguous": { "mode": "reject", "status": "403" } } })),
            "classify.geo.ambiguous.status",
            "unknown field `status`, expected one of `mode` or `region`",
        ),
        warning(
            json!({
                "classify": { "geo": { "header": "x-geo", "countries": { "DE": "eu" } } },
                "rules": [ { "id": "eu", "match": { "regions": ["eu"] },
                             "route": { "targets": [ { "stack": "eu" } ], "residency": ["eu"] } } ]
            }),
            "classify.geo.ambiguous",
            "routes have residency, but a geo header with more than one value is not decided",
        ),
        err(
            classify(json!({ "geo": { "countries": { "USA": "us" } } })),
            "classify.geo.countries.USA",
            "'USA' is not a two-letter country code",
        ),
        err(
            classify(json!({ "geo": { "countries": { "DE": "" } } })),
            "classify.geo.countries.DE",
            "region must not be empty",
        ),
        err(
            classify(json!({ "geo": { "cidrs": [ { "cidr": "nonsense", "region": "eu" } ] } })),
            "classify.geo.cidrs[0].cidr",
            "'nonsense': expected ADDRESS/PREFIX",
        ),
        err(
            classify(json!({ "geo": { "cidrs": [ { "cidr": "10.0.0.1/8", "region": "eu" } ] } })),
            "classify.geo.cidrs[0].cidr",
            "'10.0.0.1/8': host bits set after the prefix",
        ),
        err(
            classify(json!({ "geo": { "cidrs": [ { "cidr": "10.0.0.0/8", "region": "" } ] } })),
            "classify.geo.cidrs[0].region",
            "must not be empty",
        ),
        err(
            classify(json!({ "geo": { "cidrs": (0..65_536u32)
                .map(|i| json!({ "cidr": format!("10.{}.{}.0/24", i >> 8, i & 255), "region": format!("r{i}") }))
                .collect::<Vec<_>>() } })),
            "$",
            "too many regions",
        ),
        // ---- classify: channels ----
        err(
            classify(json!({ "channels": [ { "name": "mobile app", "path_prefixes": ["/app"] } ] })),
            "classify.channels[0].name",
            "'mobile app' must be 1-48 characters of [A-Za-z0-9_-]",
        ),
        err(
            classify(json!({ "channels": [ { "name": "app", "path_prefixes": ["/a"] }, { "name": "app", "path_prefixes": ["/b"] } ] })),
            "classify.channels[1].name",
            "duplicate channel 'app'",
        ),
        err(
            classify(json!({ "channels": [ { "name": "app" } ] })),
            "classify.channels[0]",
            "a channel needs at least one of user_agent_contains, headers, path_prefixes",
        ),
        err(
            classify(json!({ "channels": [ { "name": "app", "headers": ["x-app:"] } ] })),
            "classify.channels[0].headers[0]",
            "'x-app:' is not an HTTP header name",
        ),
        err(
            classify(json!({ "channels": [ { "name": "app", "path_prefixes": ["app"] } ] })),
            "classify.channels[0].path_prefixes[0]",
            "'app' must start with '/'",
        ),
        err(
            classify(json!({ "channels": [ { "name": "app", "user_agent_contains": [""] } ] })),
            "classify.channels[0].user_agent_contains[0]",
            "must not be empty",
        ),
        err(
            classify(json!({ "channels": [ { "name": "app", "user_agent_contains": (0..65).map(|i| format!("ua{i}")).collect::<Vec<_>>() } ] })),
            "classify.channels[0].user_agent_contains[64]",
            "at most 64 distinct user-agent substrings over all channels",
        ),
        err(
            classify(json!({ "default_channel": "the web" })),
            "classify.default_channel",
            "'the web' must be 1-48 characters of [A-Za-z0-9_-]",
        ),
        // ---- classify: cohorts and user keys ----
        err(
            classify(json!({ "cohort_header": "x-switchyard-stack" })),
            "classify.cohort_header",
            "'x-switchyard-stack' is set by Switchyard itself and cannot be an input",
        ),
        err(
            classify(json!({ "cohort_header": ":authority" })),
            "classify.cohort_header",
            "':authority' is a pseudo-header; name a request header",
        ),
        err(
            classify(json!({ "user_key": [ { "header": "" } ] })),
            "classify.user_key[0].header",
            "'' is not an HTTP header name",
        ),
        err(
            classify(json!({ "user_key": [ "client_ip", { "cookie": "session id" } ] })),
            "classify.user_key[1].cookie",
            "'session id' is not a valid cookie name",
        ),
        // ---- affinity ----
        err(
            json!({ "affinity": { "cookie": "sy aff" } }),
            "affinity.cookie",
            "'sy aff' is not a valid cookie name",
        ),
        err(
            json!({ "affinity": { "ttl_s": 0 } }),
            "affinity.ttl_s",
            "must be between 1 and 2592000 (30 days)",
        ),
        err(
            json!({ "affinity": { "ttl_s": 2_592_001 } }),
            "affinity.ttl_s",
            "must be between 1 and 2592000 (30 days)",
        ),
        // ---- breaker ----
        err(breaker(json!({ "consecutive_failures": 0 })), "breaker.consecutive_failures", "must be at least 1"),
        err(breaker(json!({ "error_rate": 0.0 })), "breaker.error_rate", "must be in (0, 1]"),
        err(breaker(json!({ "error_rate": 1.5 })), "breaker.error_rate", "must be in (0, 1]"),
        err(breaker(json!({ "window_ms": 99 })), "breaker.window_ms", "must be at least 100"),
        err(breaker(json!({ "open_ms": 0 })), "breaker.open_ms", "must be at least 1"),
        err(
            breaker(json!({ "open_ms": 5_000, "max_open_ms": 4_999 })),
            "breaker.max_open_ms",
            "must be at least open_ms",
        ),
        err(breaker(json!({ "half_open_requests": 0 })), "breaker.half_open_requests", "must be at least 1"),
        // ---- rules: ids and reachability ----
        err(
            json!({ "rules": [ { "id": "my rule", "route": { "targets": blue } } ] }),
            "rules[0].id",
            "'my rule' must be 1-48 characters of [A-Za-z0-9_-]",
        ),
        err(
            json!({ "rules": [ { "id": "default", "route": { "targets": blue } } ] }),
            "rules[0].id",
            "'default' is reserved for the default route",
        ),
        err(
            json!({ "rules": [
                { "id": "a", "match": { "regions": ["us"] }, "route": { "targets": blue } },
                { "id": "a", "match": { "regions": ["eu"] }, "route": { "targets": blue } } ] }),
            "rules[1].id",
            "duplicate rule id 'a'",
        ),
        warning(
            json!({ "rules": [
                { "id": "later", "priority": 2, "match": { "regions": ["eu"], "path_prefixes": ["/checkout"] }, "route": { "targets": blue } },
                { "id": "first", "priority": 1, "match": { "regions": ["eu"] }, "route": { "targets": blue } } ] }),
            "rules[0]",
            "rule 'later' is unreachable: rule 'first' is evaluated first and matches everything it matches",
        ),
        // ---- rules: match ----
        err(
            rule_match(json!({ "regions": ["mars"] })),
            "rules[0].match.regions[0]",
            "unknown region 'mars' (not used by any stack or geo table)",
        ),
        err(
            rule_match(json!({ "countries": ["USA"] })),
            "rules[0].match.countries[0]",
            "'USA' is not a two-letter country code",
        ),
        err(rule_match(json!({ "channels": ["fax"] })), "rules[0].match.channels[0]", "unknown channel 'fax'"),
        err(rule_match(json!({ "cohorts": [""] })), "rules[0].match.cohorts[0]", "must not be empty"),
        err(
            rule_match(json!({ "path_prefixes": ["checkout"] })),
            "rules[0].match.path_prefixes[0]",
            "'checkout' must start with '/'",
        ),
        err(
            rule_match(json!({ "time": { "windows": [ { "start": "09:00", "end": "25:00" } ] } })),
            "rules[0].match.time.windows[0]",
            "end '25:00' is not HH:MM",
        ),
        err(
            rule_match(json!({ "time": { "windows": [ { "start": "9am", "end": "17:00" } ] } })),
            "rules[0].match.time.windows[0]",
            "start '9am' is not HH:MM",
        ),
        err(
            rule_match(json!({ "time": { "windows": [ { "start": "09:00", "end": "09:00" } ] } })),
            "rules[0].match.time.windows[0]",
            "start and end are equal: the window is empty",
        ),
        err(
            rule_match(json!({ "time": { "windows": [ { "start": "24:00", "end": "01:00" } ] } })),
            "rules[0].match.time.windows[0]",
            "start '24:00' must be before 24:00",
        ),
        err(
            rule_match(json!({ "time": { "days": ["funday"] } })),
            "rules[0].match.time.days[0]",
            "'funday' is not a day (mon, tue, wed, thu, fri, sat, sun)",
        ),
        err(
            rule_match(json!({ "time": { "campaigns": [ { "start": "2026-11-28T00:00:00Z", "end": "2026-11-27T00:00:00Z" } ] } })),
            "rules[0].match.time.campaigns[0]",
            "end must be after start",
        ),
        err(
            rule_match(json!({ "time": { "campaigns": [ { "start": "black friday", "end": "2026-11-27T00:00:00Z" } ] } })),
            "rules[0].match.time.campaigns[0].start",
            "'black friday' is not an RFC 3339 timestamp",
        ),
        err(
            rule_match(json!({ "time": { "campaigns": [ { "start": "2026-11-27T00:00:00Z", "end": "2026-11-31T00:00:00Z" } ] } })),
            "rules[0].match.time.campaigns[0].end",
            "'2026-11-31T00:00:00Z' is not an RFC 3339 timestamp",
        ),
        err(
            rule_match(json!({ "time": {} })),
            "rules[0].match.time",
            "give at least one of windows, days, campaigns",
        ),
        err(
            rule_match(json!({ "percent": { "from": 50, "to": 10 } })),
            "rules[0].match.percent",
            "need 0 <= from < to <= 100",
        ),
        err(
            rule_match(json!({ "percent": { "to": 100.5 } })),
            "rules[0].match.percent",
            "need 0 <= from < to <= 100",
        ),
        err(
            rule_match(json!({ "percent": { "to": 10 } })),
            "rules[0].match.percent",
            "percentage buckets need classify.user_key",
        ),
        // ---- routes: targets ----
        err(default(json!({ "targets": [] })), "default.targets", "at least one target is required"),
        err(
            default(json!({ "targets": (0..65).map(|_| json!({ "stack": "blue" })).collect::<Vec<_>>() })),
            "default.targets",
            "at most 64 targets",
        ),
        err(
            default(json!({ "targets": [ { "stack": "purple" } ] })),
            "default.targets[0].stack",
            "unknown stack 'purple'",
        ),
        err(
            default(json!({ "targets": [ { "stack": "blue" }, { "stack": "blue" } ] })),
            "default.targets[1].stack",
            "stack 'blue' is listed twice",
        ),
        err(
            default(json!({ "targets": [ { "stack": "blue", "weight": 1_000_001 } ] })),
            "default.targets[0].weight",
            "must be at most 1000000",
        ),
        err(
            default(json!({ "targets": [ { "stack": "blue", "weight": 0 }, { "stack": "green", "weight": 0 } ] })),
            "default.targets",
            "total weight is zero",
        ),
        err(
            json!({ "rules": [ { "id": "r", "route": { "targets": [ { "stack": "purple" } ] } } ] }),
            "rules[0].route.targets[0].stack",
            "unknown stack 'purple'",
        ),
        // ---- routes: residency ----
        err(
            default(json!({ "targets": blue, "residency": [] })),
            "default.residency",
            "must name at least one region",
        ),
        err(
            default(json!({ "targets": blue, "residency": ["mars"] })),
            "default.residency[0]",
            "unknown region 'mars'",
        ),
        err(
            default(json!({ "targets": blue, "residency": ["eu"] })),
            "default.targets[0].stack",
            "stack 'blue' is outside this route's residency",
        ),
        err(
            default(json!({ "targets": [ { "stack": "eu" } ], "residency": ["eu"], "fallback": { "targets": blue } })),
            "default.fallback.targets[0].stack",
            "stack 'blue' is outside this route's residency",
        ),
        // ---- routes: balancing ----
        err(
            default(json!({ "targets": blue, "balance": { "mode": "hash", "key": "user" } })),
            "default.balance.key",
            "hashing on 'user' needs classify.user_key",
        ),
        err(
            default(json!({ "targets": blue, "balance": { "mode": "hash", "key": { "header": "x session" } } })),
            "default.balance.key.header",
            "'x session' is not an HTTP header name",
        ),
        err(
            default(json!({ "targets": blue, "balance": { "mode": "hash", "key": { "cookie": "a;b" } } })),
            "default.balance.key.cookie",
            "'a;b' is not a valid cookie name",
        ),
        err(
            default(json!({ "targets": blue, "balance": { "mode": "weighted", "key": "user" } })),
            "default.balance.key",
            "key applies only to 'hash' mode (weighted mode has no key)",
        ),
        // ---- routes: affinity ----
        err(
            default(json!({ "targets": blue, "affinity_ttl_s": 60 })),
            "default.affinity_ttl_s",
            "set only when affinity is true",
        ),
        err(
            default(json!({ "targets": blue, "affinity": true, "affinity_ttl_s": 0 })),
            "default.affinity_ttl_s",
            "must be between 1 and 2592000 (30 days)",
        ),
        // ---- routes: fallback ----
        err(
            default(json!({ "targets": blue, "fallback": { "targets": [ { "stack": "green", "weight": 0 } ] } })),
            "default.fallback.targets",
            "total weight is zero",
        ),
        err(
            default(json!({ "targets": blue, "fallback": { "targets": [ { "stack": "purple" } ] } })),
            "default.fallback.targets[0].stack",
            "unknown stack 'purple'",
        ),
        err(
            default(json!({ "targets": blue, "fallback": { "local": { "status": 404 } } })),
            "default.fallback.local.status",
            "must be 429 or 5xx",
        ),
        err(
            default(json!({ "targets": blue, "fallback": { "local": { "retry_after_s": 86_401 } } })),
            "default.fallback.local.retry_after_s",
            "must be at most 86400",
        ),
        // ---- routes: queue fallback (degraded mode) ----
        err(
            default(json!({ "targets": blue, "fallback": { "queue": { "cluster": "intake us" } } })),
            "default.fallback.queue.cluster",
            "must be 1-64 characters of [A-Za-z0-9_.-], not a stack's name or cluster",
        ),
        err(
            default(json!({ "targets": blue, "fallback": { "queue": { "cluster": "green" } } })),
            "default.fallback.queue.cluster",
            "not a stack's name or cluster",
        ),
        err(
            default(json!({ "targets": blue, "fallback": { "queue": { "region": "us" } } })),
            "default.fallback.queue.cluster",
            "missing field `cluster`",
        ),
        err(
            default(json!({ "targets": blue, "fallback": { "queue": { "cluster": "intake_us", "region": "mars" } } })),
            "default.fallback.queue.region",
            "unknown region",
        ),
        err(
            default(json!({ "targets": blue, "fallback": { "queue": { "cluster": "intake_us", "when": "half_open" } } })),
            "default.fallback.queue.when",
            "must be `no_eligible` (the only condition so far)",
        ),
        err(
            default(json!({ "targets": blue, "fallback": { "queue": { "cluster": "intake_us", "topic": "x" } } })),
            "default.fallback.queue.topic",
            "unknown field `topic`",
        ),
        err(
            default(json!({ "targets": [ { "stack": "eu" } ], "residency": ["eu"], "fallback": { "queue": { "cluster": "intake_us", "region": "us" } } })),
            "default.fallback.queue.region",
            "the intake is outside this route's residency",
        ),
        err(
            default(json!({ "targets": [ { "stack": "eu" } ], "residency": ["eu"], "fallback": { "queue": { "cluster": "intake_eu" } } })),
            "default.fallback.queue.region",
            "required: this route has residency (name the intake's region)",
        ),
        // ---- kpis ----
        err(
            json!({ "kpis": [ { "name": "orders", "metod": "POST" } ] }),
            "kpis[0].metod",
            "unknown field `metod`",
        ),
        err(json!({ "kpis": [ { "method": "POST" } ] }), "kpis[0].name", "missing field `name`"),
        err(
            json!({ "kpis": [ { "name": "orders", "status": 200 } ] }),
            "kpis[0].status",
            "invalid type: integer `200`, expected a string",
        ),
        err(
            json!({ "kpis": (0..17).map(|i| json!({ "name": format!("k{i}") })).collect::<Vec<_>>() }),
            "kpis",
            "at most 16 KPIs are supported",
        ),
        err(
            json!({ "kpis": [ { "name": "Orders" } ] }),
            "kpis[0].name",
            "must be 1-32 characters of [a-z0-9_], unique",
        ),
        err(
            json!({ "kpis": [ { "name": "orders" }, { "name": "orders" } ] }),
            "kpis[1].name",
            "must be 1-32 characters of [a-z0-9_], unique",
        ),
        err(
            json!({ "kpis": [ { "name": "orders", "method": "post" } ] }),
            "kpis[0].method",
            "must be an HTTP method in upper case, e.g. POST",
        ),
        err(
            json!({ "kpis": [ { "name": "orders", "path_prefix": "checkout" } ] }),
            "kpis[0].path_prefix",
            "must be a path starting with '/'",
        ),
        err(
            json!({ "kpis": [ { "name": "orders", "status": "2XX" } ] }),
            "kpis[0].status",
            "must be a status class (1xx-5xx) or a code (100-599)",
        ),
    ]
}

/// What validating a case's document reports: (errors, warnings).
fn report(case: &Case) -> (Vec<FieldIssue>, Vec<FieldIssue>) {
    let text = match &case.doc {
        Doc::Text(t) => t.clone(),
        Doc::Patch(p) => {
            let mut doc = base();
            merge(&mut doc, p);
            doc.to_string()
        }
    };
    match validate_json(&text) {
        Ok(v) => (Vec::new(), v.warnings),
        Err(e) => (e.errors, Vec::new()),
    }
}

/// The issue a case expects, if it was reported.
fn expected(case: &Case) -> Result<FieldIssue, String> {
    let (errors, warnings) = report(case);
    let issues = match case.kind {
        Kind::Error => &errors,
        Kind::Warning => &warnings,
    };
    issues
        .iter()
        .find(|i| i.path == case.path && i.message.contains(case.message))
        .cloned()
        .ok_or_else(|| {
            format!(
                "expected {:?} `{}: …{}…`\n  errors: {errors:#?}\n  warnings: {warnings:#?}",
                case.kind, case.path, case.message
            )
        })
}

#[test]
fn the_base_policy_is_valid_without_warnings() {
    let v = validate_json(&base().to_string()).unwrap();
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

#[test]
fn every_row_is_reported_at_its_path() {
    let failures: Vec<String> = cases()
        .iter()
        .enumerate()
        .filter_map(|(i, c)| expected(c).err().map(|e| format!("row {i}: {e}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------
// Documents with several problems: every one is reported
// ---------------------------------------------------------------------------------------

/// Every error of a document, as `path: message`.
fn all_errors(doc: &Value) -> Vec<String> {
    match validate_json(&doc.to_string()) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(|i| i.to_string()).collect(),
    }
}

#[test]
fn a_typo_a_bad_stack_name_and_an_unknown_stack_are_all_reported() {
    let doc = json!({
        "stacks": [ { "name": "blue", "region": "us" }, { "name": "bad name!", "region": "us" } ],
        "rules": [ { "id": "r", "priorty": 1, "route": { "targets": [ { "stack": "blue" } ] } } ],
        "default": { "targets": [ { "stack": "purple" } ] }
    });
    assert_eq!(
        all_errors(&doc),
        [
            "rules[0].priorty: unknown field `priorty`, did you mean `priority`?",
            "stacks[1].name: 'bad name!' must be 1-48 characters of [A-Za-z0-9_-]",
            "default.targets[0].stack: unknown stack 'purple'",
        ]
    );
}

#[test]
fn an_empty_document_reports_every_missing_required_field() {
    assert_eq!(
        all_errors(&json!({})),
        [
            "stacks: missing field `stacks`",
            "default: missing field `default`"
        ]
    );
    let doc = json!({ "stacks": [ {} ], "rules": [ {} ], "default": {} });
    assert_eq!(
        all_errors(&doc),
        [
            "default.targets: missing field `targets`",
            "rules[0].id: missing field `id`",
            "rules[0].route: missing field `route`",
            "stacks[0].name: missing field `name`",
            "stacks[0].region: missing field `region`",
        ]
    );
}

#[test]
fn type_errors_at_depth_are_reported_with_the_problems_of_well_formed_parts() {
    let mut doc = base();
    merge(
        &mut doc,
        &json!({
            "classify": { "geo": { "cidrs": [ { "cidr": "10.0.0.1/8", "region": "eu" } ] } },
            "rules": [
                { "id": "a", "route": { "targets": "blue" } },
                { "id": "b", "match": { "regions": ["mars"] }, "route": { "targets": [ { "stack": 7 } ] } },
                { "id": "c", "match": { "time": { "days": "mon" } }, "route": { "targets": [ { "stack": "purple" } ] } }
            ],
            "default": { "targets": [ { "stack": "blue", "weight": -5 } ] }
        }),
    );
    let errors = all_errors(&doc);
    assert_eq!(
        errors,
        [
            "default.targets[0].weight: invalid value: integer `-5`, expected an integer in 0..=4294967295",
            "rules[0].route.targets: invalid type: string \"blue\", expected a list of objects",
            "rules[1].route.targets[0].stack: invalid type: integer `7`, expected a string",
            "rules[2].match.time.days: invalid type: string \"mon\", expected a list of strings",
            "classify.geo.cidrs[0].cidr: '10.0.0.1/8': host bits set after the prefix (did you mean the network address?)",
            "rules[1].match.regions[0]: unknown region 'mars' (not used by any stack or geo table)",
            "rules[2].route.targets[0].stack: unknown stack 'purple'",
        ],
    );
}

#[test]
fn findings_about_repaired_values_are_left_out() {
    // `stacks` unusable: every target would be an unknown stack; only the shape is reported.
    let doc =
        json!({ "stacks": { "name": "blue" }, "default": { "targets": [ { "stack": "blue" } ] } });
    assert_eq!(
        all_errors(&doc),
        ["stacks: invalid type: an object, expected a list of objects"]
    );
    // A window without a start: nothing is said about the placeholder start.
    let mut doc = base();
    merge(
        &mut doc,
        &rule_match(json!({ "time": { "windows": [ { "end": "17:00" } ] } })),
    );
    assert_eq!(
        all_errors(&doc),
        ["rules[0].match.time.windows[0].start: missing field `start`"]
    );
    // A missing route: nothing is said about its placeholder's empty targets.
    let doc = json!({ "stacks": [ { "name": "blue", "region": "us" } ], "rules": [ { "id": "r" } ],
                      "default": { "targets": [ { "stack": "blue" } ] } });
    assert_eq!(all_errors(&doc), ["rules[0].route: missing field `route`"]);
}

// ---------------------------------------------------------------------------------------
// Report sites in the compiler's source
// ---------------------------------------------------------------------------------------

/// One `ctx.err(path, message)` / `ctx.warn(…)` call: where, and what it can report
/// (`*` stands for anything a placeholder or variable may hold).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    at: String,
    kind: Kind,
    path: String,
    message: String,
}

/// (path relative to the crate, text) of every source file of the policy module.
fn policy_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let name = path.strip_prefix(root).unwrap_or(&path);
                out.push((name.display().to_string(), text));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &root.join("src/policy"), &mut out);
    out.sort();
    out
}

/// The text of the string literal starting at `s[0] == '"'`, and the bytes it spans.
fn string_literal(s: &str) -> (String, usize) {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, e)) = chars.next() {
                    out.push(match e {
                        'n' => '\n',
                        e => e,
                    });
                }
            }
            '"' => return (out, i + 1),
            c => out.push(c),
        }
    }
    panic!("unterminated string literal: {s}")
}

/// The top-level comma-separated arguments of the call whose `(` ends `s[..open]`.
fn call_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i..].chars().next().unwrap();
        match c {
            '"' => {
                let (_, len) = string_literal(&s[i..]);
                current.push_str(&s[i..i + len]);
                i += len;
                continue;
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => break,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                args.push(std::mem::take(&mut current).trim().to_string());
                i += 1;
                continue;
            }
            _ => {}
        }
        current.push(c);
        i += c.len_utf8();
    }
    if !current.trim().is_empty() {
        args.push(current.trim().to_string());
    }
    args
}

/// The template of `let <var> = format!("…")` / `let <var> = "…"` last defined before
/// `before` in `src`, if any.
fn let_template(src: &str, var: &str, before: usize) -> Option<(String, usize)> {
    let needle = format!("let {var} = ");
    let at = src[..before].rfind(&needle)?;
    let rest = &src[at + needle.len()..];
    let rest = rest.strip_prefix("format!(").unwrap_or(rest);
    rest.starts_with('"').then(|| (string_literal(rest).0, at))
}

/// A `format!` template as a pattern: `{{`/`}}` unescaped, a placeholder naming a
/// `let` variable defined earlier replaced by that variable's pattern, any other `*`.
fn template_pattern(src: &str, template: &str, before: usize) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("{{") || rest.starts_with("}}") {
            out.push(c);
            rest = &rest[2..];
        } else if c == '{' {
            let end = rest.find('}').unwrap();
            let name = rest[1..end].split(':').next().unwrap();
            match let_template(src, name, before) {
                Some((t, at)) if !name.is_empty() => out.push_str(&template_pattern(src, &t, at)),
                _ => out.push('*'),
            }
            rest = &rest[end + 1..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// An argument of a report call as a pattern.
fn arg_pattern(src: &str, arg: &str, before: usize) -> String {
    let arg = arg.trim_start_matches('&');
    if let Some(inner) = arg.strip_prefix("format!(") {
        let (t, _) = string_literal(inner.trim_start());
        template_pattern(src, &t, before)
    } else if arg.starts_with('"') {
        string_literal(arg).0
    } else if arg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        match let_template(src, arg, before) {
            Some((t, at)) => template_pattern(src, &t, at),
            None => "*".into(),
        }
    } else {
        panic!("cannot read report argument `{arg}`")
    }
}

fn sites() -> Vec<Site> {
    let mut out = Vec::new();
    for (file, src) in policy_sources() {
        for (call, kind) in [("ctx.err(", Kind::Error), ("ctx.warn(", Kind::Warning)] {
            for (at, _) in src.match_indices(call) {
                let args = call_args(&src[at + call.len()..]);
                assert_eq!(args.len(), 2, "{file}: {args:?}");
                let line = src[..at].lines().count();
                out.push(Site {
                    at: format!("{file}:{line}"),
                    kind,
                    path: arg_pattern(&src, &args[0], at),
                    message: arg_pattern(&src, &args[1], at),
                });
            }
        }
    }
    out
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // matches[j]: p[..i] matches t[..j].
    let mut matches = vec![false; t.len() + 1];
    matches[0] = true;
    for &pc in &p {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = if pc == '*' {
                matches[j] || (j > 0 && next[j - 1])
            } else {
                j > 0 && matches[j - 1] && t[j - 1] == pc
            };
        }
        matches = next;
    }
    matches[t.len()]
}

/// How much of a site is fixed text: an issue is attributed to the most specific site
/// that matches it (`default.fallback.targets` to `{path}.fallback.targets`, not to
/// `{path}.targets`).
fn specificity(s: &Site) -> usize {
    (s.path.clone() + &s.message)
        .chars()
        .filter(|&c| c != '*')
        .count()
}

#[test]
fn every_report_site_has_a_row() {
    let sites = sites();
    let calls: usize = policy_sources()
        .iter()
        .map(|(_, s)| s.matches("ctx.err(").count() + s.matches("ctx.warn(").count())
        .sum();
    assert_eq!(sites.len(), calls);
    println!("{} report sites", sites.len());

    // Every site can be told apart from every other.
    for (i, a) in sites.iter().enumerate() {
        for b in &sites[i + 1..] {
            assert!(
                (a.kind, &a.path, &a.message) != (b.kind, &b.path, &b.message),
                "{} and {} report the same (path, message) pattern: give one a distinct message",
                a.at,
                b.at
            );
        }
    }

    let mut covered = vec![0usize; sites.len()];
    for case in cases() {
        let Ok(issue) = expected(&case) else {
            continue; // `every_row_is_reported_at_its_path` reports it
        };
        let mut best: Option<usize> = None;
        for (i, s) in sites.iter().enumerate() {
            if s.kind == case.kind && glob(&s.path, &issue.path) && glob(&s.message, &issue.message)
            {
                if let Some(b) = best {
                    assert_ne!(
                        specificity(s),
                        specificity(&sites[b]),
                        "`{issue}` matches {} and {} equally",
                        s.at,
                        sites[b].at
                    );
                }
                if best.is_none_or(|b| specificity(s) > specificity(&sites[b])) {
                    best = Some(i);
                }
            }
        }
        if let Some(b) = best {
            covered[b] += 1;
        }
    }
    let missing: Vec<String> = sites
        .iter()
        .zip(&covered)
        .filter(|(_, &n)| n == 0)
        .map(|(s, _)| format!("{} {:?} `{}: {}`", s.at, s.kind, s.path, s.message))
        .collect();
    assert!(
        missing.is_empty(),
        "report sites without a row in the table:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_site_reader_understands_the_call_shapes() {
    let src = r#"
        let path = format!("stacks[{i}]");
        let tpath = format!("{path}.time");
        ctx.err(format!("{tpath}.days[{i}]"), format!("'{d}' is not a day (mon, {{x}})"));
        ctx.err(&tpath, "a, (b) [c]");
        ctx.err(param, e);
    "#;
    let calls: Vec<(String, String)> = src
        .match_indices("ctx.err(")
        .map(|(at, _)| {
            let args = call_args(&src[at + 8..]);
            (
                arg_pattern(src, &args[0], at),
                arg_pattern(src, &args[1], at),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            (
                "stacks[*].time.days[*]".into(),
                "'*' is not a day (mon, {x})".into()
            ),
            ("stacks[*].time".into(), "a, (b) [c]".into()),
            ("*".into(), "*".into()),
        ]
    );
    assert!(glob("*.targets", "default.fallback.targets"));
    assert!(glob("at most * targets", "at most 64 targets"));
    assert!(!glob("*.targets", "default.targets[0]"));
    assert!(!glob("stacks", "stacks[0]"));
}
