//! Reads what the cluster shows of a gateway: its slots' StatefulSets and
//! pods, and its routes' backend endpoints.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
};

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, Client, Resource, ResourceExt, api::ListParams};
use ringway_crds::{Slot, WebSocketGateway};
use serde::de::DeserializeOwned;

use crate::{
    Error, PodInputs,
    names::{self, slot_label},
    rollout::{PodCounts, PodView, SlotView},
    snapshot,
};

/// Reads one slot's StatefulSet and pods.
pub(crate) fn slot_view(
    slot: Slot,
    sts: Option<&StatefulSet>,
    pods: &[Pod],
    counts: &HashMap<String, PodCounts>,
) -> SlotView {
    let Some(sts) = sts else {
        return SlotView::empty(slot);
    };
    let annotations = sts.annotations();
    let inputs = annotations
        .get(names::ANNOTATION_POD_INPUTS)
        .and_then(|json| PodInputs::from_annotation(json).ok());
    let spec = sts.spec.as_ref();
    let template = spec
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| {
            Some((
                a.get(names::ANNOTATION_REVISION)?.clone(),
                a.get(names::ANNOTATION_CONTROL_CERT)?.clone(),
            ))
        });
    let update_revision = sts.status.as_ref().and_then(|s| s.update_revision.clone());
    let views = pods
        .iter()
        .filter(|p| p.labels().get(names::LABEL_SLOT).map(String::as_str) == Some(slot_label(slot)))
        .map(|p| {
            let name = p.name_any();
            let status = p.status.as_ref();
            let running = p.metadata.deletion_timestamp.is_none()
                && status.and_then(|s| s.phase.as_deref()) == Some("Running");
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let updated = match (&update_revision, p.labels().get("controller-revision-hash")) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            };
            PodView {
                ordinal: name
                    .rsplit('-')
                    .next()
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(-1),
                ip: status
                    .and_then(|s| s.pod_ip.clone())
                    .filter(|ip| !ip.is_empty()),
                running,
                ready,
                updated,
                connections: counts.get(&name).map(|c| c.owned),
                relayed: counts.get(&name).map(|c| c.relayed),
                name,
            }
        })
        .collect();
    SlotView {
        slot,
        inputs,
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        partition: spec
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0),
        template,
        pods: views,
    }
}

/// Each route's ready endpoints, and a problem for each route without any.
pub(crate) async fn backends(
    client: &Client,
    ns: &str,
    gw: &WebSocketGateway,
) -> Result<(BTreeMap<String, Vec<snapshot::Endpoint>>, Vec<String>), Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let mut seen: HashMap<String, (Option<Service>, Vec<EndpointSlice>)> = HashMap::new();
    let mut endpoints = BTreeMap::new();
    let mut problems = Vec::new();
    for route in &gw.spec.routes {
        let name = &route.backend.service;
        if !seen.contains_key(name) {
            let service = get(&services, name).await?;
            let list = if service.is_some() {
                slices
                    .list(
                        &ListParams::default()
                            .labels(&format!("kubernetes.io/service-name={name}")),
                    )
                    .await
                    .map_err(|source| Error::Read {
                        what: format!("EndpointSlices of Service {name}"),
                        source,
                    })?
                    .items
            } else {
                Vec::new()
            };
            seen.insert(name.clone(), (service, list));
        }
        let (service, list) = &seen[name];
        match snapshot::route_endpoints(&route.backend.port, service.as_ref(), list) {
            Ok(found) => {
                endpoints.insert(route.name.clone(), found);
            }
            Err(why) => problems.push(format!(
                "route {}: backend Service {name}: {why}",
                route.name
            )),
        }
    }
    Ok((endpoints, problems))
}

/// Reads one object by name: `None` when there is none.
pub(crate) async fn get<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name).await.map_err(|source| Error::Read {
        what: format!("{} {name}", K::kind(&())),
        source,
    })
}
