//! Kubernetes events about gateways (and the sidecar audit's about
//! workloads), each showing what it says now.
//!
//! kube's [`Recorder`] folds every event of one type, reason and action
//! about one object into a series that keeps the *first* note: the weight
//! steps of a canary became "canary weight 0% → 10%" with a count of 10
//! while the weight went on to 50%. Here a series only ever repeats one
//! note: each distinct (type, reason, note) has its own recorder, so that
//! something new is a new event and the same thing again is counted on
//! the event that says it.

use std::{collections::HashMap, sync::Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

/// Distinct notes remembered before the oldest are forgotten; a repeat of
/// a forgotten note starts a new event instead of adding to a series.
const NOTES_KEPT: usize = 256;

/// Publishes events; one per distinct note, a series for its repeats.
pub struct Events {
    client: Client,
    reporter: Reporter,
    recorders: Mutex<HashMap<Key, Recorder>>,
}

/// What makes two events the same event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    type_: EventType,
    reason: String,
    note: String,
}

impl Events {
    /// Events reported as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recorders: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `note` about `regarding`, or counts it again if that
    /// object already has an event that says exactly this.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let key = Key {
            type_,
            reason: reason.to_owned(),
            note,
        };
        let recorder = {
            let mut recorders = self.recorders.lock().unwrap_or_else(|e| e.into_inner());
            if recorders.len() >= NOTES_KEPT && !recorders.contains_key(&key) {
                recorders.clear();
            }
            recorders
                .entry(key.clone())
                .or_insert_with(|| Recorder::new(self.client.clone(), self.reporter.clone()))
                .clone()
        };
        let event = Event {
            type_,
            reason: key.reason,
            note: Some(key.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish(&event, regarding).await
    }
}
