//! The store-filling watches: gateways, data-plane pods and EndpointSlices,
//! one set per watched scope. They run on every replica from startup,
//! leader or not, so that a standby's [`Stores`](crate::stores::Stores)
//! are warm (and its readiness true) when it takes over, as
//! controller-runtime's shared caches are. While this replica leads, each
//! watch also hands every object it touched to the controller ([`Feed`]),
//! after its store has it; while it stands by, it drops them. A gateway is
//! handed over only when its spec or annotations changed, not for the
//! operator's own status writes.

use std::{fmt::Debug, pin::pin};

use futures_util::{Stream, StreamExt, future::join3};
use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Predicate, PredicateConfig, WatchStreamExt, predicates,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use ringway_crds::WebSocketGateway;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info_span, warn};

use crate::{
    names::LABEL_GATEWAY,
    stores::{SERVICE_NAME_LABEL, Writers},
};

/// How many touched objects wait for the controller before a watch waits
/// for it in turn: a burst is absorbed, a stalled controller holds the
/// watch back rather than growing a queue.
const FEED_BUFFER: usize = 64;

/// What one scope's watches give the controller: the gateways' store, and
/// every object they touched while this replica led, each already in its
/// store. Dropping a `Feed` stops its scope's watches.
pub struct Feed {
    /// The namespace watched; `None`: all of them.
    pub namespace: Option<String>,
    /// The gateways, as the gateway watch keeps them.
    pub gateways: Store<WebSocketGateway>,
    /// Gateways created or changed.
    pub gateway_changes: mpsc::Receiver<WebSocketGateway>,
    /// Data-plane pods created, changed or deleted.
    pub pod_changes: mpsc::Receiver<Pod>,
    /// EndpointSlices created, changed or deleted.
    pub endpoint_slice_changes: mpsc::Receiver<EndpointSlice>,
}

/// Starts the watches of every scope, each filling its [`Writers`]; they
/// hand what they touch to the returned feeds while `leading` is true, and
/// run until their feed is dropped.
pub fn start(client: &Client, scopes: Vec<Writers>, leading: &watch::Receiver<bool>) -> Vec<Feed> {
    scopes
        .into_iter()
        .map(|writers| start_scope(client, writers, leading))
        .collect()
}

fn start_scope(client: &Client, writers: Writers, leading: &watch::Receiver<bool>) -> Feed {
    let ns = writers.namespace.as_deref();
    let span = info_span!("watches", namespace = ns.unwrap_or("*"));
    let gateways = writers.gateways.as_reader();
    let (gateway_tx, gateway_changes) = mpsc::channel(FEED_BUFFER);
    let (pod_tx, pod_changes) = mpsc::channel(FEED_BUFFER);
    let (slice_tx, endpoint_slice_changes) = mpsc::channel(FEED_BUFFER);
    let gateway_watch = spec_or_annotation_changes(
        reflected(
            api::<WebSocketGateway>(client, ns),
            watcher::Config::default(),
            writers.gateways,
        )
        .applied_objects(),
    );
    let pod_watch = reflected(
        api::<Pod>(client, ns),
        watcher::Config::default().labels(LABEL_GATEWAY),
        writers.pods,
    )
    .touched_objects();
    let slice_watch = reflected(
        api::<EndpointSlice>(client, ns),
        watcher::Config::default().labels(SERVICE_NAME_LABEL),
        writers.endpoint_slices,
    )
    .touched_objects();
    let watches = join3(
        forward(gateway_watch, leading.clone(), gateway_tx),
        forward(pod_watch, leading.clone(), pod_tx),
        forward(slice_watch, leading.clone(), slice_tx),
    );
    tokio::spawn(watches.instrument(span));
    Feed {
        namespace: writers.namespace,
        gateways,
        gateway_changes,
        pod_changes,
        endpoint_slice_changes,
    }
}

/// The [`Api`] of `K` in namespace `ns`, or in all of them.
pub(crate) fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The watch of `api`'s objects that `config` selects, kept in `writer`'s
/// store (retried with a backoff when the API server fails).
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(lean)
        .reflect(writer)
}

/// The gateways of `applied` whose spec (their generation) or annotations
/// changed: the operator's own status writes, which change figures at
/// every reconcile of a canary, would otherwise start the next reconcile
/// at once. The reconciles of a rollout are paced by their requeue.
fn spec_or_annotation_changes(
    applied: impl Stream<Item = Result<WebSocketGateway, watcher::Error>>,
) -> impl Stream<Item = Result<WebSocketGateway, watcher::Error>> {
    applied.predicate_filter(
        predicates::generation.combine(predicates::annotations),
        PredicateConfig::default(),
    )
}

/// Drops what the reconcile never reads and the stores would keep for
/// every object: the managed fields.
fn lean<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
}

/// Drives `touched` (whose store is updated before each object comes out)
/// and sends each object to `to` while `leading` is true; drops it
/// otherwise. Ends when `to`'s receiver is gone.
async fn forward<K>(
    touched: impl Stream<Item = Result<K, watcher::Error>>,
    leading: watch::Receiver<bool>,
    to: mpsc::Sender<K>,
) {
    let mut touched = pin!(touched);
    loop {
        let next = tokio::select! {
            next = touched.next() => next,
            () = to.closed() => return,
        };
        match next {
            Some(Ok(object)) => {
                let lead = *leading.borrow();
                if lead && to.send(object).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => warn!(error = %e, "watch failed; retrying"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests;
