//! The config file's edge: a standalone config compiles into the snapshot
//! the operator would send (epoch 0, one stable version without shards),
//! so that its routes and backends are checked and run the way every
//! snapshot's are. Backends written as hostnames resolve here.

use std::net::ToSocketAddrs;

use ringway_dataplane_api::v1;

use super::{Config, KeyConfig, RouteConfig};
use crate::{
    error::ConfigError,
    routing::{KeyKind, RouteTable},
};

/// The gateway a standalone config's snapshot names, for logs.
const STANDALONE_GATEWAY: &str = "standalone";

impl Config {
    /// Checks the routes as every snapshot's are, without resolving their
    /// backends.
    pub(super) fn check_routes(&self) -> Result<(), ConfigError> {
        let routes = self.wire_routes()?;
        RouteTable::try_from(routes.as_slice())?;
        Ok(())
    }

    /// The snapshot a standalone config describes: its routes, and one
    /// stable version without shards (this process serves every key) whose
    /// backends are the config's, resolved now. Limits and drain settings
    /// are left out: the config's own are the base every snapshot starts
    /// from.
    pub fn snapshot(&self) -> Result<v1::Snapshot, ConfigError> {
        let backends = self
            .routes
            .iter()
            .map(route_backends)
            .collect::<Result<_, _>>()?;
        Ok(v1::Snapshot {
            epoch: 0,
            gateway: STANDALONE_GATEWAY.to_owned(),
            routes: self.wire_routes()?,
            versions: vec![v1::VersionSpec {
                version: v1::Version::Stable as i32,
                backends,
                ..v1::VersionSpec::default()
            }],
            ..v1::Snapshot::default()
        })
    }

    /// The routes as a snapshot carries them; what the file's shape allows
    /// and a snapshot cannot say (a key with both or neither of `name` and
    /// `segment`, a route without backends) is refused here.
    fn wire_routes(&self) -> Result<Vec<v1::Route>, ConfigError> {
        let mut routes = Vec::with_capacity(self.routes.len());
        for (index, r) in self.routes.iter().enumerate() {
            let key = v1::KeySource::try_from(&r.key).map_err(|kind| ConfigError::KeyShape {
                index,
                route: r.name.clone(),
                kind,
            })?;
            if r.backends.is_empty() {
                return Err(ConfigError::NoBackends {
                    index,
                    route: r.name.clone(),
                });
            }
            routes.push(v1::Route {
                name: r.name.clone(),
                path_prefix: r.path_prefix.clone(),
                key: Some(key),
                missing_key: v1::MissingKeyPolicy::from(r.missing_key) as i32,
            });
        }
        Ok(routes)
    }
}

/// A route's backends, each named as written and dialed at the address it
/// resolves to now; one written twice counts once.
fn route_backends(route: &RouteConfig) -> Result<v1::RouteBackends, ConfigError> {
    let mut backends: Vec<v1::Backend> = Vec::with_capacity(route.backends.len());
    for written in &route.backends {
        if backends.iter().any(|b| b.id == *written) {
            continue;
        }
        let address = written
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ConfigError::Unresolved {
                route: route.name.clone(),
                backend: written.clone(),
            })?;
        backends.push(v1::Backend {
            id: written.clone(),
            address: address.to_string(),
        });
    }
    Ok(v1::RouteBackends {
        route: route.name.clone(),
        backends,
    })
}

/// The file's key as a snapshot carries it; a key whose fields do not fit
/// its source is refused with that source.
impl TryFrom<&KeyConfig> for v1::KeySource {
    type Error = KeyKind;

    fn try_from(key: &KeyConfig) -> Result<Self, KeyKind> {
        use v1::key_source::Source;
        let source = match (key.source, &key.name, key.segment) {
            (KeyKind::PathSegment, None, Some(segment)) => {
                Source::PathSegment(u32::try_from(segment).map_err(|_| KeyKind::PathSegment)?)
            }
            (KeyKind::Header, Some(name), None) => Source::Header(name.clone()),
            (KeyKind::Query, Some(name), None) => Source::Query(name.clone()),
            (KeyKind::Cookie, Some(name), None) => Source::Cookie(name.clone()),
            (kind, _, _) => return Err(kind),
        };
        Ok(Self {
            source: Some(source),
        })
    }
}
