#!/usr/bin/env bash
# Offline schema checks of the Istio and Kubernetes manifests under envoy/istio
# (make test runs it; `make .tools/.k8s-schemas` installs what it needs):
#  1. scripts/istio-schema-check.mjs: every document against its model — Istio's CRD
#     schemas (npm @kubernetes-models/istio) and Kubernetes' OpenAPI schemas (npm
#     kubernetes-models): types, enums, required fields; unknown kinds are errors.
#  2. kubernetes-validate --strict (PyPI): the Kubernetes objects again, rejecting
#     unknown fields too, as `kubectl apply` (strict field validation) would. It has no
#     Istio schemas, so it only warns about the Istio kinds (checked by step 1).
# Each step first proves it rejects a known-bad document.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.tools/k8s-schemas
K8S_VERSION=1.33.0

node scripts/istio-schema-check.mjs "$@"

validate=("$TOOLS/venv/bin/kubernetes-validate" --strict --no-warn --quiet -k "$K8S_VERSION")
bad=$(mktemp)
trap 'rm -f "$bad"' EXIT
cat >"$bad" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: { name: misspelt }
spec:
  replica: 2
  selector: { matchLabels: { a: b } }
  template: { metadata: { labels: { a: b } }, spec: { containers: [ { name: c, image: x } ] } }
YAML
if "${validate[@]}" "$bad" >/dev/null 2>&1; then
  echo "istio-schema-check: kubernetes-validate --strict accepted an unknown field" >&2
  exit 1
fi
if [ $# -gt 0 ]; then files=("$@"); else mapfile -t files < <(find envoy/istio -name '*.yaml' | sort); fi
"${validate[@]}" "${files[@]}"
echo "istio-schema-check: ${#files[@]} files pass kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
