//! Replay: the detector and the incident workflow on a recorded or synthetic trace
//! (`docs/traces.md`) under a virtual clock (each window's end), with an in-memory store.
//!
//! Actions are carried out virtually: the trace does not react to them, so a replay
//! shows what the brain would recommend and when, and — with auto-approval — how the
//! workflow proceeds (post-action validation, the next action, freeze windows). It
//! never touches a running service.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::brain::clock::UnixMs;
use crate::brain::detection::{DetectContext, Detector, DetectorConfig, Reason};
use crate::brain::incident::{
    triggers_from_findings, Context, Decision, IncidentConfig, IncidentEngine, IncidentError,
    Phase, StackStatus,
};
use crate::brain::scenario::Trace;
use crate::store::MemoryStore;

/// How a replay runs.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub detector: DetectorConfig,
    pub workflow: IncidentConfig,
    /// Approve every proposal this long after it appears (`None`: nobody approves).
    pub approve_after_ms: Option<u64>,
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    pub at_ms: UnixMs,
    pub incident: u64,
    pub phase: String,
    pub stack: Option<String>,
    pub action: Option<String>,
    pub confidence: Option<f64>,
    pub actor: String,
    pub note: String,
}

impl From<&Decision> for TimelineEntry {
    fn from(d: &Decision) -> Self {
        Self {
            at_ms: d.at_ms,
            incident: d.incident,
            phase: d.phase.as_str().into(),
            stack: d.stack.clone(),
            action: d.action.clone(),
            confidence: d.confidence,
            actor: d.actor.clone(),
            note: d.note.clone(),
        }
    }
}

/// What the replay found, against the trace's expectations.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    pub name: String,
    pub windows: usize,
    pub incidents: u64,
    pub first_recommendation_ms: Option<UnixMs>,
    pub recommended_stack: Option<String>,
    pub recommendation: Option<String>,
    /// The stack of the trace's expected finding (`expect.confirm`).
    pub expected_stack: Option<String>,
    /// Fault onset → first recommendation.
    pub onset_to_recommendation_ms: Option<i64>,
    /// First recommendation → SLO breach (positive: before the breach).
    pub lead_before_breach_ms: Option<i64>,
    /// The deployment the first incident's evidence names as suspect, and the expected one.
    pub suspect_event: Option<String>,
    pub expected_suspect: Option<String>,
    /// Incidents on stacks the trace does not expect (neither `confirm` nor `allowed`).
    pub false_alarms: Vec<String>,
    /// Approvals refused by a freeze window.
    pub frozen_refusals: u32,
    pub executed: u32,
    /// Empty: the outcome the trace expects.
    pub problems: Vec<String>,
}

/// The replay's output.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    pub timeline: Vec<TimelineEntry>,
    pub summary: ReplaySummary,
}

fn pattern_stack(p: &str) -> &str {
    p.split_once('/').map_or(p, |(s, _)| s)
}

/// Run the trace through the detector and the workflow.
pub fn replay(trace: &Trace, opts: &ReplayOptions) -> Result<ReplayReport, IncidentError> {
    let mut dcfg = opts.detector.clone();
    dcfg.slo = trace.slo;
    let mut detector = Detector::new(dcfg);
    let engine = IncidentEngine::new(Arc::new(MemoryStore::new()), opts.workflow.clone());
    let mut report = ReplayReport::default();
    let s = &mut report.summary;
    s.name = trace.name.clone();
    s.windows = trace.windows.len();
    s.expected_stack = trace
        .expect
        .confirm
        .as_deref()
        .map(|p| pattern_stack(p).into());
    s.expected_suspect = trace.expect.suspect_event.clone();
    let mut peak: BTreeMap<String, f64> = BTreeMap::new();
    // incident → when its current proposal may be approved
    let mut approve_at: BTreeMap<u64, UnixMs> = BTreeMap::new();
    let mut refused_once: BTreeMap<u64, u32> = BTreeMap::new();
    let secs = trace.window_ms as f64 / 1000.0;
    let push = |timeline: &mut Vec<TimelineEntry>, ds: &[Decision]| {
        timeline.extend(ds.iter().map(TimelineEntry::from));
    };
    for i in 0..trace.windows.len() {
        let now = trace.windows[i].t + trace.window_ms;
        let sat = trace.saturation(i);
        let ws = trace.windows(i);
        let findings = detector.observe(
            &ws,
            &DetectContext {
                events: &trace.events,
                saturation: Some(&sat),
                topology: &trace.stacks,
            },
        );
        let stacks: Vec<StackStatus> = trace
            .stacks
            .iter()
            .map(|st| {
                let rps = ws
                    .iter()
                    .find(|w| w.stack == st.name)
                    .map_or(0.0, |w| w.requests as f64 / secs);
                let p = peak.entry(st.name.clone()).or_insert(0.0);
                *p = p.max(rps);
                StackStatus {
                    name: st.name.clone(),
                    group: st.group.clone(),
                    segments: st.segments.clone(),
                    rules: st.rules.clone(),
                    healthy: !findings
                        .iter()
                        .any(|f| f.stack == st.name && f.reasons.contains(&Reason::HardDown)),
                    rps,
                    peak_rps: *p,
                    capacity_rps: st.capacity_rps,
                }
            })
            .collect();
        for t in triggers_from_findings(&findings) {
            let out = engine.trigger(t, now)?;
            push(&mut report.timeline, &out.decisions);
        }
        let out = engine.tick(
            now,
            &Context {
                findings: &findings,
                stacks: &stacks,
                events: &trace.events,
            },
        )?;
        push(&mut report.timeline, &out.decisions);
        for d in &out.decisions {
            if d.phase == Phase::AwaitingApproval && d.action.is_some() {
                if let Some(after) = opts.approve_after_ms {
                    approve_at.insert(d.incident, d.at_ms + after);
                }
            }
        }
        // The executor, virtually: approved actions are applied at once.
        for c in out.actions {
            let o = engine.executed(c.id, true, "(replay)", now)?;
            report.summary.executed += 1;
            push(&mut report.timeline, &o.decisions);
        }
        let due: Vec<u64> = approve_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            match engine.approve(id, "replay", "auto-approved (--approve-after)", now) {
                Ok(o) => {
                    approve_at.remove(&id);
                    push(&mut report.timeline, &o.decisions);
                    if o.action.is_some() {
                        let e = engine.executed(id, true, "(replay)", now)?;
                        report.summary.executed += 1;
                        push(&mut report.timeline, &e.decisions);
                    }
                }
                Err(IncidentError::Frozen {
                    stack,
                    until_ms,
                    incident,
                }) => {
                    // Shown once per proposal; retried every window until the freeze ends.
                    let n = refused_once.entry(id).or_insert(0);
                    report.summary.frozen_refusals += 1;
                    if *n == 0 {
                        report.timeline.push(TimelineEntry {
                            at_ms: now,
                            incident: id,
                            phase: "approval_refused".into(),
                            stack: Some(stack.clone()),
                            action: None,
                            confidence: None,
                            actor: "replay".into(),
                            note: format!(
                                "{stack} is frozen until {until_ms} by incident {incident}'s action"
                            ),
                        });
                    }
                    *n += 1;
                }
                Err(IncidentError::WrongPhase { .. }) => {
                    approve_at.remove(&id);
                }
                Err(e) => return Err(e),
            }
        }
        for d in &out.decisions {
            if d.phase != Phase::AwaitingApproval {
                refused_once.remove(&d.incident);
            }
        }
    }
    let s = &mut report.summary;
    s.incidents = engine.newest_id()?.unwrap_or(0);
    if let Some(first) = report
        .timeline
        .iter()
        .find(|e| e.phase == Phase::AwaitingApproval.as_str() && e.action.is_some())
    {
        s.first_recommendation_ms = Some(first.at_ms);
        s.recommended_stack = first.stack.clone();
        s.recommendation = first.action.clone();
        s.onset_to_recommendation_ms = trace
            .expect
            .fault_at_ms
            .map(|f| first.at_ms as i64 - f as i64);
        s.lead_before_breach_ms = trace.breach_at_ms.map(|b| b as i64 - first.at_ms as i64);
        if let Some(inc) = engine.get(first.incident)? {
            s.suspect_event = inc
                .evidence
                .iter()
                .flat_map(|e| e.events.iter())
                .find(|e| e.suspect)
                .map(|e| e.id.clone());
        }
    }
    let expected: Vec<&str> = trace
        .expect
        .confirm
        .iter()
        .chain(trace.expect.allowed.iter())
        .map(|p| pattern_stack(p))
        .collect();
    for id in 1..=s.incidents {
        if let Some(inc) = engine.get(id)? {
            let stack = inc.stack.clone().unwrap_or_else(|| inc.scope.clone());
            let reached_proposal = inc.history.iter().any(|h| h.to == Phase::AwaitingApproval);
            if !expected.contains(&stack.as_str()) && reached_proposal {
                s.false_alarms
                    .push(format!("incident {id} on {stack} ({})", inc.signal));
            }
        }
    }
    if !s.false_alarms.is_empty() {
        s.problems
            .push(format!("false alarms: {}", s.false_alarms.join("; ")));
    }
    if let Some(want) = &s.expected_stack {
        match &s.recommended_stack {
            None => s.problems.push(format!("no recommendation for {want}")),
            Some(got) if got != want => s
                .problems
                .push(format!("first recommendation names {got}, want {want}")),
            Some(_) => {}
        }
    }
    if s.expected_suspect.is_some() && s.suspect_event != s.expected_suspect {
        s.problems.push(format!(
            "suspect deployment {:?}, want {:?}",
            s.suspect_event, s.expected_suspect
        ));
    }
    if trace.expect.warn_before_breach && s.lead_before_breach_ms.is_none_or(|l| l <= 0) {
        s.problems.push(format!(
            "no recommendation before the breach (lead {:?} ms)",
            s.lead_before_breach_ms
        ));
    }
    Ok(report)
}
