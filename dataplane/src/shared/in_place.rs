//! A sidecar's drain in place: every client closed with 1001 and the
//! reconnect hint while the process stays up for its application. It runs
//! once, whoever starts it: the application's preStop hook (the admin
//! `/drain`) or the operator's `Drain` RPC on the control port, which also
//! paces it at the pod's share of its workload's reconnect budget. When
//! the control port serves, the preStop drain waits a moment for that
//! pace before it falls back to the sidecar's own rate.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ringway_dataplane_api::sidecar;
use tokio::{
    sync::{OnceCell, watch},
    time::{Instant, timeout, timeout_at},
};

use super::Shared;
use crate::{registry::DrainCause, sidecar::DrainToken};

/// What a process run as a sidecar ([`crate::sidecar`]) adds.
pub(crate) struct SidecarState {
    /// Lets a request from off the pod's loopback drain it.
    pub(crate) token: Option<DrainToken>,
    /// The control port serves: the operator may pace the drain, so the
    /// preStop drain waits for it a moment.
    control: AtomicBool,
    /// The closes per second the operator's last `Drain` asked for.
    operator_pace: watch::Sender<Option<u32>>,
    /// The drain in place, run once whoever asks: how many connections
    /// it had to cut.
    drained: OnceCell<usize>,
}

impl SidecarState {
    /// A sidecar that has not drained yet, its control port not serving.
    pub(crate) fn new(token: Option<DrainToken>) -> Self {
        Self {
            token,
            control: AtomicBool::new(false),
            operator_pace: watch::Sender::new(None),
            drained: OnceCell::new(),
        }
    }
}

/// Who paces a drain, as logged and counted.
fn paced_by(operator: Option<u32>) -> &'static str {
    match operator {
        Some(_) => "operator",
        None => "local",
    }
}

impl Shared {
    /// Sidecars: whether the control port serves, for the preStop drain
    /// and in `ringway_sidecar_control_serving`.
    pub(crate) fn set_control_serving(&self, serving: bool) {
        if let Some(sidecar) = &self.sidecar {
            sidecar.control.store(serving, Ordering::SeqCst);
            self.metrics.sidecar_control_serving.set(i64::from(serving));
        }
    }

    /// The preStop hook's drain: when the control port serves, stops
    /// taking clients and waits up to [`sidecar::OPERATOR_WAIT_SECONDS`]
    /// for the operator to pace the drain, then drains in place
    /// ([`Shared::drain_in_place`]) at its pace or the sidecar's own.
    pub(crate) async fn drain_on_prestop(&self, sidecar: &SidecarState) -> usize {
        if sidecar.control.load(Ordering::SeqCst) && !sidecar.drained.initialized() {
            self.start_draining(DrainCause::Shutdown);
            let wait = Duration::from_secs_f64(sidecar::OPERATOR_WAIT_SECONDS);
            let mut pace = sidecar.operator_pace.subscribe();
            if timeout(wait, pace.wait_for(Option::is_some)).await.is_err() {
                tracing::info!(
                    waited_seconds = wait.as_secs_f64(),
                    "the operator did not pace the drain in time; it runs at the sidecar's own rate"
                );
            }
        }
        self.drain_in_place(sidecar).await
    }

    /// The operator's `Drain`: paces this sidecar's drain at `rate` closes
    /// per second (`None`: the sidecar's own rate) from now on, and starts
    /// it, in a task of its own, if it has not started. Returns the
    /// connections still open.
    pub(crate) async fn drain_paced_by_operator(self: &Arc<Self>, rate: Option<u32>) -> usize {
        let Some(sidecar) = &self.sidecar else {
            return 0;
        };
        let rate = rate.unwrap_or(self.running.load().drain.max_closes_per_second);
        self.drainer.pace(rate).await;
        let open = self.registry.len();
        match sidecar.operator_pace.send_replace(Some(rate)) {
            None => tracing::info!(
                closes_per_second = rate,
                connections = open,
                "the operator paces the drain"
            ),
            Some(before) if before != rate => tracing::info!(
                closes_per_second = rate,
                before,
                connections = open,
                "the operator re-paces the drain"
            ),
            Some(_) => tracing::debug!(closes_per_second = rate, "the operator's pace again"),
        }
        let shared = Arc::clone(self);
        // Not tied to the call: the drain runs to its end whatever the
        // caller does.
        tokio::spawn(async move {
            if let Some(sidecar) = &shared.sidecar {
                shared.drain_in_place(sidecar).await;
            }
        });
        open
    }

    /// Drains every client in place, as a stop would (1001 with the
    /// reconnect hint, paced over the drain window or at the operator's
    /// pace), and stays up, not ready and answering new clients 503, until
    /// the process is stopped. The drain runs once, whoever asks and
    /// however often; resolves once every client is gone or the window
    /// and the close timeout have passed, with how many connections were
    /// cut.
    pub(crate) async fn drain_in_place(&self, sidecar: &SidecarState) -> usize {
        *sidecar
            .drained
            .get_or_init(|| self.drain_clients(sidecar))
            .await
    }

    /// Whether this is a sidecar whose drain in place has finished.
    pub(crate) fn drained_in_place(&self) -> bool {
        self.sidecar
            .as_ref()
            .is_some_and(|s| s.drained.initialized())
    }

    async fn drain_clients(&self, sidecar: &SidecarState) -> usize {
        self.start_draining(DrainCause::Shutdown);
        let running = self.running.load_full();
        let policy = running.drain;
        let deadline = Instant::now() + policy.window + running.relay.close_timeout;
        let victims = self.registry.connections();
        let operator = *sidecar.operator_pace.borrow();
        let paced_by = paced_by(operator);
        self.metrics.sidecar_drain(paced_by);
        tracing::info!(
            connections = victims.len(),
            window_seconds = policy.window.as_secs_f64(),
            paced_by,
            closes_per_second = operator.unwrap_or(policy.max_closes_per_second),
            "draining beside the application; it stops once its clients are gone"
        );
        self.drainer
            .submit(
                victims,
                DrainCause::Shutdown,
                policy.window,
                policy.max_closes_per_second,
            )
            .await;
        let _ = timeout_at(deadline, self.registry.wait_empty()).await;
        self.count_cut()
    }
}
