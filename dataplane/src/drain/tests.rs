use super::*;

/// One batch through a fresh drainer; returns when all were asked.
async fn drain(victims: Vec<Arc<ConnControl>>, cause: DrainCause, window: Duration, rate: u32) {
    let drainer = Drainer::start();
    drainer.submit(victims, cause, window, rate).await;
    drainer.idle().await;
}

#[test]
fn closes_are_spread_over_the_window() {
    let window = Duration::from_secs(10);
    assert_eq!(closes_due(100, Duration::ZERO, window, 1000), 0);
    assert_eq!(closes_due(100, Duration::from_secs(5), window, 1000), 50);
    assert_eq!(closes_due(100, Duration::from_secs(10), window, 1000), 100);
}

#[test]
fn the_rate_cap_holds_in_every_second() {
    let window = Duration::from_secs(10);
    let rate = 50;
    let total = 10_000;
    let mut prev = 0;
    for ms in (0..=10_000u64).step_by(10) {
        let due = closes_due(total, Duration::from_millis(ms), window, rate);
        assert!(due >= prev);
        prev = due;
        if ms >= 1000 {
            let a_second_ago = closes_due(total, Duration::from_millis(ms - 1000), window, rate);
            assert!(
                due - a_second_ago <= rate as usize,
                "{} closes in the second before {ms} ms",
                due - a_second_ago
            );
        }
    }
}

#[test]
fn rounds_keep_to_a_grid_unless_one_is_more_than_a_tick_late() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    // A timer a millisecond late each time does not push the grid.
    assert_eq!(next_round(t0, t0 + ms(1)), t0 + TICK);
    assert_eq!(next_round(t0 + TICK, t0 + TICK + ms(1)), t0 + 2 * TICK);
    // A round that ends past the next one's time: that one runs at once.
    assert_eq!(next_round(t0, t0 + TICK + ms(5)), t0 + TICK);
    // Stalled for longer: the grid starts again, nothing is made up.
    assert_eq!(next_round(t0, t0 + ms(50)), t0 + ms(60));
}

#[test]
fn a_late_round_does_not_burst_over_the_cap() {
    let rate = 100;
    let mut pacer = Pacer::new(10_000, Duration::from_secs(1000), rate, WindowEnd::Flush);
    let mut released = Vec::new();
    // Rounds every 10 ms, then a 2 s stall, then rounds again.
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(5) {
        t += if t == Duration::from_secs(1) {
            Duration::from_secs(2)
        } else {
            TICK
        };
        released.push((t, pacer.round(t).len()));
    }
    for (i, &(t, _)) in released.iter().enumerate() {
        let in_second: usize = released[i..]
            .iter()
            .take_while(|(u, _)| *u < t + Duration::from_secs(1))
            .map(|(_, n)| n)
            .sum();
        assert!(
            in_second <= rate as usize,
            "{in_second} closes in the second from {t:?}"
        );
    }
    let after_stall = released
        .iter()
        .find(|(t, _)| *t == Duration::from_secs(3))
        .map(|(_, n)| *n);
    assert!(
        after_stall <= Some(1),
        "the round after the stall released {after_stall:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_asks_every_connection_once_within_the_window() {
    let victims: Vec<Arc<ConnControl>> = (0..200)
        .map(|i| {
            Arc::new(ConnControl::new(
                "r".into(),
                crate::routing::hash_key(&[i as u8]),
                crate::registry::Role::Edge("s".into()),
            ))
        })
        .collect();
    let start = Instant::now();
    drain(
        victims.clone(),
        DrainCause::Shutdown,
        Duration::from_secs(4),
        100,
    )
    .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_secs(4),
        "took {took:?}"
    );
    assert!(
        victims
            .iter()
            .all(|v| v.drain_requested() == Some(DrainCause::Shutdown))
    );
}

fn victims(n: usize) -> Vec<Arc<ConnControl>> {
    (0..n)
        .map(|i| {
            Arc::new(ConnControl::new(
                "r".into(),
                crate::routing::hash_key(&i.to_be_bytes()),
                crate::registry::Role::Edge("s".into()),
            ))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_rebalance_keeps_to_the_rate_past_its_window() {
    let start = Instant::now();
    drain(
        victims(300),
        DrainCause::Rebalance,
        Duration::from_secs(1),
        100,
    )
    .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2_900),
        "300 closes at 100/s took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn batches_one_after_another_share_one_pacer() {
    let drainer = Drainer::start();
    let (first, second) = (victims(100), victims(100));
    drainer
        .submit(
            first.clone(),
            DrainCause::Rebalance,
            Duration::from_secs(10),
            50,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drainer
        .submit(second.clone(), DrainCause::Api, Duration::from_secs(10), 50)
        .await;
    let start = Instant::now();
    drainer.idle().await;
    assert!(
        first
            .iter()
            .all(|v| v.drain_requested() == Some(DrainCause::Rebalance))
    );
    assert!(
        second
            .iter()
            .all(|v| v.drain_requested() == Some(DrainCause::Api))
    );
    // ~25 went in the first half second; the other ~175 at 50/s.
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // Idle again, it takes the next batch.
    let third = victims(10);
    drainer
        .submit(
            third.clone(),
            DrainCause::Rebalance,
            Duration::from_secs(1),
            1000,
        )
        .await;
    drainer.idle().await;
    assert!(third.iter().all(|v| v.drain_requested().is_some()));
    assert_eq!(drainer.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn connections_already_asked_or_gone_do_not_use_up_the_rate() {
    let all = victims(100);
    for v in &all[..50] {
        v.request_drain(DrainCause::Api);
    }
    let start = Instant::now();
    drain(
        all.clone(),
        DrainCause::Rebalance,
        Duration::from_secs(1),
        50,
    )
    .await;
    let took = start.elapsed();
    assert!(
        took <= Duration::from_millis(1_300),
        "50 closes at 50/s took {took:?}"
    );
    let api = all
        .iter()
        .filter(|v| v.drain_requested() == Some(DrainCause::Api))
        .count();
    let moved = all
        .iter()
        .filter(|v| v.drain_requested() == Some(DrainCause::Rebalance))
        .count();
    assert_eq!((api, moved), (50, 50), "the first request wins");
}

/// Rounds every tick from `from` to `to`, with the paces of `paces` set
/// at their times; each round's time, closes and the rate then in force.
fn rounds(
    pacer: &mut Pacer,
    to: Duration,
    paces: &[(Duration, u32)],
) -> Vec<(Duration, usize, u32)> {
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    while t <= to {
        for &(at, rate) in paces {
            if at == t {
                pacer.pace(rate);
            }
        }
        let n = pacer.round(t).len();
        out.push((t, n, pacer.rate()));
        t += TICK;
    }
    out
}

/// Every second from each round on holds at most the rate in force at
/// its last close.
fn assert_every_second_within_the_rate(released: &[(Duration, usize, u32)]) {
    for (i, &(t, _, _)) in released.iter().enumerate() {
        let in_second: Vec<_> = released[i..]
            .iter()
            .take_while(|(u, _, _)| *u < t + Duration::from_secs(1))
            .filter(|(_, n, _)| *n > 0)
            .collect();
        let closes: usize = in_second.iter().map(|(_, n, _)| n).sum();
        let limit = in_second.last().map_or(0, |(_, _, rate)| *rate);
        assert!(
            closes <= limit as usize,
            "{closes} closes in the second from {t:?}, at most {limit} allowed"
        );
    }
}

fn closes_between(released: &[(Duration, usize, u32)], from: Duration, to: Duration) -> usize {
    released
        .iter()
        .filter(|(t, _, _)| *t >= from && *t < to)
        .map(|(_, n, _)| n)
        .sum()
}

#[test]
fn a_repace_holds_its_rate_in_every_second_from_higher_to_lower_and_back() {
    let s = Duration::from_secs_f64;
    let mut pacer = Pacer::new(100_000, s(60.0), 200, WindowEnd::Flush);
    let released = rounds(
        &mut pacer,
        s(10.0),
        &[(s(1.5), 50), (s(4.2), 120), (s(6.0), 10), (s(8.0), 300)],
    );
    assert_every_second_within_the_rate(&released);
    // After each pace the closes go at its rate, not slower: a second
    // that starts when the closes before the pace have aged out holds the
    // whole rate.
    for (from, rate) in [(2.6, 50), (4.5, 120), (7.0, 10), (9.0, 300)] {
        let closes = closes_between(&released, s(from), s(from + 1.0));
        assert!(
            closes + 2 >= rate && closes <= rate,
            "{closes} closes in the second from {from} s at {rate}/s"
        );
    }
    // Lowered from 120/s to 10/s at 6 s: nothing more until the second
    // before holds fewer than 10.
    assert_eq!(closes_between(&released, s(6.0), s(6.95)), 0);
}

#[test]
fn a_paced_drain_goes_as_fast_as_its_rate_allows_and_its_window_is_the_deadline() {
    let s = Duration::from_secs_f64;
    // 300 over 30 s: 10 a second spread evenly; paced at 50/s after 2 s.
    let mut pacer = Pacer::new(300, s(30.0), 100, WindowEnd::Flush);
    let released = rounds(&mut pacer, s(30.0), &[(s(2.0), 50)]);
    assert_every_second_within_the_rate(&released);
    let before = closes_between(&released, s(0.0), s(2.0));
    assert!((19..=21).contains(&before), "{before} before the pace");
    let last = released.iter().rev().find(|(_, n, _)| *n > 0).map(|r| r.0);
    let expected = 2.0 + (300.0 - before as f64) / 50.0;
    assert!(
        last.is_some_and(|t| t <= s(expected + 0.1) && t >= s(expected - 1.0)),
        "the last close at {last:?}, expected about {expected} s"
    );
    assert_eq!(closes_between(&released, s(0.0), s(31.0)), 300);

    // Paced too slow for its window: at the window's end the rest goes.
    let mut pacer = Pacer::new(300, s(3.0), 100, WindowEnd::Flush);
    let released = rounds(&mut pacer, s(4.0), &[(s(0.5), 20)]);
    assert_every_second_within_the_rate(&released[..300]);
    let by_the_end = closes_between(&released, s(0.0), s(3.0));
    assert!(by_the_end <= 50 + 50, "{by_the_end} before the deadline");
    let at_the_end = closes_between(&released, s(3.0), s(3.005));
    assert_eq!(by_the_end + at_the_end, 300, "everything at the deadline");

    // A drain that keeps its rate past the window keeps the pace's.
    let mut pacer = Pacer::new(300, s(1.0), 100, WindowEnd::KeepRate);
    let released = rounds(&mut pacer, s(4.0), &[(s(0.0), 20)]);
    assert_every_second_within_the_rate(&released);
    assert!(closes_between(&released, s(0.0), s(4.01)) <= 80);
}

#[test]
fn a_new_batch_keeps_the_pace_and_its_window_is_the_new_deadline() {
    let s = Duration::from_secs_f64;
    let mut pacer = Pacer::new(100, s(30.0), 1000, WindowEnd::Flush);
    pacer.pace(20);
    let first: usize = (1..=50).map(|i| pacer.round(TICK * i).len()).sum();
    assert!(
        (9..=11).contains(&first),
        "{first} in the first half second"
    );
    // 90 left and 100 more, over 2 s from 0.5 s: at 20/s until 2.5 s,
    // counting the closes of the second before.
    pacer.restart(s(0.5), 190, s(2.0), 1000, WindowEnd::Flush);
    assert_eq!(pacer.rate(), 20);
    let mut released = Vec::new();
    for i in 51..=260u32 {
        let t = TICK * i;
        released.push((t, pacer.round(t).len(), pacer.rate()));
    }
    assert_every_second_within_the_rate(&released[..195]);
    let before_deadline = closes_between(&released, s(0.5), s(2.5));
    assert!(before_deadline <= 41, "{before_deadline} at 20/s");
    assert_eq!(closes_between(&released, s(0.5), s(2.7)), 190);
}

/// `n` connections through `drainer` for a stop over `window`, at most
/// 100/s unless paced, and the time until every one was asked.
async fn timed_stop(drainer: &Drainer, n: usize, window: Duration) -> Duration {
    let all = victims(n);
    let start = Instant::now();
    drainer
        .submit(all.clone(), DrainCause::Shutdown, window, 100)
        .await;
    drainer.idle().await;
    assert!(
        all.iter()
            .all(|v| v.drain_requested() == Some(DrainCause::Shutdown))
    );
    start.elapsed()
}

fn assert_took(took: Duration, from_ms: u64, to_ms: u64) {
    assert!(
        took >= Duration::from_millis(from_ms) && took <= Duration::from_millis(to_ms),
        "took {took:?}, not {from_ms} to {to_ms} ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_paced_while_it_runs_finishes_at_the_paced_rate() {
    let drainer = Drainer::start();
    let paced = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drainer.pace(50).await;
    };
    // 200 over 30 s at most 100/s: about 7 a second, spread; then paced.
    let (took, ()) = tokio::join!(timed_stop(&drainer, 200, Duration::from_secs(30)), paced);
    // About 7 in the first second, then 193 at 50/s: about 4.9 s.
    assert_took(took, 4_500, 5_500);
    // A pace stays: the next batch goes at it too, as fast as it allows.
    let took = timed_stop(&drainer, 100, Duration::from_secs(30)).await;
    assert_took(took, 1_000, 2_100);
}

#[tokio::test(start_paused = true)]
async fn a_pace_too_slow_for_the_window_still_ends_a_stopping_drain_at_its_deadline() {
    let drainer = Drainer::start();
    drainer.pace(5).await;
    let took = timed_stop(&drainer, 100, Duration::from_secs(2)).await;
    assert_took(took, 2_000, 2_100);
}
