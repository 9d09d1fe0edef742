use super::*;

fn config() -> Config {
    Config::from_yaml(
        "listener: {address: 127.0.0.1:0}\nshard: {id: a-0, peer: {address: 127.0.0.1:0, tokenFile: /dev/null}, control: {address: 127.0.0.1:0, certFile: c, keyFile: k, clientCaFile: ca}}\n",
    )
    .expect("a shard config")
}

fn snapshot() -> v1::Snapshot {
    let version = |version: v1::Version, prefix: &str| v1::VersionSpec {
        version: version as i32,
        slot: v1::Slot::A as i32,
        image: format!("ringway:{prefix}"),
        shards: (0..2)
            .map(|i| v1::Shard {
                id: format!("{prefix}-{i}"),
                peer_address: format!("127.0.0.{}:7000", i + 2),
            })
            .collect(),
        backends: vec![v1::RouteBackends {
            route: "chat".into(),
            backends: (0..3)
                .map(|i| v1::Backend {
                    id: format!("pod-{i}"),
                    address: format!("10.0.0.{i}:9000"),
                })
                .collect(),
        }],
        limits: None,
    };
    v1::Snapshot {
        epoch: 7,
        gateway: "default/chat".into(),
        routes: vec![v1::Route {
            name: "chat".into(),
            path_prefix: "/chat".into(),
            key: Some(v1::KeySource {
                source: Some(v1::key_source::Source::Query("room".into())),
            }),
            missing_key: v1::MissingKeyPolicy::Reject as i32,
        }],
        versions: vec![
            version(v1::Version::Stable, "a"),
            version(v1::Version::Canary, "b"),
        ],
        canary_basis_points: 1_000,
        limits: Some(v1::ConnectionLimits {
            heartbeat_interval_ms: 1_500,
            max_frame_bytes: 0,
            ..Default::default()
        }),
        drain: Some(v1::DrainSettings {
            window_ms: 2_000,
            close_timeout_ms: 0,
            max_closes_per_second: 250,
        }),
        retiring: Vec::new(),
    }
}

fn refused(change: impl FnOnce(&mut v1::Snapshot)) -> String {
    let mut s = snapshot();
    change(&mut s);
    RunningState::from_snapshot(&s, &config())
        .expect_err("refused")
        .to_string()
}

#[test]
fn a_snapshot_becomes_the_running_state() {
    let config = config();
    let running = RunningState::from_snapshot(&snapshot(), &config).expect("valid");
    let r = &running.routing;
    assert_eq!(r.epoch, 7);
    assert_eq!(r.canary_basis_points(), 1_000);
    assert_eq!(r.stable().shards().len(), 2);
    assert_eq!(r.canary().map(|c| c.image.as_str()), Some("ringway:b"));
    assert_eq!(r.version_of_shard("b-1"), Some(Version::Canary));
    assert_eq!(r.table.routes()[0].path_prefix, "/chat");
    assert_eq!(r.stable().pools()[0].backends().len(), 3);
    // Set limits replace the config's; zeros keep them.
    assert_eq!(
        running.relay.heartbeat_interval,
        Duration::from_millis(1_500)
    );
    assert_eq!(running.relay.max_frame, config.connections.max_frame_bytes);
    assert_eq!(running.relay.idle_timeout, None, "idle 0 is off");
    assert_eq!(
        running.drain,
        DrainPolicy {
            window: Duration::from_secs(2),
            max_closes_per_second: 250
        }
    );
}

#[test]
fn a_bad_snapshot_is_refused_with_the_field_named() {
    type Change = Box<dyn FnOnce(&mut v1::Snapshot)>;
    let cases: Vec<(&str, Change)> = vec![
        ("epoch: must be at least 1", Box::new(|s| s.epoch = 0)),
        (
            "versions: the STABLE version is missing",
            Box::new(|s| {
                s.versions.remove(0);
            }),
        ),
        (
            "versions[1]: a second stable version",
            Box::new(|s| s.versions[1].version = v1::Version::Stable as i32),
        ),
        (
            "versions[0].version: must be STABLE or CANARY",
            Box::new(|s| s.versions[0].version = 0),
        ),
        (
            "canary_basis_points: 10001 is above 10000",
            Box::new(|s| s.canary_basis_points = 10_001),
        ),
        (
            "canary_basis_points: 1000 with no CANARY version",
            Box::new(|s| {
                s.versions.pop();
            }),
        ),
        (
            "versions[1].shards[0].id: shard a-0 is listed twice",
            Box::new(|s| s.versions[1].shards[0].id = "a-0".into()),
        ),
        (
            "versions[0].shards[1].peer_address: \"pod:7000\" is not an ip:port",
            Box::new(|s| s.versions[0].shards[1].peer_address = "pod:7000".into()),
        ),
        (
            "versions[0].backends[0] (lobby).route: no route has this name",
            Box::new(|s| s.versions[0].backends[0].route = "lobby".into()),
        ),
        (
            "versions[0].backends[0] (chat).backends[2].id: backend pod-0 is listed twice",
            Box::new(|s| s.versions[0].backends[0].backends[2].id = "pod-0".into()),
        ),
        (
            "routes[0] (chat).key: no key source",
            Box::new(|s| s.routes[0].key = None),
        ),
        (
            "routes[0] (chat).path_prefix: must start with '/'",
            Box::new(|s| s.routes[0].path_prefix = "chat".into()),
        ),
        (
            "routes[1] (chat).name: another route has this name",
            Box::new(|s| {
                let mut again = s.routes[0].clone();
                again.path_prefix = "/other".into();
                s.routes.push(again);
            }),
        ),
        (
            "versions[1] (canary).limits: max_frame_bytes (2048) must be at least 125 and at most max_message_bytes (1024)",
            Box::new(|s| {
                s.versions[1].limits = Some(v1::ConnectionLimits {
                    max_frame_bytes: 2_048,
                    max_message_bytes: 1_024,
                    ..Default::default()
                })
            }),
        ),
        (
            "limits: max_frame_bytes (100) must be at least 125",
            Box::new(|s| {
                s.limits = Some(v1::ConnectionLimits {
                    max_frame_bytes: 100,
                    ..Default::default()
                })
            }),
        ),
    ];
    for (expected, change) in cases {
        let message = refused(change);
        assert!(
            message.starts_with(expected),
            "expected {expected:?}, got {message:?}"
        );
    }
}

#[test]
fn each_version_relays_by_its_own_limits_over_the_snapshots() {
    let config = config();
    let mut s = snapshot();
    s.versions[1].limits = Some(v1::ConnectionLimits {
        max_frame_bytes: 512,
        max_message_bytes: 1_024,
        heartbeat_timeout_ms: 700,
        // Neither is a version's: the pod's and the snapshot's stay.
        max_connections: 1,
        handshake_timeout_ms: 1,
        ..Default::default()
    });
    let running = RunningState::from_snapshot(&s, &config).expect("valid");
    assert!(
        Arc::ptr_eq(running.relay_for(Version::Stable), &running.relay),
        "a version without limits of its own has the snapshot's"
    );
    let canary = running.relay_for(Version::Canary);
    assert_eq!((canary.max_frame, canary.max_message), (512, 1_024));
    assert_eq!(canary.heartbeat_timeout, Duration::from_millis(700));
    // What the version leaves at 0 is the snapshot's, drain's included.
    assert_eq!(canary.heartbeat_interval, Duration::from_millis(1_500));
    assert_eq!(canary.close_timeout, running.relay.close_timeout);
    assert_eq!(canary.idle_timeout, None, "idle 0 is off");
    assert_eq!(
        running.handshake.timeout,
        secs(config.connections.handshake_timeout_seconds)
    );
    assert_eq!(
        running.relay.max_message,
        config.connections.max_message_bytes
    );
}

#[test]
fn a_version_the_state_does_not_run_relays_by_the_snapshots_limits() {
    let mut s = snapshot();
    s.versions.pop();
    s.canary_basis_points = 0;
    s.versions[0].limits = Some(v1::ConnectionLimits {
        max_message_bytes: 1 << 20,
        ..Default::default()
    });
    let running = RunningState::from_snapshot(&s, &config()).expect("valid");
    assert_eq!(running.relay_for(Version::Stable).max_message, 1 << 20);
    assert!(Arc::ptr_eq(
        running.relay_for(Version::Canary),
        &running.relay
    ));
}

/// `examples/standalone.yaml`.
fn standalone_config() -> Config {
    let path = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../examples/standalone.yaml");
    Config::load(&path).expect("examples/standalone.yaml is valid")
}

#[test]
fn the_standalone_config_is_one_version_without_shards() {
    let config = standalone_config();
    let running = RunningState::standalone(&config).expect("valid");
    assert_eq!(running.routing.epoch, 0);
    assert!(running.routing.stable().shards().is_empty());
    assert!(running.routing.canary().is_none());
    let waiting = RunningState::waiting(&config);
    assert!(waiting.routing.table.routes().is_empty());
}

#[test]
fn a_shard_named_retiring_knows_it_and_the_others_do_not() {
    let config = config(); // shard a-0
    assert!(
        !RunningState::from_snapshot(&snapshot(), &config)
            .expect("valid")
            .retiring
    );
    let mut s = snapshot();
    s.retiring = vec!["b-0".into(), "a-0".into()];
    assert!(
        RunningState::from_snapshot(&s, &config)
            .expect("valid")
            .retiring
    );
    s.retiring = vec!["b-0".into()];
    assert!(
        !RunningState::from_snapshot(&s, &config)
            .expect("valid")
            .retiring
    );
}

#[test]
fn epoch_0_is_the_config_files_and_is_refused_from_the_operator() {
    let config = standalone_config();
    let compiled = config.snapshot().expect("compiles");
    assert_eq!(
        RunningState::from_snapshot(&compiled, &config).unwrap_err(),
        SnapshotError::EpochZero
    );
    let running = RunningState::standalone(&config).expect("valid");
    assert_eq!(running.gateway, "standalone");
    assert_eq!(running.relay.max_frame, config.connections.max_frame_bytes);
    assert_eq!(
        running.handshake.backend_connect_timeout,
        secs(config.connections.backend_connect_timeout_seconds)
    );
}
