//! Key hashing and rendezvous (highest-random-weight) hashing.
//!
//! Why rendezvous: it moves the fewest keys possible when a node comes or
//! goes (exactly the keys the new node wins, about 1/(N+1)), needs no table
//! to rebuild, and its balance has no error of its own beyond the keys'
//! randomness. A lookup scores every node (O(N)), which costs ~1 ns a node:
//! nothing next to a TCP connect for the tens to hundreds of backends or
//! shards a route has. See docs/routing.md for the measurements.

use xxhash_rust::xxh3::xxh3_64;

/// The 64-bit hash of a routing key. Stable across processes, versions and
/// machines: it is part of the routing contract between pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyHash(pub u64);

/// Hashes a key's bytes (XXH3-64, seed 0).
pub fn hash_key(key: &[u8]) -> KeyHash {
    KeyHash(xxh3_64(key))
}

/// MurmurHash3's 64-bit finalizer: a bijective mix with full avalanche.
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A set of nodes (backends or shards) among which keys are placed by
/// rendezvous hashing. Nodes are identified by a stable id; their order
/// does not matter.
#[derive(Clone, Debug, Default)]
pub struct Rendezvous {
    ids: Vec<u64>,
}

impl Rendezvous {
    /// Builds the set from node ids.
    pub fn new<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        Self {
            ids: ids.into_iter().map(|id| xxh3_64(id.as_ref())).collect(),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No nodes at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The index of the node that owns `key`, or `None` with no nodes.
    pub fn pick(&self, key: KeyHash) -> Option<usize> {
        let mut best = None;
        let mut best_score = 0u64;
        for (i, &id) in self.ids.iter().enumerate() {
            let score = Self::score(key, id);
            if best.is_none() || score > best_score {
                best = Some(i);
                best_score = score;
            }
        }
        best
    }

    /// Every node's index, the owner of `key` first, then the node that
    /// would own it if the owner were gone, and so on. For fallbacks: an
    /// allocation, so not on the hot path.
    pub fn ranked(&self, key: KeyHash) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(Self::score(key, self.ids[i])));
        order
    }

    fn score(key: KeyHash, id: u64) -> u64 {
        fmix64(key.0 ^ fmix64(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<KeyHash> {
        (0..n)
            .map(|i| hash_key(format!("room-{i}").as_bytes()))
            .collect()
    }

    fn nodes(n: usize) -> Rendezvous {
        Rendezvous::new((0..n).map(|i| format!("10.0.0.{i}:8080")))
    }

    fn counts(keys: &[KeyHash], ring: &Rendezvous) -> Vec<usize> {
        let mut counts = vec![0usize; ring.len()];
        for &k in keys {
            counts[ring.pick(k).expect("nodes")] += 1;
        }
        counts
    }

    #[test]
    fn keys_spread_within_five_percent_of_even() {
        // 100,000 keys: each backend's share has a standard deviation of
        // ~1% of its expectation, so ±5% is a 5-sigma band.
        let ring = nodes(10);
        let counts = counts(&keys(100_000), &ring);
        for (i, &c) in counts.iter().enumerate() {
            assert!(
                (9_500..=10_500).contains(&c),
                "backend {i} got {c} of 100,000 keys: {counts:?}"
            );
        }
    }

    #[test]
    fn ten_thousand_keys_spread_like_a_fair_die() {
        // With 10,000 keys a backend's count has a standard deviation of 30
        // (3%) from sampling alone, whatever the hash: ±5% is only 1.67
        // sigma and cannot be promised. What can be checked is that the
        // spread is no worse than chance: a chi-square test against the
        // uniform distribution (9 degrees of freedom, p = 0.001: 27.88).
        let counts = counts(&keys(10_000), &nodes(10));
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - 1000.0).powi(2) / 1000.0)
            .sum();
        assert!(chi2 < 27.88, "chi-square {chi2:.1} for {counts:?}");
        let worst = counts
            .iter()
            .map(|&c| (c as f64 - 1000.0).abs() / 10.0)
            .fold(0.0, f64::max);
        assert!(
            worst < 10.0,
            "a backend is {worst:.1}% off even: {counts:?}"
        );
    }

    #[test]
    fn an_eleventh_backend_moves_only_the_keys_it_takes() {
        let ten = nodes(10);
        let eleven = nodes(11);
        let mut moved = 0;
        for k in keys(10_000) {
            let before = ten.pick(k).expect("nodes");
            let after = eleven.pick(k).expect("nodes");
            if before != after {
                assert_eq!(after, 10, "a key moved between two old backends");
                moved += 1;
            }
        }
        assert!(
            moved <= 1_200,
            "{moved} of 10,000 keys moved (at most 12% allowed)"
        );
        assert!(
            moved >= 700,
            "{moved} keys moved: the new backend takes too little"
        );
    }

    #[test]
    fn the_same_key_always_gets_the_same_backend() {
        let a = nodes(7);
        // Same ids in another order: another pod may list them differently.
        let b = Rendezvous::new((0..7).rev().map(|i| format!("10.0.0.{i}:8080")));
        for k in keys(1_000) {
            let i = a.pick(k).expect("nodes");
            assert_eq!(Some(i), a.pick(k));
            assert_eq!(Some(6 - i), b.pick(k));
        }
    }

    #[test]
    fn the_ranking_starts_with_the_owner_and_names_the_owner_without_it() {
        let five = nodes(5);
        for k in keys(1_000) {
            let ranked = five.ranked(k);
            assert_eq!(ranked.len(), 5);
            assert_eq!(Some(ranked[0]), five.pick(k));
            // Without the owner, the runner-up owns the key: the fallback
            // of a hand-off lands where a snapshot without the owner would.
            let without: Vec<String> = (0..5)
                .filter(|&i| i != ranked[0])
                .map(|i| format!("10.0.0.{i}:8080"))
                .collect();
            let four = Rendezvous::new(&without);
            let owner = four.pick(k).expect("nodes");
            assert_eq!(without[owner], format!("10.0.0.{}:8080", ranked[1]));
        }
    }

    #[test]
    fn the_key_hash_is_stable() {
        // Part of the contract between pods of different versions: never change.
        assert_eq!(hash_key(b"room-1").0, xxh3_64(b"room-1"));
        assert_eq!(hash_key(b"").0, 0x2d06_8005_38d3_94c2);
        assert_eq!(Rendezvous::default().pick(hash_key(b"x")), None);
    }
}

#[cfg(test)]
mod measure {
    use super::*;

    /// Prints the numbers quoted in docs/routing.md:
    /// `cargo test -p ringway-dataplane --lib routing::hash::measure -- --ignored --nocapture`
    #[test]
    #[ignore = "prints measurements for the docs"]
    fn balance_and_movement() {
        for (keys, nodes) in [(10_000usize, 10usize), (100_000, 10), (100_000, 100)] {
            let ring = Rendezvous::new((0..nodes).map(|i| format!("10.0.0.{i}:8080")));
            let mut counts = vec![0usize; nodes];
            for i in 0..keys {
                counts[ring
                    .pick(hash_key(format!("room-{i}").as_bytes()))
                    .expect("nodes")] += 1;
            }
            let even = keys as f64 / nodes as f64;
            let worst = counts
                .iter()
                .map(|&c| (c as f64 - even).abs() / even * 100.0)
                .fold(0.0, f64::max);
            let sigma = (even * (1.0 - 1.0 / nodes as f64)).sqrt() / even * 100.0;
            println!(
                "{keys} keys over {nodes} nodes: worst {worst:.2}% off even (one sigma of pure sampling: {sigma:.2}%)"
            );
        }
        for nodes in [10usize, 100] {
            let before = Rendezvous::new((0..nodes).map(|i| format!("10.0.0.{i}:8080")));
            let after = Rendezvous::new((0..=nodes).map(|i| format!("10.0.0.{i}:8080")));
            let keys = 100_000;
            let moved = (0..keys)
                .filter(|i| {
                    let k = hash_key(format!("room-{i}").as_bytes());
                    before.pick(k) != after.pick(k)
                })
                .count();
            println!(
                "{nodes} -> {} nodes: {:.2}% of {keys} keys moved (ideal {:.2}%)",
                nodes + 1,
                moved as f64 / keys as f64 * 100.0,
                100.0 / (nodes + 1) as f64
            );
        }
        let ring = Rendezvous::new((0..100).map(|i| format!("10.0.0.{i}:8080")));
        let start = std::time::Instant::now();
        let mut sink = 0;
        for i in 0..100_000u64 {
            sink ^= ring.pick(KeyHash(i)).expect("nodes");
        }
        println!(
            "pick over 100 nodes: {:.0} ns ({sink})",
            start.elapsed().as_nanos() as f64 / 100_000.0
        );
    }
}
