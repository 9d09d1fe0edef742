//! Everything a reconcile changes, in one place: the children applied
//! server-side, the snapshot numbered and pushed to the pods, the status
//! written and the events published.

use std::{collections::BTreeMap, fmt::Debug};

use k8s_openapi::{NamespaceResourceScope, api::networking::v1::NetworkPolicy};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use ringway_control::{all_acked, pki::Ca, proto::Snapshot};
use ringway_crds::{WebSocketGateway, WebSocketGatewayStatus};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{debug, info, warn};

use crate::{
    Error,
    context::{Context, Memory},
    names::{FIELD_MANAGER, GatewayRef},
    observe::get,
    plan::Children,
    status::{Note, Pushed},
    steer::Steer,
};

/// Applies every child; a disabled NetworkPolicy is deleted if the
/// gateway owns it.
pub(crate) async fn apply_children(
    client: &Client,
    gw: &GatewayRef,
    children: &Children,
) -> Result<(), Error> {
    let ns = gw.namespace.as_str();
    for secret in &children.secrets {
        apply(client, ns, secret).await?;
    }
    for (config_map, stateful_set) in &children.slots {
        apply(client, ns, config_map).await?;
        apply(client, ns, stateful_set).await?;
    }
    for service in &children.services {
        apply(client, ns, service).await?;
    }
    apply(client, ns, &children.disruption_budget).await?;
    match &children.network_policy {
        Some(policy) => apply(client, ns, policy).await,
        None => {
            let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
            delete_owned(&policies, &gw.network_policy(), gw).await
        }
    }
}

/// Sends `snapshot` to every pod in `targets` (control address → pod
/// name) that has not acknowledged its content yet. New content gets a
/// new epoch, written to the status before it is sent: an operator that
/// restarts after the push never issues this epoch again with other
/// content. An unchanged gateway touches no socket.
pub(crate) async fn push<S: Steer>(
    ctx: &Context<S>,
    gw: &WebSocketGateway,
    key: &str,
    ca: &Ca,
    targets: &BTreeMap<String, String>,
    (mut snapshot, hash): (Snapshot, u64),
    memory: &mut Memory,
) -> Result<Pushed, Error> {
    ctx.metrics.set_pods_steered(key, targets.len() as i64);
    let mut pushed = Pushed {
        pods: targets.len(),
        ..Pushed::default()
    };
    if hash != memory.hash {
        let stored = gw.status.as_ref().map_or(0, |s| s.epoch);
        let epoch = memory.epoch.max(u64::try_from(stored).unwrap_or(0)) + 1;
        write_epoch(gw, &ctx.client, epoch).await?;
        pushed.new_epoch = true;
        memory.hash = hash;
        memory.epoch = epoch;
        memory.acked.clear();
    }
    snapshot.epoch = memory.epoch;
    pushed.epoch = memory.epoch;
    let pending: Vec<String> = targets
        .keys()
        .filter(|a| !memory.acked.contains(*a))
        .cloned()
        .collect();
    if !pending.is_empty() {
        let results = ctx.steer.push(key, ca, &pending, &snapshot).await?;
        ctx.metrics.snapshot_pushed(
            results.len() as u64,
            results.iter().filter(|r| r.outcome.is_err()).count() as u64,
        );
        let pod = |address: &str| targets.get(address).cloned().unwrap_or(address.to_owned());
        for r in &results {
            match &r.outcome {
                Ok(ack) if ack.epoch == memory.epoch => {
                    memory.acked.insert(r.address.clone());
                    pushed.drained += i64::try_from(ack.draining).unwrap_or(i64::MAX);
                }
                Ok(ack) => {
                    pushed
                        .failed
                        .push(format!("{} runs epoch {}", pod(&r.address), ack.epoch))
                }
                Err(e) => pushed.failed.push(format!("{}: {}", pod(&r.address), e)),
            }
        }
        if all_acked(&results, memory.epoch) {
            debug!(gateway = %key, epoch = memory.epoch, pods = results.len(), drained = pushed.drained, "snapshot acknowledged");
        } else {
            warn!(gateway = %key, epoch = memory.epoch, failed = ?pushed.failed, "snapshot not acknowledged by every pod");
        }
    }
    pushed.acked = targets.keys().all(|a| memory.acked.contains(a));
    Ok(pushed)
}

/// Writes `status` when it differs from what the gateway shows, then
/// publishes `events`.
pub(crate) async fn report<S>(
    ctx: &Context<S>,
    gw: &WebSocketGateway,
    status: &WebSocketGatewayStatus,
    events: Vec<Note>,
) -> Result<(), Error> {
    if *status != gw.status.clone().unwrap_or_default() {
        write_status(gw, &ctx.client, status).await?;
    }
    for Note {
        type_,
        reason,
        note,
    } in events
    {
        if let Err(e) = ctx
            .events
            .publish(&gw.object_ref(&()), type_, &reason, note)
            .await
        {
            warn!(gateway = %gw.name_any(), error = %e, "publishing an event failed");
        }
    }
    Ok(())
}

/// Server-side applies `object` in `ns`, as the operator's field manager.
async fn apply<K>(client: &Client, ns: &str, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|source| Error::Apply {
            what: format!("{} {name}", K::kind(&())),
            source,
        })?;
    Ok(())
}

/// Deletes the child `name` if it exists and this gateway owns it: an
/// object of the same name that someone else made is left alone. The
/// delete is conditional on the uid read, so it cannot hit a replacement.
async fn delete_owned<K>(api: &Api<K>, name: &str, gw: &GatewayRef) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(object) = get(api, name).await? else {
        return Ok(());
    };
    let owned = object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == gw.owner.uid && o.controller == Some(true));
    if !owned {
        debug!(name, kind = K::kind(&()).as_ref(), "not ours: left alone");
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: object.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            info!(name, kind = K::kind(&()).as_ref(), "deleted");
            Ok(())
        }
        // Gone already (or replaced by a new object, which is not ours).
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(Error::Delete {
            what: format!("{} {name}", K::kind(&())),
            source,
        }),
    }
}

fn status_api(gw: &WebSocketGateway, client: &Client) -> Api<WebSocketGateway> {
    Api::namespaced(client.clone(), &gw.namespace().unwrap_or_default())
}

async fn write_epoch(gw: &WebSocketGateway, client: &Client, epoch: u64) -> Result<(), Error> {
    let patch = serde_json::json!({ "status": { "epoch": epoch } });
    status_api(gw, client)
        .patch_status(
            &gw.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::PatchStatus)?;
    Ok(())
}

async fn write_status(
    gw: &WebSocketGateway,
    client: &Client,
    status: &WebSocketGatewayStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": WebSocketGateway::api_version(&()),
        "kind": WebSocketGateway::kind(&()),
        "status": status,
    });
    status_api(gw, client)
        .patch_status(
            &gw.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::PatchStatus)?;
    Ok(())
}
