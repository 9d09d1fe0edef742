//! The gateway's status conditions as the API conventions want them: a
//! decided condition ([`Decided`], from `status::decide`) becomes
//! a `Condition` whose `lastTransitionTime` moves only with its status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// One condition as the reconciler decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// A `condition_types` constant.
    pub type_: &'static str,
    /// True or false.
    pub status: bool,
    /// A `condition_reasons` constant.
    pub reason: &'static str,
    /// What a person should know or do.
    pub message: String,
}

/// The conditions to write: `lastTransitionTime` moves only when a
/// condition's status changes, as the Kubernetes API conventions ask.
pub fn merge(
    old: &[Condition],
    decided: Vec<Decided>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    decided
        .into_iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_owned();
            let last_transition_time = old
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: d.type_.to_owned(),
                status,
                reason: d.reason.to_owned(),
                message: d.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of `type_` in `conditions`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let t0 = Time(Timestamp::from_second(1_000).expect("t"));
        let t1 = Time(Timestamp::from_second(2_000).expect("t"));
        let ready = |status, message: &str| Decided {
            type_: "Ready",
            status,
            reason: "ShardsReady",
            message: message.into(),
        };
        let first = merge(&[], vec![ready(false, "a")], Some(1), &t0);
        assert_eq!(first[0].last_transition_time, t0);
        let same = merge(&first, vec![ready(false, "b")], Some(2), &t1);
        assert_eq!(same[0].last_transition_time, t0);
        assert_eq!(same[0].message, "b");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, vec![ready(true, "c")], Some(2), &t1);
        assert_eq!(flipped[0].last_transition_time, t1);
        assert_eq!(flipped[0].status, "True");
    }
}
