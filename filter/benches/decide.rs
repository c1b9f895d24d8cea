//! Native microbenchmarks of the routing core (`cargo bench -p switchyard-filter`).
//!
//! Goals (issue 2, "Benchmark"):
//! - a full decision ≤ 1 µs with 100 rules and 16 stacks, affinity on;
//! - a consistent-hash lookup ≤ 50 ns;
//! - keys moved when 1 of N stacks leaves ≤ 1.5 × 1/N (Envoy's Maglev moves about 2×).
//!
//! The disruption figures are not timings: they are computed and printed first, next to
//! a Maglev table (size 65537) implemented here for comparison, then criterion times the
//! decision pipeline and its parts. Figures and commands live in docs/BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use serde_json::{json, Value};
use switchyard_filter::affinity::Keyring;
use switchyard_filter::balance::HashTable;
use switchyard_filter::classify::{classify, Request};
use switchyard_filter::hash::{hash64, mix64};
use switchyard_filter::headers::{encode_pairs, parse_pairs};
use switchyard_filter::policy::{validate_json, Policy, Target};
use switchyard_filter::router::{AffinityEvent, Outcome, Router};

const KEYS: &str = "k1=0123456789abcdef0123";
/// 2026-11-19T08:53:20Z, a Thursday: no generated time condition matches it.
const NOW_MS: u64 = 1_795_000_000_000;
const STACKS: usize = 16;
const RULES: usize = 100;
/// Seed the filter hashes user keys with (`classify::KEY_SEED`, "SyKey"), so the keys
/// hashed here are distributed like real ones.
const USER_KEY_SEED: u64 = 0x0053_794b_6579;

// ---------------------------------------------------------------------------------------
// The synthetic policy: 100 rules over 16 stacks
// ---------------------------------------------------------------------------------------

fn stack_name(i: usize) -> String {
    format!("s{i:02}")
}

/// 99 rules that do not match the benchmark request, each failing on a different kind
/// of condition (some on the first check, some only after several have passed), then the
/// rule that matches it. `avoid_bucket` is the request's percentage bucket, kept out of
/// every percent slice.
fn policy_json(avoid_bucket: u16) -> String {
    let stacks: Vec<Value> = (0..STACKS)
        .map(|i| {
            let region = match i {
                0..=7 => "us",
                8..=11 => "eu",
                _ => "apac",
            };
            json!({ "name": stack_name(i), "region": region, "weight": 10 + i as u32 })
        })
        .collect();
    let us: Vec<usize> = (0..8).collect();
    let targets = |i: usize, n: usize| -> Vec<Value> {
        (0..n)
            .map(|k| json!({ "stack": stack_name(us[(i + k) % us.len()]) }))
            .collect()
    };
    // A percent slice of width 3% that does not contain the request's bucket.
    let slice = |i: usize| -> (f64, f64) {
        let avoid = f64::from(avoid_bucket) / 100.0;
        let mut from = (i * 7 % 97) as f64;
        if avoid >= from && avoid < from + 3.0 {
            from = (from + 50.0) % 97.0;
        }
        (from, from + 3.0)
    };
    let mut rules = Vec::new();
    for i in 0..RULES - 1 {
        let m = match i % 8 {
            0 => json!({ "countries": ["DE", "FR", "NL"] }),
            1 => json!({ "cohorts": [format!("beta-{i}"), "staff", "internal"] }),
            2 => json!({ "channels": ["mobile"] }),
            3 => {
                json!({ "path_prefixes": [format!("/checkout-{i}/"), format!("/cart-{i}/"), "/account/"] })
            }
            4 => json!({ "countries": ["US", "CA"], "methods": ["POST", "PUT"] }),
            5 => json!({
                "countries": ["US"],
                "time": { "campaigns": [ { "start": "2020-11-27T05:00:00Z", "end": "2020-11-28T05:00:00Z" } ],
                          "windows": [ { "start": "03:00", "end": "03:30" } ] }
            }),
            6 => {
                let (from, to) = slice(i);
                json!({ "countries": ["US"], "channels": ["web"], "percent": { "from": from, "to": to } })
            }
            _ => json!({ "regions": ["eu", "apac"] }),
        };
        let route = if i % 8 == 7 {
            json!({ "targets": [ { "stack": stack_name(8 + i % 4) }, { "stack": stack_name(12 + i % 4) } ], "affinity": true })
        } else {
            json!({
                "targets": targets(i, 2 + i % 3),
                "affinity": i % 2 == 0,
                "fallback": { "targets": [ { "stack": stack_name(7) } ] }
            })
        };
        rules.push(
            json!({ "id": format!("r{i:03}"), "priority": i as i32, "match": m, "route": route }),
        );
    }
    rules.push(json!({
        "id": "us-web-product", "priority": 1000,
        "match": { "countries": ["US"], "channels": ["web"], "path_prefixes": ["/product/"], "methods": ["GET", "HEAD"] },
        "route": { "targets": targets(1, 4), "affinity": true, "fallback": { "targets": [ { "stack": stack_name(7) } ] } }
    }));
    json!({
        "name": "bench-100-rules-16-stacks",
        "stacks": stacks,
        "classify": {
            "geo": {
                "header": "x-geo-country",
                "countries": { "US": "us", "CA": "us", "DE": "eu", "FR": "eu", "NL": "eu", "JP": "apac", "AU": "apac" },
                "cidrs": [ { "cidr": "10.20.0.0/16", "region": "eu" }, { "cidr": "10.30.0.0/16", "region": "apac" } ]
            },
            "channels": [
                { "name": "partner", "headers": ["x-partner-key"], "path_prefixes": ["/partner/"] },
                { "name": "pos", "path_prefixes": ["/pos/"], "headers": ["x-store-id"] },
                { "name": "mobile", "user_agent_contains": ["ShopApp-iOS", "ShopApp-Android"] },
                { "name": "crawler", "user_agent_contains": ["googlebot", "bingbot"] }
            ],
            "default_channel": "web",
            "cohort_header": "x-jwt-cohort",
            "user_key": [ { "header": "x-jwt-sub" }, { "cookie": "session" } ]
        },
        "affinity": { "cookie": "sy_aff", "ttl_s": 3600, "epoch": 1 },
        "rules": rules,
        "default": { "targets": targets(0, 2), "affinity": true }
    })
    .to_string()
}

fn compile(json: &str) -> Arc<Policy> {
    match validate_json(json) {
        Ok(v) => Arc::new(v.policy),
        Err(e) => panic!("benchmark policy is invalid: {e}"),
    }
}

/// A signed-in desktop shopper in the US looking at a product: the headers Envoy hands
/// the filter, with analytics cookies around the affinity cookie.
fn headers(affinity_cookie: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut cookie = String::from(
        "_ga=GA1.2.465623510.1793032185; session=s1600a35a099950d8; consent=analytics%2Cmarketing",
    );
    if let Some(c) = affinity_cookie {
        cookie.push_str("; sy_aff=");
        cookie.push_str(c);
    }
    cookie.push_str("; cart=c6cad8d116ece");
    let pairs: [(&str, &str); 14] = [
        (":authority", "shop.example.com"),
        (":path", "/product/70239?ref=home"),
        (":method", "GET"),
        (":scheme", "https"),
        ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
        ("accept", "text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8"),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("x-geo-country", "US"),
        ("x-jwt-sub", "u7031986"),
        ("x-jwt-cohort", "gold"),
        ("cookie", &cookie),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "6f1c2b7e-3d4a-4f5b-9c8d-0e1f2a3b4c5d"),
    ];
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn borrowed(h: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
    h.iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect()
}

fn request<'a>(h: &'a [(&'a [u8], &'a [u8])]) -> Request<'a> {
    Request {
        headers: h,
        source: Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))),
        now_ms: NOW_MS,
    }
}

/// The 100-rule policy, built so that only the last rule matches the request.
fn synthetic_policy() -> Arc<Policy> {
    let probe = compile(&policy_json(u16::MAX));
    let h = headers(None);
    let b = borrowed(&h);
    let bucket = classify(&probe, &request(&b)).bucket.unwrap_or(0);
    compile(&policy_json(bucket))
}

fn keyring() -> Keyring {
    Keyring::parse(KEYS).unwrap()
}

/// A valid, fresh affinity cookie for `stack` (no refresh is due for 50 minutes).
fn cookie_for(stack: &str) -> String {
    keyring().sign(stack, 1, NOW_MS / 1000 + 3000)
}

// ---------------------------------------------------------------------------------------
// Timings
// ---------------------------------------------------------------------------------------

fn bench_decide(c: &mut Criterion) {
    let policy = synthetic_policy();
    let matching = policy.rules.len() - 2; // the last rule before the default
    let returning = headers(Some(&cookie_for("s02")));
    let returning = borrowed(&returning);
    let new_user = headers(None);
    let new_user = borrowed(&new_user);

    // The bench must measure what it claims: the last rule matches, the cookie sticks.
    let mut router = Router::new(Arc::clone(&policy), Some(keyring()));
    let d = router.decide(&request(&returning));
    assert_eq!(d.rule, matching, "the request must walk all 100 rules");
    assert_eq!(d.affinity, AffinityEvent::Hit);
    assert!(d.set_cookie.is_none());
    let d = router.decide(&request(&new_user));
    assert_eq!(d.rule, matching);
    assert_eq!(d.affinity, AffinityEvent::Miss);
    assert!(d.set_cookie.is_some() && matches!(d.outcome, Outcome::Stack { .. }));

    let mut g = c.benchmark_group("decide/100-rules-16-stacks");
    g.bench_function("returning-user (valid cookie: verify)", |b| {
        let mut r = Router::new(Arc::clone(&policy), Some(keyring()));
        b.iter(|| black_box(r.decide(black_box(&request(&returning)))))
    });
    g.bench_function("new-user (no cookie: pick + sign + Set-Cookie)", |b| {
        let mut r = Router::new(Arc::clone(&policy), Some(keyring()));
        b.iter(|| black_box(r.decide(black_box(&request(&new_user)))))
    });
    g.bench_function("affinity-off (no keys)", |b| {
        let mut r = Router::new(Arc::clone(&policy), None);
        b.iter(|| black_box(r.decide(black_box(&request(&returning)))))
    });
    g.finish();

    // The policy of the Envoy benchmark (bench/run.sh) with a request from its load.
    let realistic = compile(include_str!("../../bench/policies/realistic.json"));
    let mut g = c.benchmark_group("decide/realistic-20-rules-5-stacks");
    let returning = headers(Some(&cookie_for("blue")));
    let returning = borrowed(&returning);
    g.bench_function("returning-user", |b| {
        let mut r = Router::new(Arc::clone(&realistic), Some(keyring()));
        b.iter(|| black_box(r.decide(black_box(&request(&returning)))))
    });
    g.bench_function("new-user", |b| {
        let mut r = Router::new(Arc::clone(&realistic), Some(keyring()));
        b.iter(|| black_box(r.decide(black_box(&request(&new_user)))))
    });
    g.finish();

    // Parts of a decision, to see where the time goes.
    let mut g = c.benchmark_group("parts");
    g.bench_function("classify (100-rule policy)", |b| {
        b.iter(|| black_box(classify(black_box(&policy), black_box(&request(&new_user)))))
    });
    let keys = keyring();
    let cookie = cookie_for("s02");
    g.bench_function("affinity cookie verify (HMAC-SHA256)", |b| {
        b.iter(|| black_box(keys.verify(black_box(cookie.as_bytes()), 1, NOW_MS / 1000)))
    });
    g.bench_function("affinity cookie sign (HMAC-SHA256)", |b| {
        b.iter(|| black_box(keys.sign(black_box("s02"), 1, NOW_MS / 1000 + 3600)))
    });
    let encoded = encode_pairs(&borrowed(&headers(Some(&cookie))));
    g.bench_function("parse Envoy header map (14 headers)", |b| {
        b.iter(|| black_box(parse_pairs(black_box(&encoded))).map(|p| p.len()))
    });
    g.finish();
}

fn bench_hash(c: &mut Criterion) {
    let targets: Vec<Target> = (0..STACKS)
        .map(|stack| Target { stack, weight: 100 })
        .collect();
    let table = HashTable::build(&targets);
    let keys: Vec<u64> = (0..1024u64).map(mix64).collect();
    let all = u64::MAX;
    let one_out = !(1u64 << 5);
    let mut g = c.benchmark_group("consistent-hash/16-stacks");
    g.bench_function("pick (all eligible)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(table.pick(&targets, black_box(keys[i]), all))
        })
    });
    g.bench_function("pick (one stack out; 1/16 of keys re-hashed)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(table.pick(&targets, black_box(keys[i]), one_out))
        })
    });
    g.bench_function("hash user key + pick", |b| {
        let users: Vec<String> = (0..1024).map(|i| format!("u{:07}", i * 7919)).collect();
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            let k = hash64(USER_KEY_SEED, black_box(users[i].as_bytes()));
            black_box(table.pick(&targets, k, all))
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Disruption: keys moved when one of N stacks leaves, vs Maglev
// ---------------------------------------------------------------------------------------

/// A Maglev lookup table (Eisenbud et al., NSDI 2016) over equally weighted backends, the
/// algorithm of Envoy's `MAGLEV` load balancer, written here only as a yardstick.
struct Maglev {
    /// Backend id (index into the list it was built from) per entry.
    entries: Vec<u32>,
}

impl Maglev {
    const SIZE: u64 = 65_537; // prime, Envoy's default table size

    fn build(backends: &[usize]) -> Self {
        let m = Self::SIZE;
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|&b| {
                let name = format!("stack-{b}");
                let offset = hash64(0x6d61_676c_6576, name.as_bytes()) % m;
                let skip = hash64(0x736b_6970, name.as_bytes()) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; backends.len()];
        let mut entries = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        'fill: loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                // Next preferred, still free entry of backend i.
                let mut c = (offset + next[i] * skip) % m;
                while entries[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                entries[c as usize] = backends[i] as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Self { entries }
    }

    fn pick(&self, key_hash: u64) -> u32 {
        self.entries[(key_hash % Self::SIZE) as usize]
    }
}

struct Moved {
    /// Mean over every choice of the leaving stack, as a multiple of 1/N.
    mean: f64,
    /// Worst choice of the leaving stack, as a multiple of 1/N.
    worst: f64,
    /// Keys that moved although their stack stayed, as a fraction of all keys (mean).
    collateral: f64,
}

fn switchyard_moved(n: usize, keys: &[u64]) -> Moved {
    let targets: Vec<Target> = (0..n).map(|stack| Target { stack, weight: 100 }).collect();
    let table = HashTable::build(&targets);
    let all = u64::MAX;
    let before: Vec<Option<usize>> = keys.iter().map(|&k| table.pick(&targets, k, all)).collect();
    let (mut sum, mut worst, mut coll) = (0.0, 0.0f64, 0.0);
    for leaving in 0..n {
        let mask = !(1u64 << leaving);
        let mut moved = 0usize;
        let mut collateral = 0usize;
        for (&k, &b) in keys.iter().zip(&before) {
            let a = table.pick(&targets, k, mask);
            if a != b {
                moved += 1;
                if b != Some(leaving) {
                    collateral += 1;
                }
            }
        }
        let f = moved as f64 / keys.len() as f64 * n as f64;
        sum += f;
        worst = worst.max(f);
        coll += collateral as f64 / keys.len() as f64;
    }
    Moved {
        mean: sum / n as f64,
        worst,
        collateral: coll / n as f64,
    }
}

fn maglev_moved(n: usize, keys: &[u64]) -> Moved {
    let all: Vec<usize> = (0..n).collect();
    let full = Maglev::build(&all);
    let before: Vec<u32> = keys.iter().map(|&k| full.pick(k)).collect();
    let (mut sum, mut worst, mut coll) = (0.0, 0.0f64, 0.0);
    for leaving in 0..n {
        let rest: Vec<usize> = all.iter().copied().filter(|&b| b != leaving).collect();
        let table = Maglev::build(&rest);
        let mut moved = 0usize;
        let mut collateral = 0usize;
        for (&k, &b) in keys.iter().zip(&before) {
            if table.pick(k) != b {
                moved += 1;
                if b as usize != leaving {
                    collateral += 1;
                }
            }
        }
        let f = moved as f64 / keys.len() as f64 * n as f64;
        sum += f;
        worst = worst.max(f);
        coll += collateral as f64 / keys.len() as f64;
    }
    Moved {
        mean: sum / n as f64,
        worst,
        collateral: coll / n as f64,
    }
}

fn print_disruption(keys: usize) {
    let keys: Vec<u64> = (0..keys as u64)
        .map(|i| hash64(USER_KEY_SEED, format!("user-{i}").as_bytes()))
        .collect();
    println!();
    println!(
        "Keys moved when 1 of N equally weighted stacks leaves ({} keys, every stack in turn),",
        keys.len()
    );
    println!(
        "as a multiple of 1/N (ideal 1.0; goal ≤ 1.5). Collateral: keys moved whose stack stayed."
    );
    println!();
    println!("| N | Switchyard mean × 1/N | worst × 1/N | collateral | Maglev (M=65537) mean × 1/N | worst × 1/N | collateral | goal ≤ 1.5 |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [3usize, 5, 8, 16] {
        let s = switchyard_moved(n, &keys);
        let m = maglev_moved(n, &keys);
        let ok = if s.worst <= 1.5 { "PASS" } else { "FAIL" };
        println!(
            "| {n} | {:.3} | {:.3} | {:.4}% | {:.3} | {:.3} | {:.4}% | {ok} |",
            s.mean,
            s.worst,
            s.collateral * 100.0,
            m.mean,
            m.worst,
            m.collateral * 100.0
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: keep that run short.
    let benching = std::env::args().any(|a| a == "--bench");
    print_disruption(if benching { 200_000 } else { 5_000 });
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_decide(&mut c);
    bench_hash(&mut c);
    c.final_summary();
}
