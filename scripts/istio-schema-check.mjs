#!/usr/bin/env node
// Offline schema check of envoy/istio: every Kubernetes object against the Kubernetes
// OpenAPI schemas (npm kubernetes-models) and every Istio resource against Istio's CRD
// schemas (npm @kubernetes-models/istio), both installed by `make .tools/.k8s-schemas`
// into .tools/k8s-schemas. No network at run time.
//
//   node scripts/istio-schema-check.mjs [file.yaml ...]   (default: envoy/istio/**/*.yaml)
//
// A document whose apiVersion/kind has no model is an error, never skipped. Before the
// manifests, a self-test feeds documents with known mistakes and fails unless each is
// rejected, so a validator that accepts everything cannot pass.
//
// What the schemas do not know is checked elsewhere: the Envoy configuration inside the
// EnvoyFilter and the bootstrap ConfigMap by `envoy --mode validate` and a real start
// (tests/e2e/tests/istio.rs).

import { readFileSync, readdirSync, statSync, existsSync } from "node:fs";
import { join, relative, dirname } from "node:path";
import { pathToFileURL, fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const modules = join(root, ".tools/k8s-schemas/node_modules");
if (!existsSync(join(modules, "@kubernetes-models/istio"))) {
  console.error(`istio-schema-check: ${modules} is missing; run make .tools/.k8s-schemas`);
  process.exit(2);
}

const { parseAllDocuments } = await import(pathToFileURL(join(modules, "yaml/dist/index.js")));

// apiVersion → the model file of `kind` in the npm packages.
function modelFile(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group.endsWith("istio.io")) {
    return join(modules, "@kubernetes-models/istio", group, version, `${kind}.js`);
  }
  const dir = group === "" ? version : join(group, version);
  return join(modules, "kubernetes-models", dir, `${kind}.js`);
}

async function validate(doc) {
  const { apiVersion, kind } = doc ?? {};
  if (typeof apiVersion !== "string" || typeof kind !== "string") {
    return "no apiVersion/kind";
  }
  const file = modelFile(apiVersion, kind);
  if (!existsSync(file)) {
    return `no schema for ${apiVersion} ${kind}`;
  }
  const Model = (await import(pathToFileURL(file)))[kind];
  try {
    new Model(doc).validate();
    return null;
  } catch (e) {
    return String(e.message ?? e).trim();
  }
}

function yamlFiles(dir) {
  return readdirSync(dir)
    .sort()
    .flatMap((n) => {
      const p = join(dir, n);
      if (statSync(p).isDirectory()) return yamlFiles(p);
      return /\.ya?ml$/.test(n) ? [p] : [];
    });
}

// ---- self-test: each of these must be rejected -------------------------------------
const bad = [
  ["EnvoyFilter with an unknown applyTo", {
    apiVersion: "networking.istio.io/v1alpha3", kind: "EnvoyFilter",
    metadata: { name: "x" },
    spec: { configPatches: [{ applyTo: "HTTP_FILTERS", patch: { operation: "INSERT_BEFORE" } }] },
  }],
  ["EnvoyFilter with an unknown context", {
    apiVersion: "networking.istio.io/v1alpha3", kind: "EnvoyFilter",
    metadata: { name: "x" },
    spec: { configPatches: [{ applyTo: "HTTP_FILTER", match: { context: "INGRESS" } }] },
  }],
  ["VirtualService with a number for hosts", {
    apiVersion: "networking.istio.io/v1", kind: "VirtualService",
    metadata: { name: "x" }, spec: { hosts: 7 },
  }],
  ["WasmPlugin with an unknown failStrategy", {
    apiVersion: "extensions.istio.io/v1alpha1", kind: "WasmPlugin",
    metadata: { name: "x" }, spec: { url: "oci://x/y", failStrategy: "FAIL_SOMETIMES" },
  }],
  ["Deployment without a selector", {
    apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "x" },
    spec: { template: { spec: { containers: [{ name: "c" }] } } },
  }],
  ["Deployment with a probe port as an object", {
    apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "x" },
    spec: {
      selector: { matchLabels: { a: "b" } },
      template: { spec: { containers: [{ name: "c", readinessProbe: { grpc: { port: { n: 1 } } } }] } },
    },
  }],
  ["PodDisruptionBudget with a string selector", {
    apiVersion: "policy/v1", kind: "PodDisruptionBudget", metadata: { name: "x" },
    spec: { selector: "app=x" },
  }],
  ["an unknown kind", { apiVersion: "networking.istio.io/v1", kind: "VirtualServce", metadata: { name: "x" } }],
];
let failed = 0;
for (const [what, doc] of bad) {
  if ((await validate(doc)) === null) {
    console.error(`self-test FAILED: ${what} was accepted`);
    failed++;
  }
}

// ---- the manifests ------------------------------------------------------------------
const files = process.argv.length > 2 ? process.argv.slice(2) : yamlFiles(join(root, "envoy/istio"));
let checked = 0;
for (const f of files) {
  const rel = relative(root, f);
  for (const d of parseAllDocuments(readFileSync(f, "utf8"))) {
    if (d.errors.length) {
      console.error(`${rel}: YAML: ${d.errors.map((e) => e.message).join("; ")}`);
      failed++;
      continue;
    }
    const doc = d.toJS();
    if (doc === null) continue;
    const problem = await validate(doc);
    const what = `${rel}: ${doc.kind ?? "?"} ${doc.metadata?.name ?? "?"}`;
    if (problem) {
      console.error(`${what}: ${problem}`);
      failed++;
    } else {
      console.log(`ok  ${what}`);
    }
    checked++;
  }
}
if (checked === 0) {
  console.error("istio-schema-check: no manifest checked");
  failed++;
}
console.log(`istio-schema-check: ${checked} manifests, ${bad.length} known-bad documents rejected`);
process.exit(failed ? 1 : 0);
