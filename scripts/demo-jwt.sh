#!/usr/bin/env bash
# Mint an HS256 JWT for the demo jwt_authn provider in envoy/envoy.yaml.
# usage: scripts/demo-jwt.sh SUBJECT [COHORT]   (demo key only; never use it in production)
set -euo pipefail
python3 - "$1" "${2:-}" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
sub, cohort = sys.argv[1], sys.argv[2]
claims = {"iss": "switchyard-demo", "sub": sub, "exp": int(time.time()) + 3600}
if cohort:
    claims["cohort"] = cohort
head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "demo"}).encode())
body = b64(json.dumps(claims).encode())
sig = hmac.new(b"switchyard-demo-jwt-secret-change-me", f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
