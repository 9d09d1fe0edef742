//! What the plan sees of each slot: its StatefulSet and pods, as the API
//! server shows them and as the pods last reported, and what a drain of
//! its pods waits for ([`Drain`]): a pod whose status poll failed holds an
//! unknown number of connections, never zero.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use ringway_crds::Slot;

use super::analysis::Counters;
use crate::PodInputs;

/// One data-plane pod as the API server shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    /// The pod's name: also its shard id.
    pub name: String,
    /// The StatefulSet ordinal.
    pub ordinal: i32,
    /// `status.podIP`, once it has one.
    pub ip: Option<String>,
    /// Running and not being deleted: it can take a snapshot.
    pub running: bool,
    /// The `Ready` condition: it has a snapshot and is not draining.
    pub ready: bool,
    /// It runs the StatefulSet's latest template.
    pub updated: bool,
    /// The live connections it owns (relays to a backend), from its last
    /// status report.
    pub connections: Option<i64>,
    /// The clients that entered through it and that it relays to their
    /// owner on another pod, from the same report.
    pub relayed: Option<i64>,
    /// It said, lately, that it serves its shard (has a snapshot, is not
    /// stopping), even if it answers not ready because the snapshot took
    /// it out of the client Service (see [`PodView::in_ring`]).
    pub serving: bool,
    /// `metadata.uid`: a pod deleted and made again under its name is
    /// another pod.
    pub uid: String,
    /// Restarts of its data-plane container.
    pub restarts: u32,
    /// What it last reported of the connections it owns, for the canary
    /// analysis; `None` before its first report, or from a data plane too
    /// old to report it.
    pub owned: Option<Counters>,
    /// Since when its status polls have failed without a break (the
    /// operator's memory: a restart starts the count again); `None` when
    /// it answered the last poll or was not asked.
    pub unanswered_since: Option<Timestamp>,
}

/// How long a drain waits to hear from a pod whose status polls fail
/// before it goes on without it. Polls run every reconcile of a rollout
/// (every 5 s), so this is some 24 polls, each already retried by the
/// control channel: longer than a data-plane pod takes to restart and than
/// the 40 s after which Kubernetes marks an unreachable node's pods not
/// ready, so a passing fault is waited out; short enough that a pod that
/// is wedged or cut off does not hold a promotion or an abort (and the
/// extra pods it keeps running) for good. Past it the pod is reported and
/// its stop closes whatever it holds, with 1001 over its grace period.
pub const UNKNOWN_COUNT_BOUND: Duration = Duration::from_secs(120);

/// What the operator knows of the connections a pod holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// As it last reported; a pod that is not running (or has no address)
    /// holds nothing.
    Known(PodCounts),
    /// It runs with an address but its status polls fail: a drain waits
    /// to hear from it.
    Unknown,
    /// Its status polls have failed for longer than
    /// [`UNKNOWN_COUNT_BOUND`]: a drain reports it and goes on without it.
    Unreachable,
}

/// What one pod reported holding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounts {
    /// Connections it owns.
    pub owned: i64,
    /// Connections it relays to their owner.
    pub relayed: i64,
}

impl PodCounts {
    /// Every client connection the pod's stop would close: those it owns
    /// and those it relays.
    pub fn held(&self) -> i64 {
        self.owned + self.relayed
    }
}

impl PodView {
    /// What is known of its connections at `now`.
    pub fn count(&self, now: Timestamp) -> Count {
        if let Some(owned) = self.connections {
            return Count::Known(PodCounts {
                owned,
                relayed: self.relayed.unwrap_or(0),
            });
        }
        if !self.steerable() {
            return Count::Known(PodCounts::default());
        }
        let waited = self
            .unanswered_since
            .map_or(0, |since| now.duration_since(since).as_secs());
        if waited >= UNKNOWN_COUNT_BOUND.as_secs().try_into().unwrap_or(i64::MAX) {
            Count::Unreachable
        } else {
            Count::Unknown
        }
    }

    /// Takes a snapshot push: running, with an address.
    pub fn steerable(&self) -> bool {
        self.running && self.ip.is_some()
    }

    /// Holds a place in the ring: ready, with an address; or serving
    /// while out of the client Service on purpose (a version whose keys
    /// are moving away takes no new clients but owns its keys until they
    /// have moved).
    pub fn in_ring(&self) -> bool {
        self.steerable() && (self.ready || self.serving)
    }
}

/// One slot's StatefulSet and pods; a slot without a StatefulSet has
/// `replicas == 0`, no inputs and no pods.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotView {
    /// Which slot.
    pub slot: Slot,
    /// What its StatefulSet was rendered from (its annotation).
    pub inputs: Option<PodInputs>,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `spec.updateStrategy.rollingUpdate.partition`.
    pub partition: i32,
    /// The pod template's revision and control-certificate annotations.
    pub template: Option<(String, String)>,
    /// Its pods.
    pub pods: Vec<PodView>,
}

impl SlotView {
    /// A slot with no StatefulSet.
    pub fn empty(slot: Slot) -> Self {
        Self {
            slot,
            inputs: None,
            replicas: 0,
            partition: 0,
            template: None,
            pods: Vec::new(),
        }
    }

    /// Pods that hold a place in the ring.
    pub fn ready(&self) -> i32 {
        self.pods.iter().filter(|p| p.in_ring()).count() as i32
    }

    /// Live connections on this slot's pods, as last reported: those
    /// whose count is unknown add nothing (see [`SlotView::drain`]).
    pub fn connections(&self) -> i64 {
        self.pods.iter().filter_map(|p| p.connections).sum()
    }

    /// What a drain of this slot's pods waits for at `now`.
    pub fn drain(&self, now: Timestamp) -> Drain {
        let mut drain = Drain::default();
        for pod in &self.pods {
            match pod.count(now) {
                Count::Known(c) => drain.connections += c.owned,
                Count::Unknown => drain.unknown.push(pod.name.clone()),
                Count::Unreachable => drain.unreachable.push(pod.name.clone()),
            }
        }
        drain
    }
}

/// What stopping a set of pods waits for: the connections they own, and
/// the pods whose counts are unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drain {
    /// Connections the pods own, as last reported.
    pub connections: i64,
    /// Pods whose status polls fail, still waited for.
    pub unknown: Vec<String>,
    /// Pods whose status polls have failed for longer than
    /// [`UNKNOWN_COUNT_BOUND`]: reported, not waited for.
    pub unreachable: Vec<String>,
}

impl Drain {
    /// Nothing left to wait for.
    pub fn done(&self) -> bool {
        self.connections == 0 && self.unknown.is_empty()
    }

    /// What is waited on, for a condition: `whose` names the pods ("the
    /// old version's pods").
    pub fn waiting_for(&self, whose: &str) -> String {
        let left = format!("{} connections left on {whose}", self.connections);
        match (self.unknown.is_empty(), self.connections) {
            (true, _) => left,
            (false, 0) => waiting_to_hear(&self.unknown),
            (false, _) => format!("{}; {left}", waiting_to_hear(&self.unknown)),
        }
    }
}

/// "waiting to hear how many connections pods x-b-0, x-b-1 hold (their
/// status polls failed)".
pub fn waiting_to_hear(pods: &[String]) -> String {
    match pods {
        [one] => format!(
            "waiting to hear how many connections pod {one} holds (its status polls failed)"
        ),
        _ => format!(
            "waiting to hear how many connections pods {} hold (their status polls failed)",
            pods.join(", ")
        ),
    }
}

/// What a condition and a Warning event say of pods given up on.
pub fn unreachable_report(pods: &[String]) -> String {
    let bound = UNKNOWN_COUNT_BOUND.as_secs();
    match pods {
        [one] => format!(
            "pod {one} has not answered status polls for {bound}s: its connections are unknown and will be closed by its stop (over its grace period, with 1001)"
        ),
        _ => format!(
            "pods {} have not answered status polls for {bound}s: their connections are unknown and will be closed by their stop (over their grace period, with 1001)",
            pods.join(", ")
        ),
    }
}
