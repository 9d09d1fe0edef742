//! Prometheus metrics, all prefixed `ringway_`. Handles that the relay
//! touches per message are resolved once, so the hot path only does atomic
//! adds. Beside them, the owner's tally ([`OwnerTally`]) and the edge's
//! ([`EdgeTally`]) that the control channel reports.

mod edge;
mod owned;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use self::{edge::EdgeTally, owned::OwnerTally};
use crate::routing::Version;

/// Which tally a connection's close goes in, besides `ringway_closes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    /// The owner's: this pod owns the connection.
    Owner,
    /// The edge's: this pod relays the connection to its owner and decided
    /// the close itself; the key's version.
    EdgeDecided(Version),
    /// Neither: an edge's close that an endpoint decided (the owner
    /// counts it as its client's close).
    None,
}

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
    /// The WebSocket close code (see [`close_code_label`]), `none` for a
    /// TCP close without one.
    pub code: &'static str,
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

/// Labels of the sidecar drain counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacedByLabel {
    /// `operator` (its Drain RPC paced the drain when it started) or
    /// `local` (the sidecar's own rate).
    pub paced_by: &'static str,
}

/// Labels of the protocol error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    /// Who broke RFC 6455 or a limit: `client` or `backend`.
    pub from: &'static str,
    /// What was broken ([`crate::frame::ProtocolError::label`]).
    pub violation: &'static str,
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
    /// Connections still open when a drain's time was up.
    pub drain_cut: Counter,
    /// Requests to `/drain` refused (403).
    pub drain_refusals: Counter,
    /// Sidecars: drains in place begun, by who paced them then.
    pub sidecar_drains: Family<PacedByLabel, Counter>,
    /// Sidecars: 1 while the control port serves, through which the
    /// operator paces the drain; 0 otherwise (paced locally).
    pub sidecar_control_serving: Gauge,
    /// Time from reading bytes to having written them on, sampled.
    pub relay_latency: Histogram,
    /// Connections that ended by an error, a panic or a timeout.
    pub connection_failures: Family<KindLabel, Counter>,
    /// Connections failed because an endpoint broke the protocol or a
    /// size limit, by endpoint and violation.
    pub protocol_errors: Family<ViolationLabels, Counter>,
    /// Errors accepting connections (e.g. out of file descriptors).
    pub accept_errors: Counter,
    /// Times the allocator's free pages were given back to the system
    /// after many connections ended ([`crate::memory`]).
    pub memory_releases: Counter,
    /// Hand-offs to owner shards, by outcome.
    pub handoffs: Family<OutcomeLabel, Counter>,
    /// Snapshots received, by outcome.
    pub snapshots: Family<OutcomeLabel, Counter>,
    /// The running snapshot epoch.
    pub epoch: Gauge,
    /// What the clients that do not keep up hold, as charged against
    /// `connections.maxQueuedBytes`.
    pub send_queue_bytes: Gauge,
    /// Clients that do not keep up with their backend.
    pub stalled_clients: Gauge,
    /// Refused upgrades by reason, for the status RPC (the counter family
    /// cannot be read back).
    refusals: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// What the connections this pod owns came to, for the status RPC.
    pub owned: OwnerTally,
    /// The closes this pod decided as an edge, for the status RPC.
    pub edge: EdgeTally,
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
        let drain_cut = Counter::default();
        let drain_refusals = Counter::default();
        let sidecar_drains = Family::<PacedByLabel, Counter>::default();
        let sidecar_control_serving = Gauge::default();
        // 10 µs to ~10 s.
        let relay_latency = Histogram::new([
            10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 0.25,
            1.0, 10.0,
        ]);
        let connection_failures = Family::<KindLabel, Counter>::default();
        let protocol_errors = Family::<ViolationLabels, Counter>::default();
        let accept_errors = Counter::default();
        let memory_releases = Counter::default();
        let handoffs = Family::<OutcomeLabel, Counter>::default();
        let snapshots = Family::<OutcomeLabel, Counter>::default();
        let epoch = Gauge::default();
        let send_queue_bytes = Gauge::default();
        let stalled_clients = Gauge::default();
        registry.register(
            "send_queue_bytes",
            "Bytes held for clients that do not keep up (a full send buffer and one read each), against connections.maxQueuedBytes",
            send_queue_bytes.clone(),
        );
        registry.register(
            "stalled_clients",
            "Clients whose send buffer is full while their backend has more for them",
            stalled_clients.clone(),
        );
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
            "drain_cut_connections",
            "Connections still open when a drain's time (its window and the close timeout) was up: the process's stop, or a sidecar's application's, cuts them",
            drain_cut.clone(),
        );
        registry.register(
            "drain_refusals",
            "Requests to the admin port's /drain refused (403): not from the pod's loopback and without the drain token",
            drain_refusals.clone(),
        );
        registry.register(
            "sidecar_drains",
            "Sidecars: drains in place begun (one per pod stop), by who paced them when they began: operator (its Drain RPC, a share of the workload's budget) or local (the sidecar's own rate)",
            sidecar_drains.clone(),
        );
        registry.register(
            "sidecar_control_serving",
            "Sidecars: 1 while the control port serves (the operator paces the drain), 0 when it does not (no certificate: the drain is paced locally); 0 on gateway pods",
            sidecar_control_serving.clone(),
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
            "protocol_errors",
            "Connections failed because an endpoint broke RFC 6455 or a size limit, by endpoint (client, backend) and violation",
            protocol_errors.clone(),
        );
        registry.register(
            "accept_errors",
            "Errors accepting client connections",
            accept_errors.clone(),
        );
        registry.register(
            "memory_releases",
            "Times the allocator's free pages were given back to the system after many connections ended",
            memory_releases.clone(),
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
            drain_cut,
            drain_refusals,
            sidecar_drains,
            sidecar_control_serving,
            relay_latency,
            connection_failures,
            protocol_errors,
            accept_errors,
            memory_releases,
            handoffs,
            snapshots,
            epoch,
            send_queue_bytes,
            stalled_clients,
            refusals: std::sync::Mutex::default(),
            owned: OwnerTally::new(),
            edge: EdgeTally::default(),
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

    /// Counts one sidecar drain begun, paced by `paced_by`.
    pub fn sidecar_drain(&self, paced_by: &'static str) {
        self.sidecar_drains
            .get_or_create(&PacedByLabel { paced_by })
            .inc();
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

    /// Counts one connection close, and in `tally`.
    pub fn close(&self, code: Option<u16>, reason: &'static str, tally: Tally) {
        self.closes
            .get_or_create(&CloseLabels {
                code: close_code_label(code),
                reason,
            })
            .inc();
        match tally {
            Tally::Owner => self.owned.close(code, reason),
            Tally::EdgeDecided(version) => self.edge.close(version, code, reason),
            Tally::None => {}
        }
    }

    /// Counts one connection failed because `from` (`client` or
    /// `backend`) committed `violation`.
    pub fn protocol_error(&self, from: &'static str, violation: &'static str) {
        self.protocol_errors
            .get_or_create(&ViolationLabels { from, violation })
            .inc();
    }

    /// Counts one failed connection, and in the owner's tally when this
    /// pod `owned` it.
    pub fn failure(&self, kind: &'static str, owned: bool) {
        self.connection_failures
            .get_or_create(&KindLabel { kind })
            .inc();
        if owned {
            self.owned.failure(kind);
        }
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

/// The `code` label of a close: the code itself when RFC 6455 or IANA's
/// registry defines it for the wire, else a bucket. The code comes from
/// the peers, so each distinct value must not become a series of its own:
/// `3xxx` (registered for libraries and frameworks), `4xxx` (private use)
/// and `invalid` (anything a peer may not send: below 1000, 1004-1006,
/// 1015, unassigned, 5000 and up) bound the label to 16 values.
pub fn close_code_label(code: Option<u16>) -> &'static str {
    match code {
        None => "none",
        Some(1000) => "1000",
        Some(1001) => "1001",
        Some(1002) => "1002",
        Some(1003) => "1003",
        Some(1007) => "1007",
        Some(1008) => "1008",
        Some(1009) => "1009",
        Some(1010) => "1010",
        Some(1011) => "1011",
        Some(1012) => "1012",
        Some(1013) => "1013",
        Some(1014) => "1014",
        Some(3000..=3999) => "3xxx",
        Some(4000..=4999) => "4xxx",
        Some(_) => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_from_peers_make_a_bounded_set_of_series() {
        let metrics = Metrics::new();
        for code in (0..=u16::MAX).map(Some).chain([None]) {
            metrics.close(code, "client", Tally::None);
        }
        let rendered = metrics.render();
        let series: Vec<&str> = rendered
            .lines()
            .filter(|l| l.starts_with("ringway_closes_total{"))
            .collect();
        assert_eq!(series.len(), 16, "{series:#?}");
        for (label, count) in [
            ("none", 1),
            ("1000", 1),
            ("1014", 1),
            ("3xxx", 1000),
            ("4xxx", 1000),
            // 65,536 codes less the 12 named and the 2,000 bucketed.
            ("invalid", 63_524),
        ] {
            let line =
                format!("ringway_closes_total{{code=\"{label}\",reason=\"client\"}} {count}");
            assert!(series.contains(&line.as_str()), "{line} not in {series:#?}");
        }
        for gone in ["1004", "1005", "1006", "1015", "999", "5000"] {
            assert!(!rendered.contains(&format!("code=\"{gone}\"")), "{gone}");
        }
    }
}
