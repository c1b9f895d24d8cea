#!/usr/bin/env python3
"""Write the wrk Lua script of the data-plane benchmark (bench/run.sh) to stdout.

The load is a fixed, seeded mix of storefront requests, so every variant and every round
sees exactly the same bytes: browsers and the mobile app, a few countries, signed-in
users with cohorts, analytics and session cookies, and returning visitors who carry a
valid, fresh Switchyard affinity cookie (signed here with the benchmark key, expiry an
hour ahead so the filter does not re-issue it). `x-bench-stack` is read by the trivial
filter only (variant b), so that it spreads requests over the stacks as well.

usage: gen_load.py KID=SECRET [COUNT] [SEED]
  BENCH_SESSION_COOKIE_PORT=P: returning visitors also carry the `sy_sess` cookie of
  Envoy's stateful_session filter (variant (e)), naming their stack's upstream port
  (P + the stack's index in STACKS).
"""

import base64
import hashlib
import hmac
import json
import os
import random
import sys
import time

COUNTRIES = [("US", 50), ("CA", 5), ("MX", 3), ("BR", 2), ("DE", 10), ("FR", 5), ("NL", 3),
             ("GB", 4), ("JP", 5), ("AU", 3), ("SG", 2), (None, 8)]
EU = {"DE", "FR", "NL", "IE", "ES", "IT", "PL", "SE"}
APAC = {"JP", "AU", "SG", "IN", "KR"}
STACKS = ["blue", "green", "canary", "eu", "apac"]  # the upstream ports' order (bench/envoy/render.sh)
DESKTOP = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
]
MOBILE_WEB = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
APP = ["ShopApp-iOS/7.12.0 (iPhone15,3; iOS 18.1)", "ShopApp-Android/7.12.1 (Pixel 8; Android 15)"]
BOTS = ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"]
PATHS = [("GET", "/product/{n}", 40), ("GET", "/category/shoes?page={p}", 12), ("GET", "/", 8),
         ("GET", "/api/search?q=red+shoes&page={p}", 10), ("POST", "/cart/items", 5),
         ("POST", "/checkout/submit", 2), ("POST", "/graphql", 6), ("GET", "/static/app.{n}.js", 12),
         ("GET", "/promo/black-friday", 3), ("GET", "/account/orders", 2)]


def pick(rng, table):
    total = sum(w for *_, w in table)
    x = rng.uniform(0, total)
    for row in table:
        x -= row[-1]
        if x <= 0:
            return row[:-1] if len(row) > 2 else row[0]
    return table[-1][:-1] if len(table[-1]) > 2 else table[-1][0]


def sign(kid, secret, stack, expiry):
    payload = f"v1.{kid}.{stack}.1.{expiry}"
    tag = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()[:16]
    return payload + "." + base64.urlsafe_b64encode(tag).rstrip(b"=").decode()


def main():
    kid, secret = sys.argv[1].split("=", 1)
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 7)
    expiry = int(time.time()) + 3500
    session_port = int(os.environ.get("BENCH_SESSION_COOKIE_PORT", "0"))
    requests = []
    for _ in range(count):
        country = pick(rng, COUNTRIES)
        kind = rng.random()
        if kind < 0.55:
            ua = rng.choice(DESKTOP)
        elif kind < 0.70:
            ua = MOBILE_WEB
        elif kind < 0.95:
            ua = rng.choice(APP)
        else:
            ua = rng.choice(BOTS)
        method, path = pick(rng, PATHS)
        path = path.format(n=rng.randrange(100000), p=rng.randrange(1, 20))
        user = f"u{rng.randrange(10**7):07d}"
        signed_in = rng.random() < 0.4
        cohort = None
        if signed_in:
            c = rng.random()
            cohort = "beta" if c < 0.03 else "premium" if c < 0.08 else "gold" if c < 0.10 else None
        # The stack a returning visitor was given (a guess; a wrong guess is a reassignment,
        # which real traffic has too).
        if country in EU:
            stack = "eu"
        elif country in APAC:
            stack = "apac"
        elif cohort == "beta":
            stack = "canary"
        else:
            stack = rng.choice(["blue", "green"])
        headers = [("Host", "shop.example.com"), ("User-Agent", ua),
                   ("Accept", "text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8"),
                   ("Accept-Language", "en-US,en;q=0.9"), ("Accept-Encoding", "gzip, deflate, br")]
        if country:
            headers.append(("X-Geo-Country", country))
        if signed_in:
            headers.append(("X-Jwt-Sub", user))
            if cohort:
                headers.append(("X-Jwt-Cohort", cohort))
        if "Googlebot" not in ua:
            cookies = [f"session=s{rng.getrandbits(64):016x}", f"_ga=GA1.2.{rng.randrange(10**9)}.{expiry - 86400 * 30}",
                       "consent=analytics%2Cmarketing"]
            if rng.random() < 0.7:
                cookies.append("sy_aff=" + sign(kid, secret, stack, expiry))
            if rng.random() < 0.3:
                cookies.append(f"cart=c{rng.getrandbits(48):012x}")
            rng.shuffle(cookies)
            if session_port and any(c.startswith("sy_aff=") for c in cookies):
                # Variant (e)'s stickiness: Envoy's stateful_session cookie naming the
                # visitor's stack's upstream (after the shuffle: the random sequence, and
                # so every other byte of the load, stays the same).
                port = session_port + STACKS.index(stack)
                address = base64.b64encode(f"127.0.0.1:{port}".encode()).decode()
                cookies.append(f'sy_sess="{address}"')
            headers.append(("Cookie", "; ".join(cookies)))
        headers.append(("X-Bench-Stack", stack))
        body = ""
        if method == "POST":
            body = json.dumps({"sku": f"sku-{rng.randrange(10**6)}", "qty": rng.randrange(1, 4)})
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        raw = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n" + body
        requests.append(raw)

    out = ["-- Generated by bench/load/gen_load.py: do not edit. One fixed request mix, cycled.",
           "local requests = {"]
    out += ["  " + json.dumps(r) + "," for r in requests]
    out += ["}",
            "local n = #requests",
            "local i = 0",
            "function request()",
            "  i = i % n + 1",
            "  return requests[i]",
            "end",
            "function done(summary, latency, requests)",
            "  io.write(string.format('bench: p50_us=%d p99_us=%d\\n', latency:percentile(50), latency:percentile(99)))",
            "end"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
