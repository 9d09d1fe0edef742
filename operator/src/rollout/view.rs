//! What the plan sees of each slot: its StatefulSet and pods, as the API
//! server shows them and as the pods last reported.

use ringway_crds::Slot;

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
}

/// What one pod reported holding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounts {
    /// Connections it owns.
    pub owned: i64,
    /// Connections it relays to their owner.
    pub relayed: i64,
}

impl PodView {
    /// Every client connection its stop would close: those it owns and
    /// those it relays.
    pub fn held(&self) -> i64 {
        self.connections.unwrap_or(0) + self.relayed.unwrap_or(0)
    }

    /// Takes a snapshot push: running, with an address.
    pub fn steerable(&self) -> bool {
        self.running && self.ip.is_some()
    }

    /// Holds a place in the ring: ready, with an address.
    pub fn in_ring(&self) -> bool {
        self.steerable() && self.ready
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

    /// Live connections on this slot's pods, as last reported.
    pub fn connections(&self) -> i64 {
        self.pods.iter().filter_map(|p| p.connections).sum()
    }
}
