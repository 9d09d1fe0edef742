//! One round of pacing: the calls [`Fleet::plan`] asks for, made over the
//! sidecars' control ports ([`Dial`]; [`Dialer`] is the mutual-TLS one),
//! lowers before raises, and the answers recorded.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use ringway_control::{ClientError, ControlClient, Options};
use ringway_dataplane_api::v1::DrainRequest;
use tracing::{debug, info, warn};

use super::{Call, DrainingPod, Fleet, Report};
use crate::webhook::control_tls::ClientCert;

/// How the leader reaches sidecars: a `Drain` at a rate, and a status, each
/// answering the clients the sidecar has left.
pub trait Dial: Sync {
    /// Starts (or re-paces) the drain of the sidecar at `address` in
    /// `namespace` at `rate` closes per second.
    fn drain(
        &self,
        namespace: &str,
        address: &str,
        rate: u32,
    ) -> impl Future<Output = Result<u64, String>> + Send;
    /// The clients the sidecar at `address` in `namespace` has left.
    fn status(
        &self,
        namespace: &str,
        address: &str,
    ) -> impl Future<Output = Result<u64, String>> + Send;
}

/// Whether a round also asks the pods already at their share how far
/// they got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Ask them.
    Ask,
    /// Not this time (they were asked a moment ago).
    Skip,
}

/// Runs one round: makes the calls `fleet` plans for the `draining` pods,
/// lowering shares first and raising a workload's only once all of its
/// lowers were answered, then, with [`Progress::Ask`], asks the pods
/// already at their share how far they got. Returns what to report.
pub async fn round(
    fleet: &mut Fleet,
    draining: &[DrainingPod],
    dial: &impl Dial,
    progress: Progress,
) -> Vec<Report> {
    let (plan, mut reports) = fleet.plan(draining);
    let lowers: Vec<&Call> = plan.workloads.values().flat_map(|w| &w.lower).collect();
    let mut unanswered = BTreeSet::new();
    for (call, answer) in calls(&lowers, dial).await {
        if answer.is_err() {
            unanswered.insert(&call.pod);
        }
        reports.extend(record(fleet, call, answer));
    }
    let raises: Vec<&Call> = plan
        .workloads
        .values()
        .filter(|w| w.lower.iter().all(|c| !unanswered.contains(&c.pod)))
        .flat_map(|w| &w.raise)
        .collect();
    for (call, answer) in calls(&raises, dial).await {
        reports.extend(record(fleet, call, answer));
    }
    if progress == Progress::Skip {
        return reports;
    }
    let polls = join_all(
        plan.poll
            .iter()
            .map(|(pod, address)| dial.status(&pod.namespace, address)),
    )
    .await;
    let now = Instant::now();
    for ((pod, _), answer) in plan.poll.iter().zip(polls) {
        reports.extend(fleet.polled(pod, answer, now));
    }
    reports
}

/// `Drain` calls, all at once, with their answers.
async fn calls<'c>(calls: &[&'c Call], dial: &impl Dial) -> Vec<(&'c Call, Result<u64, String>)> {
    let answers = join_all(
        calls
            .iter()
            .map(|c| dial.drain(&c.pod.namespace, &c.address, c.rate)),
    )
    .await;
    calls.iter().copied().zip(answers).collect()
}

fn record(fleet: &mut Fleet, call: &Call, answer: Result<u64, String>) -> Option<Report> {
    match &answer {
        Ok(left) => info!(
            pod = %call.pod,
            rate = call.rate,
            sharing = call.sharing,
            budget = call.budget,
            connections = left,
            "pacing a sidecar's drain at its share of the workload's budget"
        ),
        Err(e) => {
            warn!(pod = %call.pod, rate = call.rate, error = %e, "could not pace a sidecar's drain")
        }
    }
    fleet.paced(call, answer, Instant::now())
}

/// Timeouts of the calls: one attempt each (a round retries on the next
/// tick), short, since a sidecar waits only
/// [`OPERATOR_WAIT_SECONDS`](ringway_dataplane_api::sidecar::OPERATOR_WAIT_SECONDS) before pacing itself.
const OPTIONS: Options = Options {
    connect_timeout: Duration::from_secs(1),
    rpc_timeout: Duration::from_secs(2),
    attempts: 1,
    backoff_base: Duration::from_millis(100),
    backoff_max: Duration::from_millis(100),
};

/// Reaches sidecars over mutual TLS: one [`ControlClient`] per namespace,
/// as each namespace's sidecars carry their own server name
/// ([`ringway_dataplane_api::sidecar::server_name`]).
pub struct Dialer {
    cert: ClientCert,
    clients: Mutex<HashMap<String, Arc<ControlClient>>>,
}

impl Dialer {
    /// A dialer presenting `cert`.
    pub fn new(cert: ClientCert) -> Self {
        Self {
            cert,
            clients: Mutex::default(),
        }
    }

    /// What it presents.
    pub fn cert(&self) -> &ClientCert {
        &self.cert
    }

    fn client(&self, namespace: &str) -> Result<Arc<ControlClient>, ClientError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(namespace) {
            return Ok(Arc::clone(client));
        }
        let client = Arc::new(ControlClient::new(&self.cert.identity(namespace), OPTIONS)?);
        debug!(namespace, "control client for the namespace's sidecars");
        clients.insert(namespace.to_owned(), Arc::clone(&client));
        Ok(client)
    }
}

impl Dial for Dialer {
    async fn drain(&self, namespace: &str, address: &str, rate: u32) -> Result<u64, String> {
        let client = self.client(namespace).map_err(|e| e.to_string())?;
        let request = DrainRequest {
            window_ms: 0,
            max_closes_per_second: rate,
        };
        client
            .drain(address, request)
            .await
            .map(|r| r.draining)
            .map_err(|e| e.to_string())
    }

    async fn status(&self, namespace: &str, address: &str) -> Result<u64, String> {
        let client = self.client(namespace).map_err(|e| e.to_string())?;
        let status = client.status(address).await.map_err(|e| e.to_string())?;
        Ok(status.connections.iter().map(|c| c.count).sum())
    }
}
