//! Hostile geography (issue 14, item 5): a geo header with more than one value (repeated,
//! or a comma-separated list, as an edge that appends instead of overwriting produces)
//! and what `classify.geo.ambiguous` makes of it; the validation that asks for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::sync::Arc;

use switchyard_filter::classify::Request;
use switchyard_filter::policy::{validate_json, AmbiguousGeo, Policy};
use switchyard_filter::router::{Decision, Outcome, Router, MAX_GEO_VALUES};

const T0: u64 = 1_795_737_600_000; // 2026-11-27T00:00:00Z

/// Two residency regions (the EU by region, Switzerland by country) and an unrestricted
/// default; `ambiguous` is the `classify.geo.ambiguous` value, or nothing.
fn policy(ambiguous: Option<&str>) -> Arc<Policy> {
    let ambiguous = ambiguous.map_or(String::new(), |a| format!(r#", "ambiguous": {a}"#));
    let json = format!(
        r#"{{
  "stacks": [
    {{ "name": "blue", "region": "us" }},
    {{ "name": "eu", "region": "eu" }},
    {{ "name": "ch", "region": "ch" }}
  ],
  "classify": {{
    "geo": {{
      "header": "x-geo-country",
      "countries": {{ "DE": "eu", "FR": "eu", "US": "us" }},
      "cidrs": [ {{ "cidr": "10.20.0.0/16", "region": "eu" }} ]{ambiguous}
    }}
  }},
  "rules": [
    {{ "id": "eu-residency", "priority": 1, "match": {{ "regions": ["eu"] }},
       "route": {{ "targets": [ {{ "stack": "eu" }} ], "residency": ["eu"] }} }},
    {{ "id": "ch-residency", "priority": 2, "match": {{ "countries": ["CH"] }},
       "route": {{ "targets": [ {{ "stack": "ch" }} ], "residency": ["ch"] }} }},
    {{ "id": "us", "priority": 3, "match": {{ "regions": ["us"] }},
       "route": {{ "targets": [ {{ "stack": "blue" }} ] }} }}
  ],
  "default": {{ "targets": [ {{ "stack": "blue" }} ] }}
}}"#
    );
    let v = validate_json(&json).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(v.policy)
}

fn decide(p: &Arc<Policy>, geo: &[&str], source: Option<&str>) -> Decision {
    let mut headers: Vec<(&[u8], &[u8])> = vec![(b":path", b"/cart")];
    headers.extend(geo.iter().map(|v| (&b"x-geo-country"[..], v.as_bytes())));
    let source: Option<IpAddr> = source.map(|s| s.parse().unwrap());
    Router::new(Arc::clone(p), None).decide(&Request {
        headers: &headers,
        source,
        now_ms: T0,
    })
}

/// `rule → stack`, or `reject` for the ambiguous-geography reply.
fn outcome(p: &Policy, d: &Decision) -> String {
    match &d.outcome {
        Outcome::Stack { id, .. } => format!("{} → {}", p.rules[d.rule].id, p.stacks[*id].name),
        Outcome::Local(reply) if reply.reason == "ambiguous_geo" => {
            assert_eq!(reply.status, 400);
            "reject".into()
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

type Case<'a> = (&'a [&'a str], Option<&'a str>, &'a str);

fn check(p: &Arc<Policy>, cases: &[Case]) {
    for (geo, source, want) in cases {
        let d = decide(p, geo, *source);
        assert_eq!(outcome(p, &d), *want, "{geo:?} from {source:?}");
        let ambiguous = geo.len() > 1 || geo.iter().any(|v| v.contains(','));
        assert_eq!(d.hostile, ambiguous, "{geo:?}: hostile flag");
    }
}

/// What every mode does with one value: nothing changes.
const SINGLE: &[Case] = &[
    (&["DE"], None, "eu-residency → eu"),
    (&[" fr "], None, "eu-residency → eu"),
    (&["CH"], None, "ch-residency → ch"),
    (&["US"], None, "us → blue"),
    (&["JP"], None, "default → blue"),
    (&[], Some("10.20.1.1"), "eu-residency → eu"),
];

#[test]
fn without_the_setting_an_ambiguous_header_leaves_the_region() {
    // Compatibility (and the reason validation now warns): the header gives no region.
    let p = policy(None);
    assert_eq!(p.classify.ambiguous_geo, AmbiguousGeo::Unknown);
    check(&p, SINGLE);
    check(
        &p,
        &[
            (&["DE", "US"], None, "default → blue"),
            (&["DE,US"], None, "default → blue"),
            (&["DE", "DE"], None, "default → blue"),
            // The address ranges still apply.
            (&["DE", "US"], Some("10.20.1.1"), "eu-residency → eu"),
        ],
    );
    let p = policy(Some(r#"{ "mode": "unknown" }"#));
    check(&p, &[(&["DE", "US"], None, "default → blue")]);
}

#[test]
fn reject_answers_every_ambiguous_request_locally() {
    let p = policy(Some(r#"{ "mode": "reject" }"#));
    check(&p, SINGLE);
    check(
        &p,
        &[
            (&["DE", "US"], None, "reject"),
            (&["US", "US"], None, "reject"),
            (&["DE, FR"], None, "reject"),
            (&["DE", ""], Some("10.20.1.1"), "reject"),
        ],
    );
    let d = decide(&p, &["DE", "US"], None);
    assert!(d.set_cookie.is_none());
    match d.outcome {
        Outcome::Local(reply) => {
            assert_eq!(reply.retry_after_s, 0);
            assert!(!reply.message.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn assume_takes_the_configured_region() {
    let p = policy(Some(r#"{ "mode": "assume", "region": "eu" }"#));
    check(&p, SINGLE);
    check(
        &p,
        &[
            (&["DE", "US"], None, "eu-residency → eu"),
            (&["US", "JP"], None, "eu-residency → eu"),
            (&["US,CH"], None, "eu-residency → eu"),
        ],
    );
}

#[test]
fn most_restrictive_keeps_a_resident_value_in_its_region() {
    let p = policy(Some(r#"{ "mode": "most_restrictive" }"#));
    check(&p, SINGLE);
    check(
        &p,
        &[
            // An EU visitor whose edge appended a second value stays in the EU, in
            // either order and either form.
            (&["DE", "US"], None, "eu-residency → eu"),
            (&["US", "DE"], None, "eu-residency → eu"),
            (&["US, de"], None, "eu-residency → eu"),
            (&["JP", "FR", "US"], None, "eu-residency → eu"),
            (&["DE", "FR"], None, "eu-residency → eu"),
            // Residency by country works the same way.
            (&["US", "CH"], None, "ch-residency → ch"),
            // Two residencies that exclude each other: nothing can honour both.
            (&["DE", "CH"], None, "reject"),
            // No value restricted: as without a region from the header.
            (&["US", "JP"], None, "default → blue"),
            (&["US", "US"], None, "default → blue"),
            // A value without a region falls back to the address ranges, like one
            // header would.
            (&["JP", "US"], Some("10.20.1.1"), "eu-residency → eu"),
        ],
    );
    // At most MAX_GEO_VALUES values are weighed (each is a rule lookup).
    let sixteen = ["US"; MAX_GEO_VALUES].join(",") + ",DE";
    check(&p, &[(&[sixteen.as_str()], None, "reject")]);
    let fifteen = ["US"; MAX_GEO_VALUES - 1].join(",") + ",DE";
    check(&p, &[(&[fifteen.as_str()], None, "eu-residency → eu")]);
}

#[test]
fn validation_warns_when_residency_exists_without_the_setting() {
    let warnings = |ambiguous: Option<&str>| -> Vec<String> {
        let extra = ambiguous.map_or(String::new(), |a| format!(r#", "ambiguous": {a}"#));
        let json = format!(
            r#"{{ "stacks": [ {{ "name": "blue", "region": "us" }}, {{ "name": "eu", "region": "eu" }} ],
  "classify": {{ "geo": {{ "header": "x-geo-country", "countries": {{ "DE": "eu" }}{extra} }} }},
  "rules": [ {{ "id": "eu", "match": {{ "regions": ["eu"] }}, "route": {{ "targets": [ {{ "stack": "eu" }} ], "residency": ["eu"] }} }} ],
  "default": {{ "targets": [ {{ "stack": "blue" }} ] }} }}"#
        );
        validate_json(&json)
            .unwrap_or_else(|e| panic!("{e}"))
            .warnings
            .iter()
            .map(|w| w.path.clone())
            .collect()
    };
    assert_eq!(warnings(None), vec!["classify.geo.ambiguous"]);
    for mode in [
        r#"{ "mode": "unknown" }"#,
        r#"{ "mode": "reject" }"#,
        r#"{ "mode": "most_restrictive" }"#,
        r#"{ "mode": "assume", "region": "eu" }"#,
    ] {
        assert!(warnings(Some(mode)).is_empty(), "{mode}");
    }

    // No residency, or no geo header: nothing to warn about.
    let quiet = [
        r#"{ "stacks": [ { "name": "blue", "region": "us" } ],
  "classify": { "geo": { "header": "x-geo-country" } },
  "default": { "targets": [ { "stack": "blue" } ] } }"#,
        r#"{ "stacks": [ { "name": "blue", "region": "us" }, { "name": "eu", "region": "eu" } ],
  "classify": { "geo": { "cidrs": [ { "cidr": "10.20.0.0/16", "region": "eu" } ] } },
  "rules": [ { "id": "eu", "match": { "regions": ["eu"] }, "route": { "targets": [ { "stack": "eu" } ], "residency": ["eu"] } } ],
  "default": { "targets": [ { "stack": "blue" } ] } }"#,
    ];
    for json in quiet {
        let v = validate_json(json).unwrap_or_else(|e| panic!("{e}"));
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    }
}

#[test]
fn bad_settings_are_errors_at_their_field() {
    let errors = |ambiguous: &str| -> Vec<String> {
        let json = format!(
            r#"{{ "stacks": [ {{ "name": "blue", "region": "us" }}, {{ "name": "eu", "region": "eu" }} ],
  "classify": {{ "geo": {{ "header": "x-geo-country", "ambiguous": {ambiguous} }} }},
  "default": {{ "targets": [ {{ "stack": "blue" }} ] }} }}"#
        );
        match validate_json(&json) {
            Ok(_) => panic!("accepted: {ambiguous}"),
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    };
    assert_eq!(
        errors(r#"{ "mode": "strictest" }"#),
        ["classify.geo.ambiguous.mode: must be one of `unknown`, `reject`, `most_restrictive`, `assume`"]
    );
    assert_eq!(
        errors(r#"{ "mode": "assume" }"#),
        ["classify.geo.ambiguous.region: required with mode `assume`"]
    );
    assert_eq!(
        errors(r#"{ "mode": "assume", "region": "mars" }"#),
        ["classify.geo.ambiguous.region: unknown region"]
    );
    assert_eq!(
        errors(r#"{ "mode": "reject", "region": "eu" }"#),
        ["classify.geo.ambiguous.region: only with mode `assume`"]
    );
    assert_eq!(
        errors(r#"{ "mode": "reject", "status": "403" }"#),
        ["classify.geo.ambiguous.status: unknown field `status`, expected one of `mode` or `region`"]
    );
    // The shape is checked first, with its path.
    let shape = errors(r#"{ "region": "eu" }"#);
    assert!(
        shape.contains(&"classify.geo.ambiguous.mode: missing field `mode`".to_string()),
        "{shape:?}"
    );
    let shape = errors(r#""reject""#);
    assert!(
        shape.len() == 1 && shape[0].starts_with("classify.geo.ambiguous: invalid type"),
        "{shape:?}"
    );
}
