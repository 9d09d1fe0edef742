//! The Kubernetes API permissions the operator needs: exactly the verbs its
//! code sends, per resource, and nothing more. The Helm chart grants this
//! table (`charts/ringway/files/rbac/*.yaml`; a test checks that the two are
//! equal), and the API tests fail on any request the table does not grant
//! and on any grant no request uses.

/// Verbs on resources of one API group (`""` is the core group), as in an
/// RBAC `PolicyRule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The API group.
    pub api_group: &'static str,
    /// Resource names, with `/status` for the status subresource.
    pub resources: &'static [&'static str],
    /// Verbs as RBAC spells them.
    pub verbs: &'static [&'static str],
}

/// The API group of `WebSocketGateway`.
const GROUP: &str = "ringway.dev";

/// Children written with server-side apply. Kubernetes authorizes an apply
/// that creates its object as `create`, and one that changes it as `patch`.
const APPLY: &[&str] = &["list", "watch", "create", "patch"];

/// Children that are also read one by one (a StatefulSet's rollout state,
/// the control channel's Secrets, the backend Services of the routes).
const APPLY_AND_GET: &[&str] = &["get", "list", "watch", "create", "patch"];

/// The optional NetworkPolicy: applied when a gateway enables it, read and
/// deleted (if the gateway owns it) when the gateway does not.
const APPLY_GET_AND_DELETE: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// In every namespace whose gateways the operator manages (a ClusterRole
/// when it watches all namespaces, a Role in each otherwise).
pub const GATEWAYS: &[Grant] = &[
    Grant {
        api_group: GROUP,
        resources: &["websocketgateways"],
        verbs: &["list", "watch"],
    },
    Grant {
        api_group: GROUP,
        resources: &["websocketgateways/status"],
        verbs: &["patch"],
    },
    Grant {
        api_group: "apps",
        resources: &["statefulsets"],
        verbs: APPLY_AND_GET,
    },
    Grant {
        api_group: "",
        resources: &["secrets", "services"],
        verbs: APPLY_AND_GET,
    },
    Grant {
        api_group: "",
        resources: &["configmaps"],
        verbs: APPLY,
    },
    Grant {
        api_group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: APPLY,
    },
    Grant {
        api_group: "networking.k8s.io",
        resources: &["networkpolicies"],
        verbs: APPLY_GET_AND_DELETE,
    },
    Grant {
        api_group: "",
        resources: &["pods"],
        verbs: &["list", "watch"],
    },
    Grant {
        api_group: "discovery.k8s.io",
        resources: &["endpointslices"],
        verbs: &["list", "watch"],
    },
    // A repeated event is patched into a series.
    Grant {
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// In the namespace of the leader-election Lease (the operator's own).
pub const LEADER_ELECTION: &[Grant] = &[Grant {
    api_group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "create", "update"],
}];

/// With the sidecar injector, in the operator's own namespace: creating
/// the webhook's certificate Secret. RBAC cannot limit `create` to a name
/// (the object does not exist yet), so this is a rule of its own.
pub const WEBHOOK_SECRET_CREATE: &[Grant] = &[Grant {
    api_group: "",
    resources: &["secrets"],
    verbs: &["create"],
}];

/// With the sidecar injector, in the operator's own namespace, limited by
/// `resourceNames` to the Secret `--webhook-secret` names: every replica
/// re-reads it (a `get` each resync: no list or watch, which would need
/// more), and the leader renews it.
pub const WEBHOOK_SECRET: &[Grant] = &[Grant {
    api_group: "",
    resources: &["secrets"],
    verbs: &["get", "update"],
}];

/// With the sidecar injector, cluster-wide, limited by `resourceNames` to
/// the MutatingWebhookConfiguration `--webhook-configuration` names: the
/// leader reads it and patches its caBundle.
pub const WEBHOOK_CONFIGURATION: &[Grant] = &[Grant {
    api_group: "admissionregistration.k8s.io",
    resources: &["mutatingwebhookconfigurations"],
    verbs: &["get", "patch"],
}];

/// With the sidecar injector, in every namespace whose gateways the
/// operator manages (beside [`GATEWAYS`]): the leader's sidecar audit
/// lists the workloads whose pod template asks for the sidecar, and each
/// one's pods.
pub const SIDECAR_AUDIT: &[Grant] = &[
    Grant {
        api_group: "apps",
        resources: &["deployments", "statefulsets", "daemonsets"],
        verbs: &["list"],
    },
    Grant {
        api_group: "",
        resources: &["pods"],
        verbs: &["list"],
    },
];

/// With the sidecar injector, cluster-wide: creating the sidecars'
/// control Secret (`sidecar::CONTROL_SECRET`) in a namespace whose pods
/// are injected, at admission (any replica) and by the leader. RBAC cannot
/// limit `create` to a name (the object does not exist yet), so this is a
/// rule of its own; it lets the operator create any Secret in any
/// namespace, though its code creates only that one.
pub const SIDECAR_CONTROL_SECRET_CREATE: &[Grant] = &[Grant {
    api_group: "",
    resources: &["secrets"],
    verbs: &["create"],
}];

/// With the sidecar injector, cluster-wide, limited by `resourceNames` to
/// `sidecar::CONTROL_SECRET`: the leader reads each namespace's control
/// Secret and renews it (no list or watch, which would read every
/// Secret).
pub const SIDECAR_CONTROL_SECRET: &[Grant] = &[Grant {
    api_group: "",
    resources: &["secrets"],
    verbs: &["get", "update"],
}];

/// With the sidecar injector, cluster-wide: the leader paces the drains of
/// the injected pods (which it lists and watches by their
/// `sidecar::INJECTED_LABEL`; the same list finds the namespaces whose
/// control Secrets it keeps), reads their workloads (their uid, for the
/// events), and reports each workload's drain as events on it.
pub const SIDECAR_DRAIN: &[Grant] = &[
    Grant {
        api_group: "",
        resources: &["pods"],
        verbs: &["list", "watch"],
    },
    Grant {
        api_group: "apps",
        resources: &["deployments", "statefulsets", "daemonsets"],
        verbs: &["get"],
    },
    Grant {
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// Whether `grants` allow `verb` on `resource` of `api_group`.
pub fn allows(grants: &[Grant], api_group: &str, resource: &str, verb: &str) -> bool {
    grants.iter().any(|g| {
        g.api_group == api_group && g.resources.contains(&resource) && g.verbs.contains(&verb)
    })
}

/// Every (group, resource, verb) that `grants` allow, one per entry.
pub fn triples(grants: &[Grant]) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = grants
        .iter()
        .flat_map(|g| {
            g.resources.iter().flat_map(move |r| {
                g.verbs
                    .iter()
                    .map(move |v| (g.api_group.to_owned(), (*r).to_owned(), (*v).to_owned()))
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use kube::Resource;
    use ringway_crds::WebSocketGateway;

    #[test]
    fn the_gateway_group_is_the_crds() {
        assert_eq!(super::GROUP, WebSocketGateway::group(&()));
    }
}
