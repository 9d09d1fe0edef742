//! The injected container: `ringway-dataplane sidecar` as a native sidecar
//! (an init container with `restartPolicy: Always`, so it starts before
//! the application and stops after it), listening on the application
//! port's name, locked down and small; and the volume of its control-port
//! certificate, through which the operator paces its drain.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Container, EmptyDirVolumeSource, EnvVar, ResourceRequirements, SeccompProfile,
        SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use ringway_dataplane_api::sidecar::{
    ADMIN_PORT, ADMIN_PORT_NAME, CONTAINER, CONTROL_PORT, CONTROL_PORT_NAME, CONTROL_SECRET,
    CONTROL_TLS_DIR, DRAIN_TOKEN_ENV, LISTEN_PORT,
};

use super::{settings::Settings, target::AppPort};
use crate::container::{self, NONROOT, tcp_port};

/// CPU the sidecar asks for: a relay of one pod's clients is light.
const CPU_REQUEST: &str = "50m";
/// Memory it asks for: the process and a few thousand idle connections.
const MEMORY_REQUEST: &str = "64Mi";
/// Its memory limit: room for the default 9,900 connections (a few KiB
/// each when idle) and their buffers in flight.
const MEMORY_LIMIT: &str = "256Mi";

/// The pod volume that holds the sidecar's control-port certificate.
pub const CONTROL_VOLUME: &str = "ringway-sidecar-control";

/// An empty pod volume the sidecar mounts where Kubernetes would mount the
/// pod's ServiceAccount token ([`TOKEN_PATH`]): the API server's
/// ServiceAccount admission leaves a container with a mount there alone,
/// so the sidecar, which never calls the API, does not carry the
/// application's credentials.
pub const NO_TOKEN_VOLUME: &str = "ringway-sidecar-no-token";

/// Where Kubernetes mounts a pod's ServiceAccount token in each container.
pub const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The volumes the injection adds, whose names the pod must not use.
pub const VOLUMES: [&str; 2] = [CONTROL_VOLUME, NO_TOKEN_VOLUME];

/// The volumes the sidecar mounts: [`CONTROL_SECRET`]'s, optional (a pod
/// whose namespace has no such Secret yet starts all the same, with an
/// empty directory, and its sidecar then paces its drain by itself), and
/// the empty one over [`TOKEN_PATH`].
pub fn volumes() -> [Volume; 2] {
    [
        Volume {
            name: CONTROL_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(CONTROL_SECRET.to_owned()),
                optional: Some(true),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: NO_TOKEN_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: Some(Quantity("1Ki".to_owned())),
            }),
            ..Volume::default()
        },
    ]
}

/// The sidecar container for `app`, running `image` with `settings`, with
/// `token` as the drain token the application's preStop hook sends, in a
/// pod whose termination grace period is `grace` seconds (its drain is fit
/// into it).
pub fn container(
    image: &str,
    settings: &Settings,
    app: &AppPort,
    token: &str,
    grace: i64,
) -> Container {
    let admin = IntOrString::Int(i32::from(ADMIN_PORT));
    Container {
        name: CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        restart_policy: Some("Always".to_owned()),
        args: Some(args(settings, app, grace)),
        env: Some(vec![
            EnvVar {
                name: DRAIN_TOKEN_ENV.to_owned(),
                value: Some(token.to_owned()),
                ..EnvVar::default()
            },
            container::json_logs(),
        ]),
        ports: Some(vec![
            tcp_port(&app.name, LISTEN_PORT),
            tcp_port(ADMIN_PORT_NAME, ADMIN_PORT),
            tcp_port(CONTROL_PORT_NAME, CONTROL_PORT),
        ]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: CONTROL_VOLUME.to_owned(),
                mount_path: CONTROL_TLS_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: NO_TOKEN_VOLUME.to_owned(),
                mount_path: TOKEN_PATH.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        // Not ready until it serves, and from the start of its drain: the
        // Service stops sending it clients as soon as the pod stops.
        readiness_probe: Some(container::readiness(&admin)),
        liveness_probe: Some(container::liveness(&admin)),
        resources: Some(resources()),
        security_context: Some(locked_down()),
        ..Container::default()
    }
}

fn args(settings: &Settings, app: &AppPort, grace: i64) -> Vec<String> {
    let flags = [
        ("--app-port", i64::from(app.number)),
        ("--listen-port", i64::from(LISTEN_PORT)),
        ("--admin-port", i64::from(ADMIN_PORT)),
        (
            "--drain-window-seconds",
            settings.drain_window_seconds.into(),
        ),
        (
            "--max-closes-per-second",
            settings.max_closes_per_second.into(),
        ),
        ("--max-connections", settings.max_connections.into()),
        ("--termination-grace-seconds", grace),
        ("--control-port", i64::from(CONTROL_PORT)),
    ];
    std::iter::once("sidecar".to_owned())
        .chain(
            flags
                .into_iter()
                .flat_map(|(flag, value)| [flag.to_owned(), value.to_string()]),
        )
        .chain(["--control-tls-dir".to_owned(), CONTROL_TLS_DIR.to_owned()])
        .collect()
}

fn resources() -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(CPU_REQUEST)),
            ("memory".to_owned(), quantity(MEMORY_REQUEST)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            quantity(MEMORY_LIMIT),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Its own user, no privileges, no writes: it does not depend on the
/// application's pod security context.
fn locked_down() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(NONROOT),
        run_as_group: Some(NONROOT),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..container::locked_down()
    }
}
