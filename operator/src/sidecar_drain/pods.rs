//! Which injected pods are draining, and whose budget they share: a pod
//! that is terminating, has an address and a running sidecar, and the
//! workload that owns it (a Deployment through its ReplicaSet, a
//! StatefulSet, a DaemonSet, or else its owner or itself).

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};
#[cfg(doc)]
use ringway_dataplane_api::sidecar::CONTROL_PORT;
use ringway_dataplane_api::sidecar::{CONTAINER, MAX_CLOSES_PER_SECOND};

use super::{DrainingPod, PodKey};
use crate::{inject::Settings, sidecar_audit::WorkloadKey};

/// The label a Deployment's controller puts on the pods of each
/// ReplicaSet, whose name is the Deployment's, a dash and this hash.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// `pod` as a draining pod, when it is one: terminating, with an IP
/// address and its sidecar running (a pod whose sidecar has stopped has
/// nothing left to pace), its sidecar's control port at `control_port`
/// ([`CONTROL_PORT`] in every injected pod).
pub fn draining(pod: &Pod, control_port: u16) -> Option<DrainingPod> {
    let since = pod.metadata.deletion_timestamp.as_ref()?.0;
    let status = pod.status.as_ref()?;
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let sidecar_runs = status
        .init_container_statuses
        .iter()
        .flatten()
        .any(|c| c.name == CONTAINER && c.state.as_ref().is_some_and(|s| s.running.is_some()));
    if !sidecar_runs {
        return None;
    }
    let namespace = pod.namespace().unwrap_or_default();
    Some(DrainingPod {
        pod: PodKey {
            namespace: namespace.clone(),
            name: pod.name_any(),
        },
        workload: WorkloadKey {
            namespace,
            workload: workload(pod),
        },
        reference: pod.object_ref(&()),
        address: SocketAddr::new(ip, control_port).to_string(),
        budget: budget(pod),
        since,
    })
}

/// The workload that owns `pod`, as `kind/name` (the sidecar audit's
/// form): a ReplicaSet named after a Deployment is that Deployment.
pub fn workload(pod: &Pod) -> String {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return format!("pod/{}", pod.name_any());
    };
    let hash = pod.labels().get(POD_TEMPLATE_HASH);
    let deployment = hash.and_then(|h| owner.name.strip_suffix(h)?.strip_suffix('-'));
    match (owner.kind.as_str(), deployment) {
        ("ReplicaSet", Some(deployment)) if !deployment.is_empty() => {
            format!("deployment/{deployment}")
        }
        (kind, _) => format!("{}/{}", kind.to_ascii_lowercase(), owner.name),
    }
}

/// The workload's budget as `pod`'s annotations give it; the default when
/// they do not, or cannot be read (the injector refused such pods, so
/// this only happens to pods changed since).
fn budget(pod: &Pod) -> u32 {
    Settings::read(pod.annotations())
        .ok()
        .flatten()
        .map_or(MAX_CLOSES_PER_SECOND, |s| s.max_closes_per_second)
}
