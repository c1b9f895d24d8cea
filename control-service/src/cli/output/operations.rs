//! What the CLI prints about the control service's workflows: rollouts with their
//! gates, incidents with their evidence, events, the audit log and tokens.

use super::*;

pub fn print_rollouts(rollouts: &[v1::RolloutStatus]) {
    let mut rows = vec![row([
        "ID",
        "RELEASE",
        "STABLE",
        "PHASE",
        "STEP",
        "SHARE",
        "CREATED (UTC)",
    ])];
    for r in rollouts {
        rows.push(vec![
            r.id.clone(),
            r.release.clone(),
            r.stable.clone(),
            r.phase.clone(),
            if r.step == 0 {
                "-".into()
            } else {
                format!("{}/{}", r.step, r.plan.len())
            },
            format!("{}%", r.share_percent),
            fmt_time(r.created_unix_ms),
        ]);
    }
    print_table(&rows);
}

/// One rollout: where it is, and every step's gates with sample size and confidence.
pub fn print_rollout(r: &v1::RolloutStatus, now_ms: u64) {
    let plan: Vec<String> = r.plan.iter().map(|p| format!("{p}%")).collect();
    println!(
        "rollout {}: {} vs {} ({}), {}{}",
        r.id,
        r.release,
        r.stable,
        r.scope,
        r.phase,
        if r.step > 0 {
            format!(" step {}/{}", r.step, r.plan.len())
        } else {
            String::new()
        }
    );
    println!(
        "  release share {}% · plan {} · auto-rollback {} · updated {}",
        r.share_percent,
        plan.join(" → "),
        if r.auto_rollback { "yes" } else { "no" },
        ago(now_ms, r.updated_unix_ms)
    );
    if !r.reason.is_empty() {
        println!("  {}", r.reason);
    }
    if r.blast_radius >= 0.0 {
        println!(
            "  users who reached {}: {:.2}% of the scope's users",
            r.release,
            r.blast_radius * 100.0
        );
    }
    let mut rows = vec![row([
        "STEP",
        "SHARE",
        "OUTCOME",
        "GATE",
        "VERDICT",
        "N",
        "CONFIDENCE",
        "ESTIMATE",
    ])];
    for (i, s) in r.steps.iter().enumerate() {
        let outcome = if s.outcome.is_empty() {
            "running".to_string()
        } else {
            s.outcome.clone()
        };
        if s.gates.is_empty() {
            rows.push(vec![
                (i + 1).to_string(),
                format!("{}%", s.share_percent),
                outcome.clone(),
                "-".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for (j, g) in s.gates.iter().enumerate() {
            rows.push(vec![
                if j == 0 {
                    (i + 1).to_string()
                } else {
                    String::new()
                },
                if j == 0 {
                    format!("{}%", s.share_percent)
                } else {
                    String::new()
                },
                if j == 0 {
                    outcome.clone()
                } else {
                    String::new()
                },
                format!("{}{}", g.gate, if g.blocking { "" } else { " (sentinel)" }),
                g.verdict.clone(),
                format!("{:.0}", g.n),
                format!("{:.3}", g.confidence),
                if g.estimate.is_nan() {
                    "-".into()
                } else {
                    format!("{:.4}", g.estimate)
                },
            ]);
        }
    }
    if rows.len() > 1 {
        print_table(&rows);
    }
}

pub fn print_audit(r: &v1::AuditListResponse) {
    let mut rows = vec![row([
        "SEQ",
        "TIME (UTC)",
        "KIND",
        "ACTOR",
        "SUBJECT",
        "SUMMARY",
    ])];
    for e in &r.entries {
        let mut summary = e.summary.clone();
        if !e.reason.is_empty() {
            summary.push_str(&format!(" — {}", e.reason));
        }
        rows.push(vec![
            e.seq.to_string(),
            fmt_time(e.at_unix_ms),
            e.kind.clone(),
            e.actor.clone(),
            e.subject.clone(),
            summary,
        ]);
    }
    print_table(&rows);
}

pub fn print_incidents(incidents: &[v1::IncidentSummary]) {
    let mut rows = vec![row([
        "ID",
        "STACK",
        "SIGNAL",
        "PHASE",
        "CONFIDENCE",
        "PROPOSAL",
        "OPENED (UTC)",
    ])];
    for i in incidents {
        rows.push(vec![
            i.id.to_string(),
            if i.stack.is_empty() {
                i.scope.clone()
            } else {
                i.stack.clone()
            },
            i.signal.clone(),
            i.phase.clone(),
            if i.confidence < 0.0 {
                "-".into()
            } else {
                format!("{:.2}", i.confidence)
            },
            if i.proposal.is_empty() {
                "-".into()
            } else {
                i.proposal.clone()
            },
            fmt_time(i.opened_unix_ms),
        ]);
    }
    print_table(&rows);
}

/// One incident: where it is, the evidence bundle, approvals and history.
pub fn print_incident(i: &serde_json::Value, now_ms: u64) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "incident {}: {} on {} ({}), {}",
        i["id"],
        s(&i["signal"]),
        i["stack"]
            .as_str()
            .unwrap_or(i["scope"].as_str().unwrap_or("-")),
        s(&i["phase"]),
        ago(now_ms, i["opened_ms"].as_u64().unwrap_or(0))
    );
    let ev = &i["evidence"];
    if ev.is_object() {
        println!("  localisation: {}", s(&ev["localisation"]));
        if let Some(p) = ev["proposed"].as_object() {
            println!("  proposed:     {}", serde_json::Value::Object(p.clone()));
        }
        println!("  expected:     {}", s(&ev["expected_effect"]));
        println!("  confidence:   {}", ev["confidence"]);
        for sig in ev["signals"].as_array().into_iter().flatten() {
            println!(
                "  signal {} {}: {} observed {} baseline {}",
                s(&sig["stack"]),
                s(&sig["signal"]),
                s(&sig["severity"]),
                sig["observed"],
                sig["baseline"]
            );
        }
        for e in ev["events"].as_array().into_iter().flatten() {
            println!("  event {}: {}", s(&e["id"]), s(&e["relation"]));
        }
        for d in ev["dependencies"].as_array().into_iter().flatten() {
            println!(
                "  target {}: {:.1} -> {:.1} req/s (limit {:.1}) {}",
                s(&d["stack"]),
                d["current_rps"].as_f64().unwrap_or(0.0),
                d["projected_rps"].as_f64().unwrap_or(0.0),
                d["limit_rps"].as_f64().unwrap_or(0.0),
                if d["ok"].as_bool() == Some(true) {
                    "ok"
                } else {
                    "no room"
                }
            );
        }
        for a in ev["alternatives"].as_array().into_iter().flatten() {
            println!("  alternative: {}", s(&a["why_not"]));
        }
    }
    for a in i["approvals"].as_array().into_iter().flatten() {
        println!(
            "  {} by {} at {}: {}",
            if a["approved"].as_bool() == Some(true) {
                "approved"
            } else {
                "rejected"
            },
            s(&a["actor"]),
            fmt_time(a["at_ms"].as_u64().unwrap_or(0)),
            s(&a["comment"])
        );
    }
    println!("  history:");
    for h in i["history"].as_array().into_iter().flatten() {
        println!(
            "    {}  {:<22} {:<10} {}",
            fmt_time(h["at_ms"].as_u64().unwrap_or(0)),
            s(&h["to"]),
            s(&h["actor"]),
            s(&h["note"])
        );
    }
}

pub fn print_events(events: &[v1::EventInfo]) {
    let mut rows = vec![row([
        "ID",
        "KIND",
        "SCOPE",
        "FROM (UTC)",
        "TO (UTC)",
        "BY",
        "DESCRIPTION",
    ])];
    for e in events {
        rows.push(vec![
            e.id.clone(),
            e.kind.clone(),
            e.scope.clone(),
            fmt_time(e.from_unix_ms),
            fmt_time(e.to_unix_ms),
            e.actor.clone(),
            e.description.clone(),
        ]);
    }
    print_table(&rows);
}

/// Tokens as a table: id, name, role, created, by whom, state.
pub fn print_tokens(tokens: &[v1::TokenInfo]) {
    if tokens.is_empty() {
        println!("no tokens");
        return;
    }
    println!(
        "{:<16}  {:<24} {:<9} {:<20} {:<16} STATE",
        "ID", "NAME", "ROLE", "CREATED", "BY"
    );
    for t in tokens {
        let state = if t.revoked_unix_ms == 0 {
            "valid".to_string()
        } else {
            format!("revoked {}", fmt_time(t.revoked_unix_ms))
        };
        println!(
            "{:<16}  {:<24} {:<9} {:<20} {:<16} {state}",
            t.id,
            t.name,
            t.role,
            fmt_time(t.created_unix_ms),
            t.created_by
        );
    }
}
