//! What every reconcile shares ([`Context`]: the API client, the control
//! channel, metrics, events, the watches' stores) and what the operator
//! remembers of each gateway between reconciles (`Memory`).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
};

use k8s_openapi::jiff::Timestamp;
use kube::Client;

use crate::{
    children::OperatorPods,
    events::Events,
    metrics::Metrics,
    rollout::{
        PodCounts,
        analysis::{Counters, Window},
    },
    steer::Steer,
    stores::Stores,
};

/// What every reconcile shares.
pub struct Context<S> {
    /// The API client.
    pub client: Client,
    /// The control channel.
    pub steer: S,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes events.
    pub events: Events,
    /// The data-plane image when a spec names none.
    pub default_image: String,
    /// The operator's own pods, which gateways' NetworkPolicies admit to
    /// the control port.
    pub operator_pods: OperatorPods,
    /// The watched objects the reconcile reads.
    pub stores: Stores,
    memory: Mutex<HashMap<String, Memory>>,
}

/// What the operator remembers of a gateway between reconciles. Losing it
/// (a restart) costs one snapshot push with a new epoch and one status poll.
#[derive(Clone, Debug, Default)]
pub(crate) struct Memory {
    /// Content hash and epoch of the last snapshot issued.
    pub hash: u64,
    pub epoch: u64,
    /// Control addresses that acknowledged `epoch`.
    pub acked: BTreeSet<String>,
    /// When the pods were last asked for their counts.
    pub polled: Option<Instant>,
    /// Live connections by pod name, from the last poll.
    pub connections: HashMap<String, PodCounts>,
    /// What each pod reported of the connections it owns, from the last
    /// poll, for the canary analysis.
    pub counters: HashMap<String, Counters>,
    /// Whether each pod said it serves its shard, from its last answer
    /// (kept while its polls fail; see [`crate::observe::SERVING_GRACE`]).
    pub serving: HashMap<String, bool>,
    /// The canary analysis's current window.
    pub analysis: Option<Window>,
    /// Pods whose status polls have failed without a break, since when:
    /// the rollout's bound on waiting for them
    /// ([`crate::rollout::UNKNOWN_COUNT_BOUND`]) starts again on a
    /// restart.
    pub unanswered: HashMap<String, Timestamp>,
    /// Pods already reported (a Warning event) as gone on without, so
    /// that a step retried is not reported again.
    pub reported_unreachable: BTreeSet<String>,
    /// Consecutive failed reconciles, for the backoff.
    pub failures: u32,
    /// The last phase change published as an event: a step that is
    /// planned again (its push was not acknowledged) is not news.
    pub transition: Option<(&'static str, String)>,
}

impl<S: Steer> Context<S> {
    /// A context for the controller.
    pub fn new(
        client: Client,
        steer: S,
        metrics: Arc<Metrics>,
        events: Events,
        default_image: String,
        operator_pods: OperatorPods,
        stores: Stores,
    ) -> Self {
        Self {
            client,
            steer,
            metrics,
            events,
            default_image,
            operator_pods,
            stores,
            memory: Mutex::default(),
        }
    }

    pub(crate) fn memory(&self, key: &str) -> Memory {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn remember(&self, key: &str, f: impl FnOnce(&mut Memory)) {
        let mut all = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(key.to_owned()).or_default());
    }

    pub(crate) fn forget(&self, key: &str) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        self.steer.forget(key);
        self.metrics.forget_gateway(key);
    }
}
