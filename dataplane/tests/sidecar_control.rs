//! A sidecar's control port in this process: served over mutual TLS when
//! the files of its Secret are there, to the operator's certificate only;
//! the operator's `Drain` starts the drain in place and paces it, and a
//! second `Drain` re-paces it; the preStop drain waits for the operator,
//! then falls back to the sidecar's own rate; without usable files the
//! sidecar serves its clients and paces its drain locally, and serves the
//! control port once they are there.

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ringway_control::{
    ControlClient, Options, TlsIdentity,
    pki::{Ca, Usage},
    proto as v1,
};
use ringway_dataplane::{Server, Shutdown};
use ringway_dataplane_api::sidecar;
use support::{Client, Gateway, connect, loopback, prestop};
use tokio::{task::JoinHandle, time::Instant};
use tonic::Code;

const DAY: Duration = Duration::from_secs(86_400);

/// The namespace the sidecars' certificate is for.
const NAMESPACE: &str = "shop";

/// What a sliding second seen from the clients may hold over the rate: a
/// close frame reaches its client a little after the sidecar sent it.
const SLACK: usize = 4;

/// A directory of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ringway-sidecar-control-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The files of the sidecars' control Secret, as the injector mounts them.
struct ControlFiles {
    dir: TempDir,
    ca: Ca,
}

impl ControlFiles {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let ca = Ca::generate("ringway sidecars", DAY).expect("a CA");
        let server = ca
            .issue(
                "sidecar",
                Usage::Server,
                &[&sidecar::server_name(NAMESPACE)],
                DAY,
            )
            .expect("a server certificate");
        for (file, pem) in [
            (sidecar::CONTROL_CA_FILE, ca.cert_pem()),
            (sidecar::CONTROL_CERT_FILE, &server.cert_pem),
            (sidecar::CONTROL_KEY_FILE, &server.key_pem),
        ] {
            std::fs::write(dir.0.join(file), pem).expect("write");
        }
        Self { dir, ca }
    }

    /// A client that trusts the sidecars' CA and presents a certificate
    /// for `usage` from `issuer`.
    fn client(&self, issuer: &Ca, usage: Usage) -> ControlClient {
        let name = sidecar::server_name(NAMESPACE);
        let names: &[&str] = match usage {
            Usage::Server => &[&name],
            Usage::Client => &[],
        };
        let issued = issuer
            .issue("operator", usage, names, DAY)
            .expect("a certificate");
        let identity = TlsIdentity {
            ca_pem: self.ca.cert_pem().to_owned(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            server_name: name,
        };
        let options = Options {
            attempts: 1,
            rpc_timeout: Duration::from_secs(2),
            ..Options::default()
        };
        ControlClient::new(&identity, options).expect("a client")
    }

    /// The operator's client.
    fn operator(&self) -> ControlClient {
        self.client(&self.ca, Usage::Client)
    }
}

/// A sidecar in this process and its control port's address, if served.
struct Sidecar {
    gw: Gateway,
    control: Option<String>,
    control_port: u16,
}

impl Sidecar {
    /// In front of `app`, draining over `window` seconds at most `rate`
    /// closes per second, with `--control-tls-dir dir`.
    async fn start(app: SocketAddr, window: f64, rate: u32, dir: Option<PathBuf>) -> Self {
        let mut args = support::sidecar_args(app, window);
        args.max_closes_per_second = rate;
        args.control_tls_dir = dir;
        let config = args.config().expect("valid flags");
        let server = Server::bind_sidecar(config, None, args.control())
            .await
            .expect("the sidecar binds");
        let control = server.control_addr().map(|a| loopback(a).to_string());
        Self {
            gw: Gateway::serve(server),
            control,
            control_port: args.control_port,
        }
    }

    /// As [`Sidecar::start`] with usable files in `dir`, whose control port
    /// must serve. Its port comes from `free_ports`, which another test may
    /// take between its release and this bind; a sidecar that cannot bind
    /// it goes on without one (and its preStop drain waits for no
    /// operator), so the start is tried again on other ports.
    async fn serving(app: SocketAddr, window: f64, rate: u32, dir: &Path) -> Self {
        for _ in 0..5 {
            let sc = Self::start(app, window, rate, Some(dir.to_owned())).await;
            if sc.control.is_some() {
                return sc;
            }
            sc.gw.stop(Shutdown::Graceful).await;
        }
        panic!("the sidecar's control port did not bind in 5 tries");
    }

    fn control(&self) -> &str {
        self.control.as_deref().expect("the control port serves")
    }

    fn admin(&self) -> SocketAddr {
        loopback(self.gw.admin.expect("an admin port"))
    }

    /// `n` clients, each through to the application.
    async fn clients(&self, n: usize) -> Vec<Client> {
        let mut clients = Vec::new();
        for i in 0..n {
            let url = format!("ws://{}/chat?room={i}", loopback(self.gw.addr));
            let (ws, backend) = connect(&url).await;
            assert_eq!(backend, "app");
            clients.push(ws);
        }
        clients
    }

    fn has_metric(&self, line: &str) -> bool {
        self.gw.shared.metrics.render().lines().any(|l| l == line)
    }
}

/// Watches `clients` for their closes: each one's time, in order, once
/// every one has checked that its close was 1001 with the hint.
fn closes_of(clients: Vec<Client>) -> JoinHandle<Vec<Instant>> {
    tokio::spawn(async move {
        let watchers: Vec<_> = clients
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    let (code, reason) = support::close_of(&mut ws).await.expect("a close frame");
                    assert_eq!(code, 1001, "{reason}");
                    assert!(
                        reason.starts_with("pod stopping; retry-after-ms="),
                        "{reason}"
                    );
                    Instant::now()
                })
            })
            .collect();
        let mut times = Vec::new();
        for watcher in watchers {
            times.push(watcher.await.expect("a client's close"));
        }
        times.sort();
        times
    })
}

/// The most closes among `times` (sorted) in any second that starts at one
/// of them at or after `from`.
fn most_in_a_second(times: &[Instant], from: Instant) -> usize {
    (0..times.len())
        .filter(|&i| times[i] >= from)
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|&&t| t < times[i] + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn drain_at(rate: u32) -> v1::DrainRequest {
    v1::DrainRequest {
        window_ms: 0,
        max_closes_per_second: rate,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_files_a_sidecar_serves_the_control_port_to_the_operator_only() {
    let files = ControlFiles::new("mtls");
    let app = support::echo_backend("app").await;
    let sc = Sidecar::serving(app, 30.0, 100, &files.dir.0).await;
    assert!(sc.has_metric("ringway_sidecar_control_serving 1"));
    let clients = sc.clients(2).await;
    let operator = files.operator();
    let status = operator.status(sc.control()).await.expect("the status");
    assert!(status.ready);
    assert_eq!(status.connections.iter().map(|c| c.count).sum::<u64>(), 2);
    let owned = status.owned.expect("the owner's tally");
    assert_eq!(
        owned.upgrades, 2,
        "a sidecar owns every connection it relays"
    );
    let snapshot = v1::Snapshot {
        epoch: 1,
        ..v1::Snapshot::default()
    };
    let refused = operator
        .apply(sc.control(), &snapshot)
        .await
        .expect_err("a sidecar takes no snapshot");
    assert_eq!(refused.code, Code::FailedPrecondition, "{refused}");
    assert!(refused.message.contains("sidecar"), "{refused}");
    let windowed = v1::DrainRequest {
        window_ms: 1_000,
        max_closes_per_second: 10,
    };
    let refused = operator
        .drain(sc.control(), windowed)
        .await
        .expect_err("a sidecar's window is its own");
    assert_eq!(refused.code, Code::InvalidArgument, "{refused}");
    assert!(refused.message.contains("window_ms"), "{refused}");
    assert!(sc.gw.shared.is_ready(), "a refused Drain drains nothing");
    let stranger = Ca::generate("stranger", DAY).expect("a CA");
    for (who, client) in [
        (
            "another CA's client certificate",
            files.client(&stranger, Usage::Client),
        ),
        (
            "a server certificate of the right CA",
            files.client(&files.ca, Usage::Server),
        ),
    ] {
        assert!(
            client.status(sc.control()).await.is_err(),
            "{who} was served"
        );
    }
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(files.ca.cert_pem()))
        .domain_name(sidecar::server_name(NAMESPACE));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", sc.control()))
        .expect("an endpoint")
        .tls_config(tls)
        .expect("TLS")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect_lazy();
    let mut anonymous = v1::control_client::ControlClient::new(channel);
    assert!(
        anonymous.get_status(v1::GetStatusRequest {}).await.is_err(),
        "a client without a certificate was served"
    );
    drop(clients);
    sc.gw.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_drain_closes_clients_at_its_rate_and_a_lower_rate_slows_it() {
    const CLIENTS: usize = 50;
    let files = ControlFiles::new("pace");
    let app = support::echo_backend("app").await;
    // Its own rate would be 1,000/s, spread over 30 s: under 2 a second.
    let sc = Sidecar::serving(app, 30.0, 1_000, &files.dir.0).await;
    let closes = closes_of(sc.clients(CLIENTS).await);
    let operator = files.operator();
    let start = Instant::now();
    let answer = operator
        .drain(sc.control(), drain_at(40))
        .await
        .expect("the drain starts");
    assert_eq!(answer.draining, CLIENTS as u64, "the connections open");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let repaced = Instant::now();
    operator
        .drain(sc.control(), drain_at(10))
        .await
        .expect("the drain is re-paced");
    let times = closes.await.expect("every client closed");
    let before = times.iter().filter(|&&t| t < repaced).count();
    assert!(
        (10..=25).contains(&before),
        "{before} closes in the half second at 40/s: as fast as it allows, not spread"
    );
    let most = most_in_a_second(&times, start);
    assert!(most <= 40 + SLACK, "{most} closes in a second at 40/s");
    let most = most_in_a_second(&times, repaced + Duration::from_millis(100));
    assert!(most <= 10 + SLACK, "{most} closes in a second at 10/s");
    // What was left, at no more than 10 a second: at least this long.
    let left = CLIENTS - before;
    let needed = Duration::from_secs_f64(left.saturating_sub(12) as f64 / 10.0);
    let took = times[CLIENTS - 1] - repaced;
    assert!(
        took >= needed,
        "{left} closes took {took:?} after the re-pace to 10/s"
    );
    for line in [
        "ringway_sidecar_drains_total{paced_by=\"operator\"} 1",
        &format!("ringway_drains_total{{cause=\"shutdown\"}} {CLIENTS}"),
    ] {
        assert!(sc.has_metric(line), "{line}");
    }
    sc.gw.stop(Shutdown::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prestop_drain_waits_for_the_operator_then_falls_back_to_its_own_rate() {
    let files = ControlFiles::new("wait");
    let app = support::echo_backend("app").await;
    let wait = Duration::from_secs_f64(sidecar::OPERATOR_WAIT_SECONDS);

    // The operator paces the drain within the wait.
    let sc = Sidecar::serving(app, 0.5, 1_000, &files.dir.0).await;
    let closes = closes_of(sc.clients(5).await);
    let asked = Instant::now();
    let admin = sc.admin();
    let hook = tokio::spawn(async move { support::raw(admin, &prestop()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !sc.gw.shared.is_ready(),
        "not ready while it waits: no new client"
    );
    let paced = Instant::now();
    files
        .operator()
        .drain(sc.control(), drain_at(100))
        .await
        .expect("the operator's drain");
    let times = closes.await.expect("every client closed");
    assert!(
        times[0] >= paced,
        "a client closed before the operator's pace"
    );
    assert!(
        times[4] < asked + wait,
        "the drain waited past the operator's pace"
    );
    let answer = hook.await.expect("the preStop request");
    assert!(answer.ends_with("\r\n\r\ndrained\n"), "{answer}");
    assert!(sc.has_metric("ringway_sidecar_drains_total{paced_by=\"operator\"} 1"));
    sc.gw.stop(Shutdown::Graceful).await;

    // No operator: after the wait, at the sidecar's own rate.
    let sc = Sidecar::serving(app, 0.5, 1_000, &files.dir.0).await;
    let closes = closes_of(sc.clients(5).await);
    let asked = Instant::now();
    let answer = support::raw(sc.admin(), &prestop()).await;
    assert!(answer.ends_with("\r\n\r\ndrained\n"), "{answer}");
    let times = closes.await.expect("every client closed");
    assert!(
        times[0] >= asked + wait - Duration::from_millis(100),
        "a client closed {:?} after the preStop request, before the operator's time was up",
        times[0] - asked
    );
    assert!(sc.has_metric("ringway_sidecar_drains_total{paced_by=\"local\"} 1"));
    sc.gw.stop(Shutdown::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_usable_files_the_sidecar_serves_its_clients_and_paces_its_drain_locally() {
    let app = support::echo_backend("app").await;
    let garbage = TempDir::new("garbage");
    for file in [
        sidecar::CONTROL_CA_FILE,
        sidecar::CONTROL_CERT_FILE,
        sidecar::CONTROL_KEY_FILE,
    ] {
        std::fs::write(garbage.0.join(file), "not a PEM file\n").expect("write");
    }
    let unmounted = TempDir::new("unmounted");
    for dir in [unmounted.0.join("not-there"), garbage.0.clone()] {
        let sc = Sidecar::start(app, 0.2, 1_000, Some(dir.clone())).await;
        assert!(sc.control.is_none(), "{dir:?}: a control port");
        assert!(sc.has_metric("ringway_sidecar_control_serving 0"));
        let mut clients = sc.clients(3).await;
        use futures_util::SinkExt;
        clients[0]
            .send(tokio_tungstenite::tungstenite::Message::text("hello"))
            .await
            .expect("send");
        assert_eq!(
            support::next_data(&mut clients[0]).await,
            Some(tokio_tungstenite::tungstenite::Message::text("hello"))
        );
        let closes = closes_of(clients);
        let asked = Instant::now();
        let answer = support::raw(sc.admin(), &prestop()).await;
        assert!(answer.ends_with("\r\n\r\ndrained\n"), "{dir:?}: {answer}");
        assert!(
            asked.elapsed() < Duration::from_secs_f64(sidecar::OPERATOR_WAIT_SECONDS),
            "{dir:?}: waited {:?} for an operator that cannot reach it",
            asked.elapsed()
        );
        closes.await.expect("every client closed");
        assert!(sc.has_metric("ringway_sidecar_drains_total{paced_by=\"local\"} 1"));
        sc.gw.stop(Shutdown::Graceful).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_mounted_after_the_start_is_served_once_its_files_are_there() {
    let files = ControlFiles::new("later");
    let later = files.dir.0.join("later");
    let app = support::echo_backend("app").await;
    let sc = Sidecar::start(app, 30.0, 1_000, Some(later.clone())).await;
    assert!(sc.control.is_none(), "no files yet, no control port");
    let clients = sc.clients(3).await;
    std::fs::create_dir(&later).expect("the Secret's volume");
    for file in [
        sidecar::CONTROL_CA_FILE,
        sidecar::CONTROL_CERT_FILE,
        sidecar::CONTROL_KEY_FILE,
    ] {
        std::fs::copy(files.dir.0.join(file), later.join(file)).expect("copy");
    }
    let address = format!("127.0.0.1:{}", sc.control_port);
    let operator = files.operator();
    // The sidecar looks again every 5 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = operator.status(&address).await {
        assert!(Instant::now() < deadline, "still not served: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sc.has_metric("ringway_sidecar_control_serving 1"));
    let closes = closes_of(clients);
    operator
        .drain(&address, drain_at(100))
        .await
        .expect("the operator's drain");
    closes.await.expect("every client closed");
    assert!(sc.has_metric("ringway_sidecar_drains_total{paced_by=\"operator\"} 1"));
    sc.gw.stop(Shutdown::Graceful).await;
}
