//! The gateway's disruption budget, enforced fleet-wide: how many
//! connections rollout steps may close per window, how finely a weight
//! change is cut into steps, and each pod's share of the reconnect rate.
//!
//! The budget counts connections, so every step is costed before it is
//! taken (connections × share of keys that move, or a pod's connections for
//! a restart) and recorded in the gateway's status after, so that an
//! operator restart does not hand out a fresh window.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use ringway_crds::{DisruptionBudget, DisruptionStatus};

/// What the budget allows now.
#[derive(Clone, Debug, PartialEq)]
pub struct Allowance {
    /// Connections that may still be disrupted in this window.
    pub remaining: i64,
    /// Nothing was disrupted yet in this window. One indivisible step (a
    /// pod restart, a 1% weight step) is allowed then even when it costs
    /// more than the window allows; otherwise a small fleet could never
    /// restart a pod.
    pub fresh: bool,
    /// When the current window ends and the budget refills.
    pub refills_at: Timestamp,
}

impl Allowance {
    /// Whether a step that disrupts `cost` connections may go now.
    pub fn allows(&self, cost: i64) -> bool {
        cost <= self.remaining || self.fresh
    }
}

/// The budget left in the current window, for `live` connections.
pub fn allowance(
    budget: &DisruptionBudget,
    live: i64,
    used: Option<&DisruptionStatus>,
    now: Timestamp,
) -> Allowance {
    let (start, disrupted) = match current(budget, used, now) {
        Some(window) => (window.window_start.0, window.disrupted),
        None => (now, 0),
    };
    let cap = ceil_div(live.max(0) * i64::from(budget.max_disrupted_percent), 100);
    Allowance {
        remaining: (cap - disrupted).max(0),
        fresh: disrupted == 0,
        refills_at: window_end(budget, start),
    }
}

/// The window after `disrupted` more connections were disrupted now.
pub fn record(
    budget: &DisruptionBudget,
    used: Option<&DisruptionStatus>,
    now: Timestamp,
    disrupted: i64,
) -> Option<DisruptionStatus> {
    let window = current(budget, used, now).cloned();
    if disrupted <= 0 {
        return window;
    }
    Some(match window {
        Some(mut w) => {
            w.disrupted += disrupted;
            w
        }
        None => DisruptionStatus {
            window_start: Time(now),
            disrupted,
        },
    })
}

/// Each pod's share of the gateway's reconnect rate: the whole fleet
/// together never closes more than `maxReconnectsPerSecond`.
pub fn per_pod_rate(budget: &DisruptionBudget, pods: usize) -> u32 {
    let pods = u32::try_from(pods.max(1)).unwrap_or(u32::MAX);
    (budget.max_reconnects_per_second / pods).max(1)
}

/// Connections that moving the canary weight from `from` to `to` percent
/// closes: the keys in between change owner.
pub fn weight_change_cost(live: i64, from: u8, to: u8) -> i64 {
    ceil_div(live.max(0) * i64::from(from.abs_diff(to)), 100)
}

/// The next canary weight on the way from `current` to `target`: as far as
/// the budget allows in whole percent (at least 1% in a fresh window), or
/// `None` to wait for the window to refill.
pub fn next_weight(current: u8, target: u8, live: i64, allowance: &Allowance) -> Option<u8> {
    if current == target {
        return None;
    }
    let wanted = current.abs_diff(target);
    let affordable = if live <= 0 {
        wanted
    } else {
        // A fresh window always affords at least 1%: its cap is rounded up.
        (allowance.remaining * 100 / live).clamp(0, 100) as u8
    };
    let step = wanted.min(affordable);
    if step == 0 {
        return None;
    }
    Some(if target > current {
        current + step
    } else {
        current - step
    })
}

/// `a / b` rounded up, for `a >= 0` and `b > 0`.
pub(crate) fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

fn current<'a>(
    budget: &DisruptionBudget,
    used: Option<&'a DisruptionStatus>,
    now: Timestamp,
) -> Option<&'a DisruptionStatus> {
    used.filter(|w| now < window_end(budget, w.window_start.0))
}

fn window_end(budget: &DisruptionBudget, start: Timestamp) -> Timestamp {
    start
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
            budget.window_seconds,
        )))
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u8) -> DisruptionBudget {
        DisruptionBudget {
            max_reconnects_per_second: 1000,
            max_disrupted_percent: percent,
            window_seconds: 60,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    #[test]
    fn a_window_fills_and_refills() {
        let b = budget(10);
        let a = allowance(&b, 10_000, None, at(0));
        assert_eq!(a.remaining, 1000);
        assert!(a.fresh);
        let used = record(&b, None, at(0), 700);
        let a = allowance(&b, 10_000, used.as_ref(), at(30));
        assert_eq!(a.remaining, 300);
        assert!(!a.fresh);
        assert!(a.allows(300) && !a.allows(301));
        assert_eq!(a.refills_at, at(60));
        let used = record(&b, used.as_ref(), at(30), 300);
        assert_eq!(used.as_ref().map(|u| u.disrupted), Some(1000));
        assert_eq!(allowance(&b, 10_000, used.as_ref(), at(59)).remaining, 0);
        // The window is over: a fresh one.
        let a = allowance(&b, 10_000, used.as_ref(), at(60));
        assert_eq!(a.remaining, 1000);
        assert!(a.fresh);
        let used = record(&b, used.as_ref(), at(61), 5);
        assert_eq!(
            used.map(|u| (u.window_start.0, u.disrupted)),
            Some((at(61), 5))
        );
    }

    #[test]
    fn a_fresh_window_lets_one_indivisible_step_through() {
        let b = budget(10);
        // One pod of three holds a third of the connections.
        let a = allowance(&b, 900, None, at(0));
        assert!(a.allows(300));
        let used = record(&b, None, at(0), 300);
        assert!(!allowance(&b, 900, used.as_ref(), at(1)).allows(1));
    }

    #[test]
    fn weight_steps_are_cut_to_the_budget() {
        let b = budget(10);
        let fresh = allowance(&b, 10_000, None, at(0));
        // 0 → 50 with 10% per window: 10, then wait.
        assert_eq!(next_weight(0, 50, 10_000, &fresh), Some(10));
        let used = record(&b, None, at(0), weight_change_cost(10_000, 0, 10));
        let spent = allowance(&b, 10_000, used.as_ref(), at(1));
        assert_eq!(next_weight(10, 50, 10_000, &spent), None);
        // Next window: 20. Lowering works the same way.
        let next = allowance(&b, 10_000, used.as_ref(), at(60));
        assert_eq!(next_weight(10, 50, 10_000, &next), Some(20));
        assert_eq!(next_weight(50, 0, 10_000, &next), Some(40));
        // A step that fits is taken whole; no connections, no limit.
        assert_eq!(next_weight(10, 15, 10_000, &next), Some(15));
        assert_eq!(next_weight(0, 100, 0, &next), Some(100));
        assert_eq!(next_weight(30, 30, 10_000, &next), None);
        // The smallest budget still moves 1% per fresh window.
        let tiny = allowance(&budget(1), 123_457, None, at(0));
        assert_eq!(next_weight(0, 100, 123_457, &tiny), Some(1));
    }

    #[test]
    fn the_reconnect_rate_is_shared_by_the_pods() {
        let b = budget(10);
        assert_eq!(per_pod_rate(&b, 4), 250);
        assert_eq!(per_pod_rate(&b, 0), 1000);
        assert_eq!(per_pod_rate(&b, 3000), 1);
        assert_eq!(weight_change_cost(1000, 10, 25), 150);
    }
}
