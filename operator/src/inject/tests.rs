//! The injector's table: representative pods in, the patched pod (or the
//! denial) out. Every patch is applied to the pod's JSON as the API server
//! would, and the result is what is checked.

use k8s_openapi::api::core::v1::Pod;
use ringway_crds::annotations::{
    SIDECAR, SIDECAR_DRAIN_WINDOW_SECONDS, SIDECAR_MAX_CLOSES_PER_SECOND, SIDECAR_MAX_CONNECTIONS,
};
use serde_json::{Value, json};

use super::*;

pub(super) const IMAGE: &str = "ghcr.io/ringway-dev/ringway-dataplane:0.1.0";
const TOKEN: &str = "00112233445566778899aabbccddeeff";

/// A chat server pod that asks for the sidecar on its port named `ws`,
/// with a grace period long enough for the default drain.
pub(super) fn chat_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "chat-7d9f",
            "namespace": "apps",
            "annotations": { SIDECAR: "ws" }
        },
        "spec": {
            "terminationGracePeriodSeconds": 60,
            "containers": [{
                "name": "chat",
                "image": "chat:1",
                "ports": [
                    { "name": "ws", "containerPort": 8080, "protocol": "TCP" },
                    { "name": "metrics", "containerPort": 9090, "protocol": "TCP" }
                ]
            }]
        }
    })
}

/// `pod` with `changes` merged in (RFC 7386: objects merge, arrays and
/// values replace).
fn with(mut pod: Value, changes: Value) -> Value {
    json_patch::merge(&mut pod, &changes);
    pod
}

fn annotated(pod: Value, annotations: Value) -> Value {
    with(pod, json!({ "metadata": { "annotations": annotations } }))
}

/// Decides on `pod` and applies the patch to its JSON.
fn admit(pod: &Value) -> Result<(Value, Vec<String>), Denial> {
    let typed: Pod = serde_json::from_value(pod.clone()).expect("a pod");
    let injection = decide(&typed, IMAGE, TOKEN)?;
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &injection.patch).expect("the patch applies");
    Ok((patched, injection.warnings))
}

fn patched(pod: &Value) -> Value {
    let (patched, warnings) = admit(pod).expect("admitted");
    assert_eq!(warnings, Vec::<String>::new());
    patched
}

fn denial(pod: &Value) -> Denial {
    admit(pod).expect_err("denied")
}

fn sidecar_of(pod: &Value) -> &Value {
    let init = pod["spec"]["initContainers"]
        .as_array()
        .expect("init containers");
    init.last().expect("the sidecar")
}

fn args_of(pod: &Value) -> Vec<&str> {
    let args = sidecar_of(pod)["args"].as_array().expect("args");
    args.iter().map(|a| a.as_str().expect("text")).collect()
}

#[test]
fn a_named_port_is_handed_to_the_sidecar() {
    let expected = with(
        chat_pod(),
        json!({ "metadata": { "labels": { "ringway.dev/sidecar-injected": "true" } },
        "spec": {
            "volumes": [{
                "name": "ringway-sidecar-control",
                "secret": { "secretName": "ringway-sidecar-control", "optional": true }
            }, {
                "name": "ringway-sidecar-no-token",
                "emptyDir": { "medium": "Memory", "sizeLimit": "1Ki" }
            }],
            "containers": [{
                "name": "chat",
                "image": "chat:1",
                "ports": [
                    { "containerPort": 8080, "protocol": "TCP" },
                    { "name": "metrics", "containerPort": 9090, "protocol": "TCP" }
                ],
                "lifecycle": { "preStop": { "httpGet": {
                    "path": "/drain?wait=true",
                    "port": 15090,
                    "httpHeaders": [{ "name": "x-ringway-drain-token", "value": TOKEN }]
                }}}
            }],
            "initContainers": [{
                "name": "ringway-sidecar",
                "image": IMAGE,
                "restartPolicy": "Always",
                "args": [
                    "sidecar", "--app-port", "8080", "--listen-port", "15080",
                    "--admin-port", "15090", "--drain-window-seconds", "30",
                    "--max-closes-per-second", "100", "--max-connections", "9900",
                    "--termination-grace-seconds", "60", "--control-port", "15091",
                    "--control-tls-dir", "/var/run/ringway/sidecar-control"
                ],
                "env": [
                    { "name": "RINGWAY_DRAIN_TOKEN", "value": TOKEN },
                    { "name": "RINGWAY_LOG_FORMAT", "value": "json" }
                ],
                "ports": [
                    { "name": "ws", "containerPort": 15080, "protocol": "TCP" },
                    { "name": "ringway-admin", "containerPort": 15090, "protocol": "TCP" },
                    { "name": "ringway-control", "containerPort": 15091, "protocol": "TCP" }
                ],
                "volumeMounts": [{
                    "name": "ringway-sidecar-control",
                    "mountPath": "/var/run/ringway/sidecar-control",
                    "readOnly": true
                }, {
                    // Where the pod's ServiceAccount token would go: the
                    // API server then mounts none in the sidecar.
                    "name": "ringway-sidecar-no-token",
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "readOnly": true
                }],
                "readinessProbe": {
                    "httpGet": { "path": "/readyz", "port": 15090 },
                    "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 2
                },
                "livenessProbe": {
                    "httpGet": { "path": "/healthz", "port": 15090 },
                    "initialDelaySeconds": 10, "periodSeconds": 10,
                    "timeoutSeconds": 5, "failureThreshold": 6
                },
                "resources": {
                    "requests": { "cpu": "50m", "memory": "64Mi" },
                    "limits": { "memory": "256Mi" }
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "capabilities": { "drop": ["ALL"] },
                    "seccompProfile": { "type": "RuntimeDefault" }
                }
            }]
        }}),
    );
    assert_eq!(patched(&chat_pod()), expected);
}

#[test]
fn a_number_finds_the_named_port_with_that_number() {
    let pod = annotated(chat_pod(), json!({ SIDECAR: "8080" }));
    let after = patched(&pod);
    assert_eq!(sidecar_of(&after)["ports"][0]["name"], "ws");
    assert_eq!(args_of(&after)[..3], ["sidecar", "--app-port", "8080"]);
    assert_eq!(after["spec"]["containers"][0]["ports"][0].get("name"), None);
}

#[test]
fn a_number_on_an_unnamed_port_is_denied_asking_for_a_name() {
    let pod = with(
        annotated(chat_pod(), json!({ SIDECAR: "9000" })),
        json!({ "spec": { "containers": [{
            "name": "chat",
            "ports": [{ "containerPort": 9000 }]
        }]}}),
    );
    let denied = denial(&pod);
    assert_eq!(
        denied,
        Denial::UnnamedPort {
            container: "chat".into(),
            number: 9000
        }
    );
    let message = denied.to_string();
    assert!(message.contains("name the port"), "{message}");
    assert!(message.contains("targetPort"), "{message}");
}

#[test]
fn probes_and_post_start_that_name_the_port_use_its_number_and_the_rest_stay() {
    let probes = json!({
        "livenessProbe": { "httpGet": { "path": "/health", "port": "ws" } },
        "readinessProbe": { "tcpSocket": { "port": "ws" } },
        "startupProbe": { "grpc": { "port": 8080 } },
        "lifecycle": { "postStart": { "httpGet": { "path": "/warm", "port": "metrics" } } }
    });
    let mut container = chat_pod()["spec"]["containers"][0].clone();
    json_patch::merge(&mut container, &probes);
    let pod = with(chat_pod(), json!({ "spec": { "containers": [container] } }));
    let after = &patched(&pod)["spec"]["containers"][0];
    assert_eq!(after["livenessProbe"]["httpGet"]["port"], 8080);
    assert_eq!(after["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(after["readinessProbe"]["tcpSocket"]["port"], 8080);
    assert_eq!(after["startupProbe"], probes["startupProbe"]);
    assert_eq!(
        after["lifecycle"]["postStart"],
        probes["lifecycle"]["postStart"]
    );

    let by_name = json!({ "postStart": { "tcpSocket": { "port": "ws" } } });
    let mut container = chat_pod()["spec"]["containers"][0].clone();
    json_patch::merge(&mut container, &json!({ "lifecycle": by_name }));
    let pod = with(chat_pod(), json!({ "spec": { "containers": [container] } }));
    let after = &patched(&pod)["spec"]["containers"][0];
    assert_eq!(after["lifecycle"]["postStart"]["tcpSocket"]["port"], 8080);
}

#[test]
fn probes_by_number_are_untouched() {
    let probes = json!({
        "livenessProbe": { "httpGet": { "path": "/health", "port": 8080 } },
        "readinessProbe": { "tcpSocket": { "port": 8080 } },
        "startupProbe": { "httpGet": { "path": "/started", "port": "metrics" } }
    });
    let mut container = chat_pod()["spec"]["containers"][0].clone();
    json_patch::merge(&mut container, &probes);
    let pod = with(chat_pod(), json!({ "spec": { "containers": [container] } }));
    let after = &patched(&pod)["spec"]["containers"][0];
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(after[probe], probes[probe], "{probe}");
    }
}

#[test]
fn the_sidecar_comes_after_the_pods_own_init_containers() {
    let init = json!([
        { "name": "migrate", "image": "chat:1", "args": ["migrate"] },
        { "name": "log-shipper", "image": "shipper:2", "restartPolicy": "Always" }
    ]);
    let pod = with(chat_pod(), json!({ "spec": { "initContainers": init } }));
    let after = patched(&pod);
    let names: Vec<&str> = after["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .map(|c| c["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["migrate", "log-shipper", "ringway-sidecar"]);
    assert_eq!(after["spec"]["initContainers"][0], init[0]);
    assert_eq!(after["spec"]["initContainers"][1], init[1]);
}

#[test]
fn an_application_with_its_own_pre_stop_hook_is_denied() {
    let mut container = chat_pod()["spec"]["containers"][0].clone();
    let hook = json!({ "preStop": { "exec": { "command": ["sleep", "5"] } } });
    json_patch::merge(&mut container, &json!({ "lifecycle": hook }));
    let pod = with(chat_pod(), json!({ "spec": { "containers": [container] } }));
    let denied = denial(&pod);
    assert_eq!(
        denied,
        Denial::HasPreStop {
            container: "chat".into()
        }
    );
    assert!(denied.to_string().contains("before the application stops"));
}

#[test]
fn an_injected_pod_is_left_alone_so_reinvocation_never_injects_twice() {
    let once = patched(&chat_pod());
    let typed: Pod = serde_json::from_value(once).expect("a pod");
    assert_eq!(decide(&typed, IMAGE, "another"), Ok(Injection::default()));
}

#[test]
fn among_several_containers_only_the_one_with_the_port_changes() {
    let containers = json!([
        { "name": "proxy", "image": "envoy:1", "ports": [{ "name": "admin", "containerPort": 9901 }],
          "readinessProbe": { "httpGet": { "path": "/ready", "port": "admin" } } },
        { "name": "chat", "image": "chat:1", "ports": [{ "name": "ws", "containerPort": 8080 }] },
        { "name": "cache", "image": "redis:7", "ports": [{ "name": "redis", "containerPort": 6379 }] }
    ]);
    let pod = with(chat_pod(), json!({ "spec": { "containers": containers } }));
    let after = patched(&pod);
    assert_eq!(after["spec"]["containers"][0], containers[0]);
    assert_eq!(after["spec"]["containers"][2], containers[2]);
    let chat = &after["spec"]["containers"][1];
    assert_eq!(chat["ports"], json!([{ "containerPort": 8080 }]));
    assert!(chat["lifecycle"]["preStop"]["httpGet"].is_object());
    assert_eq!(args_of(&after)[..3], ["sidecar", "--app-port", "8080"]);
}

#[test]
fn a_port_name_on_two_containers_is_denied() {
    let containers = json!([
        { "name": "chat", "ports": [{ "name": "ws", "containerPort": 8080 }] },
        { "name": "chat-v2", "ports": [{ "name": "ws", "containerPort": 8081 }] }
    ]);
    let pod = with(chat_pod(), json!({ "spec": { "containers": containers } }));
    let denied = denial(&pod);
    assert_eq!(
        denied,
        Denial::Ambiguous {
            port: PortRef::Name("ws".into()),
            containers: vec!["chat".into(), "chat-v2".into()]
        }
    );
    assert!(denied.to_string().contains("chat, chat-v2"));
}

#[test]
fn a_udp_port_is_denied_and_a_missing_one_too() {
    let containers = json!([{ "name": "chat",
        "ports": [{ "name": "ws", "containerPort": 8080, "protocol": "UDP" }] }]);
    let pod = with(chat_pod(), json!({ "spec": { "containers": containers } }));
    let denied = denial(&pod);
    assert_eq!(
        denied,
        Denial::NotTcp {
            port: PortRef::Name("ws".into()),
            container: "chat".into(),
            protocol: "UDP".into()
        }
    );
    assert!(
        denied
            .to_string()
            .contains("point the annotation at a TCP port")
    );

    let pod = annotated(chat_pod(), json!({ SIDECAR: "websocket" }));
    assert_eq!(
        denial(&pod),
        Denial::NoSuchPort {
            port: PortRef::Name("websocket".into())
        }
    );
}

#[test]
fn a_number_with_both_protocols_takes_the_tcp_port() {
    let containers = json!([{ "name": "chat", "ports": [
        { "name": "ws-udp", "containerPort": 8080, "protocol": "UDP" },
        { "name": "ws", "containerPort": 8080, "protocol": "TCP" }
    ] }]);
    let pod = with(
        annotated(chat_pod(), json!({ SIDECAR: "8080" })),
        json!({ "spec": { "containers": containers } }),
    );
    let after = patched(&pod);
    assert_eq!(sidecar_of(&after)["ports"][0]["name"], "ws");
    assert_eq!(after["spec"]["containers"][0]["ports"][0]["name"], "ws-udp");
}

#[test]
fn the_sidecars_ports_in_use_anywhere_in_the_pod_are_denied() {
    let init_on = |port: Value| {
        with(
            chat_pod(),
            json!({ "spec": { "initContainers": [{ "name": "agent", "ports": [port] }] } }),
        )
    };
    let app_on = |number: u16| {
        with(
            annotated(chat_pod(), json!({ SIDECAR: "ws" })),
            json!({ "spec": { "containers": [{ "name": "chat",
                "ports": [{ "name": "ws", "containerPort": number }] }] } }),
        )
    };
    let agent = || "agent".to_owned();
    let table = [
        (
            init_on(json!({ "containerPort": 15080 })),
            Denial::PortNumberTaken {
                container: agent(),
                number: 15080,
            },
        ),
        (
            init_on(json!({ "name": "debug", "containerPort": 15090 })),
            Denial::PortNumberTaken {
                container: agent(),
                number: 15090,
            },
        ),
        (
            init_on(json!({ "name": "ringway-admin", "containerPort": 9000 })),
            Denial::PortNameTaken {
                container: agent(),
                name: "ringway-admin",
            },
        ),
        (
            init_on(json!({ "containerPort": 15091 })),
            Denial::PortNumberTaken {
                container: agent(),
                number: 15091,
            },
        ),
        (
            init_on(json!({ "name": "ringway-control", "containerPort": 9001 })),
            Denial::PortNameTaken {
                container: agent(),
                name: "ringway-control",
            },
        ),
        (
            app_on(15080),
            Denial::PortNumberTaken {
                container: "chat".into(),
                number: 15080,
            },
        ),
    ];
    for (pod, expected) in table {
        assert_eq!(denial(&pod), expected);
    }
}

#[test]
fn bad_optional_annotations_are_denied_by_name() {
    for annotation in [
        SIDECAR_DRAIN_WINDOW_SECONDS,
        SIDECAR_MAX_CLOSES_PER_SECOND,
        SIDECAR_MAX_CONNECTIONS,
    ] {
        for value in ["0", "-1", "ten", "", "1.5", "99999999999"] {
            let pod = annotated(chat_pod(), json!({ annotation: value }));
            let denied = denial(&pod);
            assert_eq!(
                denied,
                Denial::BadNumber {
                    annotation,
                    value: value.into()
                }
            );
            assert!(denied.to_string().starts_with(annotation), "{denied}");
        }
    }
}

#[test]
fn a_bad_port_annotation_is_denied() {
    for value in ["", " ", "0", "65536"] {
        let pod = annotated(chat_pod(), json!({ SIDECAR: value }));
        assert!(
            matches!(denial(&pod), Denial::BadPortAnnotation { .. }),
            "{value:?}"
        );
    }
}

#[test]
fn optional_annotations_reach_the_sidecars_flags() {
    let pod = annotated(
        chat_pod(),
        json!({
            SIDECAR_DRAIN_WINDOW_SECONDS: "45",
            SIDECAR_MAX_CLOSES_PER_SECOND: "20",
            SIDECAR_MAX_CONNECTIONS: "2000"
        }),
    );
    let after = patched(&pod);
    assert_eq!(
        args_of(&after)[7..15],
        [
            "--drain-window-seconds",
            "45",
            "--max-closes-per-second",
            "20",
            "--max-connections",
            "2000",
            "--termination-grace-seconds",
            "60"
        ]
    );
}

#[test]
fn a_grace_period_shorter_than_the_drain_is_allowed_with_a_warning() {
    // 60 s of grace: 60 - 5 s close timeout - 2 s for the application.
    let pod = annotated(chat_pod(), json!({ SIDECAR_DRAIN_WINDOW_SECONDS: "60" }));
    let (after, warnings) = admit(&pod).expect("admitted");
    assert!(after["spec"]["initContainers"].is_array());
    let [warning] = warnings.as_slice() else {
        panic!("one warning: {warnings:?}");
    };
    for part in [
        "terminationGracePeriodSeconds 60",
        "53 s of its 60 s window",
        "raise it to 67",
    ] {
        assert!(warning.contains(part), "{part:?} not in {warning}");
    }
    // The sidecar is told the grace period, so that its drain fits it.
    let args = args_of(&after);
    let grace = args
        .iter()
        .position(|&a| a == "--termination-grace-seconds")
        .expect("the grace flag");
    assert_eq!(
        args[grace..grace + 2],
        ["--termination-grace-seconds", "60"]
    );

    // The kubelet's default of 30 s is short of the default 30 s + 5 s + 2 s.
    let mut pod = chat_pod();
    pod["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("terminationGracePeriodSeconds");
    let (after, warnings) = admit(&pod).expect("admitted");
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("terminationGracePeriodSeconds 30"));
    assert!(warnings[0].contains("23 s of its 30 s window"));
    let args = args_of(&after);
    let grace = args
        .iter()
        .position(|&a| a == "--termination-grace-seconds")
        .expect("the grace flag");
    assert_eq!(
        args[grace..grace + 2],
        ["--termination-grace-seconds", "30"]
    );

    let pod = with(
        chat_pod(),
        json!({ "spec": { "terminationGracePeriodSeconds": 37 } }),
    );
    assert_eq!(admit(&pod).expect("admitted").1, Vec::<String>::new());
}

#[test]
fn a_pod_without_the_annotation_is_unchanged() {
    let mut pod = chat_pod();
    pod["metadata"]["annotations"] = json!({ "team": "chat" });
    let typed: Pod = serde_json::from_value(pod).expect("a pod");
    assert_eq!(decide(&typed, IMAGE, TOKEN), Ok(Injection::default()));
}

#[test]
fn fields_the_operator_does_not_know_survive_the_patch() {
    let mut pod = chat_pod();
    pod["spec"]["containers"][0]["someFutureField"] = json!({ "on": true });
    pod["spec"]["someFutureField"] = json!(7);
    let after = patched(&pod);
    assert_eq!(
        after["spec"]["containers"][0]["someFutureField"],
        json!({ "on": true })
    );
    assert_eq!(after["spec"]["someFutureField"], 7);
}

#[test]
fn the_label_joins_the_pods_own_and_the_volume_its_volumes() {
    let pod = with(
        chat_pod(),
        json!({
            "metadata": { "labels": { "app": "chat", "ringway.dev/tier": "ws" } },
            "spec": { "volumes": [{ "name": "config", "configMap": { "name": "chat" } }] }
        }),
    );
    let typed: Pod = serde_json::from_value(pod.clone()).expect("a pod");
    let injection = decide(&typed, IMAGE, TOKEN).expect("admitted");
    let label_op = serde_json::to_value(&injection.patch).expect("json");
    assert!(
        label_op
            .as_array()
            .expect("operations")
            .iter()
            .any(|op| op["path"] == "/metadata/labels/ringway.dev~1sidecar-injected"),
        "the label's `/` is escaped in the pointer: {label_op:#}"
    );
    let after = patched(&pod);
    assert_eq!(
        after["metadata"]["labels"],
        json!({ "app": "chat", "ringway.dev/tier": "ws", "ringway.dev/sidecar-injected": "true" })
    );
    let volumes = after["spec"]["volumes"].as_array().expect("volumes");
    let names: Vec<&Value> = volumes.iter().map(|v| &v["name"]).collect();
    assert_eq!(
        names,
        [
            "config",
            "ringway-sidecar-control",
            "ringway-sidecar-no-token"
        ]
    );
}

#[test]
fn a_volume_named_like_the_control_volume_is_denied() {
    let pod = with(
        chat_pod(),
        json!({ "spec": { "volumes": [{ "name": "ringway-sidecar-control", "emptyDir": {} }] } }),
    );
    let refused = denial(&pod);
    assert_eq!(
        refused,
        Denial::VolumeNameTaken {
            name: "ringway-sidecar-control"
        }
    );
    assert!(
        refused.to_string().contains("rename that volume"),
        "{refused}"
    );
    let pod = with(
        chat_pod(),
        json!({ "spec": { "volumes": [{ "name": "ringway-sidecar-no-token", "emptyDir": {} }] } }),
    );
    assert_eq!(
        denial(&pod),
        Denial::VolumeNameTaken {
            name: "ringway-sidecar-no-token"
        }
    );
}
