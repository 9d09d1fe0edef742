//! The Kubernetes objects a gateway owns, rendered from its identity and
//! pod inputs: per slot a StatefulSet and its config file, and for the
//! whole gateway the client Service, the headless peer Service, a
//! PodDisruptionBudget and, when the spec asks for it, a NetworkPolicy.
//! Pure functions: the reconciler applies what they
//! return with server-side apply.

mod config;
mod network_policy;
mod pod;
mod volumes;

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

pub use config::{CONFIG_KEY, config_map};
pub use network_policy::{OperatorPods, network_policy};
pub use pod::{TERMINATION_MARGIN_SECONDS, stateful_set, termination_grace_seconds};

use crate::names::{CONTROL_PORT, GatewayRef, PEER_PORT};

// The control Secret's keys are written by `pki`, read by the pods.
use crate::pki::keys::{
    CA_CERT as SECRET_CA_CERT, TLS_CERT as SECRET_TLS_CERT, TLS_KEY as SECRET_TLS_KEY,
    TOKEN as SECRET_PEER_TOKEN,
};

/// Where the pods find their files. The config file and the pod template
/// both name them, so they are written once here.
const CONFIG_DIR: &str = "/etc/ringway/config";
const CONTROL_DIR: &str = "/etc/ringway/control";
const PEER_DIR: &str = "/etc/ringway/peer";
const LISTENER_TLS_DIR: &str = "/etc/ringway/tls";

/// Names of the container ports; Services and probes refer to them by name,
/// so a port number lives only in the pod template.
const PORT_CLIENT: &str = "client";
const PORT_PEER: &str = "peer";
const PORT_CONTROL: &str = "control";
const PORT_ADMIN: &str = "admin";

/// The client Service: every ready pod of both slots, so that a canary's
/// pods take connections as soon as they are ready (a pod that does not own
/// a key hands the connection to the one that does).
pub fn client_service(gw: &GatewayRef, listener_port: u16) -> Service {
    Service {
        metadata: gw.child_meta(gw.client_service()),
        spec: Some(ServiceSpec {
            selector: Some(gw.selector()),
            ports: Some(vec![tcp_port(PORT_CLIENT, listener_port)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The headless peer Service: DNS names for the StatefulSets' pods, ready
/// or not, on the peer and control ports. It is both StatefulSets'
/// `serviceName`.
pub fn peer_service(gw: &GatewayRef) -> Service {
    Service {
        metadata: gw.child_meta(gw.peer_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            // The operator pushes a pod its first snapshot before the pod
            // is ready (it answers /readyz 503 until then).
            publish_not_ready_addresses: Some(true),
            selector: Some(gw.selector()),
            ports: Some(vec![
                tcp_port(PORT_PEER, PEER_PORT),
                tcp_port(PORT_CONTROL, CONTROL_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// At most one of the gateway's pods (either slot) voluntarily disrupted
/// at a time: a node drain then stops pods one by one, each draining its
/// connections at the paced rate.
pub fn disruption_budget(gw: &GatewayRef) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: gw.child_meta(gw.disruption_budget()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(gw.selector()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// A Service port `name` to the container port of the same name.
fn tcp_port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Builders shared by the tests of this module and its submodules.
#[cfg(test)]
mod fixtures {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use ringway_crds::WebSocketGatewaySpec;

    use crate::{PodInputs, names::GatewayRef};

    /// Gateway `chat` in namespace `prod`.
    pub(super) fn gateway() -> GatewayRef {
        GatewayRef {
            name: "chat".to_owned(),
            namespace: "prod".to_owned(),
            owner: OwnerReference {
                api_version: "ringway.dev/v1alpha1".to_owned(),
                kind: "WebSocketGateway".to_owned(),
                name: "chat".to_owned(),
                uid: "0b7c2a4e-1111-2222-3333-444455556666".to_owned(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        }
    }

    /// The pod inputs of a spec with one route and `extra` YAML lines
    /// (top-level spec fields).
    pub(super) fn inputs(extra: &str) -> PodInputs {
        let yaml = format!(
            "routes: [{{name: r, pathPrefix: /, key: {{source: Header, name: x}}, backend: {{service: s, port: 80}}}}]\n{extra}"
        );
        let spec: WebSocketGatewaySpec = serde_yaml::from_str(&yaml).expect("test spec parses");
        PodInputs::from_spec(&spec, "ghcr.io/ringway-dev/dataplane:0.1.0")
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::gateway, *};
    use crate::names::LABEL_GATEWAY;

    fn ports(service: &Service) -> Vec<(String, i32, IntOrString)> {
        let spec = service.spec.as_ref().expect("spec");
        spec.ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port,
                    p.target_port.clone().expect("targetPort"),
                )
            })
            .collect()
    }

    fn named(name: &str) -> IntOrString {
        IntOrString::String(name.to_owned())
    }

    #[test]
    fn the_client_service_selects_both_slots_on_the_listener_port() {
        let gw = gateway();
        let svc = client_service(&gw, 8443);
        assert_eq!(svc.metadata.name.as_deref(), Some("chat"));
        assert_eq!(svc.metadata.namespace.as_deref(), Some("prod"));
        let spec = svc.spec.as_ref().expect("spec");
        let selector = spec.selector.clone().expect("selector");
        assert_eq!(
            selector.get(LABEL_GATEWAY).map(String::as_str),
            Some("chat")
        );
        assert_eq!(selector.len(), 1, "no slot label: both slots serve clients");
        assert_eq!(ports(&svc), vec![("client".into(), 8443, named("client"))]);
        assert_eq!(spec.cluster_ip, None, "a normal ClusterIP Service");
        assert_ne!(spec.publish_not_ready_addresses, Some(true));
    }

    #[test]
    fn the_peer_service_is_headless_and_lists_pods_before_they_are_ready() {
        let gw = gateway();
        let svc = peer_service(&gw);
        assert_eq!(svc.metadata.name.as_deref(), Some("chat-peer"));
        let spec = svc.spec.as_ref().expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector, Some(gw.selector()));
        assert_eq!(
            ports(&svc),
            vec![
                ("peer".into(), 7000, named("peer")),
                ("control".into(), 7443, named("control")),
            ]
        );
    }

    #[test]
    fn the_disruption_budget_allows_one_pod_of_either_slot() {
        let gw = gateway();
        let pdb = disruption_budget(&gw);
        assert_eq!(pdb.metadata.name.as_deref(), Some("chat"));
        let spec = pdb.spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(gw.selector())
        );
    }

    #[test]
    fn every_child_is_owned_by_the_gateway_and_labelled() {
        let gw = gateway();
        let inputs = fixtures::inputs("");
        let metas = [
            stateful_set(&gw, ringway_crds::Slot::A, &inputs, 3, 0, "v1").metadata,
            config_map(&gw, ringway_crds::Slot::B, &inputs).metadata,
            client_service(&gw, 8080).metadata,
            peer_service(&gw).metadata,
            disruption_budget(&gw).metadata,
            network_policy(
                &gw,
                &ringway_crds::NetworkPolicySettings::default(),
                &OperatorPods::default(),
            )
            .metadata,
        ];
        for meta in metas {
            let name = meta.name.clone().unwrap_or_default();
            assert_eq!(meta.namespace.as_deref(), Some("prod"), "{name}");
            assert_eq!(
                meta.owner_references,
                Some(vec![gw.owner.clone()]),
                "{name}"
            );
            assert_eq!(meta.labels, Some(gw.labels()), "{name}");
        }
    }

    /// Server-side apply needs `apiVersion` and `kind` in the body;
    /// k8s-openapi writes them from the type.
    #[test]
    fn every_child_serializes_with_api_version_and_kind() {
        let gw = gateway();
        let inputs = fixtures::inputs("");
        let objects = [
            (
                serde_json::to_value(stateful_set(
                    &gw,
                    ringway_crds::Slot::A,
                    &inputs,
                    3,
                    0,
                    "v1",
                )),
                "apps/v1",
                "StatefulSet",
            ),
            (
                serde_json::to_value(config_map(&gw, ringway_crds::Slot::A, &inputs)),
                "v1",
                "ConfigMap",
            ),
            (
                serde_json::to_value(client_service(&gw, 8080)),
                "v1",
                "Service",
            ),
            (serde_json::to_value(peer_service(&gw)), "v1", "Service"),
            (
                serde_json::to_value(disruption_budget(&gw)),
                "policy/v1",
                "PodDisruptionBudget",
            ),
            (
                serde_json::to_value(network_policy(
                    &gw,
                    &ringway_crds::NetworkPolicySettings::default(),
                    &OperatorPods::default(),
                )),
                "networking.k8s.io/v1",
                "NetworkPolicy",
            ),
        ];
        for (json, api_version, kind) in objects {
            let json = json.expect("serializes");
            assert_eq!(json["apiVersion"], api_version, "{json}");
            assert_eq!(json["kind"], kind, "{json}");
        }
    }
}
