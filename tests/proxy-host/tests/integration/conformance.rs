//! Runs every scenario in `scenarios/` on this host. The Envoy side runs the same files
//! (see `scenarios/README.md`); both must agree.

#[test]
fn every_scenario_holds_on_the_host() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let scenarios = switchyard_proxy_host::scenario::load_dir(&dir).expect("scenarios parse");
    assert!(scenarios.len() >= 3);
    let mut failures = Vec::new();
    for (file, s) in &scenarios {
        match switchyard_proxy_host::scenario::run(s) {
            Ok(n) => eprintln!("{file}: {n} requests ok"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
