//! The operator's Prometheus metrics, all prefixed `ringway_operator_`:
//! reconciles and their errors and durations, snapshot pushes, the pods
//! steered per gateway, whether this replica leads, the admission
//! webhook's requests, the sidecars' control Secrets it writes and the pods
//! found running without their sidecar.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Buckets of the reconcile duration, in seconds: 1 ms to 30 s. A reconcile
/// that only reads caches takes milliseconds; one that pushes a snapshot to
/// many pods waits on the slowest.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Labels of the reconcile errors counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    /// [`crate::Error::label`] of the failure.
    reason: &'static str,
}

/// How the webhook dealt with one request (or connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookResult {
    /// The review was handed to the admission handler and its answer sent.
    Answered,
    /// Refused before the handler: not JSON, too large or too slow.
    Refused,
    /// The TLS handshake failed (for instance, a client that does not
    /// trust the CA).
    TlsFailed,
}

impl WebhookResult {
    /// The `result` label.
    fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Refused => "refused",
            Self::TlsFailed => "tls_failed",
        }
    }
}

/// What became of one write of a namespace's sidecar control Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlSecretResult {
    /// Created, at admission or by the leader.
    Created,
    /// Replaced by the leader: expiring, from another CA, or damaged.
    Renewed,
    /// Reading or writing it failed, or timed out at admission.
    Failed,
}

impl ControlSecretResult {
    /// The `result` label.
    fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Renewed => "renewed",
            Self::Failed => "failed",
        }
    }
}

/// Labels of the webhook requests counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    /// [`WebhookResult::label`].
    result: &'static str,
}

/// Labels of the sidecar injections counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    /// [`crate::inject::admission::Outcome::label`].
    outcome: &'static str,
}

/// Labels of the per-gateway gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayLabel {
    /// `namespace/name`.
    gateway: String,
}

/// Labels of the sidecar audit's gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabel {
    /// The workload's namespace.
    namespace: String,
    /// `kind/name`, as `kubectl` takes it.
    workload: String,
}

impl WorkloadLabel {
    fn new(namespace: &str, workload: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            workload: workload.to_owned(),
        }
    }
}

/// Every metric the operator exports. `Send + Sync`: share it as
/// `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ReasonLabel, Counter>,
    reconcile_duration: Histogram,
    pods_steered: Family<GatewayLabel, Gauge>,
    snapshot_pushes: Counter,
    snapshot_push_failures: Counter,
    leader: Gauge,
    webhook_requests: Family<ResultLabel, Counter>,
    sidecar_injections: Family<OutcomeLabel, Counter>,
    sidecar_control_secrets: Family<ResultLabel, Counter>,
    sidecar_missing_pods: Family<WorkloadLabel, Gauge>,
    sidecar_draining_pods: Family<WorkloadLabel, Gauge>,
    sidecar_draining_connections: Family<WorkloadLabel, Gauge>,
    sidecar_drains: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh set of metrics, registered for export.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ringway_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ReasonLabel, Counter>::default();
        let reconcile_duration = Histogram::new(DURATION_BUCKETS);
        let pods_steered = Family::<GatewayLabel, Gauge>::default();
        let snapshot_pushes = Counter::default();
        let snapshot_push_failures = Counter::default();
        let leader = Gauge::default();
        let webhook_requests = Family::<ResultLabel, Counter>::default();
        let sidecar_injections = Family::<OutcomeLabel, Counter>::default();
        let sidecar_control_secrets = Family::<ResultLabel, Counter>::default();
        let sidecar_missing_pods = Family::<WorkloadLabel, Gauge>::default();
        let sidecar_draining_pods = Family::<WorkloadLabel, Gauge>::default();
        let sidecar_draining_connections = Family::<WorkloadLabel, Gauge>::default();
        let sidecar_drains = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of a gateway, finished or failed",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, failed ones included",
            reconcile_duration.clone(),
        );
        registry.register(
            "pods_steered",
            "Running data-plane pods (with an IP) the operator steers, by gateway (namespace/name)",
            pods_steered.clone(),
        );
        registry.register(
            "snapshot_pushes",
            "Routing snapshots pushed, one per pod pushed to",
            snapshot_pushes.clone(),
        );
        registry.register(
            "snapshot_push_failures",
            "Snapshot pushes a pod did not acknowledge",
            snapshot_push_failures.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "webhook_requests",
            "Requests to the sidecar injector's webhook, by result (answered, refused, tls_failed)",
            webhook_requests.clone(),
        );
        registry.register(
            "sidecar_injections",
            "Pods the sidecar injector reviewed, by outcome (injected, unchanged, denied, skipped, failed)",
            sidecar_injections.clone(),
        );
        registry.register(
            "sidecar_control_secrets",
            "Writes of the sidecars' control Secrets (one per namespace with injected pods), by result (created, renewed, failed)",
            sidecar_control_secrets.clone(),
        );
        registry.register(
            "sidecar_missing_pods",
            "Pods of a workload (namespace, kind/name) that asked for the sidecar and run without it; the leader counts them every minute",
            sidecar_missing_pods.clone(),
        );
        registry.register(
            "sidecar_draining_pods",
            "Terminating pods of a workload (namespace, kind/name) whose sidecar drain the leader paces within the workload's budget",
            sidecar_draining_pods.clone(),
        );
        registry.register(
            "sidecar_draining_connections",
            "Clients those pods had left when last asked",
            sidecar_draining_connections.clone(),
        );
        registry.register(
            "sidecar_drains",
            "Sidecar drains the leader paced, by outcome (paced: started; drained; unfinished: the pod went away with clients left; unreachable: given up, it paced itself)",
            sidecar_drains.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            pods_steered,
            snapshot_pushes,
            snapshot_push_failures,
            leader,
            webhook_requests,
            sidecar_injections,
            sidecar_control_secrets,
            sidecar_missing_pods,
            sidecar_draining_pods,
            sidecar_draining_connections,
            sidecar_drains,
        }
    }

    /// One reconcile finished after `elapsed`; `error` is
    /// [`crate::Error::label`] when it failed.
    pub fn reconciled(&self, elapsed: Duration, error: Option<&'static str>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
        if let Some(reason) = error {
            // One statement: the guard `get_or_create` returns must be gone
            // before the family is locked again.
            self.reconcile_errors
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }

    /// A snapshot push reached `pods` pods, `failed` of which did not
    /// acknowledge it.
    pub fn snapshot_pushed(&self, pods: u64, failed: u64) {
        self.snapshot_pushes.inc_by(pods);
        self.snapshot_push_failures.inc_by(failed);
    }

    /// The number of ready pods the operator steers for one gateway
    /// (`namespace/name`).
    pub fn set_pods_steered(&self, gateway: &str, pods: i64) {
        let label = GatewayLabel {
            gateway: gateway.to_owned(),
        };
        self.pods_steered.get_or_create(&label).set(pods);
    }

    /// Forgets a deleted gateway's gauge, so that it is no longer exported.
    pub fn forget_gateway(&self, gateway: &str) {
        self.pods_steered.remove(&GatewayLabel {
            gateway: gateway.to_owned(),
        });
    }

    /// 1 while this replica holds the leader lease, 0 otherwise.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The webhook dealt with one request (or, for `tls_failed`, one
    /// connection) so.
    pub fn webhook_request(&self, result: WebhookResult) {
        self.webhook_requests
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .inc();
    }

    /// The sidecar injector decided `outcome` (an
    /// [`Outcome::label`](crate::inject::admission::Outcome::label)) for one
    /// review.
    pub fn sidecar_injection(&self, outcome: &'static str) {
        self.sidecar_injections
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A namespace's sidecar control Secret was written so, or failed to be.
    pub fn sidecar_control_secret(&self, result: ControlSecretResult) {
        self.sidecar_control_secrets
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .inc();
    }

    /// The number of pods of one annotated workload (`kind/name`) that run
    /// without the sidecar.
    pub fn set_sidecar_missing_pods(&self, namespace: &str, workload: &str, pods: i64) {
        self.sidecar_missing_pods
            .get_or_create(&WorkloadLabel::new(namespace, workload))
            .set(pods);
    }

    /// Forgets a workload that is gone or no longer asks for the sidecar.
    pub fn forget_sidecar_workload(&self, namespace: &str, workload: &str) {
        self.sidecar_missing_pods
            .remove(&WorkloadLabel::new(namespace, workload));
    }

    /// The pods of one workload (`kind/name`) whose drain the leader paces,
    /// and their clients left.
    pub fn set_sidecar_draining(&self, namespace: &str, workload: &str, pods: i64, clients: i64) {
        let label = WorkloadLabel::new(namespace, workload);
        self.sidecar_draining_pods.get_or_create(&label).set(pods);
        self.sidecar_draining_connections
            .get_or_create(&label)
            .set(clients);
    }

    /// Forgets a workload none of whose pods drains any more.
    pub fn forget_sidecar_drain(&self, namespace: &str, workload: &str) {
        let label = WorkloadLabel::new(namespace, workload);
        self.sidecar_draining_pods.remove(&label);
        self.sidecar_draining_connections.remove(&label);
    }

    /// A paced sidecar drain reached `outcome` (`paced`, `drained`,
    /// `unfinished`, `unreachable`).
    pub fn sidecar_drain(&self, outcome: &'static str) {
        self.sidecar_drains
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn renders_what_was_counted() {
        let metrics = Metrics::new();
        metrics.reconciled(Duration::from_millis(3), None);
        metrics.reconciled(Duration::from_millis(40), Some("apply"));
        metrics.reconciled(Duration::from_secs(2), Some("apply"));
        metrics.snapshot_pushed(3, 1);
        metrics.snapshot_pushed(2, 0);
        metrics.set_pods_steered("default/echo", 4);
        metrics.set_pods_steered("prod/chat", 2);
        metrics.set_leader(true);
        metrics.webhook_request(WebhookResult::Answered);
        metrics.webhook_request(WebhookResult::Answered);
        metrics.webhook_request(WebhookResult::TlsFailed);
        metrics.sidecar_injection("injected");
        metrics.sidecar_control_secret(ControlSecretResult::Failed);
        metrics.set_sidecar_missing_pods("prod", "deployment/chat", 2);

        let text = metrics.render();
        let lines = lines(&text);
        for expected in [
            "ringway_operator_reconciles_total 3",
            "ringway_operator_reconcile_errors_total{reason=\"apply\"} 2",
            "ringway_operator_reconcile_duration_seconds_count 3",
            "ringway_operator_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "ringway_operator_reconcile_duration_seconds_bucket{le=\"0.05\"} 2",
            "ringway_operator_reconcile_duration_seconds_bucket{le=\"30.0\"} 3",
            "ringway_operator_snapshot_pushes_total 5",
            "ringway_operator_snapshot_push_failures_total 1",
            "ringway_operator_pods_steered{gateway=\"default/echo\"} 4",
            "ringway_operator_pods_steered{gateway=\"prod/chat\"} 2",
            "ringway_operator_leader 1",
            "ringway_operator_webhook_requests_total{result=\"answered\"} 2",
            "ringway_operator_webhook_requests_total{result=\"tls_failed\"} 1",
            "ringway_operator_sidecar_injections_total{outcome=\"injected\"} 1",
            "ringway_operator_sidecar_control_secrets_total{result=\"failed\"} 1",
            "ringway_operator_sidecar_missing_pods{namespace=\"prod\",workload=\"deployment/chat\"} 2",
        ] {
            assert!(
                lines.contains(&expected),
                "{expected:?} missing from\n{text}"
            );
        }
    }

    #[test]
    fn a_forgotten_gateway_is_no_longer_exported() {
        let metrics = Metrics::new();
        metrics.set_pods_steered("default/echo", 4);
        metrics.set_pods_steered("default/echo", 3);
        metrics.set_pods_steered("prod/chat", 2);
        metrics.forget_gateway("default/echo");
        metrics.forget_gateway("never/seen");
        let text = metrics.render();
        assert!(!text.contains("default/echo"), "{text}");
        assert!(
            lines(&text).contains(&"ringway_operator_pods_steered{gateway=\"prod/chat\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn a_forgotten_workload_is_no_longer_exported() {
        let metrics = Metrics::new();
        metrics.set_sidecar_missing_pods("prod", "deployment/chat", 1);
        metrics.set_sidecar_missing_pods("prod", "daemonset/agent", 0);
        metrics.forget_sidecar_workload("prod", "deployment/chat");
        let text = metrics.render();
        assert!(!text.contains("deployment/chat"), "{text}");
        assert!(
            lines(&text).contains(
                &"ringway_operator_sidecar_missing_pods{namespace=\"prod\",workload=\"daemonset/agent\"} 0"
            ),
            "{text}"
        );
    }

    #[test]
    fn leadership_goes_to_zero_and_nothing_counted_renders_zero() {
        let metrics = Metrics::new();
        metrics.set_leader(true);
        metrics.set_leader(false);
        let text = metrics.render();
        let lines = lines(&text);
        assert!(lines.contains(&"ringway_operator_leader 0"), "{text}");
        assert!(
            lines.contains(&"ringway_operator_reconciles_total 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn metrics_are_shareable() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Metrics>();
    }
}
