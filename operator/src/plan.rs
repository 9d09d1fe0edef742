//! What a gateway should be, from what was observed: the rollout step
//! ([`rollout::plan`]), every child object to apply, and the snapshot to
//! send. Pure: nothing here talks to the API server or to a pod.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Secret, Service},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
    },
    jiff::Timestamp,
};
use ringway_control::proto::Snapshot;
use ringway_crds::{Slot, WebSocketGatewaySpec, WebSocketGatewayStatus};

use crate::{
    PodInputs, annotations,
    children::{self, OperatorPods},
    names::{GatewayRef, slot_index},
    pki::ControlPki,
    rollout::{self, Observed, SlotView, analysis::Window},
    snapshot,
};

/// What a plan is made from.
pub struct Inputs<'a> {
    /// The gateway.
    pub gateway: &'a GatewayRef,
    /// Its spec.
    pub spec: &'a WebSocketGatewaySpec,
    /// Its annotations (the rollout intent).
    pub annotations: &'a BTreeMap<String, String>,
    /// Its status as last written.
    pub status: &'a WebSocketGatewayStatus,
    /// Slots A and B as observed.
    pub slots: &'a [SlotView; 2],
    /// Ready backend endpoints by route name.
    pub endpoints: &'a BTreeMap<String, Vec<snapshot::Endpoint>>,
    /// The control channel's certificates.
    pub certificates: &'a ControlPki,
    /// The data-plane image when the spec names none.
    pub default_image: &'a str,
    /// The operator's own pods, for the NetworkPolicy.
    pub operator_pods: &'a OperatorPods,
    /// The canary analysis's window, when a canary holds keys.
    pub analysis: Option<&'a Window>,
    /// The time of this reconcile.
    pub now: Timestamp,
}

/// The children of a gateway, in the order they are applied.
#[derive(Debug)]
pub struct Children {
    /// The control channel's Secrets that must be written (first: the
    /// pods cannot start without them).
    pub secrets: Vec<Secret>,
    /// Each planned slot's ConfigMap and StatefulSet.
    pub slots: Vec<(ConfigMap, StatefulSet)>,
    /// The client and the peer Services.
    pub services: [Service; 2],
    /// The PodDisruptionBudget.
    pub disruption_budget: PodDisruptionBudget,
    /// The NetworkPolicy; `None`: delete the gateway's own, if any.
    pub network_policy: Option<NetworkPolicy>,
}

/// What the gateway should be.
#[derive(Debug)]
pub struct Desired {
    /// The rollout step.
    pub rollout: rollout::Plan,
    /// The children to apply.
    pub children: Children,
    /// The snapshot to send, with epoch 0 (the effects number it).
    pub snapshot: Snapshot,
    /// The snapshot's content hash: equal content, equal hash.
    pub hash: u64,
}

/// Plans the gateway.
pub fn plan(i: &Inputs<'_>) -> Desired {
    let spec_inputs = PodInputs::from_spec(i.spec, i.default_image);
    let intent = annotations::read(i.annotations);
    let rollout = rollout::plan(&Observed {
        spec: &spec_inputs,
        shards: i32::from(i.spec.shards),
        budget: &i.spec.disruption_budget,
        intent: &intent,
        status: i.status,
        slots: i.slots,
        control_cert: &i.certificates.cert_version,
        rollout: &i.spec.rollout,
        analysis: i.analysis,
        now: i.now,
    });
    let children = children(i, &rollout);
    let snapshot = snapshot(i, &rollout);
    let hash = snapshot::content_hash(&snapshot);
    Desired {
        rollout,
        children,
        snapshot,
        hash,
    }
}

fn children(i: &Inputs<'_>, rollout: &rollout::Plan) -> Children {
    let gw = i.gateway;
    let certificates = i.certificates;
    Children {
        secrets: [&certificates.ca_secret, &certificates.pod_secret]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        slots: rollout
            .slots
            .iter()
            .map(|s| {
                (
                    children::config_map(gw, s.slot, &s.inputs),
                    children::stateful_set(
                        gw,
                        s.slot,
                        &s.inputs,
                        s.replicas,
                        s.partition,
                        &certificates.cert_version,
                    ),
                )
            })
            .collect(),
        services: [
            children::client_service(gw, i.spec.listener.port),
            children::peer_service(gw),
        ],
        disruption_budget: children::disruption_budget(gw),
        network_policy: i
            .spec
            .network_policy
            .enabled
            .then(|| children::network_policy(gw, &i.spec.network_policy, i.operator_pods)),
    }
}

/// The snapshot for the planned roles, with epoch 0.
fn snapshot(i: &Inputs<'_>, rollout: &rollout::Plan) -> Snapshot {
    // What a slot's version is: as planned, else as it runs.
    let version = |slot: Slot| -> Option<&PodInputs> {
        rollout
            .slots
            .iter()
            .find(|s| s.slot == slot)
            .map(|s| &s.inputs)
            .or_else(|| i.slots[slot_index(slot)].inputs.as_ref())
    };
    snapshot::build(
        0,
        &snapshot::Inputs {
            gateway: format!("{}/{}", i.gateway.namespace, i.gateway.name),
            spec: i.spec,
            roles: rollout.roles,
            slots: i.slots,
            versions: [version(Slot::A), version(Slot::B)],
            endpoints: i.endpoints,
        },
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;
    use ringway_crds::WebSocketGateway;

    use super::*;
    use crate::pki;

    fn gateway(network_policy: bool) -> WebSocketGateway {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ringway.dev/v1alpha1", "kind": "WebSocketGateway",
            "metadata": {"name": "chat", "namespace": "prod", "uid": "u1"},
            "spec": {"shards": 2, "networkPolicy": {"enabled": network_policy},
                "routes": [{"name": "r", "pathPrefix": "/",
                "key": {"source": "Header", "name": "x"}, "backend": {"service": "s", "port": 80}}]}
        }))
        .expect("gateway")
    }

    /// Plans a new gateway `gw` (no slots, no status) with fresh
    /// certificates, or with `certificates` already stored.
    fn desired(gw: &WebSocketGateway, stored: Option<&(Secret, Secret)>) -> Desired {
        let gwref = GatewayRef::new(gw).expect("ref");
        let certificates = pki::plan(
            &gwref,
            stored.map(|s| &s.0),
            stored.map(|s| &s.1),
            std::time::SystemTime::now(),
        )
        .expect("certificates");
        plan(&Inputs {
            gateway: &gwref,
            spec: &gw.spec,
            annotations: &BTreeMap::new(),
            status: &WebSocketGatewayStatus::default(),
            slots: &[SlotView::empty(Slot::A), SlotView::empty(Slot::B)],
            endpoints: &BTreeMap::new(),
            certificates: &certificates,
            default_image: "ringway/dataplane:1",
            operator_pods: &OperatorPods {
                namespace: "ringway-system".into(),
                labels: BTreeMap::new(),
            },
            analysis: None,
            now: Timestamp::from_second(1_000_000).expect("now"),
        })
    }

    #[test]
    fn a_new_gateway_gets_every_child_and_a_snapshot_of_its_image() {
        let gw = gateway(false);
        let d = desired(&gw, None);
        let names = |objects: Vec<Option<String>>| -> Vec<String> {
            objects.into_iter().flatten().collect()
        };
        assert_eq!(
            names(
                d.children
                    .secrets
                    .iter()
                    .map(|s| s.metadata.name.clone())
                    .collect()
            ),
            ["chat-control-ca", "chat-control"],
            "the CA first: the pods' Secret is signed by it"
        );
        let (config_map, stateful_set) = &d.children.slots[0];
        assert_eq!(d.children.slots.len(), 1, "no canary slot");
        assert_eq!(config_map.metadata.name.as_deref(), Some("chat-a"));
        assert_eq!(stateful_set.metadata.name.as_deref(), Some("chat-a"));
        assert_eq!(
            names(
                d.children
                    .services
                    .iter()
                    .map(|s| s.metadata.name.clone())
                    .collect()
            ),
            ["chat", "chat-peer"]
        );
        assert!(d.children.network_policy.is_none(), "disabled: none");
        assert_eq!(d.snapshot.epoch, 0, "the effects number it");
        assert_eq!(d.snapshot.gateway, "prod/chat");
        assert_eq!(d.hash, snapshot::content_hash(&d.snapshot));
        assert!(
            d.snapshot
                .versions
                .iter()
                .any(|v| v.image == "ringway/dataplane:1"),
            "{:?}",
            d.snapshot.versions
        );
    }

    #[test]
    fn stored_certificates_are_not_written_again_and_a_policy_is_planned_when_enabled() {
        let gw = gateway(true);
        let first = desired(&gw, None);
        let stored = (
            first.children.secrets[0].clone(),
            first.children.secrets[1].clone(),
        );
        let again = desired(&gw, Some(&stored));
        assert!(again.children.secrets.is_empty());
        assert_eq!(
            again
                .children
                .network_policy
                .as_ref()
                .and_then(|p| p.metadata.name.as_deref()),
            Some("chat")
        );
        assert_eq!(again.hash, first.hash, "same inputs, same snapshot");
    }
}
