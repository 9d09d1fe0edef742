//! The wiring: one kube-rs `Controller` per watched namespace (or one for
//! the whole cluster) that owns each gateway's children and also watches
//! the data-plane pods and the backend Services' EndpointSlices. The
//! gateways', pods' and EndpointSlices' watches fill the reconcile's
//! [`Stores`](crate::stores::Stores) through their [`Writers`].

use std::{fmt::Debug, future::Future, sync::Arc};

use futures_util::{Stream, StreamExt, future::join_all};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{ObjectRef, store::Writer},
        watcher,
    },
};
use ringway_crds::WebSocketGateway;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    context::Context,
    names::LABEL_GATEWAY,
    reconcile::{error_policy, reconcile},
    steer::Steer,
    stores::{SERVICE_NAME_LABEL, Writers},
};

/// Runs one controller per watched scope (see
/// [`stores`](crate::stores::stores)) until `halt` turns true, then lets
/// running reconciles finish.
pub async fn run<S: Steer>(
    client: Client,
    scopes: Vec<Writers>,
    context: Arc<Context<S>>,
    halt: watch::Receiver<bool>,
) {
    let runs = scopes.into_iter().map(|writers| {
        let span = info_span!(
            "controller",
            namespace = writers.namespace.as_deref().unwrap_or("*")
        );
        let mut halt = halt.clone();
        let shutdown = async move {
            let _ = halt.wait_for(|h| *h).await;
        };
        run_scope(client.clone(), writers, Arc::clone(&context), shutdown).instrument(span)
    });
    join_all(runs).await;
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn run_scope<S: Steer>(
    client: Client,
    writers: Writers,
    context: Arc<Context<S>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = writers.namespace.as_deref();
    let ours = || watcher::Config::default().labels(LABEL_GATEWAY);
    let gateways = writers.gateways.as_reader();
    let gateway_events = reflected(
        api::<WebSocketGateway>(&client, ns),
        watcher::Config::default(),
        writers.gateways,
    )
    .applied_objects();
    let pods = reflected(api::<Pod>(&client, ns), ours(), writers.pods).touched_objects();
    let slices = reflected(
        api::<EndpointSlice>(&client, ns),
        watcher::Config::default().labels(SERVICE_NAME_LABEL),
        writers.endpoint_slices,
    )
    .touched_objects();
    Controller::for_stream(gateway_events, gateways.clone())
        .owns(api::<StatefulSet>(&client, ns), ours())
        .owns(api::<Service>(&client, ns), ours())
        .owns(api::<PodDisruptionBudget>(&client, ns), ours())
        .owns(api::<Secret>(&client, ns), ours())
        .owns(api::<ConfigMap>(&client, ns), ours())
        .owns(api::<NetworkPolicy>(&client, ns), ours())
        // Pods belong to the StatefulSets; their label names the gateway.
        .watches_stream(pods, |pod| {
            let ns = pod.namespace();
            pod.labels()
                .get(LABEL_GATEWAY)
                .map(|gw| ObjectRef::new(gw).within(ns.as_deref().unwrap_or_default()))
        })
        // Backend endpoints: every gateway with a route to that Service.
        .watches_stream(slices, move |slice| {
            let ns = slice.namespace();
            let service = slice.labels().get(SERVICE_NAME_LABEL).cloned();
            gateways
                .state()
                .into_iter()
                .filter(|gw| gw.namespace() == ns)
                .filter(|gw| {
                    gw.spec
                        .routes
                        .iter()
                        .any(|r| Some(&r.backend.service) == service.as_ref())
                })
                .map(|gw| ObjectRef::from_obj(&*gw))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((gw, action)) => log_done(&gw, &action),
                Err(e) => warn!(error = %e, "controller"),
            }
        })
        .await;
    info!("controller stopped");
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

/// Drops what the reconcile never reads and the stores would keep for
/// every object: the managed fields.
fn lean<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
}

fn log_done(gw: &ObjectRef<WebSocketGateway>, action: &Action) {
    tracing::debug!(gateway = %gw, action = ?action, "reconcile done");
}
