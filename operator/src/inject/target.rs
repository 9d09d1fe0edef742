//! Finds the application port the sidecar fronts in a pod spec, and the
//! reasons the pod cannot take a sidecar as it is (an ambiguous or unnamed
//! port, a preStop hook of its own, the sidecar's ports already in use).

use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};
use ringway_dataplane_api::sidecar::{
    ADMIN_PORT, ADMIN_PORT_NAME, CONTROL_PORT, CONTROL_PORT_NAME, LISTEN_PORT,
};

use super::{denial::Denial, settings::PortRef, sidecar::VOLUMES};

/// The application port the sidecar fronts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPort {
    /// The index of its container in `spec.containers`.
    pub container: usize,
    /// The index of the port in that container's `ports`.
    pub port: usize,
    /// The port's name, which the sidecar takes over.
    pub name: String,
    /// The port's number, which the application keeps.
    pub number: u16,
}

/// The application port of `spec` that `wanted` names, checked to be one
/// TCP port of one container, with a name, on a container without a
/// preStop hook; and no port or volume of the pod in the sidecar's way.
pub fn find(spec: &PodSpec, wanted: &PortRef) -> Result<AppPort, Denial> {
    let (c, p) = the_tcp_port(spec, wanted)?;
    let container = &spec.containers[c];
    let port = &ports(container)[p];
    // A containerPort the API server accepted is in 1–65535.
    let number = u16::try_from(port.container_port).unwrap_or_default();
    let Some(name) = port.name.clone().filter(|name| !name.is_empty()) else {
        return Err(Denial::UnnamedPort {
            container: container.name.clone(),
            number,
        });
    };
    if container
        .lifecycle
        .as_ref()
        .is_some_and(|l| l.pre_stop.is_some())
    {
        return Err(Denial::HasPreStop {
            container: container.name.clone(),
        });
    }
    check_sidecar_ports_free(spec)?;
    check_volumes_free(spec)?;
    Ok(AppPort {
        container: c,
        port: p,
        name,
        number,
    })
}

/// The (container, port) indices of the one TCP port that `wanted` names.
fn the_tcp_port(spec: &PodSpec, wanted: &PortRef) -> Result<(usize, usize), Denial> {
    let port_at = |(c, p): (usize, usize)| &ports(&spec.containers[c])[p];
    let matching: Vec<(usize, usize)> = spec
        .containers
        .iter()
        .enumerate()
        .flat_map(|(c, container)| (0..ports(container).len()).map(move |p| (c, p)))
        .filter(|&at| refers_to(wanted, port_at(at)))
        .collect();
    let tcp: Vec<(usize, usize)> = matching
        .iter()
        .copied()
        .filter(|&at| is_tcp(port_at(at)))
        .collect();
    match (tcp.as_slice(), matching.first()) {
        ([only], _) => Ok(*only),
        ([], None) => Err(Denial::NoSuchPort {
            port: wanted.clone(),
        }),
        ([], Some(&(c, p))) => Err(Denial::NotTcp {
            port: wanted.clone(),
            container: spec.containers[c].name.clone(),
            protocol: port_at((c, p)).protocol.clone().unwrap_or_default(),
        }),
        (several, _) => {
            let mut containers: Vec<String> = several
                .iter()
                .map(|&(c, _)| spec.containers[c].name.clone())
                .collect();
            containers.dedup();
            Err(Denial::Ambiguous {
                port: wanted.clone(),
                containers,
            })
        }
    }
}

/// Every container of the pod (init containers too) must leave the
/// sidecar's port numbers and its own ports' names alone: they share the
/// pod's network namespace and its port names.
fn check_sidecar_ports_free(spec: &PodSpec) -> Result<(), Denial> {
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for container in all {
        for port in ports(container) {
            let number = u16::try_from(port.container_port).unwrap_or_default();
            if [LISTEN_PORT, ADMIN_PORT, CONTROL_PORT].contains(&number) {
                return Err(Denial::PortNumberTaken {
                    container: container.name.clone(),
                    number,
                });
            }
            let taken = [ADMIN_PORT_NAME, CONTROL_PORT_NAME]
                .into_iter()
                .find(|&name| port.name.as_deref() == Some(name));
            if let Some(name) = taken {
                return Err(Denial::PortNameTaken {
                    container: container.name.clone(),
                    name,
                });
            }
        }
    }
    Ok(())
}

/// The pod must not have a volume of a name the injection adds.
fn check_volumes_free(spec: &PodSpec) -> Result<(), Denial> {
    let taken = VOLUMES
        .into_iter()
        .find(|name| spec.volumes.iter().flatten().any(|v| v.name == *name));
    match taken {
        Some(name) => Err(Denial::VolumeNameTaken { name }),
        None => Ok(()),
    }
}

fn ports(container: &Container) -> &[ContainerPort] {
    container.ports.as_deref().unwrap_or_default()
}

fn refers_to(wanted: &PortRef, port: &ContainerPort) -> bool {
    match wanted {
        PortRef::Name(name) => port.name.as_deref() == Some(name.as_str()),
        PortRef::Number(number) => port.container_port == i32::from(*number),
    }
}

/// A port without a protocol is TCP (the API server's default).
fn is_tcp(port: &ContainerPort) -> bool {
    port.protocol.as_deref().is_none_or(|p| p == "TCP")
}
