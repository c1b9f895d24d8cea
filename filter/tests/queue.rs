//! The queue fallback's decision, natively (degraded mode, issue 15): the route's targets
//! first, then its fallback targets, then the queue; never while a stack is eligible.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use switchyard_filter::classify::Request;
use switchyard_filter::policy::validate_json;
use switchyard_filter::router::{Outcome, Router};

const POLICY: &str = r#"{
  "stacks": [
    { "name": "blue", "region": "us" }, { "name": "green", "region": "us" },
    { "name": "eu", "region": "eu" }
  ],
  "classify": { "geo": { "header": "x-geo-country", "countries": { "DE": "eu" } } },
  "rules": [
    { "id": "eu", "match": { "regions": ["eu"] },
      "route": { "targets": [ { "stack": "eu" } ], "residency": ["eu"],
                 "fallback": { "queue": { "cluster": "intake_eu", "region": "eu" } } } }
  ],
  "default": { "targets": [ { "stack": "green" } ],
               "fallback": { "targets": [ { "stack": "blue" } ], "queue": { "cluster": "intake_us" } } }
}"#;

fn decide(r: &mut Router, headers: &[(&str, &str)]) -> Outcome {
    let h: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    r.decide(&Request {
        headers: &h,
        source: None,
        now_ms: 1_795_737_600_000,
    })
    .outcome
}

#[test]
fn targets_then_fallback_targets_then_the_queue() {
    let policy = Arc::new(validate_json(POLICY).unwrap().policy);
    assert_eq!(
        policy
            .rules
            .last()
            .unwrap()
            .route
            .queue
            .as_ref()
            .unwrap()
            .cluster,
        "intake_us"
    );
    let mut r = Router::new(Arc::clone(&policy), None);
    let green = policy.stack_id("green").unwrap();
    let blue = policy.stack_id("blue").unwrap();
    assert!(matches!(decide(&mut r, &[]), Outcome::Stack { id, .. } if id == green));
    r.set_health([("green", 100, false)]);
    assert!(matches!(decide(&mut r, &[]), Outcome::Stack { id, .. } if id == blue));
    r.set_health([("green", 100, false), ("blue", 0, true)]);
    match decide(&mut r, &[]) {
        Outcome::Queue {
            intended,
            region,
            channel,
        } => {
            assert_eq!(intended, Some(green), "the route's first target");
            assert_eq!(region, None);
            assert_eq!(policy.channels[usize::from(channel)], "web");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_eu_order_is_queued_in_the_eu_intake() {
    let policy = Arc::new(validate_json(POLICY).unwrap().policy);
    let mut r = Router::new(Arc::clone(&policy), None);
    let de = [("x-geo-country", "DE")];
    assert!(matches!(decide(&mut r, &de), Outcome::Stack { .. }));
    r.set_health([("eu", 100, false)]);
    let d = r.decide(&Request {
        headers: &[(b"x-geo-country", b"DE")],
        source: None,
        now_ms: 0,
    });
    assert_eq!(policy.rules[d.rule].id, "eu");
    assert_eq!(
        policy.rules[d.rule].route.queue.as_ref().unwrap().cluster,
        "intake_eu"
    );
    match d.outcome {
        Outcome::Queue {
            intended, region, ..
        } => {
            assert_eq!(intended, policy.stack_id("eu"));
            assert_eq!(region, policy.region_id("eu"));
        }
        other => panic!("{other:?}"),
    }
}
