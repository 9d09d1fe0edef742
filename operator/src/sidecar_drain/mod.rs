//! The fleet-wide reconnect budget of injected sidecars: the pods of one
//! workload share one budget of closes per second
//! (`ringway.dev/sidecar-max-closes-per-second`), and the leader paces
//! their drains so that, together, they never close more clients per
//! second than it allows.
//!
//! Each sidecar drains its clients when its pod stops. Alone, it paces
//! itself at the whole budget; it cannot know that a rollout is stopping
//! ten of its siblings at the same moment. The leader does: it watches the
//! injected pods ([`pods`]), and while some of a workload's pods are
//! terminating it splits the budget among them ([`shares`]) and tells each
//! its share over the pod's control port ([`pace`], the same `Drain` RPC
//! and mutual TLS as a gateway pod's). A sidecar paced so closes as fast
//! as its share allows, with its drain window as the deadline; one the
//! leader does not reach within a moment drains at its own rate.
//!
//! This module is the bookkeeping, pure and unit-tested: [`Fleet`] holds
//! what each draining pod was told and has left, and turns the set of
//! terminating pods into the calls to make ([`Fleet::plan`]) and the
//! answers into [`Report`]s. Shares are lowered before any is raised or a
//! new drain starts, so a rollout that adds a pod to the drain never has
//! both the old shares and the new one running.

pub mod pace;
pub mod pods;
pub mod run;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use k8s_openapi::{api::core::v1::ObjectReference, jiff::Timestamp};

use crate::sidecar_audit::WorkloadKey;

/// Consecutive failed calls after which a pod is given up on: it drains at
/// its own rate, and its share goes back to the others.
pub const GIVE_UP_AFTER: u32 = 3;

/// A pod of one namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    /// The namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A terminating pod whose sidecar runs: what pacing it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct DrainingPod {
    /// The pod.
    pub pod: PodKey,
    /// The workload whose budget it shares.
    pub workload: WorkloadKey,
    /// The pod itself, for events when the workload is not a known kind.
    pub reference: ObjectReference,
    /// Its sidecar's control port, `ip:port`.
    pub address: String,
    /// The workload's budget as this pod's annotation gives it, closes per
    /// second.
    pub budget: u32,
    /// When it was asked to stop; earlier pods get the remainder of an
    /// uneven split.
    pub since: Timestamp,
}

/// The rates of `count` pods sharing `budget` closes per second, the
/// first ones getting the remainder: they add up to the budget, and
/// each is at least 1 (more pods than the budget then exceed it by one
/// close per second per extra pod: a drain cannot wait).
pub fn shares(budget: u32, count: usize) -> Vec<u32> {
    let Ok(n) = u32::try_from(count) else {
        return vec![1; count];
    };
    if n == 0 {
        return Vec::new();
    }
    let (each, extra) = (budget / n, budget % n);
    (0..n)
        .map(|i| (each + u32::from(i < extra)).max(1))
        .collect()
}

/// One `Drain` call to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The pod.
    pub pod: PodKey,
    /// Its sidecar's control port.
    pub address: String,
    /// Its share, closes per second.
    pub rate: u32,
    /// How many of the workload's pods share the budget now.
    pub sharing: usize,
    /// The workload's budget.
    pub budget: u32,
}

/// The calls one workload needs: `raise` only once every `lower` has
/// been answered, so that the shares never add up to more than the budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadPlan {
    /// Pods whose share goes down.
    pub lower: Vec<Call>,
    /// Pods whose share goes up, and pods not paced yet.
    pub raise: Vec<Call>,
}

/// What to do in one round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The calls, by workload.
    pub workloads: BTreeMap<WorkloadKey, WorkloadPlan>,
    /// Pods already paced at their share, to ask how many clients they
    /// have left.
    pub poll: Vec<(PodKey, String)>,
}

/// Something to tell people about a pod's drain: an event on its workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The pod.
    pub pod: PodKey,
    /// Its workload.
    pub workload: WorkloadKey,
    /// The pod itself, for events when the workload is not a known kind.
    pub reference: ObjectReference,
    /// What happened.
    pub event: DrainEvent,
}

/// What happened to a pod's drain.
#[derive(Clone, Debug, PartialEq)]
pub enum DrainEvent {
    /// The leader started pacing it.
    Started {
        /// Its clients when the pacing started.
        connections: u64,
        /// Its share, closes per second.
        rate: u32,
        /// How many pods share the budget.
        sharing: usize,
        /// The workload's budget.
        budget: u32,
    },
    /// Every client is gone.
    Drained {
        /// Its clients when the pacing started.
        connections: u64,
        /// Time from the first call to the last client gone (to within a
        /// round of polling).
        took: Duration,
    },
    /// The pod went away with clients left when it was last asked: they
    /// were closed at its drain's deadline, or cut.
    Gone {
        /// Its clients when last asked.
        left: u64,
        /// Its clients when the pacing started.
        connections: u64,
    },
    /// The leader gave up on reaching it: it drains at its own rate, which
    /// may take the workload over its budget.
    Unreachable {
        /// The last call's error.
        error: String,
    },
}

/// Where a pod's drain is, as far as the leader knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Told a share (or about to be); its clients not all gone yet.
    Pacing,
    /// Every client is gone; its share is free.
    Drained,
    /// Not reachable; drains on its own.
    GaveUp,
}

/// One draining pod, as far as the leader knows.
#[derive(Clone, Debug)]
struct Tracked {
    workload: WorkloadKey,
    reference: ObjectReference,
    phase: Phase,
    /// The share it acknowledged last; `None` until it did.
    rate: Option<u32>,
    /// When it first acknowledged a share, and its clients then.
    started: Option<(Instant, u64)>,
    /// Its clients when last asked.
    left: u64,
    /// Calls failed in a row.
    failures: u32,
}

impl Tracked {
    fn report(&self, pod: PodKey, event: DrainEvent) -> Report {
        Report {
            pod,
            workload: self.workload.clone(),
            reference: self.reference.clone(),
            event,
        }
    }
}

/// What the leader told each draining pod, and what they answered.
#[derive(Debug, Default)]
pub struct Fleet {
    tracked: BTreeMap<PodKey, Tracked>,
}

impl Fleet {
    /// The calls that bring every workload with terminating pods
    /// (`draining`: all of them, every round) to its shares, and the
    /// reports about pods that went away since the last round.
    pub fn plan(&mut self, draining: &[DrainingPod]) -> (Plan, Vec<Report>) {
        let present: BTreeSet<&PodKey> = draining.iter().map(|p| &p.pod).collect();
        let gone: Vec<PodKey> = self
            .tracked
            .keys()
            .filter(|k| !present.contains(k))
            .cloned()
            .collect();
        let reports = gone
            .into_iter()
            .filter_map(|pod| {
                let t = self.tracked.remove(&pod)?;
                let (_, connections) = t.started?;
                (t.phase == Phase::Pacing && t.left > 0).then(|| {
                    t.report(
                        pod,
                        DrainEvent::Gone {
                            left: t.left,
                            connections,
                        },
                    )
                })
            })
            .collect();
        for p in draining {
            self.tracked
                .entry(p.pod.clone())
                .or_insert_with(|| Tracked {
                    workload: p.workload.clone(),
                    reference: p.reference.clone(),
                    phase: Phase::Pacing,
                    rate: None,
                    started: None,
                    left: 0,
                    failures: 0,
                });
        }
        (self.calls(draining), reports)
    }

    fn calls(&self, draining: &[DrainingPod]) -> Plan {
        let mut by_workload: BTreeMap<&WorkloadKey, Vec<&DrainingPod>> = BTreeMap::new();
        for p in draining {
            if self.tracked[&p.pod].phase == Phase::Pacing {
                by_workload.entry(&p.workload).or_default().push(p);
            }
        }
        let mut plan = Plan::default();
        for (workload, mut pods) in by_workload {
            pods.sort_by(|a, b| (a.since, &a.pod).cmp(&(b.since, &b.pod)));
            let budget = pods.iter().map(|p| p.budget).min().unwrap_or(1);
            let mut calls = WorkloadPlan::default();
            for (p, rate) in pods.iter().zip(shares(budget, pods.len())) {
                let call = Call {
                    pod: p.pod.clone(),
                    address: p.address.clone(),
                    rate,
                    sharing: pods.len(),
                    budget,
                };
                match self.tracked[&p.pod].rate {
                    Some(now) if now == rate => plan.poll.push((call.pod, call.address)),
                    Some(now) if now > rate => calls.lower.push(call),
                    _ => calls.raise.push(call),
                }
            }
            if !(calls.lower.is_empty() && calls.raise.is_empty()) {
                plan.workloads.insert(workload.clone(), calls);
            }
        }
        plan
    }

    /// Records the answer to `call`: the pod's clients left, or the error;
    /// after the first, as a poll's ([`Fleet::polled`]).
    pub fn paced(
        &mut self,
        call: &Call,
        answer: Result<u64, String>,
        now: Instant,
    ) -> Option<Report> {
        let t = self.tracked.get_mut(&call.pod)?;
        let Ok(left) = answer else {
            return self.polled(&call.pod, answer, now);
        };
        t.rate = Some(call.rate);
        if t.started.is_some() {
            return self.polled(&call.pod, Ok(left), now);
        }
        t.failures = 0;
        t.left = left;
        t.started = Some((now, left));
        Some(t.report(
            call.pod.clone(),
            DrainEvent::Started {
                connections: left,
                rate: call.rate,
                sharing: call.sharing,
                budget: call.budget,
            },
        ))
    }

    /// Records a poll of `pod`: its clients left, or the error.
    pub fn polled(
        &mut self,
        pod: &PodKey,
        answer: Result<u64, String>,
        now: Instant,
    ) -> Option<Report> {
        let t = self.tracked.get_mut(pod)?;
        match answer {
            Ok(left) => {
                t.failures = 0;
                t.left = left;
                self.finish_if_empty(pod, now)
            }
            Err(error) => self.failed(pod, error),
        }
    }

    fn finish_if_empty(&mut self, pod: &PodKey, now: Instant) -> Option<Report> {
        let t = self.tracked.get_mut(pod)?;
        let (since, connections) = t.started?;
        (t.left == 0).then(|| {
            t.phase = Phase::Drained;
            t.report(
                pod.clone(),
                DrainEvent::Drained {
                    connections,
                    took: now.saturating_duration_since(since),
                },
            )
        })
    }

    fn failed(&mut self, pod: &PodKey, error: String) -> Option<Report> {
        let t = self.tracked.get_mut(pod)?;
        t.failures += 1;
        (t.failures >= GIVE_UP_AFTER).then(|| {
            t.phase = Phase::GaveUp;
            t.report(pod.clone(), DrainEvent::Unreachable { error })
        })
    }

    /// Per workload with tracked pods: the pods still pacing, and their
    /// clients left when last asked (the gauges).
    pub fn progress(&self) -> BTreeMap<WorkloadKey, (i64, i64)> {
        let mut out: BTreeMap<WorkloadKey, (i64, i64)> = BTreeMap::new();
        for t in self.tracked.values() {
            let entry = out.entry(t.workload.clone()).or_default();
            if t.phase == Phase::Pacing {
                entry.0 += 1;
                entry.1 += i64::try_from(t.left).unwrap_or(i64::MAX);
            }
        }
        out
    }

    /// Whether any pod is still draining (the leader then polls often).
    pub fn busy(&self) -> bool {
        self.tracked.values().any(|t| t.phase == Phase::Pacing)
    }
}
