//! The owner's tally: what this pod counted of the connections it owns
//! (those it relays to a backend), never of those it only relays to their
//! owner on another pod, for the control channel's `PodStatus.owned`. The
//! operator's canary analysis compares versions by it, so a connection
//! counts once, on its owner, whichever pod the client came in through.
//!
//! Touched only when an upgrade towards a backend ends and when an owned
//! connection ends, never per message. How long the owned connections
//! lived is the registry's to know ([`crate::registry::Registry::owned_millis`]).

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use ringway_dataplane_api::v1;

use super::close_code_label;

/// The owner's tally since the process started.
pub struct OwnerTally {
    /// Random, fixed at start: tells the operator the counters restarted.
    boot: u64,
    upgrades: AtomicU64,
    outcomes: Mutex<Outcomes>,
}

/// The tally's counts by label.
#[derive(Default)]
struct Outcomes {
    /// Failed upgrades by `ringway_handshakes_total` outcome.
    upgrade_failures: BTreeMap<&'static str, u64>,
    /// Closes by the `ringway_closes_total` code label and reason.
    closes: BTreeMap<(&'static str, &'static str), u64>,
    /// Failures by `ringway_connection_failures_total` kind.
    failures: BTreeMap<&'static str, u64>,
}

impl Default for OwnerTally {
    fn default() -> Self {
        Self::new()
    }
}

impl OwnerTally {
    /// An empty tally with a fresh boot id.
    pub fn new() -> Self {
        Self {
            boot: fastrand::u64(..),
            upgrades: AtomicU64::new(0),
            outcomes: Mutex::default(),
        }
    }

    /// Counts one upgrade this pod attempted towards a backend as the
    /// key's owner: `failure` is its outcome label when it failed.
    pub fn upgrade(&self, failure: Option<&'static str>) {
        self.upgrades.fetch_add(1, Ordering::Relaxed);
        if let Some(outcome) = failure {
            *self.outcomes().upgrade_failures.entry(outcome).or_default() += 1;
        }
    }

    /// Counts one close of an owned connection.
    pub(super) fn close(&self, code: Option<u16>, reason: &'static str) {
        *self
            .outcomes()
            .closes
            .entry((close_code_label(code), reason))
            .or_default() += 1;
    }

    /// Counts one failure of an owned connection.
    pub fn failure(&self, kind: &'static str) {
        *self.outcomes().failures.entry(kind).or_default() += 1;
    }

    /// The tally for `PodStatus.owned`, with the owned connections'
    /// lifetimes so far (`connection_millis`).
    pub fn report(&self, connection_millis: u64) -> v1::OwnerCounters {
        let outcomes = self.outcomes();
        v1::OwnerCounters {
            boot: self.boot,
            connection_millis,
            upgrades: self.upgrades.load(Ordering::Relaxed),
            upgrade_failures: reason_counts(&outcomes.upgrade_failures),
            closes: close_counts(&outcomes.closes),
            failures: reason_counts(&outcomes.failures),
        }
    }

    fn outcomes(&self) -> std::sync::MutexGuard<'_, Outcomes> {
        // Each change is one map entry's increment: a panic cannot leave
        // the maps half-changed, so a poisoned lock is usable.
        self.outcomes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn reason_counts(counts: &BTreeMap<&'static str, u64>) -> Vec<v1::ReasonCount> {
    counts
        .iter()
        .map(|(&reason, &count)| v1::ReasonCount {
            reason: reason.to_owned(),
            count,
        })
        .collect()
}

/// Closes counted by code label and reason, as the proto gives them.
pub(super) fn close_counts(
    closes: &BTreeMap<(&'static str, &'static str), u64>,
) -> Vec<v1::CloseCount> {
    closes
        .iter()
        .map(|(&(code, reason), &count)| v1::CloseCount {
            code: wire_code(code),
            reason: reason.to_owned(),
            count,
        })
        .collect()
}

/// `CloseCount.code` for a [`close_code_label`]: the code itself, 0 for
/// none, the bucket's first code for `3xxx` and `4xxx`, and 65535 for
/// `invalid` (the proto's contract).
fn wire_code(label: &str) -> u32 {
    match label {
        "none" => 0,
        "3xxx" => 3000,
        "4xxx" => 4000,
        code => code.parse().unwrap_or(u32::from(u16::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(reasons: &[v1::ReasonCount]) -> Vec<(&str, u64)> {
        reasons
            .iter()
            .map(|r| (r.reason.as_str(), r.count))
            .collect()
    }

    fn closes(tally: &OwnerTally) -> Vec<(u32, String, u64)> {
        tally
            .report(0)
            .closes
            .into_iter()
            .map(|c| (c.code, c.reason, c.count))
            .collect()
    }

    #[test]
    fn upgrades_count_every_attempt_and_failures_by_outcome() {
        let tally = OwnerTally::new();
        tally.upgrade(None);
        tally.upgrade(Some("backend_refused"));
        tally.upgrade(Some("backend_refused"));
        tally.upgrade(Some("backend_rejected"));
        let report = tally.report(1234);
        assert_eq!(report.upgrades, 4);
        assert_eq!(report.connection_millis, 1234);
        assert_eq!(
            counts(&report.upgrade_failures),
            [("backend_refused", 2), ("backend_rejected", 1)]
        );
    }

    #[test]
    fn closes_are_keyed_by_code_and_reason_with_peer_codes_bucketed() {
        let tally = OwnerTally::new();
        tally.close(Some(1009), "client_protocol_error");
        tally.close(Some(1009), "client_protocol_error");
        tally.close(Some(1002), "client_protocol_error");
        tally.close(None, "backend_eof");
        tally.close(Some(3001), "client");
        tally.close(Some(3999), "client");
        tally.close(Some(4321), "backend");
        tally.close(Some(1005), "client");
        assert_eq!(
            closes(&tally),
            [
                (1002, "client_protocol_error".to_owned(), 1),
                (1009, "client_protocol_error".to_owned(), 2),
                (3000, "client".to_owned(), 2),
                (4000, "backend".to_owned(), 1),
                (65535, "client".to_owned(), 1),
                (0, "backend_eof".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn failures_are_counted_by_kind_and_the_boot_id_stays() {
        let tally = OwnerTally::new();
        tally.failure("io");
        tally.failure("io");
        tally.failure("panic");
        let first = tally.report(0);
        assert_eq!(counts(&first.failures), [("io", 2), ("panic", 1)]);
        assert_eq!(tally.report(0).boot, first.boot);
        assert_ne!(
            OwnerTally::new().boot,
            first.boot,
            "another process's tally has another boot id"
        );
    }
}
