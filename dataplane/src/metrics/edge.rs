//! The edge's tally: the closes this pod decided as the edge of
//! connections another pod owns, by the key's version, for the control
//! channel's `PodStatus.edge_closes`. The client-facing limits (sizes,
//! heartbeats, idle time, slow consumers) are enforced where the client's
//! socket is, so a close they cause is decided on the edge; the owner sees
//! only its client's close, and the operator's canary analysis would miss
//! it without this tally.
//!
//! Touched only when an edge connection ends by the gateway's decision,
//! never per message.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use ringway_dataplane_api::v1;

use super::{close_code_label, owned::close_counts};
use crate::routing::Version;

/// Closes by the `ringway_closes_total` code label and reason.
type Closes = BTreeMap<(&'static str, &'static str), u64>;

/// The edge's decided closes since the process started, by key version.
#[derive(Default)]
pub struct EdgeTally {
    closes: Mutex<BTreeMap<Version, Closes>>,
}

impl EdgeTally {
    /// Counts one close this pod decided as the edge of a connection whose
    /// key `version` owns.
    pub(super) fn close(&self, version: Version, code: Option<u16>, reason: &'static str) {
        let mut closes = self
            .closes
            .lock()
            // Each change is one entry's increment: usable after a panic.
            .unwrap_or_else(PoisonError::into_inner);
        *closes
            .entry(version)
            .or_default()
            .entry((close_code_label(code), reason))
            .or_default() += 1;
    }

    /// The tally for `PodStatus.edge_closes`.
    pub fn report(&self) -> Vec<v1::VersionCloses> {
        let closes = self.closes.lock().unwrap_or_else(PoisonError::into_inner);
        closes
            .iter()
            .map(|(&version, closes)| v1::VersionCloses {
                version: v1::Version::from(version) as i32,
                closes: close_counts(closes),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_kept_by_version_code_and_reason() {
        let tally = EdgeTally::default();
        tally.close(Version::Canary, Some(1009), "client_protocol_error");
        tally.close(Version::Canary, Some(1009), "client_protocol_error");
        tally.close(Version::Stable, Some(1008), "slow_consumer");
        tally.close(Version::Canary, Some(1011), "heartbeat_timeout");
        let closes = |c: &[v1::CloseCount]| -> Vec<(u32, String, u64)> {
            c.iter()
                .map(|c| (c.code, c.reason.clone(), c.count))
                .collect()
        };
        let report = tally.report();
        let versions: Vec<i32> = report.iter().map(|v| v.version).collect();
        assert_eq!(
            versions,
            [v1::Version::Stable as i32, v1::Version::Canary as i32]
        );
        assert_eq!(
            closes(&report[0].closes),
            [(1008, "slow_consumer".to_owned(), 1)]
        );
        assert_eq!(
            closes(&report[1].closes),
            [
                (1009, "client_protocol_error".to_owned(), 2),
                (1011, "heartbeat_timeout".to_owned(), 1),
            ]
        );
    }
}
