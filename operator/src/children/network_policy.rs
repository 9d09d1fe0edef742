//! The gateway's optional NetworkPolicy: which peers may reach which port
//! of its data-plane pods.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use ringway_crds::{MetricsPeer, NetworkPolicySettings};

use super::{PORT_ADMIN, PORT_CLIENT, PORT_CONTROL, PORT_PEER};
use crate::names::GatewayRef;

/// The label every namespace carries with its own name (Kubernetes sets it
/// since 1.22), so that one namespace can be selected by name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the operator's own pods run and the labels that select them: the
/// only peers the control port admits. The chart passes both
/// (`--operator-namespace`, `--operator-pod-labels`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OperatorPods {
    /// The operator's namespace.
    pub namespace: String,
    /// Labels of the operator's pods; empty selects every pod of its
    /// namespace.
    pub labels: BTreeMap<String, String>,
}

/// The NetworkPolicy over all of the gateway's pods (both slots), ingress
/// only: the client port from anywhere, the peer port from the gateway's
/// own pods, the control port from the operator's pods, the admin port from
/// `settings.metricsFrom` (and from no pod when it is empty). Ports are
/// named, so that two slots listening on different client ports during a
/// canary are both covered.
pub fn network_policy(
    gw: &GatewayRef,
    settings: &NetworkPolicySettings,
    operator: &OperatorPods,
) -> NetworkPolicy {
    let mut ingress = vec![
        // No `from`: every source, inside the cluster or out.
        rule(PORT_CLIENT, None),
        rule(PORT_PEER, Some(vec![peer(None, Some(gw.selector()))])),
        rule(
            PORT_CONTROL,
            Some(vec![peer(
                Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    operator.namespace.clone(),
                )])),
                Some(operator.labels.clone()),
            )]),
        ),
    ];
    // A rule with an empty `from` would admit everyone: without scrapers
    // the admin port has no rule at all.
    if !settings.metrics_from.is_empty() {
        let scrapers = settings.metrics_from.iter().map(metrics_peer).collect();
        ingress.push(rule(PORT_ADMIN, Some(scrapers)));
    }
    NetworkPolicy {
        metadata: gw.child_meta(gw.network_policy()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(gw.selector()),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Admits `from` (everyone when `None`) to the TCP port named `port`.
fn rule(port: &str, from: Option<Vec<NetworkPolicyPeer>>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from,
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::String(port.to_owned())),
            protocol: Some("TCP".to_owned()),
            ..NetworkPolicyPort::default()
        }]),
    }
}

fn metrics_peer(p: &MetricsPeer) -> NetworkPolicyPeer {
    peer(p.namespace_selector.clone(), p.pod_selector.clone())
}

fn peer(
    namespaces: Option<BTreeMap<String, String>>,
    pods: Option<BTreeMap<String, String>>,
) -> NetworkPolicyPeer {
    let selector = |labels| LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    };
    NetworkPolicyPeer {
        namespace_selector: namespaces.map(selector),
        pod_selector: pods.map(selector),
        ..NetworkPolicyPeer::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::children::fixtures::gateway;

    fn operator() -> OperatorPods {
        OperatorPods {
            namespace: "ringway-system".to_owned(),
            labels: BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), "ringway".to_owned()),
                (
                    "app.kubernetes.io/component".to_owned(),
                    "operator".to_owned(),
                ),
            ]),
        }
    }

    fn settings(metrics_from: Value) -> NetworkPolicySettings {
        serde_json::from_value(json!({"enabled": true, "metricsFrom": metrics_from}))
            .expect("test settings parse")
    }

    /// The ingress rules as (port, from) JSON, in order.
    fn rules(policy: &NetworkPolicy) -> Vec<(String, Value)> {
        let spec = policy.spec.as_ref().expect("spec");
        spec.ingress
            .iter()
            .flatten()
            .map(|r| {
                let ports = r.ports.as_ref().expect("ports");
                assert_eq!(ports.len(), 1, "one port per rule");
                assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
                let port = match ports[0].port.as_ref().expect("port") {
                    IntOrString::String(name) => name.clone(),
                    IntOrString::Int(n) => panic!("port {n} by number"),
                };
                (port, serde_json::to_value(&r.from).expect("serializes"))
            })
            .collect()
    }

    #[test]
    fn the_policy_selects_every_pod_of_the_gateway_for_ingress_only() {
        let gw = gateway();
        let policy = network_policy(&gw, &settings(json!([])), &operator());
        assert_eq!(policy.metadata.name.as_deref(), Some("chat"));
        let spec = policy.spec.expect("spec");
        assert_eq!(
            spec.pod_selector.and_then(|s| s.match_labels),
            Some(gw.selector()),
            "both slots, every version"
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        assert_eq!(spec.egress, None);
    }

    #[test]
    fn each_port_admits_only_its_peers() {
        let gateway_pods =
            json!([{"podSelector": {"matchLabels": {"ringway.dev/gateway": "chat"}}}]);
        let operator_pods = json!([{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ringway-system"}},
            "podSelector": {"matchLabels": {
                "app.kubernetes.io/component": "operator",
                "app.kubernetes.io/name": "ringway",
            }},
        }]);
        let base = || {
            vec![
                ("client".to_owned(), Value::Null),
                ("peer".to_owned(), gateway_pods.clone()),
                ("control".to_owned(), operator_pods.clone()),
            ]
        };
        let with_admin = |from: Value| {
            let mut rules = base();
            rules.push(("admin".to_owned(), from));
            rules
        };
        let cases = [
            (
                "no scrapers: no admin rule, so no pod reaches it",
                json!([]),
                base(),
            ),
            (
                "pods of the gateway's namespace",
                json!([{"podSelector": {"app": "prometheus"}}]),
                with_admin(json!([{"podSelector": {"matchLabels": {"app": "prometheus"}}}])),
            ),
            (
                "every pod of a namespace",
                json!([{"namespaceSelector": {"kubernetes.io/metadata.name": "monitoring"}}]),
                with_admin(
                    json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]),
                ),
            ),
            (
                "pods of a namespace, and any namespace's agents",
                json!([
                    {"namespaceSelector": {"team": "obs"}, "podSelector": {"app": "prometheus"}},
                    {"namespaceSelector": {}, "podSelector": {"app": "agent"}},
                ]),
                with_admin(json!([
                    {"namespaceSelector": {"matchLabels": {"team": "obs"}}, "podSelector": {"matchLabels": {"app": "prometheus"}}},
                    {"namespaceSelector": {"matchLabels": {}}, "podSelector": {"matchLabels": {"app": "agent"}}},
                ])),
            ),
        ];
        for (what, metrics_from, want) in cases {
            let policy = network_policy(&gateway(), &settings(metrics_from), &operator());
            assert_eq!(rules(&policy), want, "{what}");
        }
    }

    #[test]
    fn without_operator_labels_the_control_port_admits_the_operators_namespace() {
        let operator = OperatorPods {
            namespace: "ops".to_owned(),
            labels: BTreeMap::new(),
        };
        let policy = network_policy(&gateway(), &settings(json!([])), &operator);
        let control = rules(&policy)
            .into_iter()
            .find(|(port, _)| port == "control")
            .expect("a control rule");
        assert_eq!(
            control.1,
            json!([{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                "podSelector": {"matchLabels": {}},
            }])
        );
    }
}
