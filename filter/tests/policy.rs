//! Policy validation: every error names its field path; nothing invalid is accepted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use switchyard_filter::policy::validate_json;

fn errors(json: &str) -> Vec<String> {
    match validate_json(json) {
        Ok(_) => panic!("accepted: {json}"),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

const STACKS: &str = r#""stacks": [ { "name": "blue", "region": "us" }, { "name": "green", "region": "us" }, { "name": "eu", "region": "eu" } ]"#;

#[test]
fn demo_policy_is_valid_without_warnings() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policies/demo.json"
    ))
    .unwrap();
    let v = validate_json(&text).unwrap();
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    assert_eq!(
        v.policy.stack_names(),
        vec!["blue", "green", "canary", "eu"]
    );
    assert_eq!(v.policy.rules.last().unwrap().id, "default");
}

#[test]
fn every_error_is_reported_with_its_path() {
    let json = format!(
        r#"{{ {STACKS},
  "classify": {{ "geo": {{ "cidrs": [ {{ "cidr": "10.0.0.1/8", "region": "eu" }}, {{ "cidr": "nonsense", "region": "eu" }} ] }} }},
  "rules": [
    {{ "id": "a", "route": {{ "targets": [ {{ "stack": "purple" }} ] }} }},
    {{ "id": "a", "match": {{ "time": {{ "windows": [ {{ "start": "09:00", "end": "25:00" }} ] }} }}, "route": {{ "targets": [ {{ "stack": "blue", "weight": 0 }} ] }} }},
    {{ "id": "r", "match": {{ "regions": ["mars"], "channels": ["fax"] }}, "route": {{ "targets": [ {{ "stack": "blue" }} ], "residency": ["eu"] }} }}
  ],
  "default": {{ "targets": [] }}
}}"#
    );
    let errs = errors(&json);
    let expect = [
        "classify.geo.cidrs[0].cidr: '10.0.0.1/8': host bits set after the prefix",
        "classify.geo.cidrs[1].cidr: 'nonsense': expected ADDRESS/PREFIX",
        "rules[1].id: duplicate rule id 'a'",
        "rules[0].route.targets[0].stack: unknown stack 'purple'",
        "rules[1].match.time.windows[0]: end '25:00' is not HH:MM",
        "rules[1].route.targets: total weight is zero",
        "rules[2].match.regions[0]: unknown region 'mars'",
        "rules[2].match.channels[0]: unknown channel 'fax'",
        "rules[2].route.targets[0].stack: stack 'blue' is outside this route's residency",
        "default.targets: at least one target is required",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
}

#[test]
fn type_errors_name_the_field() {
    let errs = errors(&format!(
        r#"{{ {STACKS}, "default": {{ "targets": [ {{ "stack": "blue", "weight": "heavy" }} ] }} }}"#
    ));
    assert!(
        errs[0].starts_with("default.targets[0].weight: invalid type"),
        "{errs:?}"
    );
    let errs = errors(&format!(
        r#"{{ {STACKS}, "default": {{ "targets": [ {{ "stack": "blue" }} ], "afinity": true }} }}"#
    ));
    assert!(errs[0].contains("unknown field `afinity`"), "{errs:?}");
    let errs = errors("not json");
    assert!(
        errs[0].starts_with("$: expected") && errs[0].contains("line 1 column"),
        "{errs:?}"
    );
}

#[test]
fn unreachable_rules_are_warned_about() {
    let json = format!(
        r#"{{ {STACKS},
  "rules": [
    {{ "id": "eu-all", "priority": 1, "match": {{ "regions": ["eu"] }}, "route": {{ "targets": [ {{ "stack": "eu" }} ] }} }},
    {{ "id": "eu-checkout", "priority": 2, "match": {{ "regions": ["eu"], "path_prefixes": ["/checkout"] }}, "route": {{ "targets": [ {{ "stack": "eu" }} ] }} }},
    {{ "id": "us-checkout", "priority": 3, "match": {{ "regions": ["us"], "path_prefixes": ["/checkout"] }}, "route": {{ "targets": [ {{ "stack": "blue" }} ] }} }}
  ],
  "default": {{ "targets": [ {{ "stack": "blue" }} ] }}
}}"#
    );
    let v = validate_json(&json).unwrap();
    assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
    assert!(v.warnings[0]
        .to_string()
        .starts_with("rules[1]: rule 'eu-checkout' is unreachable: rule 'eu-all'"));
}

#[test]
fn residency_binds_fallbacks_too() {
    let json = format!(
        r#"{{ {STACKS}, "default": {{ "targets": [ {{ "stack": "eu" }} ], "residency": ["eu"], "fallback": {{ "targets": [ {{ "stack": "blue" }} ] }} }} }}"#
    );
    let errs = errors(&json);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("default.fallback.targets[0].stack: stack 'blue' is outside")),
        "{errs:?}"
    );
}

#[test]
fn header_names_in_any_case_are_accepted_and_lower_cased() {
    let json = format!(
        r#"{{ {STACKS},
  "classify": {{
    "geo": {{ "header": "CloudFront-Viewer-Country", "countries": {{ "DE": "eu" }} }},
    "cohort_header": "X-JWT-Cohort",
    "user_key": [ {{ "header": "X-Jwt-Sub" }} ],
    "channels": [ {{ "name": "partner", "headers": ["X-Partner-Key"] }} ]
  }},
  "rules": [
    {{ "id": "h", "match": {{ "channels": ["partner"] }}, "route": {{ "targets": [ {{ "stack": "blue" }} ], "balance": {{ "mode": "hash", "key": {{ "header": "X-Session" }} }} }} }}
  ],
  "default": {{ "targets": [ {{ "stack": "blue" }} ] }}
}}"#
    );
    let v = validate_json(&json).unwrap();
    let c = &v.policy.classify;
    assert_eq!(c.geo_header.as_deref(), Some("cloudfront-viewer-country"));
    assert_eq!(c.cohort_header.as_deref(), Some("x-jwt-cohort"));
    assert_eq!(c.channels[0].headers, vec!["x-partner-key"]);
    let mut read: Vec<&[u8]> = c.inputs.headers.iter().map(|h| &h[..]).collect();
    read.sort();
    assert_eq!(
        read,
        [
            &b"cloudfront-viewer-country"[..],
            b"x-jwt-cohort",
            b"x-jwt-sub",
            b"x-partner-key",
            b"x-session"
        ]
    );
    // Still errors: pseudo-headers, invalid tokens, the filter's own headers in any case.
    for (header, message) in [
        (":path", "is a pseudo-header"),
        ("X Geo", "is not an HTTP header name"),
        ("X-Switchyard-Stack", "is set by Switchyard itself"),
    ] {
        let errs = errors(&format!(
            r#"{{ {STACKS}, "classify": {{ "geo": {{ "header": "{header}" }} }}, "default": {{ "targets": [ {{ "stack": "blue" }} ] }} }}"#
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("classify.geo.header:") && e.contains(message)),
            "{header}: {errs:?}"
        );
    }
}

#[test]
fn day_names_are_case_insensitive_short_or_long() {
    let json = format!(
        r#"{{ {STACKS},
  "rules": [ {{ "id": "wk", "match": {{ "time": {{ "days": ["monday", "MON", "Sunday", "sat"] }} }}, "route": {{ "targets": [ {{ "stack": "green" }} ] }} }} ],
  "default": {{ "targets": [ {{ "stack": "blue" }} ] }}
}}"#
    );
    validate_json(&json).unwrap();
}

#[test]
fn weighted_balance_rejects_a_key() {
    let errs = errors(&format!(
        r#"{{ {STACKS}, "default": {{ "targets": [ {{ "stack": "blue" }} ], "balance": {{ "mode": "weighted", "key": "user" }} }} }}"#
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("default.balance.key:") && e.contains("only to 'hash' mode")),
        "{errs:?}"
    );
}
