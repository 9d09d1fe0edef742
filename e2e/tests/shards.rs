//! Sharding end to end: real `ringway-dataplane` shards and `ringway-echo`
//! backends as processes on their own 127.x.y.z addresses, steered with
//! the operator's control client. Every expectation about which keys move
//! is computed from the routing contract (XXH3 of the key, `mod 10000`
//! against the canary's basis points, rendezvous hashing over shard and
//! backend ids), and the connections that a step closes must be exactly
//! those, no more and no fewer.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures_util::future::join_all;
use ringway_control::{
    ControlClient, Options, TlsIdentity,
    pki::{Ca, SERVER_NAME, Usage},
    proto as v1,
};
use ringway_dataplane::routing::{Rendezvous, bucket, hash_key};
use ringway_e2e::{
    fleet::{Binaries, Fleet},
    keyed::{Ended, KeyedConn},
};

fn binaries() -> Binaries {
    Binaries::beside(env!("CARGO_BIN_EXE_ringway-echo")).expect("binaries")
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

/// The routing contract, computed here independently of any shard.
struct Expect<'a> {
    fleet: &'a Fleet,
    stable: &'a [usize],
    canary: &'a [usize],
    basis_points: u32,
    backends: &'a [usize],
}

impl<'a> Expect<'a> {
    /// The contract without a canary.
    fn stable(fleet: &'a Fleet, stable: &'a [usize], backends: &'a [usize]) -> Self {
        Self {
            fleet,
            stable,
            canary: &[],
            basis_points: 0,
            backends,
        }
    }

    fn shards_of(&self, key: &str) -> &[usize] {
        let on_canary = u64::from(bucket(hash_key(key.as_bytes()))) < u64::from(self.basis_points)
            && !self.canary.is_empty();
        if on_canary { self.canary } else { self.stable }
    }

    /// The shard ids in the order they own `key`: owner, fallback, ...
    fn ranked(&self, key: &str) -> Vec<String> {
        let shards = self.shards_of(key);
        let ids: Vec<&str> = shards
            .iter()
            .map(|&s| self.fleet.shards[s].id.as_str())
            .collect();
        Rendezvous::new(&ids)
            .ranked(hash_key(key.as_bytes()))
            .into_iter()
            .map(|i| ids[i].to_owned())
            .collect()
    }

    fn owner(&self, key: &str) -> String {
        self.ranked(key).remove(0)
    }

    fn backend(&self, key: &str) -> String {
        let ids: Vec<&str> = self
            .backends
            .iter()
            .map(|&b| self.fleet.backends[b].id.as_str())
            .collect();
        let i = Rendezvous::new(&ids)
            .pick(hash_key(key.as_bytes()))
            .expect("backends");
        ids[i].to_owned()
    }

    fn seat(&self, key: &str) -> (String, String) {
        (self.owner(key), self.backend(key))
    }
}

/// A fleet whose snapshot puts every shard in the stable ring and every
/// backend behind the route, with every shard ready.
async fn serving(shards: usize, backends: usize) -> Fleet {
    let mut fleet = Fleet::start(binaries(), shards, backends)
        .await
        .expect("fleet");
    let all: Vec<usize> = (0..shards).collect();
    let snapshot = fleet.snapshot(&all, &[], 0, &(0..backends).collect::<Vec<_>>());
    fleet.push(&snapshot).await.expect("pushed");
    fleet.wait_ready(&all).await.expect("ready");
    fleet
}

/// Opens one connection per key, each to a random shard of `edges`,
/// 100 at a time.
async fn open_all(fleet: &Fleet, keys: &[String], edges: &[usize]) -> Vec<KeyedConn> {
    let mut conns = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(100) {
        let opened = join_all(chunk.iter().map(|key| {
            let edge = edges[fastrand::usize(..edges.len())];
            KeyedConn::open(fleet.shards[edge].client, edge, key)
        }))
        .await;
        for c in opened {
            conns.push(c.expect("connects"));
        }
    }
    conns
}

/// Waits until `expected` connections have ended (or 15 s have passed),
/// then half a second more for any close that should not come, and splits
/// the connections into those that ended (with how) and those still open.
async fn settle(
    conns: Vec<KeyedConn>,
    expected: usize,
) -> (BTreeMap<String, Ended>, Vec<KeyedConn>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while conns.iter().filter(|c| c.ended().is_some()).count() < expected
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ended = BTreeMap::new();
    let mut open = Vec::new();
    for c in conns {
        match c.ended() {
            Some(e) => {
                ended.insert(c.key.clone(), e);
            }
            None => open.push(c),
        }
    }
    (ended, open)
}

/// Every connection in `conns` echoes a message.
async fn all_echo(conns: &[KeyedConn], tag: &str) {
    let lost: Vec<&str> = join_all(conns.iter().map(|c| async move {
        (!c.echo(&format!("{tag}-{}", c.key)).await).then_some(c.key.as_str())
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    assert!(
        lost.is_empty(),
        "{} connections lost an echo: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

fn assert_only_1012(ended: &BTreeMap<String, Ended>) {
    for (key, how) in ended {
        assert_eq!(how.code(), Some(1012), "{key} ended with {how:?}");
        if let Ended::Close(_, reason) = how {
            assert!(
                reason.starts_with("key moved; retry-after-ms="),
                "{key}: {reason}"
            );
        }
    }
}

#[tokio::test]
async fn every_connection_of_a_key_ends_on_one_shard_and_one_backend() {
    let fleet = serving(3, 3).await;
    let expect = Expect::stable(&fleet, &[0, 1, 2], &[0, 1, 2]);
    let keys = keys(1_000);
    // Two connections per key, each to a random shard.
    let twice: Vec<String> = keys.iter().chain(&keys).cloned().collect();
    let conns = open_all(&fleet, &twice, &[0, 1, 2]).await;
    let mut seats: BTreeMap<&str, BTreeSet<(String, String)>> = BTreeMap::new();
    for c in &conns {
        seats
            .entry(&c.key)
            .or_default()
            .insert((c.shard.clone(), c.backend.clone()));
    }
    for (key, seen) in &seats {
        assert_eq!(seen.len(), 1, "{key} was served from {seen:?}");
        assert_eq!(seen.iter().next(), Some(&expect.seat(key)), "{key}");
    }
    let handed = conns
        .iter()
        .filter(|c| fleet.shards[c.edge].id != c.shard)
        .count();
    assert!(
        handed > 1_000,
        "only {handed} of 2,000 connections were handed off"
    );
    all_echo(&conns, "hello").await;
    // The pods count each connection once on its owner, and the edges
    // count what they relay.
    let mut owned = 0;
    let mut relayed = 0;
    for status in fleet.statuses().await.expect("statuses") {
        assert_eq!(status.epoch, fleet.epoch);
        assert!(status.ready);
        owned += status.connections.iter().map(|c| c.count).sum::<u64>();
        relayed += status.relayed;
    }
    assert_eq!((owned, relayed), (2_000, handed as u64));
    // So do the metrics: summed over the pods, connections_open counts
    // every client once.
    let (mut open, mut relaying) = (0.0, 0.0);
    for shard in &fleet.shards {
        open += shard.metric_sum("ringway_connections_open").await.unwrap();
        relaying += shard
            .metric_sum("ringway_connections_relayed")
            .await
            .unwrap();
    }
    assert_eq!((open, relaying), (2_000.0, handed as f64));
}

#[tokio::test]
async fn canary_steps_drain_exactly_the_keys_whose_bucket_moved() {
    let mut fleet = Fleet::start(binaries(), 5, 2).await.expect("fleet");
    let (stable, canary, backends) = ([0, 1, 2], [3, 4], [0, 1]);
    let all = [0, 1, 2, 3, 4];
    let first = fleet.snapshot(&stable, &canary, 0, &backends);
    fleet.push(&first).await.expect("pushed");
    fleet.wait_ready(&all).await.expect("ready");
    let keys = keys(1_000);
    let mut conns = open_all(&fleet, &keys, &all).await;
    let mut weight = 0u32;
    for next in [10u32, 50, 100, 0] {
        let (from_bp, to_bp) = (weight * 100, next * 100);
        let moved: BTreeSet<String> = keys
            .iter()
            .filter(|k| {
                let b = bucket(hash_key(k.as_bytes()));
                (b < from_bp) != (b < to_bp)
            })
            .cloned()
            .collect();
        let snapshot = fleet.snapshot(&stable, &canary, to_bp, &backends);
        let draining: u64 = fleet.push(&snapshot).await.expect("pushed").iter().sum();
        assert_eq!(
            draining,
            moved.len() as u64,
            "{weight}% -> {next}%: shards scheduled {draining}, the bucket arithmetic moves {}",
            moved.len()
        );
        let (ended, open) = settle(conns, moved.len()).await;
        assert_only_1012(&ended);
        let closed: BTreeSet<String> = ended.keys().cloned().collect();
        assert_eq!(
            closed, moved,
            "{weight}% -> {next}%: the closed set differs from the moved set"
        );
        all_echo(&open, &format!("after-{next}")).await;
        // The moved keys reconnect and land on their new owners.
        let expect = Expect {
            fleet: &fleet,
            stable: &stable,
            canary: &canary,
            basis_points: to_bp,
            backends: &backends,
        };
        let moved: Vec<String> = moved.into_iter().collect();
        let again = open_all(&fleet, &moved, &all).await;
        for c in &again {
            assert_eq!(
                (c.shard.clone(), c.backend.clone()),
                expect.seat(&c.key),
                "{} after {next}%",
                c.key
            );
        }
        conns = open.into_iter().chain(again).collect();
        weight = next;
        // Between steps every shard reports the new epoch.
        for status in fleet.statuses().await.expect("statuses") {
            assert_eq!(status.epoch, snapshot.epoch);
        }
    }
}

#[tokio::test]
async fn a_fourth_shard_takes_about_a_quarter_of_the_keys_and_only_those_drain() {
    let mut fleet = Fleet::start(binaries(), 4, 2).await.expect("fleet");
    let first = fleet.snapshot(&[0, 1, 2], &[], 0, &[0, 1]);
    fleet.push(&first).await.expect("pushed");
    fleet.wait_ready(&[0, 1, 2, 3]).await.expect("ready");
    let keys = keys(1_000);
    let conns = open_all(&fleet, &keys, &[0, 1, 2]).await;
    let before = Expect::stable(&fleet, &[0, 1, 2], &[0, 1]);
    let after = Expect::stable(&fleet, &[0, 1, 2, 3], &[0, 1]);
    let moved: BTreeSet<String> = keys
        .iter()
        .filter(|k| before.owner(k) != after.owner(k))
        .cloned()
        .collect();
    assert!(
        moved.iter().all(|k| after.owner(k) == "shard-3"),
        "a key moved between old shards"
    );
    let share = moved.len() as f64 / keys.len() as f64;
    assert!(
        (0.20..=0.30).contains(&share),
        "the fourth shard takes {:.1}% of the keys",
        share * 100.0
    );
    let snapshot = fleet.snapshot(&[0, 1, 2, 3], &[], 0, &[0, 1]);
    fleet.push(&snapshot).await.expect("pushed");
    let (ended, open) = settle(conns, moved.len()).await;
    assert_only_1012(&ended);
    assert_eq!(ended.keys().cloned().collect::<BTreeSet<_>>(), moved);
    all_echo(&open, "still").await;
    let moved: Vec<String> = moved.into_iter().collect();
    for c in open_all(&fleet, &moved, &[0, 1, 2, 3]).await {
        assert_eq!(c.shard, "shard-3", "{}", c.key);
    }
}

#[tokio::test]
async fn a_removed_backend_drains_only_its_keys_and_they_land_elsewhere() {
    let mut fleet = Fleet::start(binaries(), 2, 3).await.expect("fleet");
    let first = fleet.snapshot(&[0, 1], &[], 0, &[0, 1, 2]);
    fleet.push(&first).await.expect("pushed");
    fleet.wait_ready(&[0, 1]).await.expect("ready");
    let keys = keys(600);
    let conns = open_all(&fleet, &keys, &[0, 1]).await;
    let moved: BTreeSet<String> = conns
        .iter()
        .filter(|c| c.backend == "backend-2")
        .map(|c| c.key.clone())
        .collect();
    assert!(
        moved.len() > 100,
        "backend-2 holds only {} keys",
        moved.len()
    );
    let snapshot = fleet.snapshot(&[0, 1], &[], 0, &[0, 1]);
    fleet.push(&snapshot).await.expect("pushed");
    let (ended, open) = settle(conns, moved.len()).await;
    assert_only_1012(&ended);
    assert_eq!(ended.keys().cloned().collect::<BTreeSet<_>>(), moved);
    all_echo(&open, "still").await;
    let expect = Expect::stable(&fleet, &[0, 1], &[0, 1]);
    let moved: Vec<String> = moved.into_iter().collect();
    for c in open_all(&fleet, &moved, &[0, 1]).await {
        assert_ne!(c.backend, "backend-2");
        assert_eq!((c.shard.clone(), c.backend.clone()), expect.seat(&c.key));
    }
}

#[tokio::test]
async fn only_the_operators_certificate_applies_snapshots_and_stale_epochs_are_refused() {
    let mut fleet = Fleet::start(binaries(), 1, 1).await.expect("fleet");
    let address = fleet.shards[0].control_address();
    let first = fleet.snapshot(&[0], &[], 0, &[0]);
    let year = Duration::from_secs(365 * 86_400);
    let quick = Options {
        attempts: 1,
        rpc_timeout: Duration::from_secs(2),
        ..Options::default()
    };
    // A certificate from another CA.
    let stranger = Ca::generate("stranger", year).expect("ca");
    let theirs = stranger
        .issue("operator", Usage::Client, &[], year)
        .expect("cert");
    let foreign = ControlClient::new(
        &TlsIdentity {
            ca_pem: fleet.pki.ca.cert_pem().to_owned(),
            cert_pem: theirs.cert_pem,
            key_pem: theirs.key_pem,
            server_name: SERVER_NAME.into(),
        },
        quick.clone(),
    )
    .expect("client");
    assert!(
        foreign.apply(&address, &first).await.is_err(),
        "a foreign certificate applied a snapshot"
    );
    // The right CA, but a pod's (server) certificate.
    let pod = fleet
        .pki
        .ca
        .issue("pod", Usage::Server, &[SERVER_NAME], year)
        .expect("cert");
    let impostor = ControlClient::new(
        &TlsIdentity {
            ca_pem: fleet.pki.ca.cert_pem().to_owned(),
            cert_pem: pod.cert_pem,
            key_pem: pod.key_pem,
            server_name: SERVER_NAME.into(),
        },
        quick,
    )
    .expect("client");
    assert!(
        impostor.apply(&address, &first).await.is_err(),
        "a server certificate applied a snapshot"
    );
    // No certificate at all.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            fleet.pki.ca.cert_pem(),
        ))
        .domain_name(SERVER_NAME);
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect_lazy();
    let mut anonymous = v1::control_client::ControlClient::new(channel);
    let refused = anonymous
        .apply_snapshot(v1::ApplySnapshotRequest {
            snapshot: Some(first.clone()),
        })
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate applied a snapshot"
    );
    let status = fleet.control.status(&address).await.expect("status");
    assert_eq!(
        (status.epoch, status.ready),
        (0, false),
        "nothing was applied; not ready without a snapshot"
    );
    // The operator applies; an older epoch is refused and says so; the
    // same epoch again is a no-op.
    let second = fleet.snapshot(&[0], &[], 0, &[0]);
    let ack = fleet
        .control
        .apply(&address, &second)
        .await
        .expect("applied");
    assert_eq!((ack.epoch, ack.changed), (second.epoch, true));
    let stale = fleet
        .control
        .apply(&address, &first)
        .await
        .expect_err("stale");
    assert!(stale.is_stale_epoch(), "{stale}");
    assert!(
        stale.to_string().contains(&format!(
            "snapshot epoch {} is older than the running epoch {}",
            first.epoch, second.epoch
        )),
        "{stale}"
    );
    let again = fleet
        .control
        .apply(&address, &second)
        .await
        .expect("idempotent");
    assert_eq!((again.epoch, again.changed), (second.epoch, false));
    // A snapshot that makes no sense is refused with the field named.
    let mut bad = fleet.snapshot(&[0], &[], 0, &[0]);
    bad.canary_basis_points = 500;
    let invalid = fleet
        .control
        .apply(&address, &bad)
        .await
        .expect_err("invalid");
    assert!(
        invalid
            .to_string()
            .contains("canary_basis_points: 500 with no CANARY version"),
        "{invalid}"
    );
}

#[tokio::test]
async fn shards_keep_routing_on_their_last_snapshot_with_the_control_side_gone() {
    let fleet = serving(3, 2).await;
    let expect = Expect::stable(&fleet, &[0, 1, 2], &[0, 1]);
    let keys = keys(200);
    let conns = open_all(&fleet, &keys, &[0, 1, 2]).await;
    // From here on nobody talks to the control ports, for 30 s.
    let start = tokio::time::Instant::now();
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(30) {
        round += 1;
        let fresh: Vec<String> = (0..20).map(|i| format!("r{round}-{i}")).collect();
        for c in open_all(&fleet, &fresh, &[0, 1, 2]).await {
            assert_eq!((c.shard.clone(), c.backend.clone()), expect.seat(&c.key));
            assert!(c.echo("x").await);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let (ended, open) = settle(conns, 0).await;
    assert!(ended.is_empty(), "connections ended: {ended:?}");
    all_echo(&open, "after-30s").await;
}

#[tokio::test]
async fn kill_9_of_one_shard_drops_only_the_connections_through_it() {
    let mut fleet = serving(3, 2).await;
    let keys = keys(600);
    let conns = open_all(&fleet, &keys, &[0, 1, 2]).await;
    let through = |edge: usize, shard: &str| edge == 1 || shard == "shard-1";
    let doomed = conns.iter().filter(|c| through(c.edge, &c.shard)).count();
    fleet.shards[1].kill().await.expect("killed");
    let (ended, open) = settle(conns, doomed).await;
    for c in &open {
        assert!(
            !through(c.edge, &c.shard),
            "{} went through shard-1 and is still open",
            c.key
        );
    }
    assert!(!ended.is_empty());
    // Every survivor saw no close and loses no message.
    all_echo(&open, "survivor").await;
    let expected_dropped = keys.len() - open.len();
    assert_eq!(ended.len(), expected_dropped);
    // New connections for keys shard-1 owns go to the next shard on the
    // ring without the client noticing: the snapshot still names shard-1.
    let expect = Expect::stable(&fleet, &[0, 1, 2], &[0, 1]);
    let orphans: Vec<String> = keys
        .iter()
        .filter(|k| expect.owner(k) == "shard-1")
        .take(50)
        .cloned()
        .collect();
    for c in open_all(&fleet, &orphans, &[0, 2]).await {
        assert_eq!(
            c.shard,
            expect.ranked(&c.key)[1],
            "{} fell back elsewhere",
            c.key
        );
        assert_eq!(c.backend, expect.backend(&c.key));
        assert!(c.echo("fallback").await);
    }
}

#[tokio::test]
async fn a_drain_keeps_to_its_rate_cap() {
    let fleet = serving(1, 1).await;
    let keys = keys(400);
    let conns = open_all(&fleet, &keys, &[0]).await;
    let rate = 100;
    let start = tokio::time::Instant::now();
    let scheduled = fleet
        .control
        .drain(
            &fleet.shards[0].control_address(),
            v1::DrainRequest {
                // A window far too short for the rate: a pod that stays
                // up keeps to the rate past its window.
                window_ms: 1_000,
                max_closes_per_second: rate,
            },
        )
        .await
        .expect("drain");
    assert_eq!(scheduled.draining, 400);
    let closes: Vec<Duration> = join_all(conns.iter().map(|c| async move {
        let how = c.wait_ended(Duration::from_secs(15)).await;
        assert_eq!(
            how.as_ref().and_then(Ended::code),
            Some(1001),
            "{}: {how:?}",
            c.key
        );
        start.elapsed()
    }))
    .await;
    let mut sorted = closes.clone();
    sorted.sort();
    let busiest = (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|t| **t < sorted[i] + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let took = sorted.last().copied().unwrap_or_default();
    println!("400 closes at a cap of {rate}/s: busiest second {busiest}, all done in {took:?}");
    // Close frames cross the loopback in well under a millisecond; a
    // handful of slack covers the clients' own scheduling.
    assert!(
        busiest <= rate as usize + 5,
        "{busiest} closes within one second"
    );
    assert!(
        took >= Duration::from_millis(3_000),
        "400 closes at {rate}/s took only {took:?}"
    );
    // The pod is not ready and stays up for the operator to remove it.
    let status = fleet
        .control
        .status(&fleet.shards[0].control_address())
        .await
        .expect("status");
    assert!(!status.ready);
}

#[tokio::test]
async fn a_retiring_shard_answers_not_ready_and_keeps_relaying_what_it_holds() {
    // Shards 0 and 1 own the keys; shard 2 is outside the ring, like a pod
    // of the old slot after a promotion, and relays what enters through it.
    let mut fleet = Fleet::start(binaries(), 3, 2).await.expect("fleet");
    let first = fleet.snapshot(&[0, 1], &[], 0, &[0, 1]);
    fleet.push(&first).await.expect("pushed");
    fleet.wait_ready(&[0, 1, 2]).await.expect("ready");
    let conns = open_all(&fleet, &keys(100), &[2]).await;
    assert!(conns.iter().all(|c| c.shard != fleet.shards[2].id));

    let mut retiring = fleet.snapshot(&[0, 1], &[], 0, &[0, 1]);
    retiring.retiring = vec![fleet.shards[2].id.clone()];
    fleet.push(&retiring).await.expect("pushed");
    let ready: Vec<bool> = fleet
        .statuses()
        .await
        .expect("statuses")
        .iter()
        .map(|s| s.ready)
        .collect();
    assert_eq!(
        ready,
        [true, true, false],
        "only the retiring shard is not ready"
    );
    let (ended, open) = settle(conns, 0).await;
    assert!(ended.is_empty(), "retiring closed {ended:?}");
    all_echo(&open, "retiring").await;

    let back = fleet.snapshot(&[0, 1], &[], 0, &[0, 1]);
    fleet.push(&back).await.expect("pushed");
    fleet.wait_ready(&[0, 1, 2]).await.expect("ready again");
}

/// Each shard's owner tally (`PodStatus.owned`), in shard order.
async fn tallies(fleet: &Fleet) -> Vec<v1::OwnerCounters> {
    fleet
        .statuses()
        .await
        .expect("statuses")
        .into_iter()
        .map(|s| s.owned.expect("every shard reports its owner tally"))
        .collect()
}

fn close_counts(closes: &[v1::CloseCount]) -> Vec<(u32, &str, u64)> {
    closes
        .iter()
        .map(|c| (c.code, c.reason.as_str(), c.count))
        .collect()
}

#[tokio::test]
async fn a_connection_counts_in_the_owner_tally_of_its_owner_only_whichever_shard_it_entered() {
    let mut fleet = Fleet::start(binaries(), 2, 1).await.expect("fleet");
    let mut snapshot = fleet.snapshot(&[0, 1], &[], 0, &[0]);
    snapshot.limits = Some(v1::ConnectionLimits {
        max_frame_bytes: 1024,
        max_message_bytes: 4096,
        ..Default::default()
    });
    fleet.push(&snapshot).await.expect("pushed");
    fleet.wait_ready(&[0, 1]).await.expect("ready");
    let boots: Vec<u64> = tallies(&fleet).await.iter().map(|t| t.boot).collect();

    // Every key through the shard that does not own it, then once more
    // straight to its owner.
    let expect = Expect::stable(&fleet, &[0, 1], &[0]);
    let shard_index = |id: &str| {
        fleet
            .shards
            .iter()
            .position(|s| s.id == id)
            .expect("a shard")
    };
    let keys = keys(20);
    let mut handed = Vec::new();
    let mut direct = Vec::new();
    for key in &keys {
        let owner = shard_index(&expect.owner(key));
        let edge = 1 - owner;
        handed.push(
            KeyedConn::open(fleet.shards[edge].client, edge, key)
                .await
                .expect("connects"),
        );
        direct.push(
            KeyedConn::open(fleet.shards[owner].client, owner, key)
                .await
                .expect("connects"),
        );
    }
    let conns: Vec<KeyedConn> = handed.into_iter().chain(direct).collect();
    all_echo(&conns, "hello").await;
    let mut owned_keys = [0u64; 2];
    for key in &keys {
        owned_keys[shard_index(&expect.owner(key))] += 1;
    }
    assert!(owned_keys.iter().all(|&n| n > 0), "{owned_keys:?}");

    let first = tallies(&fleet).await;
    for (i, tally) in first.iter().enumerate() {
        assert_eq!(tally.boot, boots[i], "the same process");
        assert_eq!(
            tally.upgrades,
            2 * owned_keys[i],
            "shard {i} counts the upgrades of the keys it owns, not those it handed off"
        );
        assert!(tally.upgrade_failures.is_empty(), "{tally:?}");
        assert!(tally.connection_millis > 0, "{tally:?}");
        assert!(tally.closes.is_empty(), "{tally:?}");
    }

    // Too big, once straight to its owner and once through an edge: each
    // is closed with 1009, counted on the owner alone. Through an edge,
    // the edge's relay enforces the same limits first and passes the
    // close on to the owner, which sees it as its client's.
    let big = "x".repeat(5_000);
    let (through_edge, straight) = (&conns[0], &conns[keys.len()]);
    for conn in [through_edge, straight] {
        assert!(
            !conn.echo(&big).await,
            "no echo of a message over the limit"
        );
        let ended = conn.wait_ended(Duration::from_secs(5)).await;
        assert_eq!(
            ended.as_ref().and_then(Ended::code),
            Some(1009),
            "{ended:?}"
        );
    }
    let owner = shard_index(&straight.shard);
    assert_eq!(shard_index(&through_edge.shard), owner, "the same key");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let later = loop {
        let now = tallies(&fleet).await;
        if now[owner].closes.iter().map(|c| c.count).sum::<u64>() == 2 {
            break now;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        close_counts(&later[owner].closes),
        [(1009, "client", 1), (1009, "client_protocol_error", 1)]
    );
    assert!(later[1 - owner].closes.is_empty(), "{:?}", later[1 - owner]);
    for (i, tally) in later.iter().enumerate() {
        assert_eq!(tally.boot, boots[i]);
        assert_eq!(tally.upgrades, first[i].upgrades);
        assert!(tally.connection_millis > first[i].connection_millis);
        assert!(tally.failures.is_empty(), "{tally:?}");
    }
}

#[tokio::test]
async fn a_retiring_shard_that_owns_keys_takes_their_hand_offs_but_no_new_client() {
    // All three shards own keys; shard 0's version is having its keys
    // moved away, so it leaves the client Service but keeps its keys.
    let mut fleet = serving(3, 2).await;
    let mut held_out = fleet.snapshot(&[0, 1, 2], &[], 0, &[0, 1]);
    held_out.retiring = vec![fleet.shards[0].id.clone()];
    fleet.push(&held_out).await.expect("pushed");
    let statuses = fleet.statuses().await.expect("statuses");
    let seen: Vec<(bool, bool)> = statuses.iter().map(|s| (s.ready, s.serving)).collect();
    assert_eq!(
        seen,
        [(false, true), (true, true), (true, true)],
        "the retiring shard answers not ready and still serves"
    );

    // Every key connects through the other shards; shard 0's keys are
    // handed off to it.
    let conns = open_all(&fleet, &keys(150), &[1, 2]).await;
    let through_0 = conns
        .iter()
        .filter(|c| c.shard == fleet.shards[0].id)
        .count();
    assert!(
        through_0 > 10,
        "only {through_0} of 150 keys owned by shard 0"
    );
    all_echo(&conns, "held-out").await;

    // A new client straight to it is refused, with what to do.
    let refused = KeyedConn::open(fleet.shards[0].client, 0, "direct").await;
    let Err(error) = refused else {
        panic!("a retiring shard took a new client");
    };
    let error = format!("{error:#}");
    assert!(error.contains("503"), "{error}");
}

/// Each version's own limits, over the snapshot's.
fn version_limits(max_frame_bytes: u32, max_message_bytes: u32) -> Option<v1::ConnectionLimits> {
    Some(v1::ConnectionLimits {
        max_frame_bytes,
        max_message_bytes,
        ..Default::default()
    })
}

#[tokio::test]
async fn a_connection_follows_its_key_versions_limits_on_its_owner_and_on_an_edge_of_the_other_version()
 {
    // Shard 0 is stable (64 KiB messages), shard 1 the canary (1 KiB),
    // each owning half the keys.
    let mut fleet = Fleet::start(binaries(), 2, 1).await.expect("fleet");
    let (stable, canary) = ([0], [1]);
    let mut snapshot = fleet.snapshot(&stable, &canary, 5_000, &[0]);
    snapshot.versions[0].limits = version_limits(16 * 1024, 64 * 1024);
    snapshot.versions[1].limits = version_limits(1024, 1024);
    fleet.push(&snapshot).await.expect("pushed");
    fleet.wait_ready(&[0, 1]).await.expect("ready");
    let expect = Expect {
        fleet: &fleet,
        stable: &stable,
        canary: &canary,
        basis_points: 5_000,
        backends: &[0],
    };
    let keyed_to = |shard: usize| {
        keys(100)
            .into_iter()
            .find(|k| expect.owner(k) == fleet.shards[shard].id)
            .expect("a key of each version among 100")
    };
    let (stable_key, canary_key) = (keyed_to(0), keyed_to(1));

    // Each key straight to its owner and through the other version's shard.
    let mut open = Vec::new();
    for (key, owner) in [(&stable_key, 0), (&canary_key, 1)] {
        for edge in [owner, 1 - owner] {
            let conn = KeyedConn::open(fleet.shards[edge].client, edge, key)
                .await
                .expect("connects");
            assert_eq!(conn.shard, fleet.shards[owner].id, "{key}");
            open.push(conn);
        }
    }
    let (stable_conns, canary_conns) = open.split_at(2);
    let two_kib = "x".repeat(2 * 1024);
    for conn in stable_conns {
        assert!(
            conn.echo(&two_kib).await,
            "stable's limits let 2 KiB through, entering at shard {}",
            conn.edge
        );
    }
    for conn in canary_conns {
        assert!(!conn.echo(&two_kib).await, "over the canary's limit");
        let ended = conn.wait_ended(Duration::from_secs(5)).await;
        assert_eq!(
            ended.as_ref().and_then(Ended::code),
            Some(1009),
            "entering at shard {}: {ended:?}",
            conn.edge
        );
    }
    all_echo(stable_conns, "still-open").await;

    // The stable shard decided the close of the canary key it relayed,
    // and counts it under the canary; the canary owner counts the one
    // it decided as its own, and the other as its client's close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let statuses = loop {
        let now = fleet.statuses().await.expect("statuses");
        let owned = now[1].owned.as_ref().expect("the owner tally");
        if owned.closes.iter().map(|c| c.count).sum::<u64>() == 2 && !now[0].edge_closes.is_empty()
        {
            break now;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let edge_closes = &statuses[0].edge_closes;
    assert_eq!(edge_closes.len(), 1, "{edge_closes:?}");
    assert_eq!(edge_closes[0].version, v1::Version::Canary as i32);
    assert_eq!(
        close_counts(&edge_closes[0].closes),
        [(1009, "client_protocol_error", 1)]
    );
    assert!(statuses[1].edge_closes.is_empty(), "{:?}", statuses[1]);
    let owned: Vec<&v1::OwnerCounters> = statuses
        .iter()
        .map(|s| s.owned.as_ref().expect("the owner tally"))
        .collect();
    assert_eq!(
        close_counts(&owned[1].closes),
        [(1009, "client", 1), (1009, "client_protocol_error", 1)]
    );
    assert!(owned[0].closes.is_empty(), "{:?}", owned[0]);
}
