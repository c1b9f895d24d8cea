use super::*;

/// What `examples/intake` answers on `/metrics` (its exact shape, abridged).
fn exposition(depth: i64, age_s: f64, placed: u64, dead: i64, degraded: u8) -> String {
    format!(
        "# HELP switchyard_intake_accepted_total Orders persisted and answered 202.\n\
         # TYPE switchyard_intake_accepted_total counter\n\
         switchyard_intake_accepted_total{{region=\"us\"}} 30\n\
         # TYPE switchyard_intake_queue_depth gauge\n\
         switchyard_intake_queue_depth{{region=\"us\"}} {depth}\n\
         # TYPE switchyard_intake_queue_oldest_age_seconds gauge\n\
         switchyard_intake_queue_oldest_age_seconds{{region=\"us\"}} {age_s}\n\
         # TYPE switchyard_intake_drain_rate_limit gauge\n\
         switchyard_intake_drain_rate_limit{{region=\"us\"}} 10\n\
         # TYPE switchyard_intake_placed_total counter\n\
         switchyard_intake_placed_total{{region=\"us\"}} {placed}\n\
         # TYPE switchyard_intake_dead_letters_total counter\n\
         switchyard_intake_dead_letters_total{{region=\"us\"}} 1\n\
         # TYPE switchyard_intake_dead_letter_depth gauge\n\
         switchyard_intake_dead_letter_depth{{region=\"us\"}} {dead}\n\
         # TYPE switchyard_intake_degraded gauge\n\
         switchyard_intake_degraded{{region=\"us\"}} {degraded}\n\
         switchyard_intake_rejected_total{{region=\"us\",reason=\"bad_key\"}} 1\n"
    )
}

fn sample(depth: u64, placed: u64) -> Sample {
    Sample {
        queue_depth: depth,
        oldest_age_s: 1.0,
        placed_total: placed,
        dead_letters: 0,
        waiting: false,
    }
}

#[test]
fn the_intakes_exposition_parses_into_depth_age_placed_dead_letters() {
    assert_eq!(
        parse(&exposition(24, 12.5, 6, 1, 1)),
        Ok(Sample {
            queue_depth: 24,
            oldest_age_s: 12.5,
            placed_total: 6,
            dead_letters: 1,
            waiting: true,
        })
    );
    assert!(!parse(&exposition(0, 0.0, 0, 0, 0)).unwrap().waiting);
}

#[test]
fn a_broker_the_intake_cannot_read_or_a_page_that_is_no_intake_is_an_error() {
    let e = parse(&exposition(-1, 0.0, 6, 0, 0)).unwrap_err();
    assert!(e.contains("queue_depth is -1: the intake cannot read its broker"), "{e}");
    let e = parse(&exposition(3, 0.0, 6, -1, 0)).unwrap_err();
    assert!(e.contains("dead_letter_depth is -1"), "{e}");
    let e = parse("<html>hello</html>").unwrap_err();
    assert!(e.contains("no switchyard_intake_"), "{e}");
    let e = parse(&exposition(3, -2.0, 6, 0, 0)).unwrap_err();
    assert!(e.contains("oldest_age_seconds is -2"), "{e}");
    assert!(parse(&exposition(3, 1.0, 6, 0, 0).replace(" 6\n", " NaN\n")).is_err());
}

#[test]
fn the_drain_rate_is_placed_orders_over_the_last_minute_of_scrapes() {
    let mut s = IntakeState::default();
    s.observe(1_000, Ok(sample(30, 0)));
    assert_eq!(s.status("i", "u").drain_rate_per_s, None, "one scrape: no rate yet");
    s.observe(6_000, Ok(sample(20, 10)));
    assert_eq!(s.status("i", "u").drain_rate_per_s, Some(2.0));
    // Every 5 s for two minutes at 1 order/s, then stalled for 30 s: the rate covers the
    // last 60 s only (30 s at 1/s, 30 s at 0).
    let mut placed = 10;
    let mut t = 6_000;
    for _ in 0..24 {
        t += 5_000;
        placed += 5;
        s.observe(t, Ok(sample(5, placed)));
    }
    assert_eq!(s.status("i", "u").drain_rate_per_s, Some(1.0));
    for _ in 0..6 {
        t += 5_000;
        s.observe(t, Ok(sample(5, placed)));
    }
    assert_eq!(s.status("i", "u").drain_rate_per_s, Some(0.5));
}

#[test]
fn an_intake_restart_resets_the_rate_and_a_failed_scrape_keeps_the_last_figures() {
    let mut s = IntakeState::default();
    s.observe(0, Ok(sample(8, 100)));
    s.observe(5_000, Ok(sample(3, 105)));
    // The counter went down: a new process; no rate until it has two samples.
    s.observe(10_000, Ok(sample(3, 2)));
    assert_eq!(s.status("i", "u").drain_rate_per_s, None);
    s.observe(15_000, Ok(sample(2, 7)));
    assert_eq!(s.status("i", "u").drain_rate_per_s, Some(1.0));
    s.observe(20_000, Err("timed out after 2000 ms".into()));
    let st = s.status("intake_us", "http://127.0.0.1:8090/metrics");
    assert_eq!(
        st,
        IntakeStatus {
            cluster: "intake_us".into(),
            url: "http://127.0.0.1:8090/metrics".into(),
            queue_depth: Some(2),
            oldest_age_s: Some(1.0),
            drain_rate_per_s: Some(1.0),
            dead_letters: Some(0),
            waiting: false,
            scraped_unix_ms: Some(15_000),
            error: Some("timed out after 2000 ms".into()),
            error_unix_ms: Some(20_000),
        }
    );
    s.observe(25_000, Ok(sample(0, 9)));
    assert_eq!(s.status("i", "u").error, None, "a success clears the error");
}

#[test]
fn every_configured_intake_is_listed_in_order_even_before_its_first_scrape() {
    let sources = [
        IntakeSource::new("intake_us", "http://127.0.0.1:8090/metrics").unwrap(),
        IntakeSource::new("intake_eu", "http://127.0.0.1:8091/metrics").unwrap(),
    ];
    let intakes = Intakes::new(&sources);
    intakes.observe("intake_eu", 1_000, Ok(sample(4, 0)));
    let st = intakes.status();
    assert_eq!(
        st.iter().map(|s| s.cluster.as_str()).collect::<Vec<_>>(),
        ["intake_us", "intake_eu"]
    );
    assert_eq!((st[0].queue_depth, st[0].scraped_unix_ms), (None, None));
    assert_eq!(st[1].queue_depth, Some(4));
}

#[test]
fn sources_name_the_bad_field() {
    assert!(IntakeSource::new("", "http://127.0.0.1:1/metrics")
        .unwrap_err()
        .starts_with("cluster:"));
    assert!(IntakeSource::new("intake us", "http://127.0.0.1:1/metrics")
        .unwrap_err()
        .starts_with("cluster:"));
    assert!(IntakeSource::new("intake_us", "127.0.0.1:1/metrics")
        .unwrap_err()
        .starts_with("url:"));
}

/// The scraper against a real HTTP listener on loopback, and against a port nobody
/// listens on: status shows the figures, and the error, without waiting on either.
#[tokio::test]
async fn scrapes_reach_the_fleets_status_and_a_dead_intake_shows_its_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = exposition(7, 3.0, 1, 0, 1);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let b = body.clone();
            async move { b }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let settings = IntakeSettings {
        sources: vec![
            IntakeSource::new("intake_us", &format!("http://127.0.0.1:{port}/metrics")).unwrap(),
            IntakeSource::new("intake_eu", &format!("http://127.0.0.1:{dead_port}/metrics"))
                .unwrap(),
        ],
        every: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
    };
    let fleet = Fleet::default();
    let shutdown = CancellationToken::new();
    let tasks = spawn(&settings, &fleet, shutdown.clone());
    let status = || {
        fleet
            .with_series(crate::fleet::FleetStatus::default(), &[])
            .intakes
    };
    let mut seen = status();
    for _ in 0..200 {
        if seen[0].queue_depth.is_some() && seen[1].error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        seen = status();
    }
    assert_eq!(
        (seen[0].queue_depth, seen[0].waiting, &seen[0].error),
        (Some(7), true, &None),
        "{seen:?}"
    );
    assert_eq!(seen[1].queue_depth, None);
    assert!(seen[1].error.is_some(), "{seen:?}");
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    server.abort();
}
