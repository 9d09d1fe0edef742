//! From the pods' cumulative counters to what each version measured since
//! the canary reached its weight: a [`Window`] marks every pod's counters
//! and restarts when it opens, and [`Window::sample`] takes the
//! differences. A pod whose process restarted counts from zero again (its
//! counters did); a pod that came after the window opened counts whole.
//!
//! A version's sample is what its own pods counted of the connections
//! they own, and what every pod counted, as the edge that holds the
//! client's socket, of the closes it decided for connections of that
//! version's keys (the client-facing limits are enforced there).
//!
//! Windows live in the operator's memory: after a restart of the operator
//! the next one opens at that moment, and the step's hold starts again.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use ringway_control::proto as v1;
use ringway_crds::{CanaryStatus, Slot};

use super::{Measure, PerMeasure, Sample};
use crate::rollout::SlotView;

/// What a pod reported of the connections it owns, by measure; cumulative
/// since `boot`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Changes when the pod's process restarts (and its counters with it).
    pub boot: u64,
    /// Owned connections integrated over time.
    pub connection_millis: u64,
    /// Upgrades attempted towards backends.
    pub upgrades: u64,
    /// Bad outcomes.
    pub events: PerMeasure<u64>,
    /// Bad outcomes it decided as the edge of connections other pods own,
    /// by their keys' version: `[stable, canary]`.
    pub edge: [PerMeasure<u64>; 2],
}

/// [`Counters::edge`]'s index of a version.
fn edge_index(canary: bool) -> usize {
    usize::from(canary)
}

impl Counters {
    /// From a pod's report: each labelled count into the measure it counts
    /// in, the rest (the endpoints' own closes, intended ones) left out.
    pub fn from_report(report: &v1::OwnerCounters, edge: &[v1::VersionCloses]) -> Self {
        let mut counters = Self {
            boot: report.boot,
            connection_millis: report.connection_millis,
            upgrades: report.upgrades,
            events: PerMeasure::default(),
            edge: [PerMeasure::default(); 2],
        };
        for by_version in edge {
            let canary = match v1::Version::try_from(by_version.version) {
                Ok(v1::Version::Stable) => false,
                Ok(v1::Version::Canary) => true,
                _ => continue,
            };
            add_closes(&mut counters.edge[edge_index(canary)], &by_version.closes);
        }
        for r in &report.upgrade_failures {
            counters
                .events
                .count(Measure::of_handshake(&r.reason), r.count);
        }
        for r in &report.failures {
            counters
                .events
                .count(Measure::of_failure(&r.reason), r.count);
        }
        add_closes(&mut counters.events, &report.closes);
        counters
    }

    /// What was counted since `mark`, taken from the same process; all of
    /// it when the process restarted since.
    fn since(&self, mark: &Self) -> Self {
        if self.boot != mark.boot {
            return *self;
        }
        Self {
            boot: self.boot,
            connection_millis: self
                .connection_millis
                .saturating_sub(mark.connection_millis),
            upgrades: self.upgrades.saturating_sub(mark.upgrades),
            events: self.events.minus(&mark.events),
            edge: [0, 1].map(|i| self.edge[i].minus(&mark.edge[i])),
        }
    }
}

/// Adds each close that counts in a measure to it.
fn add_closes(events: &mut PerMeasure<u64>, closes: &[v1::CloseCount]) {
    for c in closes {
        let code = u16::try_from(c.code).ok().filter(|&code| code != 0);
        events.count(Measure::of_close(code, &c.reason), c.count);
    }
}

/// One pod as the window found it when it opened.
#[derive(Clone, Debug, PartialEq)]
struct Mark {
    uid: String,
    restarts: u32,
    /// `None` when the pod had not reported: its first report is taken
    /// as the mark.
    counters: Option<Counters>,
}

/// The analysis of one canary weight: since when, and each pod's counters
/// then.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The canary's slot.
    pub canary: Slot,
    /// The weight the window measures.
    pub weight: u8,
    /// When it opened.
    pub since: Timestamp,
    marks: BTreeMap<String, Mark>,
}

impl Window {
    /// Keeps `window` while the canary holds the same slot and weight,
    /// and fills in the marks of pods that had not reported; opens a new
    /// one at `now` when the weight or the canary changed; none without a
    /// canary with keys.
    pub fn follow(
        window: Option<Self>,
        canary: Option<&CanaryStatus>,
        slots: &[SlotView; 2],
        now: Timestamp,
    ) -> Option<Self> {
        let canary = canary.filter(|c| c.weight > 0)?;
        let mut window = window
            .filter(|w| w.canary == canary.pods.slot && w.weight == canary.weight)
            .unwrap_or_else(|| Self {
                canary: canary.pods.slot,
                weight: canary.weight,
                since: now,
                marks: BTreeMap::new(),
            });
        let fresh = window.marks.is_empty();
        for pod in slots.iter().flat_map(|s| &s.pods) {
            match window.marks.get_mut(&pod.name) {
                Some(mark) if mark.counters.is_none() && mark.uid == pod.uid => {
                    mark.counters = pod.owned;
                }
                None if fresh => {
                    window.marks.insert(
                        pod.name.clone(),
                        Mark {
                            uid: pod.uid.clone(),
                            restarts: pod.restarts,
                            counters: pod.owned,
                        },
                    );
                }
                _ => {}
            }
        }
        Some(window)
    }

    /// What `slot`'s version measured since the window opened: its pods'
    /// counts of the connections they own, and every pod's counts, as the
    /// edge, of the closes it decided for that version's keys. Pods that
    /// have not reported add nothing yet.
    pub fn sample(&self, slots: &[SlotView; 2], slot: Slot) -> Sample {
        let version = edge_index(slot == self.canary);
        let mut sample = Sample::default();
        for (pod_slot, pod) in slots
            .iter()
            .flat_map(|s| s.pods.iter().map(move |p| (s.slot, p)))
        {
            let own = pod_slot == slot;
            let mark = self.marks.get(&pod.name).filter(|m| m.uid == pod.uid);
            if own {
                let before = mark.map_or(0, |m| m.restarts.min(pod.restarts));
                sample.restarts = sample.restarts.saturating_add(pod.restarts - before);
            }
            let Some(now) = pod.owned else {
                continue;
            };
            let counted = match mark.map(|m| m.counters) {
                Some(Some(then)) => now.since(&then),
                // Seen when the window opened, not heard from until now:
                // its mark is taken at the next follow, nothing counts yet.
                Some(None) => continue,
                None => now,
            };
            sample.events.add(&counted.edge[version]);
            if own {
                sample.connection_seconds = sample
                    .connection_seconds
                    .saturating_add(counted.connection_millis / 1000);
                sample.upgrades = sample.upgrades.saturating_add(counted.upgrades);
                sample.events.add(&counted.events);
            }
        }
        sample
    }
}
