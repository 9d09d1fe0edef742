//! What the analysis counts: the [`Measure`]s, each a set of the data
//! plane's counters that a version can be blamed for, and what each is
//! divided by ([`Exposure`]).
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
//!   (`no_shard` counted by the edge, `peer_malformed`,
//!   `peer_unauthenticated` and `peer_not_owner` by the owner);
//! - not refusals (`ok`, `handed_off`).
//!
//! Close reasons (`ringway_closes_total`) left out: the endpoints' own
//! closes (`client`, `backend`), a client's own end and the resets of its
//! network (`client_eof`, `reset`: which side reset is not recorded, and
//! mobile clients reset all the time), the gateway's intended closes
//! (`drain_*`, `idle_timeout`), a client's RFC 6455 violation
//! (`client_protocol_error` with 1002: the frame scanner is held to
//! Autobahn for every build), and `io_error` (a relay error, below).

use std::fmt;

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
    /// Every measure, in the order [`decide`](super::decide) looks at
    /// them (upgrades first, then the closes a limit decides, then the
    /// rest).
    pub const ALL: [Self; 7] = [
        Self::BackendFailures,
        Self::HandshakeRefusals,
        Self::TooBigCloses,
        Self::SlowClientCloses,
        Self::InternalErrorCloses,
        Self::UncleanCloses,
        Self::RelayErrors,
    ];

    /// Its name in `status.canary.analysis`.
    pub fn key(self) -> &'static str {
        match self {
            Self::BackendFailures => "backendFailures",
            Self::HandshakeRefusals => "handshakeRefusals",
            Self::TooBigCloses => "tooBigCloses",
            Self::SlowClientCloses => "slowClientCloses",
            Self::InternalErrorCloses => "internalErrorCloses",
            Self::UncleanCloses => "uncleanCloses",
            Self::RelayErrors => "relayErrors",
        }
    }

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

impl PerMeasure<u64> {
    /// Adds `n` to `measure`'s count; nothing when the outcome counts in
    /// no measure.
    pub fn count(&mut self, measure: Option<Measure>, n: u64) {
        if let Some(measure) = measure {
            let sum = self.get_mut(measure);
            *sum = sum.saturating_add(n);
        }
    }

    /// Each measure's count less `other`'s, at least 0.
    pub fn minus(&self, other: &Self) -> Self {
        let mut left = Self::default();
        for measure in Measure::ALL {
            *left.get_mut(measure) = self.get(measure).saturating_sub(*other.get(measure));
        }
        left
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Self) {
        for measure in Measure::ALL {
            self.count(Some(measure), *other.get(measure));
        }
    }
}
