use super::*;
use crate::routing::{KeySource, MissingKey, RouteEntry, hash_key};

fn keys(n: usize) -> Vec<KeyHash> {
    (0..n)
        .map(|i| hash_key(format!("device-{i}").as_bytes()))
        .collect()
}

fn table() -> RouteTable {
    RouteTable::new(vec![RouteEntry::new(
        "chat",
        "/",
        KeySource::Query("room".into()),
        MissingKey::Reject,
    )])
}

fn shards(prefix: &str, n: usize) -> Vec<Shard> {
    (0..n)
        .map(|i| Shard {
            id: format!("{prefix}-{i}").into(),
            peer: SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)),
        })
        .collect()
}

fn pool(n: usize) -> Vec<Pool> {
    vec![Pool::new(
        (0..n)
            .map(|i| Backend {
                id: format!("backend-{i}").into(),
                address: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
            })
            .collect(),
    )]
}

fn state(stable: usize, canary: usize, basis_points: u32) -> RoutingState {
    RoutingState::new(
        1,
        table(),
        VersionState::new(Version::Stable, "v1".into(), shards("a", stable), pool(4)),
        (canary > 0)
            .then(|| VersionState::new(Version::Canary, "v2".into(), shards("b", canary), pool(4))),
        basis_points,
    )
}

#[test]
fn raising_the_weight_moves_keys_only_to_the_canary_and_lowering_only_back() {
    let weights = [0, 1, 5, 10, 25, 50, 75, 100, 60, 20, 0];
    let keys = keys(20_000);
    for pair in weights.windows(2) {
        let (from, to) = (state(3, 2, pair[0] * 100), state(3, 2, pair[1] * 100));
        for &k in &keys {
            let (before, after) = (from.version_for(k).version, to.version_for(k).version);
            if before != after {
                let expected = if pair[1] > pair[0] {
                    (Version::Stable, Version::Canary)
                } else {
                    (Version::Canary, Version::Stable)
                };
                assert_eq!((before, after), expected, "weights {pair:?}");
            }
        }
    }
}

#[test]
fn at_weight_w_the_canary_owns_w_percent_of_the_keys() {
    let keys = keys(100_000);
    for w in [0u32, 1, 5, 10, 25, 50, 75, 99, 100] {
        let s = state(3, 2, w * 100);
        let on_canary = keys
            .iter()
            .filter(|&&k| s.version_for(k).version == Version::Canary)
            .count();
        let share = on_canary as f64 / 1_000.0;
        assert!(
            (share - f64::from(w)).abs() <= 0.5,
            "weight {w}%: the canary owns {share:.2}% of 100,000 keys"
        );
    }
}

#[test]
fn the_bucket_is_the_key_hash_mod_ten_thousand() {
    let k = hash_key(b"room-42");
    assert_eq!(u64::from(bucket(k)), k.0 % 10_000);
    let s = state(3, 2, bucket(k) + 1);
    assert_eq!(s.version_for(k).version, Version::Canary);
    let s = state(3, 2, bucket(k));
    assert_eq!(s.version_for(k).version, Version::Stable);
}

#[test]
fn without_a_canary_every_key_is_stable_whatever_the_weight() {
    let s = state(3, 0, 5_000);
    assert_eq!(s.canary_basis_points(), 0);
    assert!(
        keys(1_000)
            .iter()
            .all(|&k| s.version_for(k).version == Version::Stable)
    );
}

#[test]
fn adding_one_of_n_shards_moves_about_one_nth_and_only_to_it() {
    let keys = keys(100_000);
    for n in [3usize, 4, 10] {
        let (before, after) = (state(n, 0, 0), state(n + 1, 0, 0));
        let mut moved = 0;
        for &k in &keys {
            let (a, b) = (before.place(0, k), after.place(0, k));
            let (a, b) = (a.owner.expect("shards"), b.owner.expect("shards"));
            if a != b {
                assert_eq!(&*b.id, format!("a-{n}"), "a key moved between old shards");
                moved += 1;
            }
        }
        let share = moved as f64 / keys.len() as f64;
        let ideal = 1.0 / (n + 1) as f64;
        assert!(
            (share - ideal).abs() < 0.01,
            "{n} -> {} shards moved {:.2}% of the keys (ideal {:.2}%)",
            n + 1,
            share * 100.0,
            ideal * 100.0
        );
    }
}

#[test]
fn the_backend_does_not_depend_on_the_shard() {
    // Shards are added and removed without moving keys between backends:
    // the backend step hashes the key over backends only.
    let (three, four) = (state(3, 0, 0), state(4, 0, 0));
    for k in keys(5_000) {
        assert_eq!(
            three.place(0, k).backend.map(|b| &b.id),
            four.place(0, k).backend.map(|b| &b.id)
        );
    }
}

#[test]
fn a_moved_key_moves_its_connection_unless_it_already_sits_there() {
    let seat = |owner: &str, backend: &str| Seat {
        version: Version::Stable,
        owner: Some(owner.into()),
        backend: Some(backend.into()),
    };
    let (x, y) = (seat("a-0", "b-0"), seat("a-1", "b-0"));
    // Unchanged: stays.
    assert!(!must_move(Some(&x), Some(&x), &x));
    // Owner changed: moves.
    assert!(must_move(Some(&x), Some(&y), &x));
    // Backend changed: moves.
    assert!(must_move(Some(&x), Some(&seat("a-0", "b-1")), &x));
    // A fallback connection on a-1 while a-0 owned the key: stays when
    // nothing changes, and stays when the new state gives the key to a-1.
    assert!(!must_move(Some(&x), Some(&x), &y));
    assert!(!must_move(Some(&x), Some(&y), &y));
    // Its route is gone: moves.
    assert!(must_move(Some(&x), None, &x));
}

#[test]
fn the_ranking_names_the_owner_first() {
    let s = state(5, 0, 0);
    for k in keys(500) {
        let owner = s.place(0, k).owner.expect("shards");
        let first = s.stable().ranked(k).next().expect("shards");
        assert_eq!(owner, first);
        assert_eq!(s.stable().ranked(k).count(), 5);
    }
    assert_eq!(s.version_of_shard("a-2"), Some(Version::Stable));
    assert_eq!(s.version_of_shard("b-0"), None);
}

#[test]
fn promotion_relabels_the_canary_as_stable_without_moving_a_key() {
    // Weight 100: every key on the canary's shards "b-*".
    let before = state(3, 3, BUCKETS);
    // Promotion: the same shards and backends, now called the stable version.
    let after = RoutingState::new(
        2,
        table(),
        VersionState::new(Version::Stable, "v2".into(), shards("b", 3), pool(4)),
        None,
        0,
    );
    for k in keys(20_000) {
        let (old, new) = (before.place(0, k).seat(), after.place(0, k).seat());
        assert_eq!(old.version, Version::Canary);
        assert_eq!(new.version, Version::Stable);
        assert!(!must_move(Some(&old), Some(&new), &old), "{k:?} moved");
    }
    // A version without shards still compares versions.
    let unowned = |version| Seat {
        version,
        owner: None,
        backend: Some("backend-0".into()),
    };
    assert_ne!(unowned(Version::Stable), unowned(Version::Canary));
}
