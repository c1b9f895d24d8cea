//! 100,000 generated requests through the built filter: random and malformed headers,
//! invalid UTF-8, huge and repeated headers, random cookies (valid, forged, truncated)
//! and addresses, failing and resetting upstreams, time moving on. No trap, no host
//! error, and the invariants hold for every single request:
//! - a decision is made (exactly one `x-switchyard-stack` naming a policy stack is
//!   forwarded, whatever the client sent) or the documented local reply is sent
//!   (503, `retry-after`, JSON body with `error: no_eligible_stack`), never both;
//! - EU traffic (an `x-geo-country` value of an EU country, also when the header is
//!   repeated or a comma list: the demo policy's `ambiguous` mode is `most_restrictive`)
//!   stays in the EU: it goes to the `eu` stack or gets the local reply (a geo header
//!   of more than `MAX_GEO_VALUES` values gets the 400 `ambiguous_geo` reply);
//! - a `set-cookie`, if any, is a well-formed affinity cookie for the chosen stack.
//!
//! Seed and count can be overridden: SWITCHYARD_FUZZ_SEED, SWITCHYARD_FUZZ_REQUESTS.

use std::time::{Duration, Instant};

use switchyard_filter::router::MAX_GEO_VALUES;
use switchyard_proxy_host::{Request, Response, Switchyard};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    fn pick_ref<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn bytes(&mut self, len: usize, printable: bool) -> Vec<u8> {
        (0..len)
            .map(|_| {
                let b = self.next() as u8;
                if printable {
                    0x20 + b % 0x5f
                } else {
                    b
                }
            })
            .collect()
    }
}

const NAMES: &[&str] = &[
    "x-geo-country",
    "x-partner-key",
    "user-agent",
    "x-jwt-cohort",
    "x-jwt-sub",
    "cookie",
    "x-switchyard-stack",
    "x-switchyard-decision",
    "accept",
    "x-forwarded-for",
    "x-request-id",
    "content-type",
    "authorization",
    "x-custom",
];
const COUNTRIES: &[&str] = &[
    "DE", "FR", "NL", "IE", "US", "CA", "de", "XX", "", "DE,FR", "eu", " DE",
];
const EU: &[&str] = &["DE", "FR", "NL", "IE"];
const AGENTS: &[&str] = &[
    "Mozilla/5.0",
    "SwitchyardShop-iOS/5.1",
    "SwitchyardShop-Android/2",
    "curl/8",
    "",
];
const COHORTS: &[&str] = &["beta", "premium", "gold", "none", "BETA", ""];
const PATHS: &[&str] = &[
    "/",
    "/cart",
    "/partner/orders",
    "/pos/checkout",
    "/sale/x",
    "/a?b=c",
    "",
    "*",
    "/%00",
    "//",
];
const ADDRESSES: &[&str] = &[
    "203.0.113.7:443",
    "10.20.1.1:1000",
    "10.20.255.255:1",
    "[2001:db8::1]:80",
    "[::1]:0",
    "garbage",
    "",
    "10.20.1.1",
    "999.1.1.1:80",
    "1.2.3.4:99999",
    "[fe80::1%eth0]:80",
    "0.0.0.0:0",
];
const STACKS: &[&str] = &["blue", "green", "canary", "eu"];

/// A request, whether it is EU traffic, and how many values its geo header has.
fn generate(rng: &mut Rng, cookies: &[String]) -> (Request, bool, usize) {
    let mut req = Request::new(
        rng.pick(&["GET", "POST", "PUT", "DELETE", "get", "BREW"][..]),
        rng.pick(PATHS),
    );
    let mut geo: Vec<&str> = Vec::new();
    let headers = rng.below(12);
    for _ in 0..headers {
        let name = rng.pick(NAMES);
        let value: Vec<u8> = match name {
            "x-geo-country" => {
                let c = rng.pick(COUNTRIES);
                geo.push(c);
                c.as_bytes().to_vec()
            }
            "user-agent" => rng.pick(AGENTS).as_bytes().to_vec(),
            "x-jwt-cohort" => rng.pick(COHORTS).as_bytes().to_vec(),
            "x-jwt-sub" => format!("user-{}", rng.below(50)).into_bytes(),
            "cookie" => match rng.below(6) {
                0 if !cookies.is_empty() => {
                    format!("sy_aff={}", rng.pick_ref(cookies)).into_bytes()
                }
                1 if !cookies.is_empty() => {
                    let mut c = rng.pick_ref(cookies).clone();
                    let cut = rng.below(c.len() as u64) as usize;
                    c.truncate(cut);
                    format!("session=abc; sy_aff={c}").into_bytes()
                }
                2 => {
                    let n = rng.below(40) as usize;
                    let junk = rng.bytes(n, false);
                    let mut v = b"sy_aff=".to_vec();
                    v.extend(junk);
                    v
                }
                3 => format!(
                    "sy_aff=v1.k1.{}.1.{}.AAAAAAAAAAAAAAAAAAAAAA",
                    rng.pick(STACKS),
                    rng.next() % 4_000_000_000
                )
                .into_bytes(),
                _ => format!("a=1; b=2; session=s{}", rng.below(9)).into_bytes(),
            },
            _ => {
                let len = rng.below(40) as usize;
                let printable = rng.chance(80);
                rng.bytes(len, printable)
            }
        };
        req = req.header(name, value);
    }
    // Repeated, huge and malformed headers.
    if rng.chance(5) {
        let name = rng.pick(NAMES);
        for _ in 0..rng.below(60) {
            req = req.header(name, b"repeat");
        }
    }
    if rng.chance(2) {
        let len = 8_192 + rng.below(60_000) as usize;
        let printable = rng.chance(50);
        let big = rng.bytes(len, printable);
        req = req.header(rng.pick(NAMES), big);
    }
    if rng.chance(3) {
        let n = 1 + rng.below(20) as usize;
        let name = rng.bytes(n, false);
        let n = rng.below(30) as usize;
        let value = rng.bytes(n, false);
        req = req.raw_header(&name, &value);
    }
    if rng.chance(2) {
        // A request with no pseudo-headers at all.
        req.headers.retain(|(k, _)| !k.starts_with(':'));
    }
    match rng.below(10) {
        0 => req.properties.retain(|(k, _)| k != "source.address"),
        1..=5 => req = req.source(rng.pick(ADDRESSES)),
        _ => {
            let a = format!(
                "{}.{}.{}.{}:{}",
                rng.below(256),
                rng.below(256),
                rng.below(256),
                rng.below(256),
                rng.below(65536)
            );
            req = req.source(&a);
        }
    }
    // EU traffic: any value of the geo header (repeated, or a comma list) naming an EU
    // country or the region: the demo policy's `classify.geo.ambiguous` is
    // `most_restrictive`, so an appended second value never takes it out of the EU.
    let eu = geo
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|v| v == "eu" || EU.contains(&v.to_ascii_uppercase().as_str()));
    // Every value the geo header ended up with (the repeats and big headers included).
    let geo_values = req
        .headers
        .iter()
        .filter(|(k, _)| k == "x-geo-country")
        .map(|(_, v)| v.iter().filter(|&&b| b == b',').count() + 1)
        .sum();
    (req, eu, geo_values)
}

fn upstream(rng: &mut Rng) -> Option<Response> {
    match rng.below(100) {
        0..=5 => Some(Response::status(503)),
        6 => Some(Response::reset()),
        7 => Some(Response::status(404).body("nope")),
        _ => None,
    }
}

fn check(i: usize, ex: &switchyard_proxy_host::Exchange, eu: bool, geo_values: usize) {
    let stacks: Vec<&str> = ex.upstream_headers("x-switchyard-stack");
    match (&ex.upstream_request, &ex.local_response) {
        (Some(_), None) => {
            assert_eq!(stacks.len(), 1, "request {i}: forwarded with {stacks:?}");
            assert!(
                STACKS.contains(&stacks[0]),
                "request {i}: unknown stack {stacks:?}"
            );
            assert!(
                ex.upstream_header("x-switchyard-decision").is_none(),
                "request {i}: client decision header leaked"
            );
            if eu {
                assert_eq!(stacks[0], "eu", "request {i}: EU traffic left the EU");
            }
            for c in ex.set_cookies() {
                assert_eq!(c.name, "sy_aff", "request {i}");
                assert!(
                    c.value.contains(&format!(".{}.", stacks[0])),
                    "request {i}: cookie for another stack {}",
                    c.value
                );
                assert!(c.max_age().is_some_and(|a| a > 0), "request {i}");
            }
        }
        // More geo values than `most_restrictive` weighs: the ambiguous-geography reply.
        (None, Some(local)) if geo_values > MAX_GEO_VALUES && local.status == 400 => {
            let body: serde_json::Value = serde_json::from_slice(&local.body)
                .unwrap_or_else(|e| panic!("request {i}: body {e}"));
            assert_eq!(body["error"], "ambiguous_geo", "request {i}");
            assert!(local.header("retry-after").is_none(), "request {i}");
            assert!(ex.set_cookies().is_empty(), "request {i}");
        }
        (None, Some(local)) => {
            assert_eq!(local.status, 503, "request {i}");
            assert!(
                local
                    .header("retry-after")
                    .is_some_and(|v| v.parse::<u64>().is_ok()),
                "request {i}"
            );
            let body: serde_json::Value = serde_json::from_slice(&local.body)
                .unwrap_or_else(|e| panic!("request {i}: body {e}"));
            assert_eq!(body["error"], "no_eligible_stack", "request {i}");
            assert!(
                ex.set_cookies().is_empty(),
                "request {i}: cookie on a local reply"
            );
        }
        other => panic!("request {i}: neither a decision nor a local reply: {other:?}"),
    }
}

#[test]
fn a_hundred_thousand_generated_requests_never_trap_and_keep_the_invariants() {
    let seed: u64 = std::env::var("SWITCHYARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5717_c4ad_0001);
    let n: usize = std::env::var("SWITCHYARD_FUZZ_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let mut sy = Switchyard::builder()
        .workers(2)
        .log_capacity(2_000)
        .build()
        .unwrap();
    let mut rng = Rng(seed | 1);
    let mut cookies: Vec<String> = Vec::new();
    let mut locals = 0;
    let mut outage: Option<&str> = None;
    let started = Instant::now();
    for i in 0..n {
        let (mut req, eu, geo_values) = generate(&mut rng, &cookies);
        if let Some(resp) = upstream(&mut rng) {
            req = req.respond(resp);
        }
        // Outages: now and then one stack fails everything for a while.
        if i % 4_000 == 0 {
            outage = if rng.chance(70) {
                Some(rng.pick(STACKS))
            } else {
                None
            };
        }
        if let (Some(bad), true) = (outage, i % 4_000 < 1_500) {
            req = req.upstream(switchyard_proxy_host::fixture::stacks_failing(&[bad], 503));
        }
        let worker = (rng.next() % 2) as usize;
        let ex = sy
            .send_on(worker, req.clone())
            .unwrap_or_else(|e| panic!("request {i} (seed {seed}) trapped: {e}\n{req:?}"));
        if std::env::var("SWITCHYARD_FUZZ_DEBUG").is_ok_and(|v| v == i.to_string()) {
            eprintln!("{req:?}\n{:?}\n{:?}", ex.decision(), ex.upstream_request);
        }
        check(i, &ex, eu, geo_values);
        if ex.local_response.is_some() {
            locals += 1;
        }
        if let Some(c) = ex.set_cookie("sy_aff") {
            if cookies.len() < 64 {
                cookies.push(c.value);
            } else {
                let at = rng.below(64) as usize;
                cookies[at] = c.value;
            }
        }
        if rng.chance(2) {
            sy.advance(Duration::from_millis(rng.below(5_000))).unwrap();
        }
    }
    let elapsed = started.elapsed();
    assert!(sy.host_errors().is_empty(), "{:?}", sy.host_errors());
    sy.advance(Duration::from_secs(1)).unwrap();
    let routed: i64 = STACKS
        .iter()
        .map(|s| sy.metric(&format!("switchyard.stack.{s}.rq_total")))
        .sum();
    assert_eq!(routed as usize + locals, n, "every request counted once");
    eprintln!(
        "{n} requests in {:.1}s ({:.0}/s), {locals} local replies, seed {seed}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}
