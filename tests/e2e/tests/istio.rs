//! The Istio packaging (`envoy/istio/`) proven on the real Envoy, without a cluster.
//!
//! What a gateway pod would do, done here with the manifests as they ship:
//! - istiod applies the EnvoyFilter's patches to the gateway's listeners: [`apply`], a
//!   small applier for the operations the manifests use (HTTP_FILTER, INSERT_BEFORE /
//!   INSERT_AFTER / INSERT_FIRST, matched by context, listener name/port, network filter
//!   and sub-filter), run on an Istio-shaped gateway configuration
//!   (`tests/e2e/fixtures/istio/gateway-bootstrap.yaml`);
//! - pilot-agent passes the custom bootstrap from the ConfigMap to Envoy with
//!   `--config-yaml` (YAML converted to JSON, `$(HOST_IP)` replaced), found through the
//!   env var and volume of the gateway Deployment patch;
//! - then `envoy --mode validate`, and — since validation does not run the plugin's
//!   configure step — the same Envoy started for real, routing to demo stacks, with the
//!   singleton connected to the real control service (started from the ConfigMap's
//!   config file) and a pushed policy taking effect.
//!
//! Only the wasm path and the control service's address are re-pointed at the test's.
//! `the_wasmplugin_never_sees_a_push` puts the filter Istio builds from the WasmPlugin in
//! `alternatives/` in the EnvoyFilter's place and shows it never sees a push.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_e2e::*;

/// The gateway's virtual host (routing.yaml's Gateway and VirtualService).
const HOST: &str = "shop.example.com";
const HCM: &str = "envoy.filters.network.http_connection_manager";

// ---- manifests ------------------------------------------------------------------

/// One YAML document of a manifest file, as JSON.
#[derive(Clone, Debug)]
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

fn istio_dir() -> PathBuf {
    root().join("envoy/istio")
}

/// Every `*.yaml` under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn parse_docs(file: &str, text: &str) -> Vec<Doc> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| {
            let v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{file}: not valid YAML: {e}"));
            (!v.is_null()).then(|| Doc {
                file: file.to_string(),
                value: v,
            })
        })
        .collect()
}

/// Every document of every manifest under envoy/istio (alternatives included).
fn all_manifests() -> Vec<Doc> {
    let base = istio_dir();
    yaml_files(&base)
        .iter()
        .flat_map(|p| {
            let rel = p.strip_prefix(&base).unwrap().display().to_string();
            parse_docs(&rel, &std::fs::read_to_string(p).unwrap())
        })
        .collect()
}

/// The one document of `kind` named `name` in `file`.
fn find<'a>(docs: &'a [Doc], file: &str, kind: &str, name: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.file == file && d.kind() == kind && d.name() == name)
        .collect();
    assert_eq!(found.len(), 1, "{file}: expected one {kind} {name}");
    found[0]
}

/// The ConfigMap data entries that are YAML mappings (the custom bootstrap), parsed.
fn embedded_docs(d: &Doc) -> Vec<Doc> {
    if d.kind() != "ConfigMap" {
        return Vec::new();
    }
    let Some(data) = d.value["data"].as_object() else {
        return Vec::new();
    };
    data.iter()
        .filter_map(|(k, v)| {
            let v: Value = serde_yaml::from_str(v.as_str()?).ok()?;
            v.is_object().then(|| Doc {
                file: format!("{} ({}/{k})", d.file, d.name()),
                value: v,
            })
        })
        .collect()
}

// ---- the vm_id and BOOTSTRAP rules ------------------------------------------------

/// Every `vm_id`/`vmId` in a JSON tree, with its path.
fn vm_ids(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}.{k}");
                if k == "vm_id" || k == "vmId" {
                    out.push((p.clone(), x.as_str().unwrap_or("<not a string>").into()));
                }
                vm_ids(x, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                vm_ids(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The singleton's vm_id: the `envoy.bootstrap.wasm` extension of a custom bootstrap.
fn singleton_vm_id(bootstrap: &Value) -> Option<String> {
    bootstrap["bootstrap_extensions"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == "envoy.bootstrap.wasm")?["typed_config"]["config"]["vm_config"]
        ["vm_id"]
        .as_str()
        .map(str::to_string)
}

/// What is wrong with the manifests' vm_ids and patches: every vm_id must be the
/// singleton's, an EnvoyFilter must use it, nothing may patch BOOTSTRAP (ignored by
/// Istio since BDS was removed, istio#48693), and a WasmPlugin (built without a vm_id)
/// may only sit under `alternatives/`, outside the install.
fn packaging_problems(docs: &[Doc]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expanded: Vec<Doc> = docs.to_vec();
    expanded.extend(docs.iter().flat_map(embedded_docs));
    let singletons: Vec<(String, String)> = expanded
        .iter()
        .filter_map(|d| singleton_vm_id(&d.value).map(|id| (d.file.clone(), id)))
        .collect();
    let [(_, singleton)] = singletons.as_slice() else {
        return vec![format!(
            "expected exactly one envoy.bootstrap.wasm singleton with a vm_id, found {singletons:?}"
        )];
    };
    let mut filter_uses_it = false;
    for d in &expanded {
        let mut ids = Vec::new();
        vm_ids(&d.value, "", &mut ids);
        for (path, id) in ids {
            if &id != singleton {
                problems.push(format!(
                    "{}: {path} is {id:?}, the singleton's is {singleton:?}",
                    d.file
                ));
            } else if d.kind() == "EnvoyFilter" {
                filter_uses_it = true;
            }
        }
        if d.kind() == "EnvoyFilter" {
            for (i, p) in d.value["spec"]["configPatches"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if p["applyTo"] == "BOOTSTRAP" {
                    problems.push(format!(
                        "{}: {} configPatches[{i}] uses applyTo: BOOTSTRAP, which Istio ignores; use the custom bootstrap ConfigMap",
                        d.file,
                        d.name()
                    ));
                }
            }
        }
        if d.kind() == "WasmPlugin" && !d.file.starts_with("alternatives/") {
            problems.push(format!(
                "{}: a WasmPlugin in the install set runs a second filter without a vm_id",
                d.file
            ));
        }
    }
    if !filter_uses_it {
        problems.push(format!(
            "no EnvoyFilter installs the filter with vm_id {singleton:?}"
        ));
    }
    problems
}

#[test]
fn every_vm_id_is_the_singletons_and_nothing_patches_the_bootstrap() {
    let docs = all_manifests();
    let problems = packaging_problems(&docs);
    assert!(problems.is_empty(), "{problems:#?}");

    // The rule is not vacuous: each kind of mistake is caught.
    let mut wrong_id = docs.clone();
    let ef = wrong_id
        .iter_mut()
        .find(|d| d.kind() == "EnvoyFilter")
        .unwrap();
    ef.value["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["vm_config"]
        ["vm_id"] = json!("switchyard-filter");
    let p = packaging_problems(&wrong_id);
    assert!(
        p.iter().any(|m| m.contains("\"switchyard-filter\"")),
        "{p:?}"
    );

    let mut no_id = docs.clone();
    let ef = no_id
        .iter_mut()
        .find(|d| d.kind() == "EnvoyFilter")
        .unwrap();
    ef.value["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["vm_config"]
        .as_object_mut()
        .unwrap()
        .remove("vm_id");
    let p = packaging_problems(&no_id);
    assert!(p.iter().any(|m| m.contains("no EnvoyFilter")), "{p:?}");

    let mut bootstrap_patch = docs.clone();
    let ef = bootstrap_patch
        .iter_mut()
        .find(|d| d.kind() == "EnvoyFilter")
        .unwrap();
    ef.value["spec"]["configPatches"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "applyTo": "BOOTSTRAP", "patch": { "operation": "MERGE", "value": {} } }));
    let p = packaging_problems(&bootstrap_patch);
    assert!(p.iter().any(|m| m.contains("BOOTSTRAP")), "{p:?}");

    let mut plugin = docs.clone();
    plugin
        .iter_mut()
        .find(|d| d.kind() == "WasmPlugin")
        .expect("the static-policy WasmPlugin under alternatives/")
        .file = "wasmplugin.yaml".into();
    let p = packaging_problems(&plugin);
    assert!(p.iter().any(|m| m.contains("WasmPlugin")), "{p:?}");
}

// ---- the EnvoyFilter applier ------------------------------------------------------

/// What istiod knows about the proxy a patch is applied to.
struct Proxy<'a> {
    /// `GATEWAY`, `SIDECAR_INBOUND` or `SIDECAR_OUTBOUND`.
    context: &'a str,
    labels: &'a BTreeMap<String, String>,
}

/// Panics if `v` (an object, or absent) has a key outside `known`.
fn known_keys(v: &Value, known: &[&str], what: &str) {
    for key in v.as_object().map(|o| o.keys()).into_iter().flatten() {
        assert!(
            known.contains(&key.as_str()),
            "EnvoyFilter {what}.{key}: unknown to the test applier (misspelt, or an operation to implement)"
        );
    }
}

/// The port of a listener's socket address.
fn listener_port(l: &Value) -> Option<u64> {
    l["address"]["socket_address"]["port_value"].as_u64()
}

/// Apply the EnvoyFilter `ef` to `config` (a bootstrap whose static listeners stand in
/// for LDS) as istiod would for `proxy`. Returns how many times each patch applied.
/// Panics on an operation it does not implement, so a manifest that grows one fails
/// here instead of going untested.
fn apply(config: &mut Value, ef: &Value, proxy: &Proxy) -> Vec<usize> {
    let spec = &ef["spec"];
    // A misspelt key would be dropped silently here (a missing workloadSelector in
    // istio-system patches every proxy of the mesh), and the CRD schema check does not
    // reject unknown fields: reject every key this applier does not know.
    known_keys(
        spec,
        &["workloadSelector", "configPatches", "priority"],
        "spec",
    );
    known_keys(&spec["workloadSelector"], &["labels"], "workloadSelector");
    if let Some(sel) = spec["workloadSelector"]["labels"].as_object() {
        let matches = sel
            .iter()
            .all(|(k, v)| proxy.labels.get(k).map(String::as_str) == v.as_str());
        if !matches {
            return vec![0; spec["configPatches"].as_array().map_or(0, Vec::len)];
        }
    }
    let mut counts = Vec::new();
    for cp in spec["configPatches"].as_array().expect("configPatches") {
        known_keys(cp, &["applyTo", "match", "patch"], "configPatches[]");
        known_keys(&cp["match"], &["context", "listener"], "match");
        known_keys(&cp["patch"], &["operation", "value"], "patch");
        let apply_to = cp["applyTo"].as_str().unwrap_or("");
        assert_eq!(
            apply_to, "HTTP_FILTER",
            "the test applier implements applyTo HTTP_FILTER only; extend it for {apply_to}"
        );
        let m = &cp["match"];
        let context = m["context"].as_str().unwrap_or("ANY");
        if context != "ANY" && context != proxy.context {
            counts.push(0);
            continue;
        }
        let lm = &m["listener"];
        known_keys(lm, &["name", "portNumber", "filterChain"], "listener");
        let fc = &lm["filterChain"];
        known_keys(fc, &["filter"], "filterChain");
        known_keys(&fc["filter"], &["name", "subFilter"], "filterChain.filter");
        let filter_name = fc["filter"]["name"].as_str().unwrap_or(HCM);
        assert_eq!(filter_name, HCM, "HTTP_FILTER patches live in the HCM");
        let sub = fc["filter"]["subFilter"]["name"].as_str();
        let op = cp["patch"]["operation"].as_str().unwrap_or("");
        let value = &cp["patch"]["value"];
        let mut n = 0;
        for l in config["static_resources"]["listeners"]
            .as_array_mut()
            .expect("listeners")
        {
            if lm["name"].as_str().is_some_and(|want| l["name"] != want) {
                continue;
            }
            if lm["portNumber"]
                .as_u64()
                .is_some_and(|want| listener_port(l) != Some(want))
            {
                continue;
            }
            for chain in l["filter_chains"].as_array_mut().into_iter().flatten() {
                for f in chain["filters"].as_array_mut().into_iter().flatten() {
                    if f["name"] != filter_name {
                        continue;
                    }
                    let filters = f["typed_config"]["http_filters"]
                        .as_array_mut()
                        .expect("an HCM with http_filters");
                    let at = sub.map(|s| filters.iter().position(|h| h["name"] == s));
                    let index = match (op, at) {
                        ("INSERT_FIRST", _) => 0,
                        ("INSERT_BEFORE", Some(Some(i))) => i,
                        ("INSERT_AFTER", Some(Some(i))) => i + 1,
                        // Istio applies nothing when the sub-filter is not there.
                        ("INSERT_BEFORE" | "INSERT_AFTER", _) => continue,
                        (other, _) => panic!("the test applier does not implement {other}"),
                    };
                    filters.insert(index, value.clone());
                    n += 1;
                }
            }
        }
        counts.push(n);
    }
    counts
}

#[test]
fn the_applier_inserts_before_the_router_and_respects_its_matches() {
    let labels = BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]);
    let gw = Proxy {
        context: "GATEWAY",
        labels: &labels,
    };
    let names = |c: &Value| -> Vec<String> {
        c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap().to_string())
            .collect()
    };
    let ef = |context: &str, port: Option<u64>, sub: &str| {
        let mut listener =
            json!({ "filterChain": { "filter": { "name": HCM, "subFilter": { "name": sub } } } });
        if let Some(p) = port {
            listener["portNumber"] = json!(p);
        }
        json!({ "spec": {
            "workloadSelector": { "labels": { "istio": "ingressgateway" } },
            "configPatches": [ { "applyTo": "HTTP_FILTER",
                "match": { "context": context, "listener": listener },
                "patch": { "operation": "INSERT_BEFORE", "value": { "name": "x" } } } ] } })
    };
    let mut c = fixture();
    assert_eq!(
        apply(
            &mut c,
            &ef("GATEWAY", Some(8080), "envoy.filters.http.router"),
            &gw
        ),
        vec![1]
    );
    let got = names(&c);
    assert_eq!(got[got.len() - 2..], ["x", "envoy.filters.http.router"]);
    // Another context, another port, a sub-filter that is not there, another workload:
    // nothing changes.
    for e in [
        ef("SIDECAR_INBOUND", None, "envoy.filters.http.router"),
        ef("GATEWAY", Some(8443), "envoy.filters.http.router"),
        ef("GATEWAY", None, "envoy.filters.http.lua"),
    ] {
        let mut c = fixture();
        assert_eq!(apply(&mut c, &e, &gw), vec![0]);
        assert_eq!(names(&c), names(&fixture()));
    }
    let other = BTreeMap::from([("istio".to_string(), "egressgateway".to_string())]);
    let mut c = fixture();
    let e = ef("GATEWAY", None, "envoy.filters.http.router");
    assert_eq!(
        apply(
            &mut c,
            &e,
            &Proxy {
                context: "GATEWAY",
                labels: &other
            }
        ),
        vec![0]
    );
}

#[test]
#[should_panic(expected = "spec.workloadSelectr")]
fn the_applier_rejects_a_misspelt_key() {
    let labels = BTreeMap::new();
    let ef = json!({ "spec": { "workloadSelectr": { "labels": { "istio": "ingressgateway" } },
        "configPatches": [] } });
    apply(
        &mut fixture(),
        &ef,
        &Proxy {
            context: "GATEWAY",
            labels: &labels,
        },
    );
}

// ---- the gateway, assembled as a pod would have it ----------------------------------

fn fixture() -> Value {
    let p = root().join("tests/e2e/fixtures/istio/gateway-bootstrap.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The `istio-proxy` container and the pod spec of the gateway Deployment patch.
struct GatewayPatch {
    labels: BTreeMap<String, String>,
    env: HashMap<String, Value>,
    /// volume name → mount path
    mounts: HashMap<String, String>,
    /// volume name → ConfigMap name
    config_maps: HashMap<String, String>,
    /// volume name → Secret name
    secrets: HashMap<String, String>,
}

/// The directory part of a path in the pod.
fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

fn gateway_patch(docs: &[Doc]) -> GatewayPatch {
    let d = find(
        docs,
        "gateway-patch.yaml",
        "Deployment",
        "istio-ingressgateway",
    );
    let tpl = &d.value["spec"]["template"];
    let proxy = tpl["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("the istio-proxy container");
    GatewayPatch {
        labels: serde_json::from_value(tpl["metadata"]["labels"].clone()).unwrap(),
        env: proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
            .collect(),
        mounts: proxy["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["mountPath"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
        config_maps: tpl["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| {
                Some((
                    v["name"].as_str()?.to_string(),
                    v["configMap"]["name"].as_str()?.to_string(),
                ))
            })
            .collect(),
        secrets: tpl["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| {
                Some((
                    v["name"].as_str()?.to_string(),
                    v["secret"]["secretName"].as_str()?.to_string(),
                ))
            })
            .collect(),
    }
}

/// Replace every string equal to `from` in a JSON tree; how many were replaced.
fn replace_strings(v: &mut Value, from: &str, to: &str) -> usize {
    match v {
        Value::String(s) if s == from => {
            *s = to.to_string();
            1
        }
        Value::Object(m) => m.values_mut().map(|x| replace_strings(x, from, to)).sum(),
        Value::Array(a) => a.iter_mut().map(|x| replace_strings(x, from, to)).sum(),
        _ => 0,
    }
}

/// A gateway pod's Envoy, assembled from the manifests.
struct Gateway {
    /// Istio's configuration with the EnvoyFilters applied (the `-c` file).
    config: Value,
    /// The custom bootstrap as pilot-agent passes it (`--config-yaml`).
    custom: Value,
    /// The proxy's environment from the Deployment patch (secrets filled in by the test).
    env: Vec<(String, String)>,
}

/// Build the gateway from `docs`: `transform` may change the EnvoyFilter before it is
/// applied. Ports: `stacks` (name → port), the control service on `control`. The
/// control cluster's SDS files (keys of the bootstrap ConfigMap) are written to `test_dir`
/// with the client certificate Secret's files replaced by `certs`' (`envoy.pem`,
/// `envoy.key`, `ca.pem`) and the server name the gateways require by the demo server
/// certificate's (`localhost`).
fn assemble(
    docs: &[Doc],
    stacks: &HashMap<&str, u16>,
    control: u16,
    certs: &DemoCerts,
    test_dir: &TestDir,
    transform: impl Fn(&mut Value),
) -> Gateway {
    let patch = gateway_patch(docs);

    // pilot-agent: ISTIO_BOOTSTRAP_OVERRIDE names a file on the volume of the ConfigMap.
    let override_path = patch.env["ISTIO_BOOTSTRAP_OVERRIDE"]["value"]
        .as_str()
        .expect("ISTIO_BOOTSTRAP_OVERRIDE in the gateway patch");
    let (dir, file) = override_path.rsplit_once('/').unwrap();
    let volume = patch
        .mounts
        .iter()
        .find(|(_, p)| p.as_str() == dir)
        .unwrap_or_else(|| panic!("no volume is mounted at {dir}"))
        .0;
    let cm_name = &patch.config_maps[volume];
    let cm = docs
        .iter()
        .find(|d| d.kind() == "ConfigMap" && d.name() == cm_name)
        .unwrap_or_else(|| panic!("the ConfigMap {cm_name} of volume {volume}"));
    let text = cm.value["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {file}"));
    // readBootstrapToJSON: "$(HOST_IP)" replaced by the node's IP, YAML to JSON.
    let mut custom: Value = serde_yaml::from_str(&text.replace("$(HOST_IP)", "127.0.0.1"))
        .expect("the custom bootstrap is YAML");

    // The filter module, where the patch mounts the switchyard-wasm ConfigMap.
    let wasm_dir = &patch.mounts["switchyard-wasm"];
    let wasm_in_pod = format!("{wasm_dir}/switchyard_filter.wasm");
    let wasm = wasm_path().display().to_string();
    assert_eq!(
        replace_strings(&mut custom, &wasm_in_pod, &wasm),
        1,
        "the singleton loads {wasm_in_pod}"
    );

    // The control cluster's credentials: the SDS files beside the bootstrap (the same
    // ConfigMap volume), reading the Secret the patch mounts at GATEWAY_TLS_IN_POD.
    let tls_volume = patch
        .mounts
        .iter()
        .find(|(_, p)| p.as_str() == GATEWAY_TLS_IN_POD)
        .unwrap_or_else(|| panic!("no volume is mounted at {GATEWAY_TLS_IN_POD}"))
        .0;
    assert_eq!(
        patch.secrets.get(tls_volume).map(String::as_str),
        Some("switchyard-control-client"),
        "the gateway's client certificate Secret"
    );
    let sds_dir = test_dir.join("custom-bootstrap");
    std::fs::create_dir_all(&sds_dir).unwrap();
    for key in ["control-client-cert-sds.yaml", "control-ca-sds.yaml"] {
        let what = format!("{cm_name}/{key}");
        let mut sds = cm.value["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {key}"))
            .to_string();
        for (in_pod, ours) in [
            ("tls.crt", "envoy.pem"),
            ("tls.key", "envoy.key"),
            ("ca.crt", "ca.pem"),
        ] {
            let from = format!("{GATEWAY_TLS_IN_POD}/{in_pod}");
            if sds.contains(&from) {
                sds = sds.replace(&from, &certs.file(ours).display().to_string());
            }
        }
        let tls_dir = certs.file("ca.pem").parent().unwrap().display().to_string();
        sds = repoint(
            &sds,
            &format!("path: {GATEWAY_TLS_IN_POD} "),
            &format!("path: {tls_dir} "),
            &what,
        );
        if key == "control-ca-sds.yaml" {
            sds = repoint(&sds, CONTROL_DNS, "localhost", &what);
        }
        assert!(!sds.contains(GATEWAY_TLS_IN_POD), "{what}: {sds}");
        std::fs::write(sds_dir.join(key), sds).unwrap();
        let in_pod = format!("{dir_in_pod}/{key}", dir_in_pod = dir_of(override_path));
        assert_eq!(
            replace_strings(
                &mut custom,
                &in_pod,
                &sds_dir.join(key).display().to_string()
            ),
            1,
            "the control cluster reads {in_pod}"
        );
    }
    let watched = dir_of(override_path);
    assert_eq!(
        replace_strings(&mut custom, watched, &sds_dir.display().to_string()),
        2,
        "both SDS sources watch {watched}"
    );

    // The control service's address: the test's, same cluster type.
    let clusters = custom["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap();
    let cc = clusters
        .iter_mut()
        .find(|c| c["name"] == "switchyard_control")
        .expect("the switchyard_control cluster");
    let sa = &mut cc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(sa["port_value"], 18000);
    sa["address"] = json!("127.0.0.1");
    sa["port_value"] = json!(control);

    // istiod: the EnvoyFilters selected by the gateway's labels.
    let mut config = fixture();
    let mut applied = 0;
    for d in docs.iter().filter(|d| d.kind() == "EnvoyFilter") {
        let mut ef = d.value.clone();
        transform(&mut ef);
        let counts = apply(
            &mut config,
            &ef,
            &Proxy {
                context: "GATEWAY",
                labels: &patch.labels,
            },
        );
        if d.file == "envoyfilter.yaml" {
            assert!(
                counts.iter().all(|&n| n > 0),
                "{}: a patch applied nowhere on the gateway: {counts:?}",
                d.name()
            );
        }
        applied += counts.iter().sum::<usize>();
    }
    assert!(applied > 0, "no EnvoyFilter applies to the gateway");
    assert_eq!(replace_strings(&mut config, &wasm_in_pod, &wasm), applied);

    // Stacks and ports of this test.
    for c in config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
    {
        let name = c["name"].as_str().unwrap().to_string();
        let Some(stack) = name.split('|').nth(2) else {
            continue;
        };
        c["load_assignment"]["endpoints"] = json!([{ "lb_endpoints": [{ "endpoint": { "address":
            { "socket_address": { "address": "127.0.0.1", "port_value": stacks[stack] } } } }] }]);
    }
    for l in config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        l["address"]["socket_address"]["port_value"] = json!(0);
    }
    config["admin"]["address"]["socket_address"]["port_value"] = json!(0);

    // The proxy's environment: the secret key the patch reads from the Secret.
    let keys = &patch.env["SWITCHYARD_AFFINITY_KEYS"];
    assert_eq!(
        keys["valueFrom"]["secretKeyRef"]["name"], "switchyard-affinity-keys",
        "{keys}"
    );
    Gateway {
        config,
        custom,
        env: vec![("SWITCHYARD_AFFINITY_KEYS".into(), TEST_KEYS.into())],
    }
}

impl Gateway {
    /// pilot-agent's `--config-yaml` argument.
    fn args(&self) -> Vec<String> {
        vec!["--config-yaml".into(), self.custom.to_string()]
    }

    /// `envoy --mode validate` on it; panics with Envoy's output if it is rejected.
    fn validate(&self, dir: &TestDir) {
        let file = dir.join("gateway.json");
        std::fs::write(&file, self.config.to_string()).unwrap();
        let out = Command::new(envoy_bin())
            .args(["--mode", "validate", "-c"])
            .arg(&file)
            .args(self.args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "envoy --mode validate: {text}");
    }

    /// Start it for real (two workers).
    fn start(&self) -> switchyard_harness::Envoy {
        let opts = switchyard_harness::EnvoyOptions {
            concurrency: 2,
            log_level: "warn".into(),
            env: self.env.clone(),
            args: self.args(),
            ..Default::default()
        };
        switchyard_harness::Envoy::start(&self.config.to_string(), &opts)
    }
}

/// Where the control service's Deployment mounts its TLS Secret (control-service.yaml).
const CONTROL_TLS_IN_POD: &str = "/etc/switchyard-tls";
/// Where the gateway patch mounts its client certificate Secret (gateway-patch.yaml).
const GATEWAY_TLS_IN_POD: &str = "/etc/switchyard/control-tls";
/// The gateway's certificate subject the control service maps to the dataplane role.
const GATEWAY_SUBJECT: &str = "CN=istio-ingressgateway";
/// The name the gateways require of the control service's certificate.
const CONTROL_DNS: &str = "switchyard-control.switchyard.svc.cluster.local";

/// Replace `from` by `to` in `text`; panics when the manifest no longer says `from` (a
/// re-pointing that silently did nothing would test nothing).
fn repoint(text: &str, from: &str, to: &str, what: &str) -> String {
    assert!(
        text.contains(from),
        "{what} no longer names {from}:\n{text}"
    );
    text.replace(from, to)
}

/// The control service as the Deployment runs it: `serve` with the ConfigMap's config
/// file (TLS with client certificates, authentication on), its listen address and data
/// directory moved to the test's, the Secret's files (`tls.crt`, `tls.key`, `ca.crt`)
/// replaced by the test's demo certificates — whose client certificate says `CN=envoy`
/// where the gateway's would say `CN=istio-ingressgateway`. The CLI gets an admin token,
/// created offline on the data directory as the manifest's comment says.
struct Control {
    _proc: Proc,
    grpc: u16,
    ca: PathBuf,
    admin_token: PathBuf,
}

fn control_from_manifest(docs: &[Doc], dir: &TestDir, grpc: u16, certs: &DemoCerts) -> Control {
    let cm = find(
        docs,
        "control-service.yaml",
        "ConfigMap",
        "switchyard-control-config",
    );
    let mut toml = cm.value["data"]["control.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let what = "control-service.yaml's control.toml";
    for (in_pod, ours) in [
        ("tls.crt", "server.pem"),
        ("tls.key", "server.key"),
        ("ca.crt", "ca.pem"),
    ] {
        toml = repoint(
            &toml,
            &format!("\"{CONTROL_TLS_IN_POD}/{in_pod}\""),
            &format!("\"{}\"", certs.file(ours).display()),
            what,
        );
    }
    let toml = repoint(
        &toml,
        &format!("subject = \"{GATEWAY_SUBJECT}\""),
        "subject = \"CN=envoy\"",
        what,
    );
    let config = dir.join("control.toml");
    std::fs::write(&config, toml).unwrap();
    let data = dir.join("data");
    let admin_token = dir.join("admin.token");
    let config_arg = config.to_str().unwrap();
    token_command(
        &data,
        &["--config", config_arg],
        &[
            "create",
            "--name",
            "admin",
            "--role",
            "admin",
            "--output",
            admin_token.to_str().unwrap(),
        ],
    );
    let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard-control"));
    cmd.args(["serve"])
        .env("SWITCHYARD_CONFIG", &config)
        .args(["--grpc", &format!("127.0.0.1:{grpc}"), "--no-http"])
        .arg("--data-dir")
        .arg(&data);
    let mut p = Proc::spawn("control", cmd, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    p.wait_for_line("`grpc listening on`", Duration::from_secs(10), |l| {
        l.contains("grpc listening on")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Control {
        _proc: p,
        grpc,
        ca: certs.file("ca.pem"),
        admin_token,
    }
}

impl Control {
    /// The operator CLI over TLS (trusting the CA) with the admin token.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(switchyard_harness::workspace_bin("switchyard"))
            .args(["--server", &format!("https://127.0.0.1:{}", self.grpc)])
            .arg("--ca")
            .arg(&self.ca)
            .arg("--token-file")
            .arg(&self.admin_token)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "switchyard {args:?}: {text}");
        text
    }
}

/// Which stacks served `n` requests for the shop's host over four connections.
fn served(port: u16, n: usize) -> HashMap<String, usize> {
    spread(port, 4, n, &[("host", HOST)])
}

/// Poll until a burst is served only by `allowed`; how long that took.
fn wait_served_by(port: u16, allowed: &[&str], timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if served(port, 16)
            .keys()
            .all(|k| allowed.contains(&k.as_str()))
        {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The policy pushed through the control service: everything to canary.
fn canary_policy(dir: &TestDir) -> PathBuf {
    let file = dir.join("canary.json");
    let stacks: Vec<Value> = ["blue", "green", "canary", "eu"]
        .iter()
        .map(|s| {
            json!({ "name": s, "region": if *s == "eu" { "eu" } else { "us" },
            "cluster": format!("outbound|80|{s}|storefront.shop.svc.cluster.local") })
        })
        .collect();
    let policy = json!({ "name": "storefront", "stacks": stacks,
        "default": { "targets": [ { "stack": "canary" } ] } });
    std::fs::write(&file, policy.to_string()).unwrap();
    file
}

/// A gauge or counter from the admin's `/stats` (0 when absent).
fn stat(envoy: &switchyard_harness::Envoy, name: &str) -> u64 {
    envoy.stats_matching(name).get(name).copied().unwrap_or(0)
}

/// The routes of the fixture agree with routing.yaml's VirtualService (istiod's RDS
/// translation, checked rather than trusted).
fn check_routes_match_the_virtual_service(docs: &[Doc], config: &Value) {
    let vs = find(docs, "routing.yaml", "VirtualService", "storefront");
    let vhost = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0];
    let hosts: Vec<&str> = vs.value["spec"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert!(hosts
        .iter()
        .all(|h| vhost["domains"].as_array().unwrap().contains(&json!(h))));
    let routes = vhost["routes"].as_array().unwrap();
    let http = vs.value["spec"]["http"].as_array().unwrap();
    // Every subset the VirtualService routes to is one of the DestinationRule's.
    let dr = find(docs, "routing.yaml", "DestinationRule", "storefront");
    let subsets: Vec<&Value> = dr.value["spec"]["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["name"])
        .collect();
    for h in http {
        let d = &h["route"][0]["destination"];
        assert_eq!(d["host"], dr.value["spec"]["host"], "rule {}", h["name"]);
        assert!(subsets.contains(&&d["subset"]), "rule {}: {d}", h["name"]);
    }
    assert_eq!(
        routes.len(),
        http.len(),
        "one route per VirtualService rule"
    );
    for (r, h) in routes.iter().zip(http) {
        assert_eq!(r["name"], h["name"]);
        let d = &h["route"][0]["destination"];
        let cluster = format!(
            "outbound|{}|{}|{}",
            d["port"]["number"],
            d["subset"].as_str().unwrap(),
            d["host"].as_str().unwrap()
        );
        assert_eq!(
            r["route"]["cluster"],
            cluster.as_str(),
            "route {}",
            h["name"]
        );
        let want: Vec<(String, String)> = h["match"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|m| m["headers"].as_object().unwrap().iter())
            .map(|(k, v)| (k.clone(), v["exact"].as_str().unwrap().to_string()))
            .collect();
        let got: Vec<(String, String)> = r["match"]["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["string_match"]["exact"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, want, "route {}", h["name"]);
        assert_eq!(
            r["request_headers_to_remove"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            h["headers"]["request"]["remove"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            "route {}",
            h["name"]
        );
    }
}

#[test]
fn the_gateway_from_the_manifests_validates_starts_and_takes_a_pushed_policy() {
    let docs = all_manifests();
    let shop = Shop::start();
    let dir = TestDir::new("istio");
    let grpc = ReservedPort::new().unwrap();
    let certs = DemoCerts::new("istio-tls");
    let control = control_from_manifest(&docs, &dir, grpc.port(), &certs);
    let gw = assemble(&docs, &shop.ports(), grpc.port(), &certs, &dir, |_| {});
    check_routes_match_the_virtual_service(&docs, &gw.config);

    // The filter sits just before the router, after Istio's own filters.
    let chain: Vec<&str> = gw.config["static_resources"]["listeners"][0]["filter_chains"][0]
        ["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        chain,
        [
            "envoy.filters.http.grpc_stats",
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "switchyard",
            "envoy.filters.http.router"
        ]
    );

    // The policy's stacks name the clusters istiod makes of the DestinationRule subsets.
    let ef = find(&docs, "envoyfilter.yaml", "EnvoyFilter", "switchyard");
    let policy: Value = serde_json::from_str(
        ef.value["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
            ["configuration"]["value"]
            .as_str()
            .unwrap(),
    )
    .expect("the EnvoyFilter's policy is JSON");
    let clusters: Vec<&Value> = gw.config["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["name"])
        .collect();
    for st in policy["stacks"].as_array().unwrap() {
        assert!(
            clusters.contains(&&st["cluster"]),
            "stack {st}: no such cluster"
        );
    }
    // And it is valid without a warning (a geo header read without `ambiguous` warns).
    let policy_file = dir.join("envoyfilter-policy.json");
    std::fs::write(&policy_file, policy.to_string()).unwrap();
    let checked = control.cli(&[
        "--json",
        "policy",
        "validate",
        policy_file.to_str().unwrap(),
    ]);
    let checked: Value =
        serde_json::from_str(&checked).unwrap_or_else(|e| panic!("{e}: {checked}"));
    assert_eq!(checked["valid"], true, "{checked}");
    assert_eq!(checked["warnings"], json!([]), "{checked}");
    // The module travels in the switchyard-wasm ConfigMap: at most 1 MiB in all.
    let size = std::fs::metadata(wasm_path()).unwrap().len();
    assert!(size < 1_000_000, "{size} bytes do not fit a ConfigMap");

    gw.validate(&dir);
    let envoy = gw.start();
    let port = envoy.listener("0.0.0.0_8080").port();

    // Istio's bootstrap extension and the custom one both loaded, ours appended.
    let dump = envoy.config_dump();
    let bootstrap = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .unwrap_or("")
                .ends_with("BootstrapConfigDump")
        })
        .unwrap();
    let ext: Vec<&str> = bootstrap["bootstrap"]["bootstrap_extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        ext,
        ["envoy.bootstrap.internal_listener", "envoy.bootstrap.wasm"]
    );

    // Until the control service has a policy, the EnvoyFilter's own policy serves:
    // blue and green.
    let first = served(port, 200);
    assert!(
        first.keys().all(|k| k == "blue" || k == "green") && first.len() == 2,
        "{first:?}"
    );
    // The route table is the VirtualService's: another host has no route.
    let other = spread(port, 1, 1, &[("host", "other.example.com")]);
    assert_eq!(other, HashMap::from([("status 404".to_string(), 1)]));

    // A policy pushed through the control service reaches every worker.
    control.cli(&["policy", "apply", canary_policy(&dir).to_str().unwrap()]);
    let took = wait_served_by(port, &["canary"], Duration::from_secs(10))
        .expect("the pushed policy takes effect on the gateway");
    println!("policy pushed through the control service → served by canary after {took:?}");
    assert_eq!(
        served(port, 200),
        HashMap::from([("canary".to_string(), 200)])
    );

    // Through Istio's stats inclusion list, Switchyard's metrics are visible: the
    // singleton is connected and applied the snapshot, and the control service lists
    // the gateway under the node id the ConfigMap gives it.
    assert!(
        envoy.stats_matching("downstream_rq_total").is_empty(),
        "Istio's inclusion list is in force: Envoy's own HTTP stats are not emitted"
    );
    assert_eq!(stat(&envoy, "wasmcustom.switchyard.control.connected"), 1);
    assert!(stat(&envoy, "wasmcustom.switchyard.control.snapshots_applied") >= 1);
    let status = control.cli(&["--json", "status"]);
    assert!(
        status.contains("istio-ingressgateway-127.0.0.1"),
        "node id from $(HOST_IP): {status}"
    );
    drop(control);
}

/// The HTTP filter Istio builds from a WasmPlugin (pilot/pkg/model/extensions.go,
/// buildWasmConfig and buildVMConfig): name `<namespace>.<name>`, root_id the
/// pluginName, the pluginConfig as a JSON string, the v8 runtime, environment from
/// vmConfig.env, failure policy from failStrategy — and no vm_id. `code` is the local
/// file pilot-agent fetched the OCI image to (here `local_file`).
fn wasmplugin_filter(wp: &Value, local_file: &str) -> Value {
    let spec = &wp["spec"];
    let mut key_values = serde_json::Map::new();
    key_values.insert("ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION".into(), json!("1"));
    if let Some(p) = spec["imagePullPolicy"].as_str() {
        key_values.insert("ISTIO_META_WASM_IMAGE_PULL_POLICY".into(), json!(p));
    }
    let mut host_env_keys = Vec::new();
    for e in spec["vmConfig"]["env"].as_array().into_iter().flatten() {
        match e["valueFrom"].as_str().unwrap_or("INLINE") {
            "HOST" => host_env_keys.push(e["name"].clone()),
            _ => {
                key_values.insert(e["name"].as_str().unwrap().into(), e["value"].clone());
            }
        }
    }
    let name = format!(
        "{}.{}",
        wp["metadata"]["namespace"].as_str().unwrap(),
        wp["metadata"]["name"].as_str().unwrap()
    );
    let failure_policy = match spec["failStrategy"].as_str() {
        Some("FAIL_OPEN") => "FAIL_OPEN",
        Some("FAIL_RELOAD") => "FAIL_RELOAD",
        _ => "FAIL_CLOSED",
    };
    json!({ "name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name,
            "root_id": spec["pluginName"].as_str().unwrap_or(""),
            "failure_policy": failure_policy,
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": spec["pluginConfig"].to_string(),
            },
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": { "local": { "filename": local_file } },
                "environment_variables": { "key_values": key_values, "host_env_keys": host_env_keys },
            },
        },
    } })
}

#[test]
fn the_wasmplugin_never_sees_a_push() {
    // The static-policy WasmPlugin as Istio would build its filter, in place of the
    // EnvoyFilter's, with the singleton of the custom bootstrap: the singleton connects
    // and applies the pushed snapshot, the filter keeps serving its pluginConfig.
    let docs = all_manifests();
    let wp = find(
        &docs,
        "alternatives/wasmplugin-static-policy.yaml",
        "WasmPlugin",
        "switchyard",
    );
    let in_pod = format!(
        "{}/switchyard_filter.wasm",
        gateway_patch(&docs).mounts["switchyard-wasm"]
    );
    let filter = wasmplugin_filter(&wp.value, &in_pod);
    let shop = Shop::start();
    let dir = TestDir::new("istio-wasmplugin");
    let grpc = ReservedPort::new().unwrap();
    let certs = DemoCerts::new("istio-wasmplugin-tls");
    let control = control_from_manifest(&docs, &dir, grpc.port(), &certs);
    let gw = assemble(&docs, &shop.ports(), grpc.port(), &certs, &dir, |ef| {
        ef["spec"]["configPatches"][0]["patch"]["value"] = filter.clone();
    });
    let envoy = gw.start();
    let port = envoy.listener("0.0.0.0_8080").port();
    control.cli(&["policy", "apply", canary_policy(&dir).to_str().unwrap()]);
    // Wait until the singleton applied the pushed snapshot ...
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&envoy, "wasmcustom.switchyard.control.snapshots_applied") == 0 {
        assert!(
            Instant::now() < deadline,
            "the singleton never applied the snapshot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... then every request is still routed by the filter's own policy.
    let counts = served(port, 200);
    assert!(
        counts.keys().all(|k| k == "blue" || k == "green") && counts.len() == 2,
        "expected the pluginConfig's blue and green only: {counts:?}"
    );
}
