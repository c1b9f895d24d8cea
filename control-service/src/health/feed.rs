//! Per-node breaker evidence for the fast path, read from the fleet's telemetry: for
//! every stack of the current policy, one [`NodeSample`] per node whose telemetry is
//! fresh, taken from the stack's newest window of the brain's series (per-node slices,
//! `StackWindow::by_node`, which carry each node's requests and breaker openings).
//!
//! Reads only; the series itself is given as a function, so this works on any source of
//! windows (the live series, a replay).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{BreakerFeed, NodeSample};
use crate::brain::signals::StackWindow;
use crate::control::Control;
use crate::fleet::TELEMETRY_FRESH_MS;
use crate::model::now_unix_ms;

/// A [`BreakerFeed`] over `latest(stack)`: the stack's newest window (the one still
/// filling included), or `None` when it has none.
pub fn from_windows(
    control: Arc<Control>,
    latest: impl Fn(&str) -> Option<StackWindow> + Send + Sync + 'static,
) -> BreakerFeed {
    Arc::new(move || {
        let Some(current) = control.current() else {
            return BTreeMap::new();
        };
        let now = now_unix_ms();
        // Nodes that stopped reporting are not "reporting nodes".
        let fresh: Vec<String> = control
            .fleet()
            .nodes()
            .into_iter()
            .filter(|n| {
                n.telemetry
                    .as_ref()
                    .is_some_and(|t| now.saturating_sub(t.received_unix_ms) <= TELEMETRY_FRESH_MS)
            })
            .map(|n| n.node_id)
            .collect();
        if fresh.is_empty() {
            return BTreeMap::new();
        }
        current
            .record
            .stacks
            .iter()
            .filter_map(|s| {
                let w = latest(&s.name)?;
                let samples = fresh
                    .iter()
                    .map(|node| {
                        let slice = w.by_node.get(node).cloned().unwrap_or_default();
                        NodeSample {
                            node: node.clone(),
                            window_ms: w.start_ms,
                            requests: slice.requests,
                            breaker_opens: slice.breaker_opens,
                        }
                    })
                    .collect();
                Some((s.name.clone(), samples))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::brain::signals::NodeSlice;
    use crate::fleet::Telemetry;
    use crate::health::{HealthConfig, Monitor, Verdict};
    use crate::store::MemoryStore;

    const POLICY: &str = r#"{
      "stacks": [ {"name":"blue","region":"us"}, {"name":"green","region":"us"} ],
      "default": { "targets": [ {"stack": "blue"}, {"stack": "green"} ] }
    }"#;

    fn window(start: u64, slices: &[(&str, u64, u64)]) -> StackWindow {
        let mut w = StackWindow::new("green", start, 10_000);
        for (node, requests, opens) in slices {
            w.by_node.insert(
                node.to_string(),
                NodeSlice {
                    requests: *requests,
                    breaker_opens: *opens,
                    ..Default::default()
                },
            );
        }
        w
    }

    #[tokio::test]
    async fn breakers_open_on_most_fresh_nodes_evacuate() {
        let control = Control::open(Arc::new(MemoryStore::new())).await.unwrap();
        control.bootstrap(POLICY).await.unwrap();
        for node in ["envoy-1", "envoy-2", "envoy-3"] {
            control.fleet().report(node, Telemetry::default());
        }
        // envoy-4 is known but never reported: not a reporting node.
        let _stream = control.fleet().connect("envoy-4", "p", 1);
        let green: Arc<Mutex<Option<StackWindow>>> = Arc::new(Mutex::new(Some(window(
            0,
            &[("envoy-1", 50, 0), ("envoy-2", 50, 0), ("envoy-3", 50, 0)],
        ))));
        let g = green.clone();
        let feed = from_windows(control.clone(), move |stack| {
            (stack == "green")
                .then(|| g.lock().unwrap().clone())
                .flatten()
        });
        let samples = feed();
        assert_eq!(samples.keys().collect::<Vec<_>>(), ["green"]);
        assert_eq!(samples["green"].len(), 3);

        let m = Monitor::new(
            control.clone(),
            HealthConfig::default(),
            Arc::new(crate::brain::clock::SystemClock),
            Some(feed),
        );
        assert_eq!(m.evaluate().await, vec![]);
        // The window fills: two of three nodes report an opening (envoy-3 is not in the
        // newest window at all: it counts as reporting nothing new).
        *green.lock().unwrap() = Some(window(0, &[("envoy-1", 55, 1), ("envoy-2", 52, 1)]));
        let acted = m.evaluate().await;
        assert_eq!(acted.len(), 1, "{acted:?}");
        assert_eq!(
            (acted[0].stack.as_str(), acted[0].source.as_str()),
            ("green", "breakers")
        );
        assert!(
            acted[0]
                .reason
                .contains("open on 2 of 3 reporting nodes (envoy-1, envoy-2)"),
            "{}",
            acted[0].reason
        );
        let h = m.stack_health("green").unwrap();
        assert_eq!(h.verdict, Verdict::HardDown);
        assert!(
            control
                .current()
                .unwrap()
                .record
                .stack("green")
                .unwrap()
                .evacuating
        );
    }

    #[tokio::test]
    async fn nothing_without_a_policy_or_fresh_nodes() {
        let control = Control::open(Arc::new(MemoryStore::new())).await.unwrap();
        let feed = from_windows(control.clone(), |_| Some(window(0, &[("envoy-1", 1, 1)])));
        assert!(feed().is_empty(), "no policy");
        control.bootstrap(POLICY).await.unwrap();
        assert!(feed().is_empty(), "no node reported");
    }
}
