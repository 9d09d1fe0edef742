//! Builds the routing snapshot every pod of a gateway runs: the routes and
//! limits from the spec, each route's ready backend endpoints, and the
//! ready pods of the stable and canary slots.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};
use ringway_control::proto as v1;
use ringway_crds::{Slot, WebSocketGatewaySpec};

use crate::{
    PodInputs, budget,
    inputs::VersionLimits,
    names::{PEER_PORT, slot_index},
    rollout::{Roles, SlotView},
};

/// One backend endpoint of a route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// `ip:port`, also its id.
    pub address: String,
}

/// The ready endpoints of one route's backend Service port, or why there
/// are none.
pub fn route_endpoints(
    port: &IntOrString,
    service: Option<&Service>,
    slices: &[EndpointSlice],
) -> Result<Vec<Endpoint>, String> {
    let service = service.ok_or("the Service does not exist")?;
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .ok_or("the Service has no ports")?;
    let service_port = ports
        .iter()
        .find(|p| match port {
            IntOrString::Int(n) => p.port == *n,
            IntOrString::String(name) => p.name.as_deref() == Some(name.as_str()),
        })
        .ok_or_else(|| match port {
            IntOrString::Int(n) => format!("the Service has no port {n}"),
            IntOrString::String(name) => format!("the Service has no port named {name:?}"),
        })?;
    // EndpointSlice ports carry the Service port's name ("" when unnamed).
    let wanted = service_port.name.clone().unwrap_or_default();
    let mut endpoints = Vec::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == wanted)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // A nil `ready` means ready (EndpointSlice API).
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for ip in &endpoint.addresses {
                endpoints.push(Endpoint {
                    address: socket_address(ip, target),
                });
            }
        }
    }
    endpoints.sort();
    endpoints.dedup();
    if endpoints.is_empty() {
        return Err("the Service has no ready endpoints".into());
    }
    Ok(endpoints)
}

/// `ip:port`, with an IPv6 address in brackets.
pub(crate) fn socket_address(ip: &str, port: impl std::fmt::Display) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// What a snapshot is built from, besides the epoch.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// `namespace/name`, for the pods' logs.
    pub gateway: String,
    /// The gateway's spec.
    pub spec: &'a WebSocketGatewaySpec,
    /// Which slot is stable, which is the canary, and its weight.
    pub roles: Roles,
    /// Slots A and B.
    pub slots: &'a [SlotView; 2],
    /// What each slot runs: its image (for the pods' status and logs) and
    /// the limits of its version's connections.
    pub versions: [Option<&'a PodInputs>; 2],
    /// Ready endpoints by route name (a route without any has none).
    pub endpoints: &'a BTreeMap<String, Vec<Endpoint>>,
}

/// Builds the snapshot for `epoch`.
pub fn build(epoch: u64, i: &Inputs<'_>) -> v1::Snapshot {
    let routes = i
        .spec
        .routes
        .iter()
        .map(|r| v1::Route {
            name: r.name.clone(),
            path_prefix: r.path_prefix.clone(),
            key: Some(v1::KeySource::from(&r.key)),
            missing_key: v1::MissingKeyPolicy::from(r.missing_key) as i32,
        })
        .collect();
    let backends: Vec<v1::RouteBackends> = i
        .spec
        .routes
        .iter()
        .map(|r| v1::RouteBackends {
            route: r.name.clone(),
            backends: i
                .endpoints
                .get(&r.name)
                .into_iter()
                .flatten()
                .map(|e| v1::Backend {
                    id: e.address.clone(),
                    address: e.address.clone(),
                })
                .collect(),
        })
        .collect();
    let version = |version: v1::Version, slot: Slot| {
        let view = &i.slots[slot_index(slot)];
        let inputs = i.versions[slot_index(slot)];
        v1::VersionSpec {
            version: version as i32,
            slot: v1::Slot::from(slot) as i32,
            image: inputs.map(|p| p.image.clone()).unwrap_or_default(),
            shards: view
                .pods
                .iter()
                .filter(|p| p.in_ring())
                .filter_map(|p| {
                    Some(v1::Shard {
                        id: p.name.clone(),
                        peer_address: socket_address(p.ip.as_deref()?, PEER_PORT),
                    })
                })
                .collect(),
            backends: backends.clone(),
            limits: inputs
                .and_then(|p| p.limits.as_ref())
                .map(v1::ConnectionLimits::from),
        }
    };
    let mut versions = vec![version(v1::Version::Stable, i.roles.stable)];
    if let Some(canary) = i.roles.canary {
        versions.push(version(v1::Version::Canary, canary));
    }
    let steered = i
        .slots
        .iter()
        .flat_map(|s| &s.pods)
        .filter(|p| p.steerable())
        .count();
    let c = &i.spec.connections;
    v1::Snapshot {
        epoch,
        gateway: i.gateway.clone(),
        routes,
        versions,
        canary_basis_points: if i.roles.canary.is_some() {
            u32::from(i.roles.weight) * 100
        } else {
            0
        },
        limits: Some(v1::ConnectionLimits {
            max_connections: c.max_connections_per_pod,
            handshake_timeout_ms: c.handshake_timeout_seconds.saturating_mul(1000),
            ..v1::ConnectionLimits::from(&VersionLimits::from(c))
        }),
        drain: Some(v1::DrainSettings {
            window_ms: i.spec.drain.window_seconds.saturating_mul(1000),
            close_timeout_ms: i.spec.drain.close_timeout_seconds.saturating_mul(1000),
            max_closes_per_second: budget::per_pod_rate(&i.spec.disruption_budget, steered),
        }),
        retiring: i
            .roles
            .out_of_service()
            .flat_map(|slot| &i.slots[slot_index(slot)].pods)
            .map(|p| p.name.clone())
            .collect(),
    }
}

/// A version's limits as the pods take them; the pod's connection cap and
/// the handshake timeout are the snapshot's.
impl From<&VersionLimits> for v1::ConnectionLimits {
    fn from(l: &VersionLimits) -> Self {
        Self {
            heartbeat_interval_ms: l.heartbeat_interval_seconds.saturating_mul(1000),
            heartbeat_timeout_ms: l.heartbeat_timeout_seconds.saturating_mul(1000),
            idle_timeout_ms: l.idle_timeout_seconds.saturating_mul(1000),
            max_frame_bytes: l.max_frame_bytes,
            max_message_bytes: l.max_message_bytes,
            max_connections: 0,
            handshake_timeout_ms: 0,
        }
    }
}

/// A hash of everything in `snapshot` but its epoch: equal content, equal
/// hash, so an unchanged snapshot is not sent again.
pub fn content_hash(snapshot: &v1::Snapshot) -> u64 {
    use prost::Message;
    let mut s = snapshot.clone();
    s.epoch = 0;
    xxhash_rust::xxh3::xxh3_64(&s.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "s"}, "spec": {"ports": ports}}),
        )
        .expect("service")
    }

    fn slice(ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "s-1"}, "addressType": "IPv4", "ports": ports, "endpoints": endpoints}))
            .expect("slice")
    }

    #[test]
    fn a_service_port_resolves_to_the_ready_endpoints_target_port() {
        let svc = service(
            serde_json::json!([{"name": "ws", "port": 80, "targetPort": 8080}, {"name": "admin", "port": 81}]),
        );
        let slices = [slice(
            serde_json::json!([{"name": "ws", "port": 8080}, {"name": "admin", "port": 9000}]),
            serde_json::json!([{"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                               {"addresses": ["10.0.0.3"], "conditions": {"ready": false}}]),
        )];
        let want = vec![
            Endpoint {
                address: "10.0.0.1:8080".into(),
            },
            Endpoint {
                address: "10.0.0.2:8080".into(),
            },
        ];
        assert_eq!(
            route_endpoints(&IntOrString::Int(80), Some(&svc), &slices),
            Ok(want.clone())
        );
        assert_eq!(
            route_endpoints(&IntOrString::String("ws".into()), Some(&svc), &slices),
            Ok(want)
        );
        assert_eq!(
            route_endpoints(&IntOrString::String("admin".into()), Some(&svc), &slices)
                .map(|e| e[0].address.clone()),
            Ok("10.0.0.1:9000".into())
        );
    }

    #[test]
    fn a_missing_service_port_or_endpoint_says_which() {
        let svc = service(serde_json::json!([{"port": 80}]));
        assert_eq!(
            route_endpoints(&IntOrString::Int(80), None, &[]),
            Err("the Service does not exist".into())
        );
        assert_eq!(
            route_endpoints(&IntOrString::Int(81), Some(&svc), &[]),
            Err("the Service has no port 81".into())
        );
        assert_eq!(
            route_endpoints(&IntOrString::Int(80), Some(&svc), &[]),
            Err("the Service has no ready endpoints".into())
        );
        // An unnamed port matches the slice's unnamed port; IPv6 is bracketed.
        let mut v6 = slice(
            serde_json::json!([{"port": 8080}]),
            serde_json::json!([{"addresses": ["fd00::1"]}]),
        );
        v6.address_type = "IPv6".into();
        assert_eq!(
            route_endpoints(&IntOrString::Int(80), Some(&svc), &[v6]).map(|e| e[0].address.clone()),
            Ok("[fd00::1]:8080".into())
        );
    }
}
