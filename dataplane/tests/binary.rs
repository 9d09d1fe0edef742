//! The real `ringway-dataplane` binary: starts from a config file, refuses
//! a bad one (or a bad sidecar flag) clearly, and drains on SIGTERM.

mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_ringway-dataplane");

#[test]
fn a_bad_config_is_refused_with_a_message() {
    let dir = std::env::temp_dir().join(format!("ringway-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "listener: {address: 127.0.0.1:0}\nroutes: [{name: a, key: {source: Query}, backends: [127.0.0.1:1]}]\n").expect("write");
    let err = refused(Command::new(BIN).arg("--config").arg(&path));
    assert!(
        err.contains("routes[0] (a).key: Query takes `name`"),
        "{err}"
    );
    let missing = refused(Command::new(BIN).arg("--config").arg(dir.join("nope.yaml")));
    assert!(missing.contains("nope.yaml"), "{missing}");
}

/// Runs `command`, which must fail; what it said on stderr.
fn refused(command: &mut Command) -> String {
    let out = command.output().expect("run");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_sidecar_flag_or_drain_token_is_refused_with_its_name() {
    let sidecar = ["sidecar", "--app-port", "8080"];
    let err = refused(
        Command::new(BIN)
            .args(sidecar)
            .args(["--max-closes-per-second", "0"]),
    );
    assert!(
        err.contains("--max-closes-per-second: must be at least 1"),
        "{err}"
    );
    let err = refused(
        Command::new(BIN)
            .args(sidecar)
            .env(ringway_dataplane_api::sidecar::DRAIN_TOKEN_ENV, "short"),
    );
    assert!(
        err.contains("RINGWAY_DRAIN_TOKEN: the drain token must be 16 to 256"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_connection_with_1001_then_exits() {
    let backend = support::echo_backend("b1").await;
    let port = support::free_port();
    let admin = support::free_port();
    let dir = std::env::temp_dir().join(format!("ringway-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listener: {{address: 127.0.0.1:{port}}}\nadmin: {{address: 127.0.0.1:{admin}}}\nroutes: [{{name: echo, key: {{source: Query, name: room}}, backends: [\"{backend}\"]}}]\ndrain: {{windowSeconds: 1, closeTimeoutSeconds: 1, maxClosesPerSecond: 100}}\n"
        ),
    )
    .expect("write");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let admin_addr = format!("127.0.0.1:{admin}").parse().expect("addr");
    let up = Instant::now();
    while !support::try_raw(admin_addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "the data plane did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(
            support::connect(&format!("ws://127.0.0.1:{port}/?room={i}"))
                .await
                .0,
        );
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    for mut ws in clients {
        let (code, reason) = support::close_of(&mut ws).await.expect("a close frame");
        assert_eq!(code, 1001);
        assert!(reason.contains("retry-after-ms="), "{reason}");
    }
    let exited = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            exited.elapsed() < Duration::from_secs(10),
            "the data plane did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "exit status {code:?}");
}
