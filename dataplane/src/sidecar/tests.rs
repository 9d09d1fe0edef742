use std::time::Duration;

use clap::Parser;

use super::*;
use crate::running::RunningState;

/// `ringway-dataplane sidecar`'s flags alone.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: SidecarArgs,
}

/// Parses `flags` as the subcommand's.
pub(crate) fn parse(flags: &[&str]) -> Result<SidecarArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("sidecar").chain(flags.iter().copied())).map(|c| c.args)
}

fn config(flags: &[&str]) -> Result<Config, String> {
    parse(flags)
        .map_err(|e| e.to_string())?
        .config()
        .map_err(|e| e.to_string())
}

#[test]
fn the_defaults_are_the_contracts_and_the_files() {
    let config = config(&["--app-port", "8080"]).expect("valid");
    assert_eq!(
        config.listener.address,
        SocketAddr::from(([0, 0, 0, 0], sidecar::LISTEN_PORT))
    );
    assert_eq!(
        config.admin.as_ref().map(|a| a.address),
        Some(SocketAddr::from(([0, 0, 0, 0], sidecar::ADMIN_PORT)))
    );
    let [route] = config.routes.as_slice() else {
        panic!("one route: {:?}", config.routes);
    };
    assert_eq!(route.path_prefix, "/");
    assert_eq!(route.missing_key, MissingKey::Random);
    assert_eq!(route.backends, ["127.0.0.1:8080"]);
    assert_eq!(config.drain.window_seconds, 30.0);
    assert_eq!(config.drain.max_closes_per_second, 100);
    assert_eq!(config.connections.max_connections, 9_900);
    let file = DrainConfig::default();
    assert_eq!(
        (
            config.drain.close_timeout_seconds,
            config.drain.reconnect_jitter_ms
        ),
        (file.close_timeout_seconds, file.reconnect_jitter_ms)
    );
    assert!(config.shard.is_none() && config.listener.tls.is_none());
}

#[test]
fn the_flags_set_the_config_and_it_runs_as_a_standalone_config_does() {
    let config = config(&[
        "--app-port",
        "9101",
        "--listen-port",
        "18080",
        "--admin-port",
        "18090",
        "--drain-window-seconds",
        "2.5",
        "--max-closes-per-second",
        "7",
        "--max-connections",
        "50",
    ])
    .expect("valid");
    assert_eq!(config.listener.address.port(), 18080);
    assert_eq!(config.admin.as_ref().map(|a| a.address.port()), Some(18090));
    assert_eq!(config.routes[0].backends, ["127.0.0.1:9101"]);
    assert_eq!(config.connections.max_connections, 50);
    let running = RunningState::standalone(&config).expect("the standalone path takes it");
    assert_eq!(running.routing.epoch, 0);
    assert_eq!(running.drain.window, Duration::from_millis(2_500));
    assert_eq!(running.drain.max_closes_per_second, 7);
    let (_, route) = running
        .routing
        .table
        .route_for("/any/path?x=1")
        .expect("every path takes the one route");
    assert_eq!(&*route.name, ROUTE);
}

#[test]
fn the_drain_window_is_shortened_to_end_within_the_grace_period() {
    let window = |flags: &[&str]| {
        let flags: Vec<&str> = ["--app-port", "8080"]
            .iter()
            .chain(flags)
            .copied()
            .collect();
        config(&flags).expect("valid").drain.window_seconds
    };
    // No grace period given: the window as asked.
    assert_eq!(window(&["--drain-window-seconds", "30"]), 30.0);
    // 30 s of grace: 30 - 5 s close timeout - 2 s for the application.
    assert_eq!(
        window(&[
            "--drain-window-seconds",
            "30",
            "--termination-grace-seconds",
            "30"
        ]),
        23.0
    );
    // Room enough: unchanged.
    assert_eq!(
        window(&[
            "--drain-window-seconds",
            "20",
            "--termination-grace-seconds",
            "60"
        ]),
        20.0
    );
    // Never below a second, however short the grace period.
    assert_eq!(
        window(&[
            "--drain-window-seconds",
            "20",
            "--termination-grace-seconds",
            "3"
        ]),
        1.0
    );
    // A window that is not a number is still refused, not fitted.
    assert!(
        config(&[
            "--app-port",
            "8080",
            "--drain-window-seconds",
            "NaN",
            "--termination-grace-seconds",
            "30"
        ])
        .is_err()
    );
}

#[test]
fn a_bad_value_is_named_by_its_flag() {
    for (flags, expected) in [
        (
            &["--max-connections", "0"][..],
            "--max-connections: must be at least 1",
        ),
        (
            &["--max-closes-per-second", "0"],
            "--max-closes-per-second: must be at least 1",
        ),
        (
            &["--drain-window-seconds", "0"],
            "--drain-window-seconds: 0 is not a duration",
        ),
        (
            &["--drain-window-seconds=-3"],
            "--drain-window-seconds: -3 is not a duration",
        ),
        (
            &["--listen-port", "8080"],
            "--listen-port: port 8080 is taken",
        ),
        (
            &["--admin-port", "8080"],
            "--admin-port: port 8080 is taken",
        ),
        (
            &["--listen-port", "9000", "--admin-port", "9000"],
            "--admin-port: port 9000 is taken",
        ),
        (&["--listen-port", "0"], "--listen-port"),
        (
            &["--termination-grace-seconds", "0"],
            "--termination-grace-seconds: 0 is not a number of seconds",
        ),
        (
            &["--termination-grace-seconds", "NaN"],
            "--termination-grace-seconds: NaN",
        ),
        (
            &["--control-tls-dir", "/tls", "--control-port", "8080"],
            "--control-port: port 8080 is taken",
        ),
        (
            &["--control-tls-dir", "/tls", "--control-port", "15080"],
            "--control-port: port 15080 is taken",
        ),
        (
            &["--control-tls-dir", "/tls", "--admin-port", "15091"],
            "--control-port: port 15091 is taken",
        ),
        (&["--control-port", "0"], "--control-port"),
    ] {
        let flags: Vec<&str> = ["--app-port", "8080"]
            .iter()
            .chain(flags)
            .copied()
            .collect();
        let err = config(&flags).expect_err("refused");
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
    let err = config(&[]).expect_err("--app-port is required");
    assert!(err.contains("--app-port"), "{err}");
}

#[test]
fn a_drain_token_is_long_visible_ascii() {
    let token = DrainToken::new("0123456789abcdef0123456789abcdef").expect("32 hex digits");
    assert!(token.matches(b"0123456789abcdef0123456789abcdef"));
    assert!(!token.matches(b"0123456789abcdef0123456789abcdee"));
    assert!(!token.matches(b"0123456789abcdef"));
    assert_eq!(format!("{token:?}"), "DrainToken(..)", "never logged");
    for bad in [
        "",
        "short",
        "has a space in it here",
        &"x".repeat(257),
        "ünïcödé-ünïcödé-ü",
    ] {
        let err = DrainToken::new(bad).expect_err("refused").to_string();
        assert!(err.starts_with(sidecar::DRAIN_TOKEN_ENV), "{bad:?}: {err}");
    }
}

#[test]
fn the_control_port_takes_its_files_from_the_directory_the_injector_mounts() {
    let args = parse(&["--app-port", "8080"]).expect("valid");
    assert_eq!(args.control_port, sidecar::CONTROL_PORT);
    assert!(args.control().is_none(), "no directory, no control port");
    let args = parse(&[
        "--app-port",
        "8080",
        "--control-tls-dir",
        sidecar::CONTROL_TLS_DIR,
    ])
    .expect("valid");
    args.config().expect("the default ports do not clash");
    let control = args.control().expect("a control port");
    let dir = std::path::Path::new(sidecar::CONTROL_TLS_DIR);
    assert_eq!(
        control.address,
        SocketAddr::from(([0, 0, 0, 0], sidecar::CONTROL_PORT))
    );
    assert_eq!(control.client_ca_file, dir.join(sidecar::CONTROL_CA_FILE));
    assert_eq!(control.cert_file, dir.join(sidecar::CONTROL_CERT_FILE));
    assert_eq!(control.key_file, dir.join(sidecar::CONTROL_KEY_FILE));
    let args = parse(&[
        "--app-port",
        "8080",
        "--control-tls-dir",
        "/tls",
        "--control-port",
        "9443",
    ])
    .expect("valid");
    assert_eq!(args.control().map(|c| c.address.port()), Some(9443));
    // Without the directory the port is not used, so it cannot clash.
    let args = parse(&["--app-port", "15091"]).expect("valid");
    args.config().expect("no control port, no clash");
}
