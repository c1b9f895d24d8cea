//! Attribution: when the change behind an anomaly began, and which announced event on
//! the stack it is put down to (at most one suspect deployment per finding).

use super::*;

/// When the change behind an anomalous streak most likely began: `step` (≤ the streak's
/// onset) and `ramp` (≤ `step`; equal without a ramp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeOnset {
    pub step: UnixMs,
    pub ramp: UnixMs,
}

impl ChangeOnset {
    pub fn at(onset: UnixMs) -> Self {
        Self {
            step: onset,
            ramp: onset,
        }
    }
}

/// When the change behind an anomalous streak most likely began. `hist` is the signal's
/// recent series (window end, value; the current window last), `onset` the start of the
/// streak's first window, `reference` the normal value (baseline median, else the
/// peers'), `up` whether higher is worse.
///
/// - **Step**: the current level is the median of the streak's windows; going back from
///   the onset, every window already past halfway from the reference to that level
///   belongs to the change (the summed-count tests need a few bad windows before they
///   fire, so the streak starts late).
/// - **Ramp**: a least-squares line through the windows since that point (≥ 5, R² ≥
///   0.5 as for the trend rule, rising the bad way) is followed back to where it meets the reference, at
///   most an hour before the onset (a slow burn crosses any threshold long after it
///   started).
///
/// Never later than `onset`.
pub fn estimate_onset(
    hist: &[(UnixMs, f64)],
    onset: UnixMs,
    window_ms: u64,
    reference: f64,
    up: bool,
) -> ChangeOnset {
    let sign = if up { 1.0 } else { -1.0 };
    let mut run: Vec<f64> = hist
        .iter()
        .filter(|(t, _)| t.saturating_sub(window_ms) >= onset)
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .collect();
    if run.is_empty() || !reference.is_finite() {
        return ChangeOnset::at(onset);
    }
    run.sort_by(|a, b| a.total_cmp(b));
    let level = run[run.len() / 2];
    if sign * (level - reference) <= 0.0 {
        return ChangeOnset::at(onset);
    }
    let half = reference + (level - reference) / 2.0;
    let mut est = onset;
    for (t, v) in hist.iter().rev() {
        let start = t.saturating_sub(window_ms);
        if start >= onset {
            continue;
        }
        if sign * (v - half) > 0.0 {
            est = start;
        } else {
            break;
        }
    }
    let est = est.min(onset);
    let mut ramp = est;
    let since: Vec<(UnixMs, f64)> = hist
        .iter()
        .filter(|(t, _)| t.saturating_sub(window_ms) >= est)
        .copied()
        .collect();
    if let Some((slope, fitted, r2)) = slope_fit(&since) {
        if sign * slope > 0.0 && r2 >= 0.5 {
            let last = since[since.len() - 1].0 as f64;
            // Where the line meets the reference, as the start of that window.
            let cross = last - (fitted - reference) / slope - window_ms as f64;
            let floor = onset.saturating_sub(HOUR_MS) as f64;
            if cross.is_finite() && cross < est as f64 {
                ramp = cross.max(floor) as UnixMs;
            }
        }
    }
    ChangeOnset {
        step: est,
        ramp: ramp.min(est),
    }
}

/// A deployment that may have caused a change that began at `o`: it started at most
/// `lookback_ms` before the change (a ramp's start when there is one), and before the
/// end of the change's first window (a deployment inside that window may precede the
/// first bad request).
pub fn deployment_candidate(e: &Event, o: ChangeOnset, window_ms: u64, lookback_ms: u64) -> bool {
    e.from_ms + lookback_ms >= o.ramp.min(o.step) && e.from_ms < o.step + window_ms.max(1)
}

/// Did an anomaly whose first window starts at `onset` begin while `e` was going on?
pub fn began_during(e: &Event, onset: UnixMs, window_ms: u64) -> bool {
    e.from_ms < onset + window_ms.max(1) && onset < e.to_ms
}

impl Detector {
    /// The events of a finding. Attribution rule for deployments on the stack (scope
    /// covers it):
    /// - a deployment that started within `deploy_lookback_ms` before the onset, or
    ///   inside the onset window, is a candidate; the **latest** candidate is the
    ///   suspect, earlier ones are listed but not suspected (the newest change before
    ///   the symptom is the likeliest cause, and one incident blames one change);
    /// - a deployment that started after the onset window (during the anomaly, e.g. a
    ///   hotfix) is listed but never suspected: it cannot have caused what was already
    ///   there;
    /// - an anomaly that began during announced maintenance on the stack suspects no
    ///   deployment (the maintenance explains it, even once it is over).
    #[allow(clippy::too_many_arguments)] // the finding's context, all scalars
    pub(super) fn correlate(
        &self,
        events: &[Event],
        i: &StackInfo,
        change: ChangeOnset,
        at: UnixMs,
        window_ms: u64,
        campaign: bool,
        maintenance: bool,
    ) -> Vec<Correlation> {
        let mut out = Vec::new();
        let onset = change.step;
        // An anomaly that began during announced maintenance on the stack is the
        // maintenance's: no deployment is suspected.
        let began_in_maintenance = events.iter().any(|e| {
            e.kind == EventKind::Maintenance
                && e.scope.covers(&i.name, &i.segments, &i.rules)
                && began_during(e, onset, window_ms)
        });
        let suspect = events
            .iter()
            .filter(|_| !began_in_maintenance)
            .filter(|e| {
                e.kind == EventKind::Deployment
                    && e.scope.covers(&i.name, &i.segments, &i.rules)
                    && deployment_candidate(e, change, window_ms, self.cfg.deploy_lookback_ms)
            })
            .max_by(|a, b| a.from_ms.cmp(&b.from_ms).then(b.id.cmp(&a.id)))
            .map(|e| e.id.clone());
        for e in events {
            if !e.scope.covers(&i.name, &i.segments, &i.rules) {
                continue;
            }
            match e.kind {
                EventKind::Deployment
                    if e.from_ms <= at
                        && e.from_ms + self.cfg.deploy_lookback_ms >= change.ramp =>
                {
                    let before = onset.saturating_sub(e.from_ms);
                    let is_suspect = suspect.as_deref() == Some(e.id.as_str());
                    let relation = if e.from_ms >= onset + window_ms {
                        format!(
                            "deployment on {} {} min after the onset (not a suspect: the anomaly came first)",
                            i.name,
                            (e.from_ms - onset) / 60_000
                        )
                    } else if is_suspect {
                        format!(
                            "deployment on {} {} min before the onset",
                            i.name,
                            before / 60_000
                        )
                    } else {
                        format!(
                            "deployment on {} {} min before the onset (a later deployment is the suspect)",
                            i.name,
                            before / 60_000
                        )
                    };
                    out.push(Correlation {
                        event_id: e.id.clone(),
                        kind: e.kind,
                        relation,
                        suspect: is_suspect,
                    });
                }
                EventKind::Campaign | EventKind::LoadTest if campaign && e.overlaps(onset, at) => {
                    out.push(Correlation {
                        event_id: e.id.clone(),
                        kind: e.kind,
                        relation: format!(
                            "announced {} in scope: volume not alarmed, baseline widened ×{}",
                            e.kind.as_str(),
                            self.cfg.campaign_widen
                        ),
                        suspect: false,
                    });
                }
                EventKind::Maintenance if maintenance && e.overlaps(onset, at) => {
                    out.push(Correlation {
                        event_id: e.id.clone(),
                        kind: e.kind,
                        relation: if began_in_maintenance {
                            "maintenance in scope: severity capped at warn; the anomaly began during it (no deployment suspected)".into()
                        } else {
                            "maintenance in scope: severity capped at warn".into()
                        },
                        suspect: false,
                    });
                }
                EventKind::Maintenance if began_in_maintenance && e.overlaps(onset, at) => {
                    out.push(Correlation {
                        event_id: e.id.clone(),
                        kind: e.kind,
                        relation:
                            "the anomaly began during this maintenance (no deployment suspected)"
                                .into(),
                        suspect: false,
                    });
                }
                _ => {}
            }
        }
        out
    }
}
