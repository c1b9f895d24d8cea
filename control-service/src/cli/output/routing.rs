//! What the CLI prints about routing: policy changes and their history, the stacks
//! table, the fleet's status and received snapshots.

use super::*;

/// The result of a policy change (apply, rollback).
pub fn print_change(json_out: bool, r: &v1::ChangeResponse) {
    if json_out {
        print_json(r);
        return;
    }
    print_warnings(&r.warnings);
    let summary = r.info.as_ref().map(|i| i.summary.as_str()).unwrap_or("");
    if r.changed {
        println!("version {}: {summary}", r.version);
    } else {
        println!("unchanged: version {} already has this policy", r.version);
    }
}

/// The result of a stack operation, with the stack's new state.
pub fn print_stack_change(
    json_out: bool,
    r: &v1::StackChangeResponse,
    all: Option<&v1::ListStacksResponse>,
    weights: Option<&PolicyWeights>,
) {
    if json_out {
        print_json(r);
        return;
    }
    if r.changed {
        let summary = r.info.as_ref().map(|i| i.summary.as_str()).unwrap_or("");
        println!("version {}: {summary}", r.version);
    } else {
        println!("unchanged (version {})", r.version);
    }
    // The changed stack's row; its SHARE needs every stack, so take the others from
    // `all` when the caller has it.
    if let Some(s) = &r.stack {
        let mut stacks = all.map(|a| a.stacks.clone()).unwrap_or_default();
        match stacks.iter_mut().find(|o| o.name == s.name) {
            Some(o) => *o = s.clone(),
            None => stacks.push(s.clone()),
        }
        let weights = if all.is_some() { weights } else { None };
        print_stacks(
            &v1::ListStacksResponse {
                version: r.version,
                stacks,
            },
            weights,
            Some(&s.name),
        );
    }
}

/// The audit log, newest first; `*` marks the version in force.
pub fn print_history(r: &v1::HistoryResponse) {
    let mut rows = vec![row([
        "",
        "VERSION",
        "TIME (UTC)",
        "KIND",
        "ACTOR",
        "SUMMARY",
    ])];
    for v in &r.versions {
        let mut summary = v.summary.clone();
        if !v.comment.is_empty() {
            summary.push_str(&format!(" — {}", v.comment));
        }
        rows.push(vec![
            if v.version == r.current_version {
                "*".into()
            } else {
                String::new()
            },
            v.version.to_string(),
            fmt_time(v.created_unix_ms),
            v.kind.clone(),
            v.actor.clone(),
            summary,
        ]);
    }
    print_table(&rows);
}

/// What the policy itself gives each stack: its weight in the default route and whether
/// any route (default or rule) gives it a weight above 0. Read from the document so that
/// `stacks list` can show the policy weight beside the operator's factor.
#[derive(Debug, Default)]
pub struct PolicyWeights {
    /// Weight in the default route's targets; absent = not a default target.
    pub default: std::collections::BTreeMap<String, u64>,
    /// Stacks some route sends traffic to (weight > 0).
    pub routed: std::collections::BTreeSet<String>,
}

impl PolicyWeights {
    /// From a policy document; anything unexpected counts as absent (the server has
    /// validated the document already).
    pub fn from_policy(doc: &serde_json::Value) -> Self {
        let stack_weight = |name: &str| -> u64 {
            doc["stacks"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == name))
                .and_then(|s| s["weight"].as_u64())
                .unwrap_or(100)
        };
        let targets = |route: &serde_json::Value| -> Vec<(String, u64)> {
            route["targets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| {
                            let name = t["stack"].as_str()?;
                            let w = t["weight"].as_u64().unwrap_or_else(|| stack_weight(name));
                            Some((name.to_string(), w))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Self::default();
        for (name, w) in targets(&doc["default"]) {
            *out.default.entry(name.clone()).or_default() += w;
            if w > 0 {
                out.routed.insert(name);
            }
        }
        for rule in doc["rules"].as_array().into_iter().flatten() {
            for (name, w) in targets(&rule["route"]) {
                if w > 0 {
                    out.routed.insert(name);
                }
            }
        }
        out
    }

    /// The share of new default-route visitors each stack gets now, in percent: policy
    /// weight times effective factor, normalised over the default targets.
    fn default_shares(
        &self,
        stacks: &[v1::StackStatus],
    ) -> std::collections::BTreeMap<String, u64> {
        let weighted: Vec<(String, u64)> = stacks
            .iter()
            .map(|s| {
                let w = self.default.get(&s.name).copied().unwrap_or(0);
                (s.name.clone(), w * u64::from(s.effective_weight_percent))
            })
            .collect();
        let total: u64 = weighted.iter().map(|(_, w)| w).sum();
        weighted
            .into_iter()
            .map(|(n, w)| (n, (w * 100 + total / 2).checked_div(total).unwrap_or(0)))
            .collect()
    }
}

/// What routing does with the stack: `serving` only when it takes new visitors.
pub(super) fn stack_state(s: &v1::StackStatus, weights: Option<&PolicyWeights>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !s.registered {
        parts.push("deregistered".into());
    }
    if !s.healthy {
        parts.push("unhealthy".into());
    }
    if s.evacuating {
        parts.push("evacuating".into());
    } else if s.draining {
        parts.push(match s.drain_deadline_unix_ms {
            0 => "draining (sticky until cookies expire)".to_string(),
            d if d <= crate::model::now_unix_ms() => {
                "draining (deadline passed: evacuated)".to_string()
            }
            d => format!("draining (sticky until {} UTC)", fmt_time(d)),
        });
    }
    if parts.is_empty() {
        if s.weight_percent == 0 {
            parts.push("out (weight 0)".into());
        } else if weights.is_some_and(|w| !w.routed.contains(&s.name)) {
            parts.push("out (policy weight 0)".into());
        }
    }
    if parts.is_empty() {
        "serving".into()
    } else {
        parts.join(",")
    }
}

/// The stacks table. With the policy's weights: POLICY (weight in the default route,
/// `-` when not a default target) beside FACTOR (the operator's weight factor), and SHARE,
/// the percentage of new default-route visitors the stack gets now.
/// `only` prints just that stack's row (shares are still computed over every stack).
pub fn print_stacks(
    r: &v1::ListStacksResponse,
    weights: Option<&PolicyWeights>,
    only: Option<&str>,
) {
    let shares = weights.map(|w| w.default_shares(&r.stacks));
    // HEALTH only when the control service runs health checks.
    let health = r.stacks.iter().any(|s| s.health.is_some());
    let mut header = row([
        "STACK", "REGION", "POLICY", "FACTOR", "SHARE", "STATE", "REQ", "5XX", "CHANGED", "REASON",
    ]);
    if health {
        header.insert(6, "HEALTH".into());
    }
    let mut rows = vec![header];
    for s in r.stacks.iter().filter(|s| only.is_none_or(|o| o == s.name)) {
        let t = s.telemetry.clone().unwrap_or_default();
        let unknown = || "?".to_string();
        let mut cells = vec![
            s.name.clone(),
            s.region.clone(),
            weights.map_or_else(unknown, |w| {
                w.default
                    .get(&s.name)
                    .map_or_else(|| "-".into(), |p| p.to_string())
            }),
            format!("{}%", s.weight_percent),
            shares
                .as_ref()
                .and_then(|sh| sh.get(&s.name))
                .map_or_else(unknown, |p| format!("{p}%")),
            stack_state(s, weights),
            t.requests.to_string(),
            t.status_5xx.to_string(),
            format!("v{} {}", s.changed_version, s.changed_by),
            s.reason.clone(),
        ];
        if health {
            cells.insert(6, s.health.as_ref().map_or_else(unknown, health_cell));
        }
        rows.push(cells);
    }
    print_table(&rows);
}

/// `healthy`, `unknown`, `hard_down (component)`.
pub(super) fn health_cell(h: &v1::StackHealthStatus) -> String {
    if h.failing_layers.is_empty() {
        h.verdict.clone()
    } else {
        format!("{} ({})", h.verdict, h.failing_layers.join(","))
    }
}

/// One row per intake: its queue as last scraped, or why the scrape failed.
pub(super) fn intake_rows(intakes: &[v1::IntakeStatus], now_ms: u64) -> Vec<Vec<String>> {
    let mut rows = vec![row([
        "INTAKE", "QUEUED", "OLDEST", "DRAIN", "DEAD", "DRAINER", "SCRAPED", "ERROR",
    ])];
    let dash = || "-".to_string();
    for i in intakes {
        rows.push(vec![
            i.cluster.clone(),
            i.queue_depth.map_or_else(dash, |d| d.to_string()),
            i.oldest_age_s.map_or_else(dash, |a| format!("{a:.1}s")),
            i.drain_rate_per_s
                .map_or_else(dash, |r| format!("{r:.1}/s")),
            i.dead_letters.map_or_else(dash, |d| d.to_string()),
            match (i.scraped_unix_ms, i.waiting) {
                (0, _) => dash(),
                (_, true) => "waiting for a stack".into(),
                (_, false) => "running".into(),
            },
            ago(now_ms, i.scraped_unix_ms),
            if i.error.is_empty() {
                String::new()
            } else {
                format!("{} ({})", i.error, ago(now_ms, i.error_unix_ms))
            },
        ]);
    }
    rows
}

/// The fleet: a summary line, then one row per Envoy.
pub fn print_status(r: &v1::StatusResponse, now_ms: u64) {
    let connected = r.nodes.iter().filter(|n| n.connected).count();
    println!(
        "version {} · {} of {} connected node(s) on it · store {} · up since {}",
        r.current_version,
        r.nodes_current,
        connected,
        r.store,
        fmt_time(r.started_unix_ms)
    );
    if !r.replica_id.is_empty() {
        let role = if r.leader { "leader" } else { "follower" };
        println!("replica {} · {role}", r.replica_id);
    }
    for d in &r.degraded {
        println!(
            "DEGRADED: rule {} queues its requests at {} (no stack left: {})",
            d.rule, d.queue, d.reason
        );
    }
    if !r.health.is_empty() {
        let stacks: Vec<String> = r
            .health
            .iter()
            .map(|h| {
                let mut t = format!("{} {}", h.stack, health_cell(h));
                if let Some(e) = h.evidence.first() {
                    t.push_str(&format!(": {e}"));
                }
                t
            })
            .collect();
        println!("health: {}", stacks.join(" · "));
    }
    if !r.intakes.is_empty() {
        print_table(&intake_rows(&r.intakes, now_ms));
    }
    if r.nodes.is_empty() {
        println!("no Envoy has connected yet");
        return;
    }
    let mut rows = vec![row([
        "NODE",
        "STATE",
        "APPLIED",
        "SENT",
        "CONNECTED SINCE",
        "LAST ACK",
        "LAST REPORT",
        "PEER",
    ])];
    for n in &r.nodes {
        rows.push(vec![
            n.node_id.clone(),
            if n.connected {
                "connected".into()
            } else if n.disconnected_unix_ms == 0 {
                // Reports telemetry but never opened a Watch stream.
                "not watching".into()
            } else {
                format!("gone {}", ago(now_ms, n.disconnected_unix_ms))
            },
            format!("v{}", n.applied_version),
            format!("v{}", n.sent_version),
            fmt_time(n.connected_since_unix_ms),
            ago(now_ms, n.last_ack_unix_ms),
            ago(now_ms, n.last_report_unix_ms),
            n.peer.clone(),
        ]);
    }
    print_table(&rows);
}

/// One received snapshot: a JSON line, or a one-line summary.
pub fn print_snapshot(json_out: bool, s: &v1::Snapshot, now_ms: u64) {
    if json_out {
        match serde_json::to_string(s) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("switchyard: {e}"),
        }
        return;
    }
    let stacks: Vec<String> = s
        .stacks
        .iter()
        .map(|st| {
            let mut t = format!("{} {}%", st.name, st.weight_percent);
            if !st.healthy {
                t.push_str(" unhealthy");
            }
            if st.evacuating {
                t.push_str(" evacuating");
            } else if st.draining {
                t.push_str(" draining");
                if st.drain_deadline_unix_ms != 0 {
                    t.push_str(&format!(
                        " (sticky until {})",
                        fmt_time(st.drain_deadline_unix_ms)
                    ));
                }
            }
            t
        })
        .collect();
    println!(
        "v{}  {}  policy {} bytes  stacks: {}",
        s.version,
        fmt_time(now_ms),
        s.policy_json.len(),
        stacks.join(", ")
    );
}
