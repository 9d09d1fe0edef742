//! Prometheus metrics, all prefixed `ringway_`. Handles that the relay
//! touches per message are resolved once, so the hot path only does atomic
//! adds.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of per-route metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route's name.
    pub route: String,
}

/// Labels of the handshake counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or why the upgrade failed.
    pub outcome: &'static str,
}

/// Labels of the close counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// The WebSocket close code, `none` for a TCP close without one.
    pub code: String,
    /// Who or what closed: `client`, `backend`, or the gateway's reason.
    pub reason: &'static str,
}

/// Labels of the drain counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// `shutdown` (SIGTERM or the admin port's `/drain`), `api` (the control
    /// port's Drain RPC) or `rebalance`.
    pub cause: &'static str,
}

/// Labels of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `panic`, `io`, `close_timeout`, ...
    pub kind: &'static str,
}

/// Every metric the data plane exports.
pub struct Metrics {
    registry: Registry,
    /// Open client connections this pod owns, by route: summed over the
    /// pods, every client once.
    pub connections_open: Family<RouteLabel, Gauge>,
    /// Client connections that entered here and are relayed to their
    /// owner pod (which counts them in its `connections_open`), by route.
    pub connections_relayed: Family<RouteLabel, Gauge>,
    /// Upgrade requests by outcome.
    pub handshakes: Family<OutcomeLabel, Counter>,
    /// Messages client → backend.
    pub messages_to_backend: Counter,
    /// Messages backend → client.
    pub messages_to_client: Counter,
    /// Bytes client → backend (frames as relayed).
    pub bytes_to_backend: Counter,
    /// Bytes backend → client.
    pub bytes_to_client: Counter,
    /// Connection closes by code and reason.
    pub closes: Family<CloseLabels, Counter>,
    /// Connections drained, by cause.
    pub drains: Family<CauseLabel, Counter>,
    /// Time from reading bytes to having written them on, sampled.
    pub relay_latency: Histogram,
    /// Connections that ended by an error, a panic or a timeout.
    pub connection_failures: Family<KindLabel, Counter>,
    /// Errors accepting connections (e.g. out of file descriptors).
    pub accept_errors: Counter,
    /// Hand-offs to owner shards, by outcome.
    pub handoffs: Family<OutcomeLabel, Counter>,
    /// Snapshots received, by outcome.
    pub snapshots: Family<OutcomeLabel, Counter>,
    /// The running snapshot epoch.
    pub epoch: Gauge,
    /// Refused upgrades by reason, for the status RPC (the counter family
    /// cannot be read back).
    refusals: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, registered for export.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ringway");
        let connections_open = Family::<RouteLabel, Gauge>::default();
        let connections_relayed = Family::<RouteLabel, Gauge>::default();
        let handshakes = Family::<OutcomeLabel, Counter>::default();
        let messages = Family::<DirectionLabel, Counter>::default();
        let bytes = Family::<DirectionLabel, Counter>::default();
        let closes = Family::<CloseLabels, Counter>::default();
        let drains = Family::<CauseLabel, Counter>::default();
        // 10 µs to ~10 s.
        let relay_latency = Histogram::new([
            10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 0.25,
            1.0, 10.0,
        ]);
        let connection_failures = Family::<KindLabel, Counter>::default();
        let accept_errors = Counter::default();
        let handoffs = Family::<OutcomeLabel, Counter>::default();
        let snapshots = Family::<OutcomeLabel, Counter>::default();
        let epoch = Gauge::default();
        registry.register(
            "handoffs",
            "Connections handed to their owner shard, by outcome: ok, fallback (to the next shard on the ring), unreachable (one attempt), refused",
            handoffs.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots received on the control port, by outcome: applied, unchanged, stale, invalid",
            snapshots.clone(),
        );
        registry.register(
            "snapshot_epoch",
            "The running snapshot epoch",
            epoch.clone(),
        );
        registry.register(
            "connections_open",
            "Open client connections this pod owns (relays to a backend); summed over the pods, each client counts once",
            connections_open.clone(),
        );
        registry.register(
            "connections_relayed",
            "Client connections that entered through this pod and are relayed to their owner pod, which counts them in connections_open",
            connections_relayed.clone(),
        );
        registry.register(
            "handshakes",
            "WebSocket upgrade requests by outcome",
            handshakes.clone(),
        );
        registry.register("messages", "WebSocket messages relayed", messages.clone());
        registry.register("bytes", "Bytes of WebSocket frames relayed", bytes.clone());
        registry.register(
            "closes",
            "Connections closed, by close code and reason",
            closes.clone(),
        );
        registry.register(
            "drains",
            "Connections drained by the gateway, by cause",
            drains.clone(),
        );
        registry.register(
            "relay_latency_seconds",
            "Time from reading bytes from one side to writing them to the other (1 in 8 sampled)",
            relay_latency.clone(),
        );
        registry.register(
            "connection_failures",
            "Connections ended by an error, panic or timeout",
            connection_failures.clone(),
        );
        registry.register(
            "accept_errors",
            "Errors accepting client connections",
            accept_errors.clone(),
        );
        // One statement each: `get_or_create` returns a read guard, and
        // guards kept alive together would deadlock the next insert.
        let by_direction = |family: &Family<DirectionLabel, Counter>, direction: &'static str| {
            family.get_or_create(&DirectionLabel { direction }).clone()
        };
        let messages_to_backend = by_direction(&messages, "to_backend");
        let messages_to_client = by_direction(&messages, "to_client");
        let bytes_to_backend = by_direction(&bytes, "to_backend");
        let bytes_to_client = by_direction(&bytes, "to_client");
        Self {
            messages_to_backend,
            messages_to_client,
            bytes_to_backend,
            bytes_to_client,
            registry,
            connections_open,
            connections_relayed,
            handshakes,
            closes,
            drains,
            relay_latency,
            connection_failures,
            accept_errors,
            handoffs,
            snapshots,
            epoch,
            refusals: std::sync::Mutex::default(),
        }
    }

    /// Counts one hand-off attempt's outcome.
    pub fn handoff(&self, outcome: &'static str) {
        self.handoffs.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts one snapshot's outcome.
    pub fn snapshot(&self, outcome: &'static str) {
        self.snapshots
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Upgrades refused since start, by reason.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(r, n)| (*r, *n))
            .collect()
    }

    /// Counts one upgrade request's outcome.
    pub fn handshake(&self, outcome: &'static str) {
        self.handshakes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        if !matches!(outcome, "ok" | "handed_off") {
            *self
                .refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(outcome)
                .or_default() += 1;
        }
    }

    /// Counts one connection close.
    pub fn close(&self, code: Option<u16>, reason: &'static str) {
        let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        self.closes
            .get_or_create(&CloseLabels { code, reason })
            .inc();
    }

    /// Counts one failed connection.
    pub fn failure(&self, kind: &'static str) {
        self.connection_failures
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}
