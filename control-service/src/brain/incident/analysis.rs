//! The incident's analysis steps (§8.3): correlate with the event registry, localise
//! across the stack's group, plan the action and its expected effect, score the
//! confidence; and, after an action, whether the signal recovered or the next action is
//! due. Each fills the evidence and returns the transition's note.

use super::*;

impl IncidentEngine {
    /// Event correlation and **attribution**: at most one suspect deployment per
    /// incident (rules in docs/detection.md, "Attribution").
    /// 1. Candidates: the findings' suspects and deployments on the stack from the
    ///    registry, that started at most `deploy_lookback_ms` before the incident's onset
    ///    or inside its onset window. A deployment after that (during the anomaly) is
    ///    listed, never suspected.
    /// 2. The latest candidate is the suspect; earlier ones are listed as such.
    /// 3. Spatial check: when the stack does not deviate from its peers (not localised,
    ///    not hard down) and peers of its group deviate too (confirmed or leading), a deployment on a set of
    ///    stacks that leaves a deviating peer out cannot explain the problem, and is not
    ///    suspected.
    /// 4. An anomaly that began during announced maintenance on the stack suspects no
    ///    deployment.
    pub(super) fn correlate(
        &self,
        inc: &mut Incident,
        ctx: &Context<'_>,
        ev: &mut Evidence,
    ) -> String {
        let stack = inc.stack.clone().unwrap_or_else(|| inc.scope.clone());
        let mine: Vec<&Finding> = ctx.findings.iter().filter(|f| f.stack == stack).collect();
        // When the change began (a finding's streak may start late: see
        // `detection::estimate_onset`).
        let onset = mine
            .iter()
            .map(|f| f.change_ms.unwrap_or(f.onset_ms).min(f.onset_ms))
            .min()
            .unwrap_or(inc.opened_ms);
        let change = crate::brain::detection::ChangeOnset {
            step: onset,
            ramp: mine
                .iter()
                .filter_map(|f| f.ramp_from_ms)
                .min()
                .unwrap_or(onset)
                .min(onset),
        };
        // The window length, from a finding's span over its windows.
        let window_ms = mine
            .iter()
            .filter(|f| f.windows > 0 && f.at_ms > f.onset_ms)
            .map(|f| (f.at_ms - f.onset_ms) / u64::from(f.windows))
            .min()
            .unwrap_or(60_000);
        let lookback = self.cfg.deploy_lookback_ms;
        let event = |id: &str| ctx.events.iter().find(|e| e.id == id);
        let mut seen = BTreeSet::new();
        for f in &mine {
            for c in &f.events {
                if seen.insert(c.event_id.clone()) {
                    ev.events.push(EventEvidence {
                        id: c.event_id.clone(),
                        kind: c.kind,
                        relation: c.relation.clone(),
                        suspect: c.suspect,
                    });
                }
            }
        }
        for e in ctx.events {
            let on_stack = covers(e, &stack, ctx.stacks);
            if e.kind == EventKind::Deployment
                && on_stack
                && e.from_ms <= inc.opened_ms
                && e.from_ms + lookback >= change.ramp
                && seen.insert(e.id.clone())
            {
                let after = e.from_ms >= onset + window_ms;
                // A deployment scoped to a segment or a rule says which one.
                let on = match &e.scope {
                    Scope::Stacks(_) => stack.clone(),
                    other => format!("{stack} ({})", other.label()),
                };
                ev.events.push(EventEvidence {
                    id: e.id.clone(),
                    kind: e.kind,
                    relation: if after {
                        format!(
                            "deployment on {on} {} min after the onset (not a suspect: the anomaly came first)",
                            (e.from_ms - onset) / 60_000
                        )
                    } else {
                        format!(
                            "deployment on {on} {} min before the onset",
                            onset.saturating_sub(e.from_ms) / 60_000
                        )
                    },
                    suspect: !after,
                });
            }
        }
        // 1. Onset rule, at the incident's onset (a finding's own onset may be later).
        for x in ev.events.iter_mut().filter(|x| x.suspect) {
            if let Some(e) = event(&x.id) {
                if !crate::brain::detection::deployment_candidate(e, change, window_ms, lookback) {
                    x.suspect = false;
                    if e.from_ms >= onset + window_ms {
                        x.relation = format!(
                            "deployment on {stack} {} min after the onset (not a suspect: the anomaly came first)",
                            (e.from_ms - onset) / 60_000
                        );
                    }
                }
            }
        }
        // 4. An anomaly that began during announced maintenance on the stack is the
        // maintenance's (from the registry, or a finding that correlated one).
        let maintenance = ctx.events.iter().find(|e| {
            e.kind == EventKind::Maintenance
                && (covers(e, &stack, ctx.stacks) || seen.contains(&e.id))
                && crate::brain::detection::began_during(e, onset, window_ms)
        });
        if let Some(m) = maintenance {
            if !ev.events.iter().any(|x| x.id == m.id) {
                ev.events.push(EventEvidence {
                    id: m.id.clone(),
                    kind: m.kind,
                    relation: "the anomaly began during this maintenance (no deployment suspected)"
                        .into(),
                    suspect: false,
                });
            }
            for x in ev.events.iter_mut().filter(|x| x.suspect) {
                x.suspect = false;
                x.relation = format!(
                    "{}; not a suspect: the anomaly began during maintenance {}",
                    x.relation, m.id
                );
            }
        }
        // 3. Spatial check.
        let localised = mine
            .iter()
            .any(|f| f.localised || f.reasons.contains(&Reason::HardDown));
        let group = ctx
            .stacks
            .iter()
            .find(|s| s.name == stack)
            .map(|s| s.group.as_str());
        let peers: BTreeSet<&str> = ctx
            .findings
            .iter()
            .filter(|f| {
                !f.stale
                    && f.worth_an_incident()
                    && f.stack != stack
                    && !f.stack.starts_with("group:")
            })
            .filter(|f| {
                ctx.stacks
                    .iter()
                    .any(|s| s.name == f.stack && Some(s.group.as_str()) == group)
            })
            .map(|f| f.stack.as_str())
            .collect();
        if !localised && group.is_some() && !peers.is_empty() {
            for x in ev.events.iter_mut().filter(|x| x.suspect) {
                let Some(e) = event(&x.id) else { continue };
                // Whatever the scope (stacks, a segment, a rule), a deviating peer it
                // does not cover was not deployed.
                let left_out: Vec<&str> = peers
                    .iter()
                    .copied()
                    .filter(|p| !covers(e, p, ctx.stacks))
                    .collect();
                if !left_out.is_empty() {
                    x.suspect = false;
                    x.relation = format!(
                        "{}; not a suspect: {} deviate too and were not deployed",
                        x.relation,
                        left_out.join(", ")
                    );
                }
            }
        }
        // 2. The latest candidate (registry time; unknown events keep their order).
        let latest = ev
            .events
            .iter()
            .enumerate()
            .filter(|(_, x)| x.suspect)
            .max_by_key(|(i, x)| (event(&x.id).map(|e| e.from_ms), std::cmp::Reverse(*i)))
            .map(|(i, _)| i);
        for (i, x) in ev.events.iter_mut().enumerate() {
            if x.suspect && Some(i) != latest {
                x.suspect = false;
                x.relation = format!("{} (a later deployment is the suspect)", x.relation);
            }
        }
        for f in ctx.findings.iter().filter(|f| f.stack == stack) {
            ev.signals.push(SignalEvidence {
                stack: f.stack.clone(),
                signal: f.signal.key(),
                severity: f.severity,
                observed: f.observed,
                baseline: f.baseline,
                score: f.score,
                cross_stack_z: f.cross.map(|c| c.z),
                localised: f.localised,
                reasons: f.reasons.clone(),
                lead_time_ms: f.lead_time_ms,
                series: f.series.clone(),
            });
        }
        match ev.events.iter().find(|e| e.suspect) {
            Some(e) => format!(
                "{} correlated event(s); suspect deployment {}",
                ev.events.len(),
                e.id
            ),
            None => format!(
                "{} correlated event(s); no deployment suspect",
                ev.events.len()
            ),
        }
    }

    pub(super) fn localise(
        &self,
        inc: &mut Incident,
        ctx: &Context<'_>,
        ev: &mut Evidence,
    ) -> String {
        let Some(stack) = inc.stack.clone() else {
            ev.localisation = format!("scope {} has no single stack", inc.scope);
            return ev.localisation.clone();
        };
        let mine: Vec<&Finding> = self.live(ctx, &stack).collect();
        let hard = mine.iter().any(|f| f.reasons.contains(&Reason::HardDown))
            || inc
                .triggers
                .iter()
                .any(|t| t.source == TriggerSource::HealthCheck);
        let localised = mine.iter().any(|f| f.localised);
        // Only the stacks of its own group tell a single-stack problem from a shared
        // one: a finding on a stack of another group (other traffic, e.g. another
        // residency) says nothing about this one.
        let group = group_of(&stack, ctx.stacks);
        let others: BTreeSet<&str> = ctx
            .findings
            .iter()
            .filter(|f| !f.stale && f.stack != stack && !f.stack.starts_with("group:"))
            .filter(|f| group_of(&f.stack, ctx.stacks) == group)
            .map(|f| f.stack.as_str())
            .collect();
        let alone = !ctx
            .stacks
            .iter()
            .any(|s| s.name != stack && s.group == group);
        if hard || localised {
            ev.delta_stack = Some(stack.clone());
            ev.localisation = if hard {
                format!("{stack} is hard down")
            } else {
                let z = mine
                    .iter()
                    .filter_map(|f| f.cross.map(|c| c.z))
                    .fold(0.0, f64::max);
                format!("{stack} deviates from the other stacks of its group (z {z:.1})")
            };
        } else if alone {
            ev.delta_stack = Some(stack.clone());
            let judged = if mine.iter().any(|f| f.reasons.contains(&Reason::Baseline)) {
                "deviates from its own seasonal baseline".to_string()
            } else {
                let r: BTreeSet<String> = mine
                    .iter()
                    .flat_map(|f| f.reasons.iter().map(|r| format!("{r:?}").to_lowercase()))
                    .collect();
                format!(
                    "is anomalous on its own ({})",
                    r.into_iter().collect::<Vec<_>>().join(", ")
                )
            };
            ev.localisation = format!(
                "{stack} {judged}; {ALONE} {group} to compare with, so this is not confirmed \
                 against peers"
            );
        } else if others.is_empty() {
            ev.delta_stack = Some(stack.clone());
            ev.localisation = format!("{stack} deviates from its baseline; no peer deviates (not confirmed against peers)");
        } else {
            ev.localisation = format!(
                "{stack} and {} deviate together: not a single-stack problem",
                others.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        ev.localisation.clone()
    }

    /// Choose the action and run the dependency checks on its targets.
    pub(super) fn plan(&self, inc: &mut Incident, ctx: &Context<'_>, ev: &mut Evidence) -> String {
        let Some(d) = ev.delta_stack.clone() else {
            ev.proposed = None;
            ev.expected_effect =
                "none: moving traffic between stacks that all deviate would not help".into();
            ev.alternatives.push(Alternative {
                action: None,
                why_not: "no delta stack: investigate the shared dependency".into(),
            });
            return "no delta stack, no routing action".into();
        };
        let hard = ev.localisation.contains("hard down");
        // A deployment on the delta stack just before the onset is the likely cause:
        // moving all of its traffic back is the rollback by routing alone.
        let suspect = ev.events.iter().any(|e| e.suspect);
        let p = self.cfg.shift_percent.clamp(1, 100);
        let mut percents: Vec<u8> = if hard {
            vec![100]
        } else if suspect {
            vec![100, p]
        } else {
            vec![p]
        };
        if !hard && p > 25 {
            percents.push(25);
        }
        self.plan_move(inc, ctx, ev, &d, &percents)
    }

    fn plan_move(
        &self,
        inc: &Incident,
        ctx: &Context<'_>,
        ev: &mut Evidence,
        d: &str,
        percents: &[u8],
    ) -> String {
        let busy: BTreeSet<&str> = ctx
            .findings
            .iter()
            .filter(|f| !f.stale)
            .map(|f| f.stack.as_str())
            .collect();
        // Traffic only moves within a group (stacks serving the same traffic; residency
        // and segment rules are expressed by grouping).
        let group = group_of(d, ctx.stacks);
        let same_group: Vec<&StackStatus> = ctx
            .stacks
            .iter()
            .filter(|s| s.name != d && s.group == group)
            .collect();
        let targets: Vec<&StackStatus> = same_group
            .iter()
            .copied()
            .filter(|s| s.healthy && !busy.contains(s.name.as_str()))
            .collect();
        for s in same_group
            .iter()
            .filter(|s| !s.healthy || busy.contains(s.name.as_str()))
        {
            ev.alternatives.push(Alternative {
                action: None,
                why_not: format!(
                    "{} is not a target: {}",
                    s.name,
                    if s.healthy {
                        "it deviates too"
                    } else {
                        "unhealthy"
                    }
                ),
            });
        }
        let from_rps = ctx
            .stacks
            .iter()
            .find(|s| s.name == d)
            .map_or(0.0, |s| s.rps);
        let to: Vec<String> = targets.iter().map(|s| s.name.clone()).collect();
        ev.proposed = None;
        ev.dependencies.clear();
        if targets.is_empty() {
            ev.expected_effect = "none".into();
            ev.alternatives.push(Alternative {
                action: Some(Action::Evacuate {
                    stack: d.into(),
                    to: Vec::new(),
                }),
                why_not: if same_group.is_empty() {
                    format!("no other stack serves its group {group}: its traffic cannot move")
                } else {
                    "no healthy target stack".into()
                },
            });
            return "no healthy target: human decision needed".into();
        }
        for &pct in percents {
            let moved = from_rps * f64::from(pct) / 100.0;
            let limit = |s: &StackStatus| s.capacity_rps.unwrap_or(s.peak_rps);
            let room: f64 = targets.iter().map(|s| (limit(s) - s.rps).max(0.0)).sum();
            let checks: Vec<DependencyCheck> = targets
                .iter()
                .map(|s| {
                    let share = if room > 0.0 {
                        (limit(s) - s.rps).max(0.0) / room
                    } else {
                        1.0 / targets.len() as f64
                    };
                    let projected = s.rps + moved * share;
                    DependencyCheck {
                        stack: s.name.clone(),
                        healthy: s.healthy,
                        current_rps: s.rps,
                        projected_rps: projected,
                        limit_rps: limit(s),
                        ok: projected <= limit(s),
                    }
                })
                .collect();
            let action = if pct >= 100 {
                Action::Evacuate {
                    stack: d.into(),
                    to: to.clone(),
                }
            } else {
                Action::Shift {
                    scope: inc.scope.clone(),
                    from: d.into(),
                    to: to.clone(),
                    percent: pct,
                }
            };
            if checks.iter().all(|c| c.ok) {
                ev.expected_effect = format!(
                    "moves ~{moved:.0} rps ({pct}% of {d}) to {}; the users moved should see the targets' signals",
                    to.join("+")
                );
                let evac_considered = ev
                    .alternatives
                    .iter()
                    .any(|a| matches!(a.action, Some(Action::Evacuate { .. })));
                if pct < 100 && !evac_considered {
                    ev.alternatives.push(Alternative {
                        action: Some(Action::Evacuate {
                            stack: d.into(),
                            to: to.clone(),
                        }),
                        why_not: format!(
                            "not hard down and no suspect deployment: a partial shift ({pct}%) limits the risk first"
                        ),
                    });
                } else if pct == 100 && !ev.localisation.contains("hard down") {
                    ev.alternatives.push(Alternative {
                        action: Some(Action::Shift {
                            scope: inc.scope.clone(),
                            from: d.into(),
                            to: to.clone(),
                            percent: self.cfg.shift_percent,
                        }),
                        why_not: "a deployment on the stack is the likely cause: a partial shift leaves users on it".into(),
                    });
                }
                ev.alternatives.push(Alternative {
                    action: None,
                    why_not: format!(
                        "doing nothing leaves {d}'s users on a stack that deviates ({})",
                        inc.signal
                    ),
                });
                ev.dependencies = checks;
                ev.proposed = Some(action.clone());
                return format!("targets have headroom for {}", action.describe());
            }
            let worst = checks.iter().find(|c| !c.ok).map(|c| {
                format!(
                    "{} would carry {:.0} rps > its limit {:.0}",
                    c.stack, c.projected_rps, c.limit_rps
                )
            });
            ev.alternatives.push(Alternative {
                action: Some(action),
                why_not: worst.unwrap_or_default(),
            });
            ev.dependencies = checks;
        }
        ev.expected_effect = "none".into();
        "no target has the headroom: human decision needed".into()
    }

    pub(super) fn score(
        &self,
        _inc: &mut Incident,
        ctx: &Context<'_>,
        ev: &mut Evidence,
    ) -> String {
        let mut f: Vec<(String, f64)> = vec![("base".into(), 0.3)];
        if ev.signals.iter().any(|s| s.severity == Severity::Confirmed) {
            f.push(("confirmed (persisted) finding".into(), 0.2));
        }
        if ev.delta_stack.is_some() && !ev.localisation.contains("not confirmed against peers") {
            f.push(("localised to one stack".into(), 0.2));
        } else if ev.delta_stack.is_some() && ev.localisation.contains(ALONE) {
            f.push((
                "no peer in its group: judged against its own seasonal baseline only".into(),
                -0.05,
            ));
        } else {
            f.push(("not localised against peers".into(), -0.1));
        }
        if ev.events.iter().any(|e| e.suspect) {
            f.push((
                "deployment on the stack shortly before the onset".into(),
                0.15,
            ));
        }
        let n = ev
            .signals
            .iter()
            .map(|s| &s.signal)
            .collect::<BTreeSet<_>>()
            .len();
        if n > 1 {
            f.push((
                format!("{n} signals agree"),
                (0.05 * (n - 1) as f64).min(0.1),
            ));
        }
        if ev
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Campaign | EventKind::LoadTest))
        {
            f.push(("announced campaign or load test in scope".into(), -0.15));
        }
        if ev.proposed.is_some() {
            f.push(("targets healthy with headroom".into(), 0.05));
        } else {
            f.push(("no action fits".into(), -0.1));
        }
        let _ = ctx;
        let c = f.iter().map(|(_, v)| v).sum::<f64>().clamp(0.05, 0.99);
        ev.confidence = (c * 100.0).round() / 100.0;
        ev.factors = f;
        format!("confidence {:.2}", ev.confidence)
    }

    pub(super) fn recovered(&self, inc: &Incident, ctx: &Context<'_>) -> bool {
        let mut stacks: BTreeSet<String> = inc.executed.iter().flat_map(|a| a.stacks()).collect();
        stacks.insert(inc.scope.clone());
        !ctx.findings
            .iter()
            .any(|f| !f.stale && stacks.contains(&f.stack))
    }

    /// The signal did not recover after the last action: propose the next one.
    pub(super) fn escalate(
        &self,
        inc: &mut Incident,
        ctx: &Context<'_>,
        ev: &mut Evidence,
    ) -> String {
        let last = inc.executed.last().cloned();
        ev.alternatives.clear();
        let d = ev.delta_stack.clone();
        if inc.attempt > self.cfg.max_attempts {
            ev.proposed = None;
            return format!(
                "not recovered after {} actions: human decision needed",
                inc.executed.len()
            );
        }
        match (last, d) {
            (Some(Action::Shift { from, .. }), Some(d)) if from == d => {
                // The partial shift helped too little (or the rest is still bad): move the rest.
                let note = self.plan_move(inc, ctx, ev, &d, &[100]);
                format!("not recovered after the shift; next: {note}")
            }
            (Some(a @ (Action::Shift { .. } | Action::Evacuate { .. })), _) => {
                // Moving traffic did not help: the problem followed it, so undo the move.
                ev.proposed = Some(Action::Restore { stacks: a.stacks() });
                ev.expected_effect = "back to the weights from before the incident".into();
                ev.alternatives.push(Alternative {
                    action: None,
                    why_not:
                        "keeping the move: the signal did not recover, so the move only adds risk"
                            .into(),
                });
                "not recovered after the move: proposing a rollback".into()
            }
            _ => {
                ev.proposed = None;
                "not recovered: human decision needed".into()
            }
        }
    }
}
