//! A slot's StatefulSet and the pod template its data-plane pods run:
//! ports, probes, the grace period its drain on SIGTERM needs and a
//! locked-down security context (the files it mounts are in
//! [`super::volumes`]).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{
            RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec,
            StatefulSetUpdateStrategy,
        },
        core::v1::{
            Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSecurityContext, PodSpec,
            PodTemplateSpec, SeccompProfile, Sysctl, TopologySpreadConstraint,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use ringway_crds::{DrainSettings, Slot};

use super::{CONFIG_DIR, CONFIG_KEY, PORT_ADMIN, PORT_CLIENT, PORT_CONTROL, PORT_PEER, volumes};
use crate::{
    PodInputs,
    container::{self, NONROOT, tcp_port},
    names::{
        ADMIN_PORT, ANNOTATION_CONTROL_CERT, ANNOTATION_POD_INPUTS, ANNOTATION_REVISION,
        CONTROL_PORT, GatewayRef, LABEL_SLOT, PEER_PORT, slot_label,
    },
};

/// Seconds the termination grace period adds to the drain itself: the data
/// plane's own slack after cutting the last connection (1 s), stopping its
/// control server (up to 1 s), signal delivery and a busy node. The
/// kubelet's SIGTERM starts the drain at once (there is no preStop hook to
/// wait for first), and the grace period counts from then. Past it the
/// kubelet kills the process, and any connection still open is cut without
/// a close frame.
pub const TERMINATION_MARGIN_SECONDS: i64 = 5;

/// The termination grace period of a pod that drains with `drain`: the
/// window over which its connections are closed, then up to twice the close
/// timeout (the data plane waits `closeTimeoutSeconds` for close answers and
/// cuts a connection at twice that), plus [`TERMINATION_MARGIN_SECONDS`].
pub fn termination_grace_seconds(drain: &DrainSettings) -> i64 {
    i64::from(drain.window_seconds)
        + 2 * i64::from(drain.close_timeout_seconds)
        + TERMINATION_MARGIN_SECONDS
}

/// The StatefulSet of `slot`: `replicas` pods of the template rendered
/// from `inputs`. Pods with an ordinal at or above `partition` run this
/// template; the operator lowers it one pod at a time to pace a rolling
/// update. `control_cert` is the version of the pods' control certificate
/// (see [`crate::names::ANNOTATION_CONTROL_CERT`]).
pub fn stateful_set(
    gw: &GatewayRef,
    slot: Slot,
    inputs: &PodInputs,
    replicas: i32,
    partition: i32,
    control_cert: &str,
) -> StatefulSet {
    let revision = inputs.template_revision();
    let mut metadata = gw.child_meta(gw.slot_name(slot));
    metadata.annotations = Some(BTreeMap::from([
        (ANNOTATION_POD_INPUTS.to_owned(), inputs.to_annotation()),
        (ANNOTATION_REVISION.to_owned(), revision.clone()),
    ]));
    let mut pod_labels = gw.labels();
    pod_labels.insert(LABEL_SLOT.to_owned(), slot_label(slot).to_owned());
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            selector: slot_selector(gw, slot),
            service_name: Some(gw.peer_service()),
            // Pods of a slot are independent shards: start and stop them
            // together; rolling updates still go one pod at a time.
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(partition),
                    ..RollingUpdateStatefulSetStrategy::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([
                        (ANNOTATION_REVISION.to_owned(), revision),
                        (ANNOTATION_CONTROL_CERT.to_owned(), control_cert.to_owned()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(gw, slot, inputs)),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn slot_selector(gw: &GatewayRef, slot: Slot) -> LabelSelector {
    LabelSelector {
        match_labels: Some(gw.slot_selector(slot)),
        ..LabelSelector::default()
    }
}

fn pod_spec(gw: &GatewayRef, slot: Slot, inputs: &PodInputs) -> PodSpec {
    let (volumes, volume_mounts) = volumes::volumes(gw, slot, inputs);
    let admin = IntOrString::String(PORT_ADMIN.to_owned());
    PodSpec {
        containers: vec![Container {
            name: crate::names::CONTAINER.to_owned(),
            image: Some(inputs.image.clone()),
            args: Some(vec![
                "--config".to_owned(),
                format!("{CONFIG_DIR}/{CONFIG_KEY}"),
            ]),
            env: Some(vec![
                EnvVar {
                    name: "RINGWAY_SHARD_ID".to_owned(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".to_owned(),
                            ..ObjectFieldSelector::default()
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                },
                container::json_logs(),
            ]),
            ports: Some(vec![
                tcp_port(PORT_CLIENT, inputs.listener.port),
                tcp_port(PORT_PEER, PEER_PORT),
                tcp_port(PORT_CONTROL, CONTROL_PORT),
                tcp_port(PORT_ADMIN, ADMIN_PORT),
            ]),
            // 503 until the first snapshot and from the start of a drain.
            readiness_probe: Some(container::readiness(&admin)),
            liveness_probe: Some(container::liveness(&admin)),
            // No preStop hook: the kubelet's SIGTERM drains the pod, and
            // the admin port's /drain takes no request from off the pod
            // (an httpGet hook comes from the node).
            resources: inputs.resources.clone(),
            security_context: Some(container::locked_down()),
            volume_mounts: Some(volume_mounts),
            ..Container::default()
        }],
        termination_grace_period_seconds: Some(termination_grace_seconds(&inputs.drain)),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NONROOT),
            run_as_group: Some(NONROOT),
            fs_group: Some(NONROOT),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            sysctls: low_port_sysctl(inputs.listener.port),
            ..PodSecurityContext::default()
        }),
        // The data plane never calls the Kubernetes API.
        automount_service_account_token: Some(false),
        // Nor reads Services from the environment; in a namespace with many
        // Services those variables only grow every process's environment.
        enable_service_links: Some(false),
        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(slot_selector(gw, slot)),
            ..TopologySpreadConstraint::default()
        }]),
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// A non-root process without capabilities may bind a port below 1024 only
/// when the pod lowers `ip_unprivileged_port_start` (a namespaced, "safe"
/// sysctl); a `wss://` gateway on 443 needs it.
fn low_port_sysctl(listener_port: u16) -> Option<Vec<Sysctl>> {
    (listener_port < 1024).then(|| {
        vec![Sysctl {
            name: "net.ipv4.ip_unprivileged_port_start".to_owned(),
            value: listener_port.to_string(),
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::{
        super::fixtures::{gateway, inputs},
        *,
    };
    use k8s_openapi::api::core::v1::HTTPGetAction;

    use crate::names::LABEL_GATEWAY;

    fn pod(sts: &StatefulSet) -> (&ObjectMeta, &PodSpec) {
        let template = &sts.spec.as_ref().expect("spec").template;
        (
            template.metadata.as_ref().expect("template metadata"),
            template.spec.as_ref().expect("pod spec"),
        )
    }

    fn container(spec: &PodSpec) -> &Container {
        assert_eq!(spec.containers.len(), 1);
        &spec.containers[0]
    }

    fn admin_path(handler: Option<&HTTPGetAction>) -> (String, IntOrString) {
        let get = handler.expect("an httpGet");
        (get.path.clone().unwrap_or_default(), get.port.clone())
    }

    #[test]
    fn the_statefulset_runs_the_slot_behind_the_peer_service() {
        let gw = gateway();
        let inputs = inputs("");
        let sts = stateful_set(&gw, Slot::B, &inputs, 4, 2, "cert-7");
        assert_eq!(sts.metadata.name.as_deref(), Some("chat-b"));
        assert_eq!(sts.metadata.owner_references, Some(vec![gw.owner.clone()]));
        let annotations = sts.metadata.annotations.clone().expect("annotations");
        assert_eq!(annotations[ANNOTATION_REVISION], inputs.template_revision());
        assert_eq!(
            PodInputs::from_annotation(&annotations[ANNOTATION_POD_INPUTS]).expect("pod inputs"),
            inputs,
            "the stored inputs give back this slot's version"
        );
        let spec = sts.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.service_name.as_deref(), Some("chat-peer"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let strategy = spec.update_strategy.as_ref().expect("update strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(
            strategy.rolling_update.as_ref().and_then(|r| r.partition),
            Some(2)
        );
        let selector = spec.selector.match_labels.clone().expect("matchLabels");
        assert_eq!(selector[LABEL_SLOT], "b");
        assert_eq!(selector[LABEL_GATEWAY], "chat");
        let (meta, _) = pod(&sts);
        let labels = meta.labels.clone().expect("pod labels");
        for (k, v) in &selector {
            assert_eq!(labels.get(k), Some(v), "the selector matches the pods: {k}");
        }
        for (k, v) in gw.labels() {
            assert_eq!(labels.get(&k), Some(&v), "pods carry the gateway's labels");
        }
        let pod_annotations = meta.annotations.clone().expect("pod annotations");
        assert_eq!(
            pod_annotations[ANNOTATION_REVISION],
            inputs.template_revision()
        );
        assert_eq!(pod_annotations[ANNOTATION_CONTROL_CERT], "cert-7");
    }

    #[test]
    fn the_pod_is_locked_down() {
        let sts = stateful_set(&gateway(), Slot::A, &inputs(""), 3, 0, "v1");
        let (_, spec) = pod(&sts);
        let pod_sc = spec.security_context.as_ref().expect("pod securityContext");
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(pod_sc.run_as_user, Some(65532));
        assert_eq!(pod_sc.run_as_group, Some(65532));
        assert_eq!(pod_sc.fs_group, Some(65532));
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(pod_sc.sysctls, None, "port 8080 needs no sysctl");
        assert_eq!(spec.automount_service_account_token, Some(false));
        let sc = container(spec)
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.privileged, None);
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.add.clone()), None);
    }

    #[test]
    fn a_listener_below_1024_may_bind_without_capabilities() {
        let sts = stateful_set(
            &gateway(),
            Slot::A,
            &inputs("listener: {port: 443, tlsSecretName: chat-wss}\n"),
            3,
            0,
            "v1",
        );
        let sysctls = pod(&sts)
            .1
            .security_context
            .as_ref()
            .and_then(|s| s.sysctls.clone())
            .expect("sysctls");
        assert_eq!(sysctls.len(), 1);
        assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
        assert_eq!(sysctls[0].value, "443");
    }

    #[test]
    fn the_container_runs_the_image_with_its_ports_probes_and_grace_period() {
        let inputs = inputs(
            "image: registry.example/ringway:2.0\nlistener: {port: 8081}\nresources: {limits: {memory: 1Gi}, requests: {cpu: 500m}}\n",
        );
        let sts = stateful_set(&gateway(), Slot::A, &inputs, 3, 0, "v1");
        let (_, spec) = pod(&sts);
        let c = container(spec);
        assert_eq!(c.name, "dataplane");
        assert_eq!(c.image.as_deref(), Some("registry.example/ringway:2.0"));
        assert_eq!(
            c.args,
            Some(vec![
                "--config".to_owned(),
                "/etc/ringway/config/ringway.yaml".to_owned()
            ])
        );
        assert_eq!(c.resources, inputs.resources);
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        assert_eq!(
            env["RINGWAY_SHARD_ID"]
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("metadata.name")
        );
        assert_eq!(env["RINGWAY_LOG_FORMAT"].value.as_deref(), Some("json"));
        let ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.container_port,
                    p.protocol.clone(),
                )
            })
            .collect();
        let tcp = Some("TCP".to_owned());
        assert_eq!(
            ports,
            vec![
                ("client".to_owned(), 8081, tcp.clone()),
                ("peer".to_owned(), 7000, tcp.clone()),
                ("control".to_owned(), 7443, tcp.clone()),
                ("admin".to_owned(), 9090, tcp),
            ]
        );
        let admin = IntOrString::String("admin".to_owned());
        let readiness = c.readiness_probe.as_ref().expect("readiness probe");
        assert_eq!(
            admin_path(readiness.http_get.as_ref()),
            ("/readyz".to_owned(), admin.clone())
        );
        let liveness = c.liveness_probe.as_ref().expect("liveness probe");
        assert_eq!(
            admin_path(liveness.http_get.as_ref()),
            ("/healthz".to_owned(), admin)
        );
        let patience =
            liveness.period_seconds.unwrap_or(10) * liveness.failure_threshold.unwrap_or(3);
        assert!(patience >= 30, "liveness gives up after only {patience} s");
        assert_eq!(
            c.lifecycle, None,
            "no preStop hook: SIGTERM drains, and /drain refuses the node"
        );
        assert_eq!(
            spec.termination_grace_period_seconds,
            Some(termination_grace_seconds(&inputs.drain))
        );
        let spread = spec
            .topology_spread_constraints
            .clone()
            .expect("topology spread");
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].max_skew, 1);
        assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
        assert_eq!(
            spread[0]
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(gateway().slot_selector(Slot::A))
        );
    }

    #[test]
    fn the_grace_period_covers_the_whole_drain() {
        let drain = DrainSettings {
            window_seconds: 30,
            close_timeout_seconds: 5,
        };
        // 30 s window, the last close cut at 2 × 5 s, then the margin.
        assert_eq!(termination_grace_seconds(&drain), 45);
        let longest = DrainSettings {
            window_seconds: 3600,
            close_timeout_seconds: 300,
        };
        assert_eq!(
            termination_grace_seconds(&longest),
            3600 + 600 + TERMINATION_MARGIN_SECONDS
        );
    }

    #[test]
    fn only_pod_inputs_change_the_pod_template() {
        let gw = gateway();
        let base = inputs("");
        let template = |sts: StatefulSet| sts.spec.expect("spec").template;
        let reference = template(stateful_set(&gw, Slot::A, &base, 3, 3, "v1"));
        assert_eq!(
            reference,
            template(stateful_set(&gw, Slot::A, &base, 7, 0, "v1")),
            "scaling or moving the partition restarts no pod"
        );
        let new_image = inputs("image: ghcr.io/ringway-dev/dataplane:0.2.0\n");
        let rolled = template(stateful_set(&gw, Slot::A, &new_image, 3, 3, "v1"));
        assert_ne!(reference, rolled, "a new image rolls the pods");
        let revision = |t: &PodTemplateSpec| {
            t.metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(ANNOTATION_REVISION).cloned())
                .expect("revision annotation")
        };
        assert_ne!(revision(&reference), revision(&rolled));
        let renewed = template(stateful_set(&gw, Slot::A, &base, 3, 3, "v2"));
        assert_ne!(reference, renewed, "a renewed certificate rolls the pods");
        assert_eq!(revision(&reference), revision(&renewed), "same version");
    }
}
