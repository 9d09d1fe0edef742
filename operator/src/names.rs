//! What the operator calls the objects it owns, and the labels, ports and
//! paths that tie them together. Every other module takes names from here,
//! so a child's name is written once.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use ringway_crds::{Slot, WebSocketGateway};

use crate::Error;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "ringway-operator";

/// Container port the pods' peers hand connections off to.
pub const PEER_PORT: u16 = 7000;
/// The data-plane container of every gateway pod.
pub const CONTAINER: &str = "dataplane";
/// Container port of the gRPC control channel (mutual TLS).
pub const CONTROL_PORT: u16 = 7443;
/// Container port of `/healthz`, `/readyz`, `/metrics` and `/drain`.
pub const ADMIN_PORT: u16 = 9090;

/// Label: the gateway a child belongs to.
pub const LABEL_GATEWAY: &str = "ringway.dev/gateway";
/// Label: the StatefulSet slot (`a` or `b`) of a data-plane pod.
pub const LABEL_SLOT: &str = "ringway.dev/slot";
/// Annotation on a slot's StatefulSet: the JSON of the [`crate::PodInputs`]
/// it was rendered from, so that the stable slot keeps its version while a
/// canary runs the new spec.
pub const ANNOTATION_POD_INPUTS: &str = "ringway.dev/pod-inputs";
/// Annotation on a slot's StatefulSet and pod template: the revision (a
/// hash of the pod inputs).
pub const ANNOTATION_REVISION: &str = "ringway.dev/revision";
/// Annotation on the pod template: the version of the pods' control
/// certificate, so that a renewed one reaches the pods by a paced restart.
pub const ANNOTATION_CONTROL_CERT: &str = "ringway.dev/control-cert";

/// The identity of one gateway: its name, namespace and the owner reference
/// every child carries.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// A controller owner reference to the gateway.
    pub owner: OwnerReference,
}

impl GatewayRef {
    /// Reads the identity of `gateway`; an object without a namespace or uid
    /// (one that did not come from the API server) is refused.
    pub fn new(gateway: &WebSocketGateway) -> Result<Self, Error> {
        let name = gateway.name_any();
        let namespace = gateway
            .namespace()
            .ok_or_else(|| Error::Malformed(format!("gateway {name} has no namespace")))?;
        let owner = gateway
            .controller_owner_ref(&())
            .ok_or_else(|| Error::Malformed(format!("gateway {name} has no uid")))?;
        Ok(Self {
            name,
            namespace,
            owner,
        })
    }

    /// The StatefulSet (and ConfigMap) of `slot`: `<gateway>-a` or `<gateway>-b`.
    pub fn slot_name(&self, slot: Slot) -> String {
        format!("{}-{}", self.name, slot_label(slot))
    }

    /// The client Service: `<gateway>`.
    pub fn client_service(&self) -> String {
        self.name.clone()
    }

    /// The headless Service that gives pods their peer DNS names: `<gateway>-peer`.
    pub fn peer_service(&self) -> String {
        format!("{}-peer", self.name)
    }

    /// The PodDisruptionBudget: `<gateway>`.
    pub fn disruption_budget(&self) -> String {
        self.name.clone()
    }

    /// The NetworkPolicy over the gateway's pods, when enabled: `<gateway>`.
    pub fn network_policy(&self) -> String {
        self.name.clone()
    }

    /// The Secret the pods mount: CA certificate, the pods' server
    /// certificate and key, and the peer token: `<gateway>-control`.
    pub fn control_secret(&self) -> String {
        format!("{}-control", self.name)
    }

    /// The Secret only the operator reads: the CA's certificate and key:
    /// `<gateway>-control-ca`.
    pub fn ca_secret(&self) -> String {
        format!("{}-control-ca", self.name)
    }

    /// Labels on every child and every pod of the gateway.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "ringway".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
            (
                "app.kubernetes.io/component".to_owned(),
                "dataplane".to_owned(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                FIELD_MANAGER.to_owned(),
            ),
            (LABEL_GATEWAY.to_owned(), self.name.clone()),
        ])
    }

    /// The selector of all of the gateway's pods, both slots.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(LABEL_GATEWAY.to_owned(), self.name.clone())])
    }

    /// The selector of one slot's pods.
    pub fn slot_selector(&self, slot: Slot) -> BTreeMap<String, String> {
        let mut selector = self.selector();
        selector.insert(LABEL_SLOT.to_owned(), slot_label(slot).to_owned());
        selector
    }

    /// The label selector string (`ringway.dev/gateway=<name>`) for list calls.
    pub fn selector_string(&self) -> String {
        format!("{LABEL_GATEWAY}={}", self.name)
    }

    /// Metadata for a child called `name`: namespace, labels, owner.
    pub fn child_meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// `a` or `b`: the slot's label value and name suffix.
pub fn slot_label(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "a",
        Slot::B => "b",
    }
}

/// The position of `slot` in a `[_; 2]` of both slots: A first.
pub fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// The slot that `slot` is not.
pub fn other_slot(slot: Slot) -> Slot {
    match slot {
        Slot::A => Slot::B,
        Slot::B => Slot::A,
    }
}
