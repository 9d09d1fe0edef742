use super::*;

const HOLD_OVER: Duration = Duration::from_secs(300);

/// A version with `minutes` connection-minutes, 1,000 upgrades and no
/// bad outcomes.
fn sample(minutes: u64) -> Sample {
    Sample {
        connection_seconds: minutes * 60,
        upgrades: 1000,
        ..Sample::default()
    }
}

fn with(mut s: Sample, measure: Measure, events: u64) -> Sample {
    *s.events.get_mut(measure) = events;
    s
}

fn decide_default(elapsed: Duration, stable: &Sample, canary: &Sample) -> Verdict {
    decide(elapsed, stable, canary, &Thresholds::default())
}

#[test]
fn samples_decide_advance_hold_or_abort_with_the_reason() {
    let stable = with(sample(20_000), Measure::InternalErrorCloses, 40);
    let cases = [
        (
            "healthy over a whole hold",
            HOLD_OVER,
            with(sample(1_000), Measure::InternalErrorCloses, 3),
            "no worse than stable over the hold",
        ),
        (
            "the hold is not over",
            Duration::from_secs(120),
            sample(1_000),
            "holding: 120s of the 300s hold have passed",
        ),
        (
            "too few connection-minutes",
            Duration::from_secs(400),
            Sample {
                connection_seconds: 2_430,
                ..sample(0)
            },
            "holding: 40.5 of the 100 canary connection-minutes needed to judge it",
        ),
        (
            "worse than stable by more than the margin",
            HOLD_OVER,
            with(sample(1_000), Measure::InternalErrorCloses, 50),
            "worse than stable: closes with 1011 (internal error): canary 0.0500 per connection-minute, \
             stable 0.00200 (limit 0.00500; 50 canary events)",
        ),
        (
            "worse early in the hold, before the minimum samples",
            Duration::from_secs(10),
            with(sample(50), Measure::TooBigCloses, 400),
            "worse than stable: closes with 1009 (message too big): canary 8.00 per connection-minute, \
             stable 0 (limit 0.00100; 400 canary events)",
        ),
        (
            "a canary pod restarted",
            Duration::ZERO,
            Sample {
                restarts: 1,
                ..Sample::default()
            },
            "worse than stable: pod restarts: canary 1, stable 0 during the hold (abort at 1)",
        ),
    ];
    for (name, elapsed, canary, text) in cases {
        let verdict = decide_default(elapsed, &stable, &canary);
        assert_eq!(verdict.to_string(), text, "{name}: {verdict:?}");
    }
}

#[test]
fn every_measure_aborts_a_canary_worse_than_stable() {
    for measure in Measure::ALL {
        let stable = with(sample(20_000), measure, 20);
        let canary = with(sample(1_000), measure, 100);
        let verdict = decide_default(Duration::from_secs(60), &stable, &canary);
        let Verdict::Abort {
            harm:
                Harm::Worse {
                    measure: found,
                    canary_rate,
                    stable_rate,
                    ..
                },
        } = verdict
        else {
            panic!("{measure:?}: {verdict:?}");
        };
        assert_eq!(found, measure);
        assert!(canary_rate > stable_rate, "{measure:?}");
        let text = verdict.to_string();
        let unit = measure.exposure().to_string();
        for part in [
            measure.to_string(),
            unit,
            figure(canary_rate),
            figure(stable_rate),
        ] {
            assert!(text.contains(&part), "{measure:?}: {part} not in {text}");
        }
    }
}

#[test]
fn upgrades_are_judged_per_upgrade_so_a_reconnect_burst_is_not_harm() {
    // Right after a step, 50,000 moved clients reconnected to the canary
    // 10 s ago; 1% of them are refused by the backend, as on stable.
    let stable = Sample {
        connection_seconds: 950_000 * 10,
        upgrades: 5_280,
        ..with(Sample::default(), Measure::HandshakeRefusals, 53)
    };
    let canary = Sample {
        connection_seconds: 50_000 * 10,
        upgrades: 50_000,
        ..with(Sample::default(), Measure::HandshakeRefusals, 500)
    };
    assert!(matches!(
        decide_default(Duration::from_secs(10), &stable, &canary),
        Verdict::Hold { .. }
    ));
    // A canary that refuses every upgrade gains no connection-minutes and
    // is still stopped.
    let refusing = Sample {
        upgrades: 20,
        ..with(Sample::default(), Measure::BackendFailures, 20)
    };
    let verdict = decide_default(Duration::from_secs(5), &stable, &refusing);
    assert_eq!(
        verdict.to_string(),
        "worse than stable: backend connect failures: canary 1.00 per upgrade, stable 0 \
         (limit 0.00500; 20 canary events)"
    );
}

/// Whether a canary over a whole hold is aborted, with the defaults.
fn aborts(stable: &Sample, canary: &Sample) -> bool {
    matches!(
        decide_default(HOLD_OVER, stable, canary),
        Verdict::Abort { .. }
    )
}

#[test]
fn small_counts_never_decide_and_the_margin_allows_up_to_its_limit() {
    let quiet = sample(20_000);
    // Stable: 0.01 per connection-minute; the limit 0.01 × 2 + 0.001.
    let noisy = with(sample(10_000), Measure::UncleanCloses, 100);
    let cases = [
        (
            "19 events, however high their rate",
            &quiet,
            Measure::RelayErrors,
            19,
            false,
        ),
        ("20 events at 0.02", &quiet, Measure::RelayErrors, 20, true),
        (
            "0.02 within the limit 0.021",
            &noisy,
            Measure::UncleanCloses,
            20,
            false,
        ),
        (
            "0.022 over the limit 0.021",
            &noisy,
            Measure::UncleanCloses,
            22,
            true,
        ),
    ];
    for (name, stable, measure, events, aborted) in cases {
        let canary = with(sample(1_000), measure, events);
        assert_eq!(aborts(stable, &canary), aborted, "{name}");
    }
}

#[test]
fn restarts_abort_at_once_unless_stable_restarted_as_often_or_the_check_is_off() {
    // (restarts_to_abort, stable's restarts, the canary's, aborted)
    let cases = [
        (1, 0, 1, true),
        (1, 1, 1, false),
        (0, 0, 5, false),
        (3, 0, 2, false),
        (3, 2, 3, true),
    ];
    for (restarts_to_abort, stable, canary, aborted) in cases {
        let t = Thresholds {
            restarts_to_abort,
            ..Thresholds::default()
        };
        let restarted = |restarts| Sample {
            restarts,
            ..sample(1_000)
        };
        // At once: the hold has just begun.
        let verdict = decide(Duration::ZERO, &restarted(stable), &restarted(canary), &t);
        let found = matches!(
            verdict,
            Verdict::Abort {
                harm: Harm::Restarts { .. }
            }
        );
        assert_eq!(
            found, aborted,
            "{restarts_to_abort} {stable} {canary}: {verdict}"
        );
    }
}

#[test]
fn a_stable_version_without_exposure_leaves_the_absolute_margin() {
    let empty = Sample::default();
    // Nothing to compare with: the canary's rate against the absolute
    // margin alone.
    let harmful = with(sample(1_000), Measure::InternalErrorCloses, 20);
    let Verdict::Abort {
        harm: Harm::Worse {
            stable_rate, limit, ..
        },
    } = decide_default(HOLD_OVER, &empty, &harmful)
    else {
        panic!("not aborted");
    };
    assert_eq!((stable_rate, limit), (0.0, 0.001));
    let quiet = with(sample(1_000), Measure::InternalErrorCloses, 1);
    assert_eq!(decide_default(HOLD_OVER, &empty, &quiet), Verdict::Advance);
    // Stable's events without exposure are many per connection-second:
    // the canary is not worse than that.
    let failing = with(empty, Measure::InternalErrorCloses, 20);
    assert_eq!(
        decide_default(HOLD_OVER, &failing, &harmful),
        Verdict::Advance
    );
}

#[test]
fn no_events_on_either_side_advance() {
    assert_eq!(
        decide_default(HOLD_OVER, &sample(0), &sample(100)),
        Verdict::Advance
    );
}

#[test]
fn huge_numbers_stay_finite() {
    let huge = Sample {
        connection_seconds: u64::MAX,
        upgrades: u64::MAX,
        events: PerMeasure {
            relay_errors: u64::MAX,
            ..PerMeasure::default()
        },
        restarts: u32::MAX,
    };
    let widest = Thresholds {
        margins: PerMeasure {
            relay_errors: Margin {
                relative_percent: u32::MAX,
                absolute_milli: u32::MAX,
            },
            ..Thresholds::default().margins
        },
        min_connection_minutes: u32::MAX,
        min_events: u32::MAX,
        hold: Duration::MAX,
        restarts_to_abort: u32::MAX,
    };
    let tiny = with(Sample::default(), Measure::RelayErrors, u64::MAX);
    for t in [Thresholds::default(), widest] {
        for (stable, canary) in [(huge, huge), (Sample::default(), tiny), (tiny, huge)] {
            let text = decide(Duration::MAX, &stable, &canary, &t).to_string();
            assert!(!text.contains("inf") && !text.contains("NaN"), "{text}");
        }
    }
}

#[test]
fn no_input_panics_and_a_canary_like_stable_never_aborts() {
    let seconds = [0, 1, 59, 6_000, u64::MAX];
    let upgrades = [0, 1, 1_000, u64::MAX];
    let events = [0, 19, 20, 1_000, u64::MAX];
    let restarts = [0, 1, u32::MAX];
    let mut samples = Vec::new();
    for &connection_seconds in &seconds {
        for &upgrades in &upgrades {
            for &n in &events {
                for &restarts in &restarts {
                    let every = PerMeasure {
                        backend_failures: n,
                        handshake_refusals: n,
                        too_big_closes: n,
                        slow_client_closes: n,
                        internal_error_closes: n,
                        unclean_closes: n,
                        relay_errors: n,
                    };
                    samples.push(Sample {
                        connection_seconds,
                        upgrades,
                        events: every,
                        restarts,
                    });
                }
            }
        }
    }
    let strict = Thresholds {
        margins: PerMeasure {
            backend_failures: Margin {
                relative_percent: 0,
                absolute_milli: 0,
            },
            ..Thresholds::default().margins
        },
        min_events: 0,
        ..Thresholds::default()
    };
    for t in [Thresholds::default(), strict] {
        for stable in &samples {
            for elapsed in [Duration::ZERO, HOLD_OVER] {
                let same = decide(elapsed, stable, stable, &t);
                assert!(!matches!(same, Verdict::Abort { .. }), "{stable:?}: {same}");
            }
            for canary in &samples {
                let text = decide(HOLD_OVER, stable, canary, &t).to_string();
                assert!(!text.contains("inf") && !text.contains("NaN"), "{text}");
            }
        }
    }
}

#[test]
fn the_data_planes_counters_fall_in_the_chosen_measures() {
    // Every outcome of `ringway_handshakes_total` in docs/dataplane.md.
    let left_out = [
        "ok",
        "no_route",
        "missing_key",
        "not_websocket",
        "wrong_version",
        "bad_key",
        "malformed",
        "request_body",
        "conflicting_framing",
        "too_many_headers",
        "headers_too_large",
        "timeout",
        "client_gone",
        "tls_error",
        "over_limit",
        "not_ready",
        "no_backend",
        "handed_off",
        "no_shard",
        "peer_malformed",
        "peer_unauthenticated",
        "peer_not_owner",
    ];
    for outcome in left_out {
        assert_eq!(Measure::of_handshake(outcome), None, "{outcome}");
    }
    for outcome in [
        "backend_refused",
        "backend_connect_timeout",
        "backend_timeout",
        "backend_bad_response",
    ] {
        assert_eq!(
            Measure::of_handshake(outcome),
            Some(Measure::BackendFailures)
        );
    }
    assert_eq!(
        Measure::of_handshake("backend_rejected"),
        Some(Measure::HandshakeRefusals)
    );

    use Measure::{InternalErrorCloses, SlowClientCloses, TooBigCloses, UncleanCloses};
    let closes = [
        (Some(1009), "client_protocol_error", Some(TooBigCloses)),
        (Some(1002), "client_protocol_error", None),
        (Some(1008), "slow_consumer", Some(SlowClientCloses)),
        (Some(1013), "send_queue_full", Some(SlowClientCloses)),
        (Some(1011), "heartbeat_timeout", Some(InternalErrorCloses)),
        (
            Some(1011),
            "backend_protocol_error",
            Some(InternalErrorCloses),
        ),
        (Some(1011), "backend_gone", Some(InternalErrorCloses)),
        (None, "backend_eof", Some(UncleanCloses)),
        (Some(1001), "close_timeout", Some(UncleanCloses)),
        (Some(1000), "client", None),
        (Some(1011), "backend", None),
        (None, "client_eof", None),
        (None, "reset", None),
        (None, "io_error", None),
        (Some(1012), "drain_rebalance", None),
        (Some(1001), "drain_shutdown", None),
        (Some(1001), "drain_api", None),
        (Some(1001), "idle_timeout", None),
    ];
    for (code, reason, measure) in closes {
        assert_eq!(
            Measure::of_close(code, reason),
            measure,
            "{code:?} {reason}"
        );
    }

    for (kind, measure) in [
        ("panic", Some(Measure::RelayErrors)),
        ("io", Some(Measure::RelayErrors)),
        ("close_timeout", None),
        ("slow_consumer", None),
        ("send_queue_full", None),
    ] {
        assert_eq!(Measure::of_failure(kind), measure, "{kind}");
    }
}
