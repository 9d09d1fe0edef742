//! From the pods' cumulative counters to what each version measured since
//! the canary reached its weight: a [`Window`] marks every pod's counters
//! and restarts when it opens, and [`Window::sample`] takes the
//! differences. A pod whose process restarted counts from zero again (its
//! counters did); a pod that came after the window opened counts whole.
//!
//! Windows live in the operator's memory: after a restart of the operator
//! the next one opens at that moment, and the step's hold starts again.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use ringway_control::proto as v1;
use ringway_crds::{CanaryStatus, Slot};

use super::{Measure, PerMeasure, Sample};
use crate::{names::slot_index, rollout::SlotView};

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
}

impl Counters {
    /// From a pod's report: each labelled count into the measure it counts
    /// in, the rest (the endpoints' own closes, intended ones) left out.
    pub fn from_report(report: &v1::OwnerCounters) -> Self {
        let mut counters = Self {
            boot: report.boot,
            connection_millis: report.connection_millis,
            upgrades: report.upgrades,
            events: PerMeasure::default(),
        };
        let counted = report
            .upgrade_failures
            .iter()
            .map(|r| (Measure::of_handshake(&r.reason), r.count))
            .chain(report.closes.iter().map(|c| {
                let code = u16::try_from(c.code).ok().filter(|&code| code != 0);
                (Measure::of_close(code, &c.reason), c.count)
            }))
            .chain(
                report
                    .failures
                    .iter()
                    .map(|r| (Measure::of_failure(&r.reason), r.count)),
            );
        for (measure, count) in counted {
            if let Some(measure) = measure {
                let sum = counters.events.get_mut(measure);
                *sum = sum.saturating_add(count);
            }
        }
        counters
    }

    /// What was counted since `mark`, taken from the same process; all of
    /// it when the process restarted since.
    fn since(&self, mark: &Self) -> Self {
        if self.boot != mark.boot {
            return *self;
        }
        let mut events = PerMeasure::default();
        for measure in Measure::ALL {
            *events.get_mut(measure) = self
                .events
                .get(measure)
                .saturating_sub(*mark.events.get(measure));
        }
        Self {
            boot: self.boot,
            connection_millis: self
                .connection_millis
                .saturating_sub(mark.connection_millis),
            upgrades: self.upgrades.saturating_sub(mark.upgrades),
            events,
        }
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

    /// What `slot`'s pods measured since the window opened; pods that have
    /// not reported add nothing yet.
    pub fn sample(&self, slots: &[SlotView; 2], slot: Slot) -> Sample {
        let mut sample = Sample::default();
        for pod in &slots[slot_index(slot)].pods {
            let mark = self.marks.get(&pod.name).filter(|m| m.uid == pod.uid);
            sample.restarts = sample
                .restarts
                .saturating_add(pod.restarts - mark.map_or(0, |m| m.restarts.min(pod.restarts)));
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
            sample.connection_seconds = sample
                .connection_seconds
                .saturating_add(counted.connection_millis / 1000);
            sample.upgrades = sample.upgrades.saturating_add(counted.upgrades);
            for measure in Measure::ALL {
                let sum = sample.events.get_mut(measure);
                *sum = sum.saturating_add(*counted.events.get(measure));
            }
        }
        sample
    }
}
