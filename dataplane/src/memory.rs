//! Gives the allocator's free pages back to the system once many
//! connections have ended: after an attack that held thousands of sockets,
//! a drain, or any burst, the pod's memory comes back down instead of
//! staying at the peak.
//!
//! jemalloc returns freed pages over its decay time (10 s), but its
//! background thread leaves an arena's dirty pages alone while there are
//! fewer than 1,024 of them (4 MiB, `ARENA_DEFERRED_PURGE_NPAGES_THRESHOLD`),
//! so a quiet pod kept up to 4 MiB per arena of an attack's peak for good:
//! measured at 10.0 MB after 5,000 slowloris connections against 6.2 MB
//! before. A release purges every arena's dirty pages at once; it is taken
//! only after at least [`RELEASE_AFTER`] connections ended, so a pod with
//! steady churn keeps reusing its pages instead of faulting them in again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tikv_jemalloc_ctl::{Access, AsName, arenas};

/// How often the connections in use are compared with their high-water
/// mark.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How far the connections in use must have fallen from their high-water
/// mark (since the last check) for a release.
pub const RELEASE_AFTER: usize = 1_000;

/// The most connections in use at once since the last check, noted on
/// every accept (one atomic `fetch_max`).
#[derive(Debug, Default)]
pub struct HighWater(AtomicUsize);

impl HighWater {
    /// Notes that `in_use` connections are held now.
    pub fn note(&self, in_use: usize) {
        self.0.fetch_max(in_use, Ordering::Relaxed);
    }

    /// Whether to release now that `in_use` are held: the high-water mark
    /// is at least [`RELEASE_AFTER`] above it. Starts the next period at
    /// `in_use`.
    pub fn fell_enough(&self, in_use: usize) -> bool {
        let peak = self.0.swap(in_use, Ordering::Relaxed);
        peak.saturating_sub(in_use) >= RELEASE_AFTER
    }
}

/// Purges the dirty pages of every jemalloc arena now. Setting an arena's
/// `dirty_decay_ms` to 0 purges all of its dirty pages at once (jemalloc's
/// documented meaning of 0, applied when it is set); the arena's own decay
/// time is put back right after. Arenas that were never used are skipped.
/// Blocking (one `madvise` per run of pages): call it off the runtime's
/// workers.
pub fn release_free_pages() -> Result<u32, tikv_jemalloc_ctl::Error> {
    let narenas = arenas::narenas::read()?;
    let mut decay = b"arena.0.dirty_decay_ms\0".name().mib::<[usize; 3]>()?;
    let mut released = 0;
    for arena in 0..narenas {
        decay[1] = arena as usize;
        // EFAULT: an arena index that was never initialised.
        let Ok(was) = Access::<isize>::update(&decay, 0) else {
            continue;
        };
        decay.write(was)?;
        released += 1;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_follows_a_fall_from_the_high_water_mark() {
        let mark = HighWater::default();
        mark.note(10);
        mark.note(5_000);
        mark.note(4_000);
        assert!(!mark.fell_enough(4_500), "500 ended: not enough");
        // The next period starts at 4,500: 4,000 more ended since.
        assert!(mark.fell_enough(500));
        // Nothing new held: no second release for the same fall.
        assert!(!mark.fell_enough(0));
    }

    #[test]
    fn steady_churn_never_releases() {
        let mark = HighWater::default();
        for _ in 0..100 {
            mark.note(900);
            assert!(!mark.fell_enough(0));
        }
    }

    #[test]
    fn releasing_keeps_every_arenas_decay_time() {
        // The test binary's allocator is the system's, but jemalloc is
        // linked (the data plane's binary allocates with it): its arenas
        // exist and take the same controls.
        let before = b"arenas.dirty_decay_ms\0".name();
        let default: isize = before.read().expect("jemalloc answers");
        let released = release_free_pages().expect("every arena takes the release");
        assert!(released >= 1, "at least arena 0 is initialised");
        let mut decay = b"arena.0.dirty_decay_ms\0"
            .name()
            .mib::<[usize; 3]>()
            .expect("a mib");
        for arena in 0..arenas::narenas::read().expect("narenas") {
            decay[1] = arena as usize;
            if let Ok(ms) = Access::<isize>::read(&decay) {
                assert_eq!(ms, default, "arena {arena}'s decay time was put back");
            }
        }
    }
}
