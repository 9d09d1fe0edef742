//! The wiring: one kube-rs `Controller` per watched scope (a namespace, or
//! the whole cluster), run while this replica leads. It owns each
//! gateway's children (their watches are its own) and is triggered by the
//! store-filling watches of [`watches`](crate::watches) through their
//! [`Feed`]: the gateways, the data-plane pods and the backend Services'
//! EndpointSlices. On start it reconciles every gateway once, so that
//! nothing the watches saw while this replica stood by is missed.

use std::{future::Future, sync::Arc};

use futures_util::{Stream, StreamExt, future::join_all, stream};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Secret, Service},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Client, ResourceExt,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use ringway_crds::WebSocketGateway;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::{
    context::Context,
    names::LABEL_GATEWAY,
    reconcile::{error_policy, reconcile},
    steer::Steer,
    stores::SERVICE_NAME_LABEL,
    watches::{Feed, api},
};

/// Runs one controller per watched scope, each fed by that scope's
/// watches (see [`watches::start`](crate::watches::start)), until `halt`
/// turns true, then lets running reconciles finish. Drops the feeds, which
/// stops the watches.
pub async fn run<S: Steer>(
    client: Client,
    feeds: Vec<Feed>,
    context: Arc<Context<S>>,
    halt: watch::Receiver<bool>,
) {
    let runs = feeds.into_iter().map(|feed| {
        let span = info_span!(
            "controller",
            namespace = feed.namespace.as_deref().unwrap_or("*")
        );
        let shutdown = crate::until(halt.clone());
        run_scope(client.clone(), feed, Arc::clone(&context), shutdown).instrument(span)
    });
    join_all(runs).await;
}

async fn run_scope<S: Steer>(
    client: Client,
    feed: Feed,
    context: Arc<Context<S>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = feed.namespace.as_deref();
    let ours = || watcher::Config::default().labels(LABEL_GATEWAY);
    let gateways = feed.gateways;
    Controller::for_stream(received(feed.gateway_changes), gateways.clone())
        .reconcile_all_on(once_listed(gateways.clone()))
        .owns(api::<StatefulSet>(&client, ns), ours())
        .owns(api::<Service>(&client, ns), ours())
        .owns(api::<PodDisruptionBudget>(&client, ns), ours())
        .owns(api::<Secret>(&client, ns), ours())
        .owns(api::<ConfigMap>(&client, ns), ours())
        .owns(api::<NetworkPolicy>(&client, ns), ours())
        // Pods belong to the StatefulSets; their label names the gateway.
        .watches_stream(received(feed.pod_changes), |pod| {
            let ns = pod.namespace();
            pod.labels()
                .get(LABEL_GATEWAY)
                .map(|gw| ObjectRef::new(gw).within(ns.as_deref().unwrap_or_default()))
        })
        // Backend endpoints: every gateway with a route to that Service.
        .watches_stream(received(feed.endpoint_slice_changes), move |slice| {
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

/// The objects a watch hands over, as a controller's trigger.
fn received<K: Send>(
    changes: mpsc::Receiver<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send {
    stream::unfold(changes, |mut changes| async move {
        let object = changes.recv().await?;
        Some((Ok(object), changes))
    })
}

/// One signal, once `gateways` has its first complete list: the
/// controller then reconciles every gateway, including those that changed
/// before this replica led (the watches dropped those changes).
fn once_listed(gateways: Store<WebSocketGateway>) -> impl Stream<Item = ()> + Send {
    stream::once(async move { gateways.wait_until_ready().await.ok() })
        .filter_map(std::future::ready)
}

fn log_done(gw: &ObjectRef<WebSocketGateway>, action: &Action) {
    tracing::debug!(gateway = %gw, action = ?action, "reconcile done");
}
