//! The gateway-wide ceiling on memory held for clients that do not keep
//! up with their backends.
//!
//! A client that takes data slower than its backend sends it fills its
//! socket's send buffer (`connections.sendBufferBytes`, which the kernel
//! doubles for its bookkeeping), then at most one read of relayed bytes
//! waits in the gateway, and the backend is not read again until the
//! client has taken them. Such a connection is *stalled*, and is charged
//! what it can hold: its send buffer as the kernel reports it plus one
//! read ([`charge`]). The charges of all stalled connections together stay
//! under `connections.maxQueuedBytes`: a stall that would pass it sheds the
//! connections stalled longest, which are closed with 1013, until it fits.
//! The longest stalled are the likeliest never to read; a client that
//! stalls for a moment is shed only when it is the oldest stall left.
//!
//! A stall that lasts `connections.slowConsumerSeconds` ends in 1008
//! whatever the total (see `relay`): the ceiling bounds memory when many
//! clients stall at once, the timeout bounds how long one may.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use prometheus_client::metrics::gauge::Gauge;

use crate::{io::SCRATCH_BYTES, metrics::Metrics, registry::ConnControl};

/// What a stalled connection whose socket send buffer is `send_buffer`
/// bytes (as the kernel reports it) is charged: the buffer, one read
/// waiting to be written, and room for the frame bytes carried between
/// reads and the gateway's own control frames (a ping, a close).
pub(crate) fn charge(send_buffer: usize) -> u64 {
    (send_buffer + SCRATCH_BYTES + 512) as u64
}

/// The stalled connections of this process and what they hold.
pub struct SendQueues {
    ceiling: u64,
    state: Mutex<State>,
    /// `ringway_send_queue_bytes`: the charges of the stalled connections.
    bytes: Gauge,
    /// `ringway_stalled_clients`.
    stalled: Gauge,
}

#[derive(Default)]
struct State {
    /// Sum of the charges in `stalls`.
    used: u64,
    /// The next stall's id; ids grow, so the first entry is the oldest.
    next: u64,
    stalls: BTreeMap<u64, (u64, Arc<ConnControl>)>,
}

impl SendQueues {
    /// Stalls held under `ceiling` bytes, shown in `metrics`.
    pub fn new(ceiling: u64, metrics: &Metrics) -> Self {
        Self {
            ceiling,
            state: Mutex::default(),
            bytes: metrics.send_queue_bytes.clone(),
            stalled: metrics.stalled_clients.clone(),
        }
    }

    /// Charges `control`'s connection `bytes` until the returned guard is
    /// dropped. If that passes the ceiling, the connections stalled
    /// longest (this one last) are shed: asked to close at once, and no
    /// longer charged.
    pub fn stall(self: &Arc<Self>, control: &Arc<ConnControl>, bytes: u64) -> Stall {
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        state.used += bytes;
        state.stalls.insert(id, (bytes, Arc::clone(control)));
        while state.used > self.ceiling {
            let Some((_, (charged, victim))) = state.stalls.pop_first() else {
                break;
            };
            state.used -= charged;
            victim.shed();
        }
        self.show(&state);
        Stall {
            queues: Arc::clone(self),
            id,
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    fn show(&self, state: &State) {
        self.bytes
            .set(i64::try_from(state.used).unwrap_or(i64::MAX));
        self.stalled
            .set(i64::try_from(state.stalls.len()).unwrap_or(i64::MAX));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a few plain operations that cannot
        // panic half-way, so a poisoned lock holds a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One stalled connection's charge; dropping it releases the charge (a
/// shed connection's was released when it was shed).
pub struct Stall {
    queues: Arc<SendQueues>,
    id: u64,
}

impl Drop for Stall {
    fn drop(&mut self) {
        let mut state = self.queues.lock();
        if let Some((charged, _)) = state.stalls.remove(&self.id) {
            state.used -= charged;
            self.queues.show(&state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{registry::Role, routing::KeyHash};

    fn conn() -> Arc<ConnControl> {
        Arc::new(ConnControl::new(
            "r".into(),
            KeyHash(1),
            Role::Edge("o".into()),
        ))
    }

    #[test]
    fn past_the_ceiling_the_longest_stalled_are_shed_first() {
        let metrics = Metrics::new();
        let queues = Arc::new(SendQueues::new(300, &metrics));
        let (a, b, c) = (conn(), conn(), conn());
        let _sa = queues.stall(&a, 100);
        let sb = queues.stall(&b, 100);
        let _sc = queues.stall(&c, 100);
        assert_eq!(queues.used(), 300);
        assert!(!a.shed_requested() && !b.shed_requested() && !c.shed_requested());

        // b stops stalling: its charge goes, and d fits.
        drop(sb);
        let d = conn();
        let _sd = queues.stall(&d, 100);
        assert_eq!(queues.used(), 300);
        assert!(!a.shed_requested());

        // e needs 150: a (the oldest) and c go, in that order, until it fits.
        let e = conn();
        let _se = queues.stall(&e, 150);
        assert!(a.shed_requested(), "the oldest stall is shed");
        assert!(c.shed_requested(), "then the next oldest");
        assert!(!d.shed_requested() && !e.shed_requested());
        assert_eq!(queues.used(), 250);
        let shown = metrics.render();
        assert!(shown.contains("ringway_send_queue_bytes 250"), "{shown}");
        assert!(shown.contains("ringway_stalled_clients 2"), "{shown}");
    }

    #[test]
    fn a_shed_stall_is_not_released_twice() {
        let metrics = Metrics::new();
        let queues = Arc::new(SendQueues::new(100, &metrics));
        let (a, b) = (conn(), conn());
        let sa = queues.stall(&a, 100);
        let _sb = queues.stall(&b, 100);
        assert!(a.shed_requested() && !b.shed_requested());
        // a's guard goes when its relay ends: its charge is already gone.
        drop(sa);
        assert_eq!(queues.used(), 100);
    }

    #[test]
    fn a_stall_over_the_ceiling_alone_sheds_itself() {
        let metrics = Metrics::new();
        let queues = Arc::new(SendQueues::new(100, &metrics));
        let a = conn();
        let _sa = queues.stall(&a, 101);
        assert!(a.shed_requested());
        assert_eq!(queues.used(), 0);
    }
}
