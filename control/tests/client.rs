//! The control client against fake in-process pods over mutual TLS.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringway_control::pki::{Ca, SERVER_NAME, Usage};
use ringway_control::proto::control_server::{Control, ControlServer};
use ringway_control::proto::{
    ApplySnapshotRequest, ApplySnapshotResponse, DrainRequest, DrainResponse, GetStatusRequest,
    PodStatus, Snapshot,
};
use ringway_control::{ControlClient, Options, TlsIdentity, all_acked};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

const DAY: Duration = Duration::from_secs(86_400);

/// A fake data-plane pod: keeps an epoch, refuses older ones, can fail its
/// first calls or never answer.
#[derive(Default)]
struct Pod {
    shard: String,
    epoch: Mutex<u64>,
    /// Calls that reached the service (after TLS).
    calls: AtomicU32,
    /// TCP connections accepted.
    accepts: AtomicU32,
    /// Fail this many calls with UNAVAILABLE before answering.
    fail_first: AtomicU32,
    /// Never answer.
    hang: AtomicBool,
}

impl Pod {
    fn new(shard: &str) -> Arc<Pod> {
        Arc::new(Pod {
            shard: shard.to_owned(),
            ..Pod::default()
        })
    }

    async fn enter(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let failed = self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failed.is_ok() {
            return Err(Status::unavailable("warming up"));
        }
        Ok(())
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn accepts(&self) -> u32 {
        self.accepts.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Fake(Arc<Pod>);

#[tonic::async_trait]
impl Control for Fake {
    async fn apply_snapshot(
        &self,
        request: Request<ApplySnapshotRequest>,
    ) -> Result<Response<ApplySnapshotResponse>, Status> {
        self.0.enter().await?;
        let snapshot = request
            .into_inner()
            .snapshot
            .ok_or_else(|| Status::invalid_argument("no snapshot"))?;
        let mut epoch = self.0.epoch.lock().expect("epoch lock");
        if snapshot.epoch < *epoch {
            return Err(Status::failed_precondition(format!(
                "snapshot epoch {} is older than the running epoch {}",
                snapshot.epoch, *epoch
            )));
        }
        let changed = snapshot.epoch != *epoch;
        *epoch = snapshot.epoch;
        Ok(Response::new(ApplySnapshotResponse {
            epoch: *epoch,
            changed,
            draining: 0,
        }))
    }

    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<PodStatus>, Status> {
        self.0.enter().await?;
        let epoch = *self.0.epoch.lock().expect("epoch lock");
        Ok(Response::new(PodStatus {
            shard_id: self.0.shard.clone(),
            epoch,
            ready: epoch > 0,
            ..PodStatus::default()
        }))
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        self.0.enter().await?;
        Ok(Response::new(DrainResponse {
            draining: u64::from(request.into_inner().window_ms),
        }))
    }
}

/// Serves `pod` on 127.0.0.1 with a server certificate from `ca` for
/// `names`; returns its `host:port`.
async fn serve_with(ca: &Ca, names: &[&str], pod: Arc<Pod>) -> String {
    let issued = ca
        .issue("pod", Usage::Server, names, DAY)
        .expect("server certificate");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address").to_string();
    let counter = pod.clone();
    let incoming = futures_util::stream::unfold(listener, move |listener| {
        let counter = counter.clone();
        async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            counter.accepts.fetch_add(1, Ordering::SeqCst);
            Some((accepted, listener))
        }
    });
    let server = Server::builder()
        .tls_config(tls)
        .expect("server TLS configuration")
        .add_service(ControlServer::new(Fake(pod)))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    address
}

async fn serve(ca: &Ca, pod: Arc<Pod>) -> String {
    serve_with(ca, &[SERVER_NAME], pod).await
}

/// A client identity with a certificate of `usage` from `issuer`, trusting `ca`.
fn identity(ca: &Ca, issuer: &Ca, usage: Usage) -> TlsIdentity {
    let issued = issuer
        .issue("operator", usage, &[], DAY)
        .expect("client certificate");
    TlsIdentity {
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        server_name: SERVER_NAME.to_owned(),
    }
}

fn options() -> Options {
    Options {
        connect_timeout: Duration::from_millis(300),
        rpc_timeout: Duration::from_millis(500),
        attempts: 3,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
    }
}

fn client(ca: &Ca, options: Options) -> ControlClient {
    ControlClient::new(&identity(ca, ca, Usage::Client), options).expect("client")
}

fn snapshot(epoch: u64) -> Snapshot {
    Snapshot {
        epoch,
        gateway: "default/chat".to_owned(),
        ..Snapshot::default()
    }
}

fn ca() -> Ca {
    Ca::generate("ringway test ca", DAY).expect("CA")
}

#[tokio::test]
async fn push_to_three_pods_acks_the_epoch_and_reuses_connections() {
    let ca = ca();
    let pods: Vec<_> = (0..3).map(|i| Pod::new(&format!("pod-{i}"))).collect();
    let mut addresses = Vec::new();
    for pod in &pods {
        addresses.push(serve(&ca, pod.clone()).await);
    }
    // The operator reloads its CA from the Secret: certificates it issues
    // then must work the same.
    let reloaded = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    let client = client(&reloaded, options());

    let results = client.push(&addresses, &snapshot(5)).await;
    assert_eq!(results.len(), 3);
    for (result, address) in results.iter().zip(&addresses) {
        assert_eq!(&result.address, address);
        let response = result.outcome.as_ref().unwrap();
        assert_eq!((response.epoch, response.changed), (5, true));
    }
    assert!(all_acked(&results, 5));
    assert!(!all_acked(&results, 6));

    let again = client.push(&addresses, &snapshot(5)).await;
    assert!(all_acked(&again, 5));
    assert!(again.iter().all(|r| !r.outcome.as_ref().unwrap().changed));

    let status = client.status(&addresses[1]).await.unwrap();
    assert_eq!((status.shard_id.as_str(), status.epoch), ("pod-1", 5));
    assert!(status.ready);
    let drain = DrainRequest {
        window_ms: 42,
        max_closes_per_second: 0,
    };
    assert_eq!(
        client.drain(&addresses[2], drain).await.unwrap().draining,
        42
    );

    for pod in &pods {
        assert_eq!(pod.accepts(), 1, "one HTTP/2 connection per pod");
    }
}

#[tokio::test]
async fn stale_epoch_is_refused_without_retry() {
    let ca = ca();
    let pod = Pod::new("pod-0");
    let address = serve(&ca, pod.clone()).await;
    let client = client(&ca, options());
    client.apply(&address, &snapshot(10)).await.unwrap();

    let error = client.apply(&address, &snapshot(9)).await.unwrap_err();
    assert!(error.is_stale_epoch(), "{error}");
    assert_eq!(error.attempts, 1);
    assert_eq!(error.code, Code::FailedPrecondition);
    assert!(error.message.contains("older"), "{error}");
    assert_eq!(pod.calls(), 2);
    let results = client
        .push(std::slice::from_ref(&address), &snapshot(9))
        .await;
    assert!(!all_acked(&results, 9));
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let ca = ca();
    let pod = Pod::new("pod-0");
    let address = serve(&ca, pod.clone()).await;
    let client = client(&ca, options());

    pod.fail_first.store(2, Ordering::SeqCst);
    let response = client.apply(&address, &snapshot(1)).await.unwrap();
    assert_eq!(response.epoch, 1);
    assert_eq!(pod.calls(), 3);

    pod.fail_first.store(5, Ordering::SeqCst);
    let error = client.status(&address).await.unwrap_err();
    assert_eq!(error.code, Code::Unavailable);
    assert_eq!(error.attempts, 3);
    assert_eq!(pod.calls(), 6);
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "{address}: failed after 3 attempts: unavailable: warming up"
        )),
        "{text}"
    );
}

/// A client holding `identity` is refused at the TLS handshake, before
/// the pod sees any call, and the refusal is not retried.
async fn assert_refused(ca: &Ca, identity: TlsIdentity) {
    let pod = Pod::new("pod-0");
    let address = serve(ca, pod.clone()).await;
    let client = ControlClient::new(&identity, options()).expect("a client");
    let error = client
        .apply(&address, &snapshot(1))
        .await
        .expect_err("refused");
    assert_eq!(
        (error.code, error.attempts),
        (Code::Unauthenticated, 1),
        "{error}"
    );
    assert_eq!(pod.calls(), 0, "the pod must never see the call: {error}");
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let ca = ca();
    let other = Ca::generate("another gateway", DAY).unwrap();
    // Trusts the right CA, but its certificate comes from another one.
    assert_refused(&ca, identity(&ca, &other, Usage::Client)).await;
}

#[tokio::test]
async fn server_certificate_cannot_act_as_client() {
    let ca = ca();
    // Right CA, but a pod's certificate (serverAuth only).
    assert_refused(&ca, identity(&ca, &ca, Usage::Server)).await;
}

#[tokio::test]
async fn client_verifies_the_pod() {
    let ca = ca();
    let other = Ca::generate("another gateway", DAY).unwrap();
    let client = client(&ca, options());

    // A pod of another gateway.
    let foreign = Pod::new("pod-0");
    let address = serve(&other, foreign.clone()).await;
    let error = client.status(&address).await.unwrap_err();
    assert_eq!(
        (error.code, error.attempts),
        (Code::Unauthenticated, 1),
        "{error}"
    );
    assert_eq!(foreign.calls(), 0);

    // A certificate of the right CA without the control name.
    let unnamed = Pod::new("pod-1");
    let address = serve_with(&ca, &["somewhere.else"], unnamed.clone()).await;
    let error = client.status(&address).await.unwrap_err();
    assert_eq!(
        (error.code, error.attempts),
        (Code::Unauthenticated, 1),
        "{error}"
    );
    assert_eq!(unnamed.calls(), 0);
}

#[tokio::test]
async fn unreachable_address_fails_in_bounded_time() {
    let ca = ca();
    let options = options();
    let bound = options.attempts * (options.connect_timeout * 2 + options.backoff_max)
        + Duration::from_secs(1);
    let client = client(&ca, options);

    // A closed port: refused at once.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    // A port that accepts TCP but never speaks TLS: the handshake times out.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap().to_string();
    // TEST-NET-1: dropped or unroutable, depending on the network.
    for address in [closed.as_str(), silent_address.as_str(), "192.0.2.1:7443"] {
        let started = Instant::now();
        let error = client.apply(address, &snapshot(1)).await.unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(error.attempts, 3, "{error}");
        assert!(
            matches!(error.code, Code::Unavailable | Code::DeadlineExceeded),
            "{error}"
        );
        assert!(elapsed < bound, "{address} took {elapsed:?}: {error}");
    }

    // Not an address at all: refused without a connection.
    let error = client
        .apply("not an address", &snapshot(1))
        .await
        .unwrap_err();
    assert_eq!(error.code, Code::InvalidArgument, "{error}");
}

#[tokio::test]
async fn deadline_holds_against_a_pod_that_never_answers() {
    let ca = ca();
    let pod = Pod::new("pod-0");
    pod.hang.store(true, Ordering::SeqCst);
    let address = serve(&ca, pod.clone()).await;
    let rpc_timeout = Duration::from_millis(300);

    let once = client(
        &ca,
        Options {
            rpc_timeout,
            attempts: 1,
            ..options()
        },
    );
    let started = Instant::now();
    let error = once.apply(&address, &snapshot(1)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error.code, Code::DeadlineExceeded, "{error}");
    assert_eq!(error.attempts, 1);
    assert!(elapsed >= rpc_timeout, "{elapsed:?}");
    assert!(
        elapsed < rpc_timeout + Duration::from_millis(500),
        "{elapsed:?}"
    );
    assert_eq!(pod.calls(), 1);

    // Retried, each attempt on a new connection (the hung one is dropped).
    let twice = client(
        &ca,
        Options {
            rpc_timeout,
            attempts: 2,
            ..options()
        },
    );
    let accepts = pod.accepts();
    let error = twice.status(&address).await.unwrap_err();
    assert_eq!(error.code, Code::DeadlineExceeded, "{error}");
    assert_eq!(error.attempts, 2);
    assert_eq!(pod.calls(), 3);
    assert_eq!(pod.accepts(), accepts + 2);
}

#[tokio::test]
async fn bad_identities_are_refused_up_front() {
    let ca = ca();
    let good = identity(&ca, &ca, Usage::Client);
    let bad = |change: fn(&mut TlsIdentity)| {
        let mut identity = good.clone();
        change(&mut identity);
        ControlClient::new(&identity, options()).unwrap_err()
    };
    bad(|i| i.ca_pem = "garbage".into());
    bad(|i| i.cert_pem = "garbage".into());
    bad(|i| i.key_pem = "garbage".into());
    bad(|i| i.server_name = String::new());
    let error = ControlClient::new(
        &good,
        Options {
            attempts: 0,
            ..options()
        },
    )
    .unwrap_err();
    assert!(error.to_string().contains("attempts"), "{error}");
}

#[tokio::test]
async fn ringway_ctl_prints_status_and_drains() {
    let ca = ca();
    let pod = Pod::new("pod-0");
    let address = serve(&ca, pod.clone()).await;
    let client = client(&ca, options());
    client.apply(&address, &snapshot(3)).await.unwrap();

    let dir = std::env::temp_dir().join(format!(
        "ringway-ctl-test-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let issued = ca.issue("operator", Usage::Client, &[], DAY).unwrap();
    for (name, pem) in [
        ("ca.pem", ca.cert_pem()),
        ("cert.pem", issued.cert_pem.as_str()),
        ("key.pem", issued.key_pem.as_str()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let ctl = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringway-ctl"));
        command
            .arg("--ca")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"))
            .args(["--timeout-ms", "500"])
            .args(args);
        command.output()
    };

    let output = ctl(&["status", &address]).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("shard:      pod-0"), "{stdout}");
    assert!(stdout.contains("epoch:      3"), "{stdout}");

    let output = ctl(&["drain", &address, "--window-ms", "7"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("7 connections scheduled to drain"),
        "{stdout}"
    );

    // One pod answers, one does not: the answer is printed, the exit fails.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let output = ctl(&["status", &address, &closed]).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stdout.contains("pod-0"), "{stdout}");
    assert!(
        stderr.contains(&format!("{closed}: failed after")),
        "{stderr}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}
