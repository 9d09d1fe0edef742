use futures_util::FutureExt;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use tower_test::mock::{self, Handle, SendResponse};

use super::*;

const NAMESPACE: &str = "ringway-system";
const NAME: &str = "ringway-operator";
const ME: &str = "operator-0";
const OTHER: &str = "operator-1";
const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/ringway-system/leases/ringway-operator";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ringway-system/leases";

fn config() -> LeaseConfig {
    LeaseConfig::new(NAMESPACE, NAME, ME)
}

fn lease(holder: Option<&str>, resource_version: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            resource_version: Some(resource_version.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

fn spec(lease: &Lease) -> &LeaseSpec {
    lease.spec.as_ref().expect("a spec")
}

// ---- The pure rules.

#[test]
fn no_lease_or_a_released_one_is_acquired() {
    let now = Instant::now();
    let d = DEFAULT_LEASE_DURATION;
    assert_eq!(decide(None, ME, now, now, d), Decision::Acquire);
    let released = lease(None, "1");
    assert_eq!(decide(Some(&released), ME, now, now, d), Decision::Acquire);
    let empty = lease(Some(""), "1");
    assert_eq!(decide(Some(&empty), ME, now, now, d), Decision::Acquire);
    let no_spec = Lease::default();
    assert_eq!(decide(Some(&no_spec), ME, now, now, d), Decision::Acquire);
}

#[test]
fn our_own_lease_is_renewed_however_old() {
    let since = Instant::now();
    let mine = lease(Some(ME), "1");
    let later = since + Duration::from_secs(3600);
    assert_eq!(
        decide(Some(&mine), ME, since, later, DEFAULT_LEASE_DURATION),
        Decision::Renew
    );
}

#[test]
fn another_holder_keeps_it_for_its_duration_from_when_we_first_saw_the_record() {
    let since = Instant::now();
    let mut theirs = lease(Some(OTHER), "1");
    theirs.spec.as_mut().expect("spec").lease_duration_seconds = Some(20);
    let until = since + Duration::from_secs(20);
    let wait = Decision::Wait {
        holder: OTHER.to_owned(),
        until,
    };
    // The record's duration counts, not ours.
    let d = Duration::from_secs(15);
    assert_eq!(decide(Some(&theirs), ME, since, since, d), wait);
    let almost = until - Duration::from_millis(1);
    assert_eq!(decide(Some(&theirs), ME, since, almost, d), wait);
    assert_eq!(
        decide(Some(&theirs), ME, since, until, d),
        Decision::Acquire
    );
}

#[test]
fn a_record_without_a_duration_lasts_ours() {
    let since = Instant::now();
    let mut theirs = lease(Some(OTHER), "1");
    theirs.spec.as_mut().expect("spec").lease_duration_seconds = None;
    let d = Duration::from_secs(15);
    assert_eq!(
        decide(Some(&theirs), ME, since, since, d),
        Decision::Wait {
            holder: OTHER.to_owned(),
            until: since + d
        }
    );
}

#[test]
fn an_observation_restarts_only_when_the_record_changes() {
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_secs(5);
    let t2 = t0 + Duration::from_secs(10);
    let mut seen = None;
    assert_eq!(
        Observation::record(&mut seen, Some(&lease(Some(OTHER), "7")), t0),
        t0
    );
    assert_eq!(
        Observation::record(&mut seen, Some(&lease(Some(OTHER), "7")), t1),
        t0
    );
    // The holder renewed: its term starts again.
    assert_eq!(
        Observation::record(&mut seen, Some(&lease(Some(OTHER), "8")), t2),
        t2
    );
    assert_eq!(Observation::record(&mut seen, None, t2), t2);
}

#[test]
fn a_claim_creates_takes_over_and_renews() {
    let config = config();
    let t0: Timestamp = "2025-01-01T00:00:00Z".parse().expect("time");
    let t1: Timestamp = "2025-01-01T00:00:05Z".parse().expect("time");

    let created = claim(None, &config, t0);
    assert_eq!(created.metadata.name.as_deref(), Some(NAME));
    assert_eq!(created.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(created.metadata.resource_version, None);
    let s = spec(&created);
    assert_eq!(s.holder_identity.as_deref(), Some(ME));
    assert_eq!(s.lease_duration_seconds, Some(15));
    assert_eq!(s.acquire_time, Some(MicroTime(t0)));
    assert_eq!(s.renew_time, Some(MicroTime(t0)));
    assert_eq!(s.lease_transitions, Some(0));

    let mut theirs = lease(Some(OTHER), "7");
    theirs.spec.as_mut().expect("spec").lease_transitions = Some(3);
    let taken = claim(Some(&theirs), &config, t0);
    assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
    let s = spec(&taken);
    assert_eq!(s.holder_identity.as_deref(), Some(ME));
    assert_eq!(s.acquire_time, Some(MicroTime(t0)));
    assert_eq!(s.lease_transitions, Some(4));

    let mut mine = taken.clone();
    mine.metadata.resource_version = Some("8".to_owned());
    let renewed = claim(Some(&mine), &config, t1);
    assert_eq!(renewed.metadata.resource_version.as_deref(), Some("8"));
    let s = spec(&renewed);
    assert_eq!(s.acquire_time, Some(MicroTime(t0)));
    assert_eq!(s.renew_time, Some(MicroTime(t1)));
    assert_eq!(s.lease_transitions, Some(4));

    // Taking a released lease is not a transition from anyone.
    let free = claim(Some(&lease(None, "9")), &config, t1);
    assert_eq!(spec(&free).lease_transitions, Some(0));
}

#[test]
fn a_release_clears_the_holder_and_keeps_the_version() {
    let now: Timestamp = "2025-01-01T00:00:00Z".parse().expect("time");
    let out = released(&lease(Some(ME), "8"), now);
    assert_eq!(out.metadata.resource_version.as_deref(), Some("8"));
    assert_eq!(holder(&out), None);
    assert_eq!(spec(&out).lease_duration_seconds, Some(1));
    assert_eq!(
        decide(
            Some(&out),
            OTHER,
            Instant::now(),
            Instant::now(),
            DEFAULT_LEASE_DURATION
        ),
        Decision::Acquire
    );
}

#[test]
fn durations_are_written_rounded_up() {
    assert_eq!(whole_seconds(Duration::from_secs(15)), 15);
    assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
    assert_eq!(whole_seconds(Duration::ZERO), 1);
    assert_eq!(whole_seconds(Duration::MAX), i32::MAX);
}

// ---- Against the mock API server.

type Reply = SendResponse<Response<Body>>;

/// The mock API server: asserts each request in order and answers it.
struct ApiServer(Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    fn new() -> (kube::Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), Self(handle))
    }

    /// The next request: its method, path, Lease body (if any), and
    /// where to answer it.
    async fn next(&mut self) -> (Method, String, Option<Lease>, Reply) {
        let (request, reply) = timeout(Duration::from_secs(600), self.0.next_request())
            .await
            .expect("a request within 10 minutes")
            .expect("the client is alive");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("a request body");
        let lease = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("a Lease"));
        (parts.method, parts.uri.path().to_owned(), lease, reply)
    }

    async fn expect_get(&mut self) -> Reply {
        let (method, path, _, reply) = self.next().await;
        assert_eq!((method, path.as_str()), (Method::GET, LEASE_PATH));
        reply
    }

    async fn expect_create(&mut self) -> (Lease, Reply) {
        let (method, path, lease, reply) = self.next().await;
        assert_eq!((method, path.as_str()), (Method::POST, LEASES_PATH));
        (lease.expect("a Lease to create"), reply)
    }

    async fn expect_replace(&mut self) -> (Lease, Reply) {
        let (method, path, lease, reply) = self.next().await;
        assert_eq!((method, path.as_str()), (Method::PUT, LEASE_PATH));
        (lease.expect("a Lease to replace"), reply)
    }

    /// Whether no request waits for an answer (once every task has run).
    async fn no_request_pending(&mut self) -> bool {
        tokio::task::yield_now().await;
        // `Some(None)`: every client is gone, so no request can come.
        !matches!(self.0.next_request().now_or_never(), Some(Some(_)))
    }
}

fn respond(reply: Reply, status: StatusCode, body: &impl serde::Serialize) {
    let body = serde_json::to_vec(body).expect("JSON");
    let response = Response::builder()
        .status(status)
        .body(Body::from(body))
        .expect("a response");
    reply.send_response(response);
}

fn respond_lease(reply: Reply, lease: &Lease) {
    respond(reply, StatusCode::OK, lease);
}

/// Answers a write as the API server does: the object with a new version.
fn accept_write(reply: Reply, mut lease: Lease, resource_version: &str) -> Lease {
    lease.metadata.resource_version = Some(resource_version.to_owned());
    respond_lease(reply, &lease);
    lease
}

fn respond_status(reply: Reply, code: u16, reason: &str) {
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": reason,
        "reason": reason,
        "code": code,
    });
    respond(
        reply,
        StatusCode::from_u16(code).expect("a status code"),
        &status,
    );
}

/// Takes the lease by creating it; returns the Lease as written.
async fn lead_by_creating(api: &mut ApiServer) -> Lease {
    let reply = api.expect_get().await;
    respond_status(reply, 404, "NotFound");
    let (created, reply) = api.expect_create().await;
    accept_write(reply, created, "1")
}

#[tokio::test(start_paused = true)]
async fn no_lease_is_created_renewed_and_released() {
    let (client, mut api) = ApiServer::new();
    let t0 = Instant::now();
    let acquiring = tokio::spawn(acquire(client, config(), std::future::pending()));

    let reply = api.expect_get().await;
    respond_status(reply, 404, "NotFound");
    let (created, reply) = api.expect_create().await;
    assert_eq!(holder(&created), Some(ME));
    assert_eq!(spec(&created).lease_duration_seconds, Some(15));
    let created = accept_write(reply, created, "1");
    let mut leadership = acquiring
        .await
        .unwrap()
        .unwrap()
        .expect("leading after creating the lease");
    assert_eq!(t0.elapsed(), Duration::ZERO);

    // A renewal every 5 s: read, then replace with the version read.
    let reply = api.expect_get().await;
    assert_eq!(t0.elapsed(), DEFAULT_RENEW_EVERY);
    respond_lease(reply, &created);
    let (renewed, reply) = api.expect_replace().await;
    assert_eq!(renewed.metadata.resource_version.as_deref(), Some("1"));
    assert_eq!(holder(&renewed), Some(ME));
    assert_eq!(spec(&renewed).acquire_time, spec(&created).acquire_time);
    accept_write(reply, renewed, "2");
    assert!(leadership.lost().now_or_never().is_none());

    // Release: the lease as last written, with no holder.
    let releasing = tokio::spawn(leadership.release());
    let (released, reply) = api.expect_replace().await;
    assert_eq!(released.metadata.resource_version.as_deref(), Some("2"));
    assert_eq!(holder(&released), None);
    accept_write(reply, released, "3");
    releasing.await.unwrap();
    assert!(api.no_request_pending().await);
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_by_another_is_taken_once_its_term_runs_out() {
    let (client, mut api) = ApiServer::new();
    let t0 = Instant::now();
    let acquiring = tokio::spawn(acquire(client, config(), std::future::pending()));
    let theirs = lease(Some(OTHER), "7");

    // Read at 0, 5 and 10 s: still theirs, nothing written.
    for _ in 0..3 {
        let reply = api.expect_get().await;
        respond_lease(reply, &theirs);
    }
    assert!(!acquiring.is_finished());
    // At 15 s the same record has been unchanged for its duration.
    let reply = api.expect_get().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(15));
    respond_lease(reply, &theirs);
    let (taken, reply) = api.expect_replace().await;
    assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
    assert_eq!(holder(&taken), Some(ME));
    assert_eq!(spec(&taken).lease_transitions, Some(1));
    accept_write(reply, taken, "8");
    let leadership = acquiring.await.unwrap().unwrap();
    assert!(leadership.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_renews_keeps_the_lease() {
    let (client, mut api) = ApiServer::new();
    let t0 = Instant::now();
    let acquiring = tokio::spawn(acquire(client, config(), std::future::pending()));

    // Renewed by its holder at 10 s: its term runs until 25 s.
    for version in ["7", "7", "8", "8", "8"] {
        let reply = api.expect_get().await;
        respond_lease(reply, &lease(Some(OTHER), version));
    }
    assert!(!acquiring.is_finished());
    let reply = api.expect_get().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(25));
    respond_lease(reply, &lease(Some(OTHER), "8"));
    let (taken, reply) = api.expect_replace().await;
    accept_write(reply, taken, "9");
    assert!(acquiring.await.unwrap().unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_replace_is_not_leading() {
    let (client, mut api) = ApiServer::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let acquiring = tokio::spawn(acquire(client, config(), shutdown));

    // Released, so free; but another replica replaces it first.
    let reply = api.expect_get().await;
    respond_lease(reply, &lease(None, "3"));
    let (_, reply) = api.expect_replace().await;
    respond_status(reply, 409, "Conflict");
    // The next read shows the winner.
    let reply = api.expect_get().await;
    respond_lease(reply, &lease(Some(OTHER), "4"));
    assert!(api.no_request_pending().await);
    assert!(!acquiring.is_finished());

    stop.send(()).expect("acquire is waiting");
    assert!(acquiring.await.unwrap().unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_lost_create_race_is_not_leading() {
    let (client, mut api) = ApiServer::new();
    let acquiring = tokio::spawn(acquire(client, config(), std::future::pending()));
    let reply = api.expect_get().await;
    respond_status(reply, 404, "NotFound");
    let (_, reply) = api.expect_create().await;
    respond_status(reply, 409, "AlreadyExists");
    let reply = api.expect_get().await;
    respond_lease(reply, &lease(Some(OTHER), "1"));
    assert!(api.no_request_pending().await);
    assert!(!acquiring.is_finished());
    acquiring.abort();
}

#[tokio::test(start_paused = true)]
async fn no_permission_is_an_error() {
    let (client, mut api) = ApiServer::new();
    let acquiring = tokio::spawn(acquire(client, config(), std::future::pending()));
    let reply = api.expect_get().await;
    respond_status(reply, 403, "Forbidden");
    let error = acquiring.await.unwrap().expect_err("403 is not retried");
    assert!(matches!(error, kube::Error::Api(s) if s.code == 403));
}

#[tokio::test(start_paused = true)]
async fn leadership_is_lost_when_no_renewal_succeeds_for_a_lease_duration() {
    let (client, mut api) = ApiServer::new();
    let t0 = Instant::now();
    let acquiring = tokio::spawn(acquire(client, config(), std::future::pending()));
    lead_by_creating(&mut api).await;
    let mut leadership = acquiring.await.unwrap().unwrap().expect("leading");

    let failing = tokio::spawn(async move {
        loop {
            let reply = api.expect_get().await;
            respond_status(reply, 500, "InternalError");
        }
    });
    leadership.lost().await;
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= DEFAULT_LEASE_DURATION
            && elapsed <= DEFAULT_LEASE_DURATION + Duration::from_millis(1),
        "lost after {elapsed:?}"
    );
    // And it stays lost.
    leadership.lost().await;
    failing.abort();
}

#[tokio::test(start_paused = true)]
async fn leadership_is_lost_at_once_when_another_replica_holds_the_lease() {
    let (client, mut api) = ApiServer::new();
    let t0 = Instant::now();
    let acquiring = tokio::spawn(acquire(client, config(), std::future::pending()));
    lead_by_creating(&mut api).await;
    let mut leadership = acquiring.await.unwrap().unwrap().expect("leading");

    let reply = api.expect_get().await;
    respond_lease(reply, &lease(Some(OTHER), "5"));
    leadership.lost().await;
    assert_eq!(t0.elapsed(), DEFAULT_RENEW_EVERY);

    // Not ours any more: releasing leaves it alone.
    leadership.release().await;
    assert_eq!(t0.elapsed(), DEFAULT_RENEW_EVERY);
    assert!(api.no_request_pending().await);
}

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_is_retried_within_the_term() {
    let (client, mut api) = ApiServer::new();
    let t0 = Instant::now();
    let acquiring = tokio::spawn(acquire(client, config(), std::future::pending()));
    let created = lead_by_creating(&mut api).await;
    let mut leadership = acquiring.await.unwrap().unwrap().expect("leading");

    let reply = api.expect_get().await;
    respond_status(reply, 503, "ServiceUnavailable");
    let reply = api.expect_get().await;
    assert_eq!(t0.elapsed(), DEFAULT_RENEW_EVERY + RETRY_AFTER_FAILURE);
    respond_lease(reply, &created);
    let (renewed, reply) = api.expect_replace().await;
    accept_write(reply, renewed, "2");
    // The term now runs from the retry: still leading after the first
    // term would have ended.
    tokio::time::sleep_until(t0 + DEFAULT_LEASE_DURATION + Duration::from_secs(1)).await;
    assert!(leadership.lost().now_or_never().is_none());
    drop(leadership);
}

#[tokio::test(start_paused = true)]
async fn dropping_leadership_stops_renewing_without_releasing() {
    let (client, mut api) = ApiServer::new();
    let acquiring = tokio::spawn(acquire(client, config(), std::future::pending()));
    lead_by_creating(&mut api).await;
    let leadership = acquiring.await.unwrap().unwrap().expect("leading");
    drop(leadership);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(api.no_request_pending().await);
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_waiting_returns_none() {
    let (client, _api) = ApiServer::new();
    let acquired = acquire(client, config(), async {}).await.unwrap();
    assert!(acquired.is_none());
}
