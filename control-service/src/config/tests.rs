use super::*;

#[test]
fn defaults_bind_localhost() {
    let c = resolve(&ServeArgs::default()).unwrap();
    assert_eq!(c.grpc.to_string(), DEFAULT_GRPC);
    assert_eq!(c.http.unwrap().to_string(), DEFAULT_HTTP);
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(c.store, StoreKind::Redb);
    assert_eq!(c.series, SeriesSettings::default());
    assert_eq!(c.series.window_ms, 10_000);
    assert_eq!(c.series.retention_ms, 7 * 86_400_000);
    assert!(c.auth.enabled, "credentials are required unless turned off");
}

#[test]
fn auth_can_be_turned_off_in_the_file_or_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[auth]\nenabled = false\n").unwrap();
    let mut args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    assert!(!resolve(&args).unwrap().auth.enabled);
    std::fs::write(&path, "[auth]\nenabled = true\n").unwrap();
    assert!(resolve(&args).unwrap().auth.enabled);
    args.no_auth = true;
    assert!(!resolve(&args).unwrap().auth.enabled);
    std::fs::write(&path, "[auth]\nenabld = true\n").unwrap();
    assert!(matches!(resolve(&args), Err(ConfigError::Parse { .. })));
}

#[test]
fn plain_text_with_auth_is_for_loopback_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "grpc = \"0.0.0.0:18000\"\nhttp = \"127.0.0.1:18080\"\n",
    )
    .unwrap();
    let mut args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let err = resolve(&args).unwrap_err().to_string();
    assert!(
        err.starts_with("grpc 0.0.0.0:18000 is not a loopback address")
            && err.contains("--insecure-plaintext"),
        "{err}"
    );
    args.tls.insecure_plaintext = true;
    assert!(resolve(&args).is_ok());
    args.tls.insecure_plaintext = false;
    args.no_auth = true;
    assert!(resolve(&args).is_ok(), "no credentials to protect");
    args.no_auth = false;
    std::fs::write(
        &path,
        "grpc = \"0.0.0.0:18000\"\n[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\n",
    )
    .unwrap();
    let c = resolve(&args).unwrap();
    assert_eq!(c.tls.unwrap().cert, dir.path().join("s.pem"));
    std::fs::write(&path, "[tls]\ncert = \"s.pem\"\n").unwrap();
    let err = resolve(&args).unwrap_err().to_string();
    assert!(err.contains("tls.key: required with tls.cert"), "{err}");
}

#[test]
fn saturation_sources_come_from_the_autopilot_section_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[autopilot]\nsaturation_every_ms = 1000\n\
         [autopilot.saturation.blue]\nurl = \"http://127.0.0.1:8081/admin/stats\"\n\
         pointer = \"/saturation\"\n\
         [autopilot.saturation.green]\nurl = \"http://127.0.0.1:8082/metrics\"\n\
         metric = \"pool_use\"\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let c = resolve(&args).unwrap();
    assert_eq!(c.autopilot.saturation.len(), 2);
    assert_eq!(c.autopilot.saturation_every, Duration::from_secs(1));
    std::fs::write(
        &path,
        "[autopilot.saturation.blue]\nurl = \"http://127.0.0.1:1/\"\n\
         [autopilot.saturation.green]\nurl = \"http://127.0.0.1:1/\"\npointer = \"/a\"\nmetric = \"m\"\n",
    )
    .unwrap();
    let err = resolve(&args).unwrap_err().to_string();
    assert!(
        err.contains("saturation.blue: give exactly one")
            && err.contains("saturation.green: give exactly one"),
        "{err}"
    );
}

#[test]
fn intakes_come_from_the_degraded_section_and_every_problem_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[degraded]\nscrape_every_ms = 1000\nintakes = [\n\
         { cluster = \"intake_us\", url = \"http://127.0.0.1:8090/metrics\" },\n\
         { cluster = \"intake_eu\", url = \"http://127.0.0.1:8091/metrics\" },\n]\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let c = resolve(&args).unwrap();
    let clusters: Vec<&str> = c
        .intakes
        .sources
        .iter()
        .map(|s| s.cluster.as_str())
        .collect();
    assert_eq!(clusters, ["intake_us", "intake_eu"]);
    assert_eq!(c.intakes.every, Duration::from_secs(1));
    assert_eq!(
        c.intakes.timeout,
        Duration::from_secs(1),
        "never longer than the period"
    );
    assert!(resolve(&ServeArgs::default())
        .unwrap()
        .intakes
        .sources
        .is_empty());
    std::fs::write(
        &path,
        "[degraded]\nscrape_every_ms = 5\nintakes = [\n\
         { cluster = \"intake_us\", url = \"https://x:1/metrics\" },\n\
         { cluster = \"\", url = \"http://127.0.0.1:1/\" },\n\
         { cluster = \"a\", url = \"http://127.0.0.1:1/\" },\n\
         { cluster = \"a\", url = \"http://127.0.0.1:2/\" },\n]\n",
    )
    .unwrap();
    let err = resolve(&args).unwrap_err().to_string();
    for want in [
        "intakes[0].url: must start with http://",
        "intakes[1].cluster: \"\" must be a cluster name",
        "intakes[3].cluster: \"a\" is listed twice",
        "scrape_every_ms: 5 must be between",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
    std::fs::write(&path, "[degraded]\nintakes = [{ cluster = \"a\" }]\n").unwrap();
    assert!(matches!(resolve(&args), Err(ConfigError::Parse { .. })));
}

#[test]
fn series_settings_come_from_the_file_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "series_window_ms = 2000\nseries_retention_s = 3600\nseries_grace_ms = 500\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let c = resolve(&args).unwrap();
    assert_eq!(
        c.series,
        SeriesSettings {
            window_ms: 2_000,
            retention_ms: 3_600_000,
            grace_ms: 500
        }
    );
    std::fs::write(&path, "series_window_ms = 10\n").unwrap();
    assert!(matches!(resolve(&args), Err(ConfigError::Invalid(_))));
}

#[test]
fn flags_override_file_and_file_paths_are_relative_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.toml");
    std::fs::write(
        &path,
        "data_dir = \"data\"\ngrpc = \"127.0.0.1:19000\"\nhttp = \"127.0.0.1:19080\"\n\
         bootstrap_policy = \"p.json\"\nlog_format = \"json\"\nwatch_first_message_timeout_ms = 500\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path),
        grpc: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let c = resolve(&args).unwrap();
    assert_eq!(c.data_dir, dir.path().join("data"));
    assert_eq!(c.bootstrap_policy.unwrap(), dir.path().join("p.json"));
    assert_eq!(c.grpc.port(), 0);
    assert_eq!(c.http.unwrap().port(), 19080);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.watch.first_message_timeout, Duration::from_millis(500));
}

#[test]
fn health_section_compiles_or_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    assert!(resolve(&args).is_err(), "missing file");
    std::fs::write(&path, "grpc = \"127.0.0.1:1\"\n").unwrap();
    assert!(
        resolve(&args).unwrap().health.is_none(),
        "no section, no checks"
    );
    std::fs::write(
        &path,
        "[health]\ninterval_ms = 200\ntimeout_ms = 100\n\
         [[health.checks]]\nstack = \"blue\"\nlayer = \"infrastructure\"\naddress = \"127.0.0.1:8081\"\n",
    )
    .unwrap();
    let h = resolve(&args).unwrap().health.unwrap();
    assert_eq!(h.checks[0].interval, Duration::from_millis(200));
    std::fs::write(
        &path,
        "[[health.checks]]\nstack = \"blue\"\nlayer = \"tcp\"\n\
         [[health.checks]]\nstack = \"blue\"\nlayer = \"component\"\n",
    )
    .unwrap();
    let err = resolve(&args).unwrap_err().to_string();
    assert!(
        err.contains("health.checks[0].layer: \"tcp\" is not a layer"),
        "{err}"
    );
    assert!(err.contains("health.checks[1].url: is required"), "{err}");
    std::fs::write(&path, "[health]\nchecks = 3\nfast_pth = true\n").unwrap();
    assert!(matches!(resolve(&args), Err(ConfigError::Parse { .. })));
}

#[test]
fn replica_settings_come_from_the_file_or_flags_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let mut args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    std::fs::write(&path, "grpc = \"127.0.0.1:1\"\n").unwrap();
    let c = resolve(&args).unwrap();
    assert_eq!(c.replica, ReplicaSettings::default());
    assert_eq!(c.replica.lease_ttl, Duration::from_secs(10));
    std::fs::write(&path, "[replica]\nid = \"cp-a\"\nlease_ttl_secs = 4\n").unwrap();
    let c = resolve(&args).unwrap();
    assert_eq!(
        (c.replica.id.as_str(), c.replica.lease_ttl),
        ("cp-a", Duration::from_secs(4))
    );
    args.replica_id = Some("cp-b".into());
    args.lease_ttl_secs = Some(6);
    let c = resolve(&args).unwrap();
    assert_eq!(
        (c.replica.id.as_str(), c.replica.lease_ttl),
        ("cp-b", Duration::from_secs(6))
    );
    args.lease_ttl_secs = Some(0);
    let err = resolve(&args).unwrap_err().to_string();
    assert!(err.contains("replica.lease_ttl_secs 0"), "{err}");
    args.lease_ttl_secs = None;
    args.replica_id = Some("a b".into());
    let err = resolve(&args).unwrap_err().to_string();
    assert!(err.contains("replica.id \"a b\""), "{err}");
    std::fs::write(&path, "[replica]\nttl = 4\n").unwrap();
    args.replica_id = None;
    assert!(matches!(resolve(&args), Err(ConfigError::Parse { .. })));
}

#[test]
fn unknown_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "grcp = \"127.0.0.1:1\"\n").unwrap();
    let args = ServeArgs {
        config: Some(path),
        ..Default::default()
    };
    assert!(matches!(resolve(&args), Err(ConfigError::Parse { .. })));
}

#[test]
fn limits_default_and_every_bad_value_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    std::fs::write(&path, "").unwrap();
    let l = resolve(&args).unwrap().limits;
    assert_eq!(
        (l.grpc_max_connections, l.http_max_connections),
        (8_192, 1_024)
    );
    assert_eq!(l.first_byte_timeout, Duration::from_secs(10));
    std::fs::write(
        &path,
        "[limits]\ngrpc_max_connections = 50\nfirst_byte_timeout_ms = 1500\n",
    )
    .unwrap();
    let l = resolve(&args).unwrap().limits;
    assert_eq!(
        (l.grpc_max_connections, l.http_max_connections),
        (50, 1_024)
    );
    assert_eq!(l.first_byte_timeout, Duration::from_millis(1_500));
    std::fs::write(
        &path,
        "[limits]\ngrpc_max_connections = 0\nhttp_max_connections = 2000000\n\
         first_byte_timeout_ms = 5\n",
    )
    .unwrap();
    let e = resolve(&args).unwrap_err().to_string();
    for want in [
        "limits.grpc_max_connections 0: between 1 and 1000000",
        "limits.http_max_connections 2000000: between 1 and 1000000",
        "limits.first_byte_timeout_ms 5: between 100 and 600000",
    ] {
        assert!(e.contains(want), "{want} in {e}");
    }
    std::fs::write(&path, "[limits]\nmax_conections = 5\n").unwrap();
    assert!(resolve(&args).is_err(), "unknown keys are refused");
}

#[test]
fn retention_comes_from_its_section_and_every_problem_names_its_field() {
    assert_eq!(
        resolve(&ServeArgs::default()).unwrap().retention,
        RetentionSettings::default()
    );
    assert_eq!(RetentionSettings::default().keep_versions, 1000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    std::fs::write(
        &path,
        "[retention]\nkeep_versions = 50\netcd_compact_every_s = 60\n",
    )
    .unwrap();
    let r = resolve(&args).unwrap().retention;
    assert_eq!(r.keep_versions, 50);
    assert_eq!(r.compact_every, Some(Duration::from_secs(60)));
    std::fs::write(
        &path,
        "[retention]\nkeep_versions = 0\netcd_compact_every_s = 0\n",
    )
    .unwrap();
    let r = resolve(&args).unwrap().retention;
    assert_eq!((r.keep_versions, r.compact_every), (0, None));
    std::fs::write(
        &path,
        "[retention]\nkeep_versions = 3\netcd_compact_every_s = 100000\n",
    )
    .unwrap();
    let err = resolve(&args).unwrap_err().to_string();
    assert!(
        err.contains("retention.keep_versions 3: at least 10")
            && err.contains("retention.etcd_compact_every_s 100000: at most 86400"),
        "{err}"
    );
    std::fs::write(&path, "[retention]\nkeep = 3\n").unwrap();
    let err = resolve(&args).unwrap_err().to_string();
    assert!(err.contains("unknown field `keep`"), "{err}");
}
