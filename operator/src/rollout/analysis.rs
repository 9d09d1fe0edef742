//! The canary analysis: from what the stable and the canary versions' pods
//! measured over one hold, whether the canary advances, holds on, or is
//! worse than stable and is aborted ([`decide`]).
//!
//! The pods report cumulative counters of the connections they own over
//! the control channel; a [`Window`] turns them into each version's
//! [`Sample`] since the canary reached its weight, and the thresholds come
//! from `spec.rollout.analysis` ([`Thresholds::from_settings`]).
//!
//! Each [`Measure`] counts bad outcomes a version can be blamed for, from
//! the data plane's counters, counted only on the pods of the version that
//! owns the connection's key: the client Service, not the key, picks the
//! pod a client enters by, and that edge pod counts its owner's refusals a
//! second time (`backend_rejected` for the owner's 502). Upgrade failures
//! are divided by the upgrades the version attempted, and everything
//! after the upgrade by its connection-minutes: after a weight step the
//! moved clients all reconnect to the canary at once, and divided by
//! connection-minutes their usual share of failed upgrades would look many
//! times worse than stable's until the hold is nearly over.

use std::{fmt, time::Duration};

use ringway_crds::{AnalysisMargin, AnalysisSettings};

mod measure;
mod window;

pub use measure::{Exposure, Measure, PerMeasure};
pub use window::{Counters, Window};

/// What one version's pods measured since the hold began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// The connections its pods owned, integrated over the hold, in
    /// connection-seconds (a connection open through a 5-minute hold adds
    /// 300). Whole seconds keep NaN and infinities out of the input.
    pub connection_seconds: u64,
    /// Upgrades its pods attempted towards backends as the key's owner:
    /// those that succeeded, failed or were refused by the backend.
    pub upgrades: u64,
    /// Bad outcomes, by measure (see [`Measure`] for what each counts).
    pub events: PerMeasure<u64>,
    /// Restarts of its pods' data-plane containers.
    pub restarts: u32,
}

impl Sample {
    /// `measure`'s events per unit of its exposure. An exposure of zero
    /// counts as one upgrade or one connection-second, so that the rate is
    /// always finite: events without any exposure are many per unit.
    pub fn rate(&self, measure: Measure) -> f64 {
        // u64 → f64 rounds but stays finite; so does the quotient.
        let events = *self.events.get(measure) as f64;
        match measure.exposure() {
            Exposure::Upgrades => events / self.upgrades.max(1) as f64,
            Exposure::ConnectionMinutes => events * 60.0 / self.connection_seconds.max(1) as f64,
        }
    }
}

/// How much worse than stable's a canary's rate may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Margin {
    /// In percent of stable's rate (100: up to twice stable's).
    pub relative_percent: u32,
    /// And on top, in thousandths of an event per unit of exposure
    /// (1: one more bad outcome per 1,000 connection-minutes or upgrades).
    /// Integers, as the spec will carry them.
    pub absolute_milli: u32,
}

impl Margin {
    /// The highest canary rate allowed against `stable_rate`.
    pub fn limit(self, stable_rate: f64) -> f64 {
        let relative = 1.0 + f64::from(self.relative_percent) / 100.0;
        stable_rate * relative + f64::from(self.absolute_milli) / 1000.0
    }
}

/// When a canary advances, holds or is aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// The margin of each measure.
    pub margins: PerMeasure<Margin>,
    /// The canary's connection-minutes before it may advance.
    pub min_connection_minutes: u32,
    /// A measure's canary events before it may abort, so that a few
    /// events never decide however high their rate.
    pub min_events: u32,
    /// How long each step holds before it may advance.
    pub hold: Duration,
    /// Canary pod restarts that abort, when stable's pods restarted fewer
    /// times; 0 turns the check off.
    pub restarts_to_abort: u32,
}

impl From<AnalysisMargin> for Margin {
    fn from(m: AnalysisMargin) -> Self {
        Self {
            relative_percent: m.percent,
            absolute_milli: m.per_thousand,
        }
    }
}

impl Thresholds {
    /// The spec's settings, holding each step `hold`.
    pub fn from_settings(s: &AnalysisSettings, hold: Duration) -> Self {
        let (upgrades, connections) = (s.upgrade_margin.into(), s.connection_margin.into());
        Self {
            margins: PerMeasure {
                backend_failures: upgrades,
                handshake_refusals: upgrades,
                too_big_closes: connections,
                slow_client_closes: connections,
                internal_error_closes: connections,
                unclean_closes: connections,
                relay_errors: connections,
            },
            min_connection_minutes: s.min_connection_minutes,
            min_events: s.min_events,
            hold,
            restarts_to_abort: s.restarts_to_abort,
        }
    }
}

impl Default for Thresholds {
    /// The spec's defaults (see `ringway_crds::defaults`): they stop a
    /// canary that clearly hurts its clients and ignore the noise of a
    /// healthy one.
    fn default() -> Self {
        let s = AnalysisSettings::default();
        Self::from_settings(&s, Duration::from_secs(u64::from(s.hold_seconds)))
    }
}

/// What the canary should do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// No worse than stable over a whole hold: the next step.
    Advance,
    /// Not decided yet: stay at this weight.
    Hold {
        /// Why.
        reason: HoldReason,
    },
    /// Worse than stable: take the weight back to 0 and remove it.
    Abort {
        /// What was worse, with both figures.
        harm: Harm,
    },
}

/// Why a canary holds.
#[derive(Clone, Debug, PartialEq)]
pub enum HoldReason {
    /// The hold time is not over.
    HoldTime {
        /// Since the step began.
        elapsed: Duration,
        /// [`Thresholds::hold`].
        hold: Duration,
    },
    /// Too few connection-minutes on the canary to judge it healthy.
    Samples {
        /// The canary's so far.
        connection_minutes: f64,
        /// [`Thresholds::min_connection_minutes`].
        needed: u32,
    },
}

/// How the canary was found worse than stable.
#[derive(Clone, Debug, PartialEq)]
pub enum Harm {
    /// A measure's rate over its limit, from at least the minimum events.
    Worse {
        /// Which measure.
        measure: Measure,
        /// The canary's rate, per unit of the measure's exposure.
        canary_rate: f64,
        /// Stable's rate, in the same unit.
        stable_rate: f64,
        /// The highest canary rate the margin allowed.
        limit: f64,
        /// The canary's events the rate is from.
        canary_events: u64,
    },
    /// The canary's pods restarted too often.
    Restarts {
        /// The canary's restarts.
        canary: u32,
        /// Stable's restarts.
        stable: u32,
        /// [`Thresholds::restarts_to_abort`].
        limit: u32,
    },
}

/// Decides a canary's next move from the samples of one hold so far,
/// `elapsed` into it.
///
/// Abort comes first, at any time in the hold and before the minimum
/// connection-minutes (a canary that refuses every upgrade gains none, and
/// must still stop): on as many canary restarts as
/// [`Thresholds::restarts_to_abort`], more than stable's; or on the first
/// measure, in [`Measure::ALL`]'s order, with at least
/// [`Thresholds::min_events`] canary events whose rate is above
/// `stable_rate × (1 + relative) + absolute`. Else the canary holds until
/// the hold time is over and then until it has the minimum
/// connection-minutes, and then advances. A canary identical to stable
/// never aborts.
pub fn decide(elapsed: Duration, stable: &Sample, canary: &Sample, t: &Thresholds) -> Verdict {
    if let Some(harm) = harm(stable, canary, t) {
        return Verdict::Abort { harm };
    }
    let reason = if elapsed < t.hold {
        HoldReason::HoldTime {
            elapsed,
            hold: t.hold,
        }
    } else if canary.connection_seconds < u64::from(t.min_connection_minutes) * 60 {
        HoldReason::Samples {
            connection_minutes: canary.connection_seconds as f64 / 60.0,
            needed: t.min_connection_minutes,
        }
    } else {
        return Verdict::Advance;
    };
    Verdict::Hold { reason }
}

fn harm(stable: &Sample, canary: &Sample, t: &Thresholds) -> Option<Harm> {
    if t.restarts_to_abort > 0
        && canary.restarts >= t.restarts_to_abort
        && canary.restarts > stable.restarts
    {
        return Some(Harm::Restarts {
            canary: canary.restarts,
            stable: stable.restarts,
            limit: t.restarts_to_abort,
        });
    }
    Measure::ALL.into_iter().find_map(|measure| {
        let canary_events = *canary.events.get(measure);
        if canary_events < u64::from(t.min_events) {
            return None;
        }
        let (canary_rate, stable_rate) = (canary.rate(measure), stable.rate(measure));
        let limit = t.margins.get(measure).limit(stable_rate);
        (canary_rate > limit).then_some(Harm::Worse {
            measure,
            canary_rate,
            stable_rate,
            limit,
            canary_events,
        })
    })
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Advance => f.write_str("no worse than stable over the hold"),
            Self::Hold { reason } => write!(f, "holding: {reason}"),
            Self::Abort { harm } => write!(f, "worse than stable: {harm}"),
        }
    }
}

impl fmt::Display for HoldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HoldTime { elapsed, hold } => write!(
                f,
                "{}s of the {}s hold have passed",
                elapsed.as_secs(),
                hold.as_secs()
            ),
            Self::Samples {
                connection_minutes,
                needed,
            } => write!(
                f,
                "{connection_minutes:.1} of the {needed} canary connection-minutes needed to judge it"
            ),
        }
    }
}

impl fmt::Display for Harm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Worse {
                measure,
                canary_rate,
                stable_rate,
                limit,
                canary_events,
            } => write!(
                f,
                "{measure}: canary {} {}, stable {} (limit {}; {canary_events} canary events)",
                figure(*canary_rate),
                measure.exposure(),
                figure(*stable_rate),
                figure(*limit),
            ),
            Self::Restarts {
                canary,
                stable,
                limit,
            } => write!(
                f,
                "pod restarts: canary {canary}, stable {stable} during the hold (abort at {limit})"
            ),
        }
    }
}

/// A rate with three significant digits: rare events are small fractions.
fn figure(rate: f64) -> String {
    if rate <= 0.0 || !rate.is_finite() {
        return format!("{rate}");
    }
    // Finite and positive: the logarithm is too, and within ±400.
    let decimals = (2.0 - rate.log10().floor()).clamp(0.0, 20.0) as usize;
    format!("{rate:.decimals$}")
}

#[cfg(test)]
mod tests;
