//! The canary analysis: from what the stable and the canary versions' pods
//! measured over one hold, whether the canary advances, holds on, or is
//! worse than stable and is aborted ([`decide`]).
//!
//! Not wired yet: nothing calls [`decide`]. The pods do not report
//! per-version counters over the control channel yet, and the spec has no
//! thresholds yet; both come with the automatic steps, and until then a
//! canary moves only by its annotations.
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
//!
//! Handshake outcomes (`ringway_handshakes_total`) left out, and why:
//! - decided by the client's request or connection (`no_route`,
//!   `missing_key`, `not_websocket`, `wrong_version`, `bad_key`,
//!   `malformed`, `request_body`, `conflicting_framing`,
//!   `too_many_headers`, `headers_too_large`, `timeout`, `client_gone`,
//!   `tls_error`) or by the pod's capacity (`over_limit`), all counted on
//!   the edge pod, whatever version owns the key: canary pods, half of the
//!   Service while they own 5% of the keys, would look ten times worse.
//!   Judging them needs the requests each version's pods received, which
//!   the pods do not report;
//! - decided by the operator or the snapshot, the same for both versions
//!   (`not_ready`, `no_backend`);
//! - about hand-offs between pods, whose fault is the other pod's
//!   (`no_shard` counted by the edge, `peer_malformed` and
//!   `peer_unauthenticated` by the owner);
//! - not refusals (`ok`, `handed_off`).
//!
//! Close reasons (`ringway_closes_total`) left out: the endpoints' own
//! closes (`client`, `backend`), a client's own end and the resets of its
//! network (`client_eof`, `reset`: which side reset is not recorded, and
//! mobile clients reset all the time), the gateway's intended closes
//! (`drain_*`, `idle_timeout`), a client's RFC 6455 violation
//! (`client_protocol_error` with 1002: the frame scanner is held to
//! Autobahn for every build), and `io_error` (a relay error, below).

use std::{fmt, time::Duration};

/// One kind of bad outcome, judged on its own against stable's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Upgrades whose backend could not be reached or answered wrongly:
    /// `backend_refused`, `backend_connect_timeout`, `backend_timeout`,
    /// `backend_bad_response` (502 or 504 to the client).
    BackendFailures,
    /// Handshakes refused by the backend's own answer (`backend_rejected`,
    /// relayed to the client): the only refusal the version's forwarding
    /// decides and the key's owner counts (see the module's doc). Most are
    /// the application's verdict on the client (e.g. 401), at the same
    /// rate on both versions; a canary that forwards a broken request
    /// shows here.
    HandshakeRefusals,
    /// 1009: `client_protocol_error` with code 1009, a frame or message
    /// over the version's `maxFrameBytes` or `maxMessageBytes`.
    TooBigCloses,
    /// 1008 from limits: `slow_consumer` (1008), and `send_queue_full`
    /// (1013, the same clients cut at the memory ceiling).
    SlowClientCloses,
    /// 1011: `heartbeat_timeout`, `backend_protocol_error`, `backend_gone`.
    InternalErrorCloses,
    /// 1006, the client's socket ends without a close frame:
    /// `backend_eof` (the backend's TCP close passed on as it is) and
    /// `close_timeout` (a close handshake cut when its time was up).
    UncleanCloses,
    /// `ringway_connection_failures_total` of kinds `panic` and `io` (its
    /// other kinds are closes above).
    RelayErrors,
}

impl Measure {
    /// Every measure, in the order [`decide`] looks at them (upgrades
    /// first, then the closes a limit decides, then the rest).
    pub const ALL: [Self; 7] = [
        Self::BackendFailures,
        Self::HandshakeRefusals,
        Self::TooBigCloses,
        Self::SlowClientCloses,
        Self::InternalErrorCloses,
        Self::UncleanCloses,
        Self::RelayErrors,
    ];

    /// What the measure's events are divided by.
    pub fn exposure(self) -> Exposure {
        match self {
            Self::BackendFailures | Self::HandshakeRefusals => Exposure::Upgrades,
            _ => Exposure::ConnectionMinutes,
        }
    }

    /// The measure a `ringway_handshakes_total` outcome counts in, if any.
    pub fn of_handshake(outcome: &str) -> Option<Self> {
        match outcome {
            "backend_refused"
            | "backend_connect_timeout"
            | "backend_timeout"
            | "backend_bad_response" => Some(Self::BackendFailures),
            "backend_rejected" => Some(Self::HandshakeRefusals),
            _ => None,
        }
    }

    /// The measure a `ringway_closes_total` close counts in, if any.
    pub fn of_close(code: Option<u16>, reason: &str) -> Option<Self> {
        match (code, reason) {
            (Some(1009), "client_protocol_error") => Some(Self::TooBigCloses),
            (_, "slow_consumer" | "send_queue_full") => Some(Self::SlowClientCloses),
            (_, "heartbeat_timeout" | "backend_protocol_error" | "backend_gone") => {
                Some(Self::InternalErrorCloses)
            }
            (_, "backend_eof" | "close_timeout") => Some(Self::UncleanCloses),
            _ => None,
        }
    }

    /// The measure a `ringway_connection_failures_total` kind counts in.
    pub fn of_failure(kind: &str) -> Option<Self> {
        matches!(kind, "panic" | "io").then_some(Self::RelayErrors)
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BackendFailures => "backend connect failures",
            Self::HandshakeRefusals => "handshakes refused by the backend",
            Self::TooBigCloses => "closes with 1009 (message too big)",
            Self::SlowClientCloses => "closes of slow clients (1008, 1013)",
            Self::InternalErrorCloses => "closes with 1011 (internal error)",
            Self::UncleanCloses => "closes without a close frame (1006)",
            Self::RelayErrors => "relay errors",
        })
    }
}

/// What a measure's events are divided by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// The upgrades the version's pods attempted towards backends.
    Upgrades,
    /// The version's connection-minutes.
    ConnectionMinutes,
}

impl fmt::Display for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Upgrades => "per upgrade",
            Self::ConnectionMinutes => "per connection-minute",
        })
    }
}

/// One value for each [`Measure`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerMeasure<T> {
    /// [`Measure::BackendFailures`].
    pub backend_failures: T,
    /// [`Measure::HandshakeRefusals`].
    pub handshake_refusals: T,
    /// [`Measure::TooBigCloses`].
    pub too_big_closes: T,
    /// [`Measure::SlowClientCloses`].
    pub slow_client_closes: T,
    /// [`Measure::InternalErrorCloses`].
    pub internal_error_closes: T,
    /// [`Measure::UncleanCloses`].
    pub unclean_closes: T,
    /// [`Measure::RelayErrors`].
    pub relay_errors: T,
}

impl<T> PerMeasure<T> {
    /// The value of `measure`.
    pub fn get(&self, measure: Measure) -> &T {
        match measure {
            Measure::BackendFailures => &self.backend_failures,
            Measure::HandshakeRefusals => &self.handshake_refusals,
            Measure::TooBigCloses => &self.too_big_closes,
            Measure::SlowClientCloses => &self.slow_client_closes,
            Measure::InternalErrorCloses => &self.internal_error_closes,
            Measure::UncleanCloses => &self.unclean_closes,
            Measure::RelayErrors => &self.relay_errors,
        }
    }

    /// The value of `measure`, to add to.
    pub fn get_mut(&mut self, measure: Measure) -> &mut T {
        match measure {
            Measure::BackendFailures => &mut self.backend_failures,
            Measure::HandshakeRefusals => &mut self.handshake_refusals,
            Measure::TooBigCloses => &mut self.too_big_closes,
            Measure::SlowClientCloses => &mut self.slow_client_closes,
            Measure::InternalErrorCloses => &mut self.internal_error_closes,
            Measure::UncleanCloses => &mut self.unclean_closes,
            Measure::RelayErrors => &mut self.relay_errors,
        }
    }
}

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

/// Upgrade measures: up to twice stable's rate plus 0.5% of the upgrades.
const UPGRADE_MARGIN: Margin = Margin {
    relative_percent: 100,
    absolute_milli: 5,
};

/// Connection measures: up to twice stable's rate plus one per 1,000
/// connection-minutes (at 50,000 canary connections, 250 more abnormal
/// ends than stable's rate over a 5-minute hold).
const CONNECTION_MARGIN: Margin = Margin {
    relative_percent: 100,
    absolute_milli: 1,
};

impl Default for Thresholds {
    /// Defaults that stop a canary that clearly hurts its clients and
    /// ignore the noise of a healthy one.
    fn default() -> Self {
        Self {
            margins: PerMeasure {
                backend_failures: UPGRADE_MARGIN,
                handshake_refusals: UPGRADE_MARGIN,
                too_big_closes: CONNECTION_MARGIN,
                slow_client_closes: CONNECTION_MARGIN,
                internal_error_closes: CONNECTION_MARGIN,
                unclean_closes: CONNECTION_MARGIN,
                relay_errors: CONNECTION_MARGIN,
            },
            // E.g. 20 clients for 5 minutes.
            min_connection_minutes: 100,
            min_events: 20,
            hold: Duration::from_secs(300),
            // A crash drops all of a pod's connections at once, outside
            // the disruption budget.
            restarts_to_abort: 1,
        }
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
