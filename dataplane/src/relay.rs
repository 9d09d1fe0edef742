//! One proxied connection after the upgrade: the two directions relayed
//! frame-aware in one task, the gateway's own pings, timeouts and closes
//! slotted in at frame and message boundaries.
//!
//! Both directions live in one hand-written future, [`Relay`], polled as
//! one task with all state local to it: each wake-up does what the
//! sockets, the drain control and one timer allow now (bounded, then it
//! yields), and leaves its waker with each. A direction whose destination
//! cannot take more holds its unwritten bytes in `pending` and stops
//! reading its source until they are written: that is the backpressure,
//! and the only per-connection buffer, which is empty (unallocated)
//! whenever the connection is idle.
//!
//! Where each concern lives:
//! - `session`: one wake-up of the task (reads, writes, pings, timers) and
//!   the connection's state;
//! - `pump`: one direction, its frames scanned and forwarded;
//! - `close`: the close protocol, a state machine without I/O that the
//!   session drives with what happened and whose close frames it sends;
//! - `settings`: the limits and timers.
//!
//! Close codes the gateway sends (docs/closing.md has the full table):
//! 1001 pod stopping or idle, 1012 key moved, 1011 no pong in time or a
//! broken or vanished backend, 1002 protocol error, 1009 too big, 1008 slow
//! consumer, 1013 shed at the gateway's send-queue ceiling.

mod close;
mod pump;
mod session;
mod settings;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::time::{Instant, Sleep, sleep_until};

pub(crate) use self::settings::frame_limits_ok;
use self::{close::Side, session::Session};
pub use self::{
    close::{BACKEND_FAILED, Outcome, SHED},
    settings::{MIN_FRAME_BYTES, RelaySettings},
};
use crate::{io::Io, metrics::Metrics, registry::ConnControl, send_queues::SendQueues};

/// What every relay of the process shares.
#[derive(Clone)]
pub struct Relays {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The ceiling on what stalled clients hold.
    pub queues: Arc<SendQueues>,
}

pin_project_lite::pin_project! {
    /// One relayed connection as a future of its own: the task that holds
    /// it stores exactly these fields (about 650 bytes), so an idle
    /// connection costs little more than its sockets.
    pub(crate) struct Relay {
        session: Session,
        client: Io,
        backend: Io,
        control: Arc<ConnControl>,
        // Bytes that arrived with the handshakes (already frames).
        first: Option<Box<(Vec<u8>, Vec<u8>)>>,
        #[pin]
        timer: Sleep,
    }
}

impl Relay {
    /// A relay between `client` and `backend`, whose upgrade is done.
    pub(crate) fn new(
        client: Io,
        backend: Io,
        first: (Vec<u8>, Vec<u8>),
        deflate: bool,
        control: Arc<ConnControl>,
        settings: Arc<RelaySettings>,
        relays: Relays,
    ) -> Self {
        let queue_charge = crate::send_queues::charge(client.send_buffer_size());
        let session = Session::new(
            settings,
            deflate,
            relays.metrics,
            relays.queues,
            queue_charge,
            control.is_owned(),
        );
        let first = (!first.0.is_empty() || !first.1.is_empty()).then(|| Box::new(first));
        Self {
            session,
            client,
            backend,
            control,
            first,
            timer: sleep_until(Instant::now()),
        }
    }
}

impl Future for Relay {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.project();
        let s = this.session;
        if let Some(first) = this.first.take() {
            let (c, b) = *first;
            let sent = s
                .on_bytes(Side::Client, &c, this.backend, cx)
                .and_then(|()| s.on_bytes(Side::Backend, &b, this.client, cx));
            if let Err(e) = sent {
                return Poll::Ready(s.io_failed(e));
            }
        }
        let outcome = ready!(s.poll(cx, this.client, this.backend, this.control, this.timer));
        if outcome.abandons_client() {
            this.client.reset_on_close();
        }
        Poll::Ready(outcome)
    }
}

#[cfg(test)]
mod tests;
