//! The routing table: routes by path prefix, each with its key source and
//! its backends. A table is immutable; a new one replaces it whole (one
//! `Arc` swapped), so the hot path never takes a lock to read it.

use std::{net::SocketAddr, sync::Arc};

use super::{KeyHash, KeySource, Rendezvous};
use crate::config::MissingKey;

/// One backend endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Stable identity; the ring is built on it.
    pub id: Arc<str>,
    /// Where to connect.
    pub address: SocketAddr,
}

/// One route.
#[derive(Debug)]
pub struct RouteEntry {
    /// Unique name; labels metrics.
    pub name: Arc<str>,
    /// Requests whose path starts with it take this route.
    pub path_prefix: String,
    /// Where the key comes from.
    pub key: KeySource,
    /// What to do without a key.
    pub missing_key: MissingKey,
    /// The route's backends.
    pub backends: Vec<Backend>,
    ring: Rendezvous,
}

impl RouteEntry {
    /// A route over `backends`.
    pub fn new(
        name: &str,
        path_prefix: &str,
        key: KeySource,
        missing_key: MissingKey,
        backends: Vec<Backend>,
    ) -> Self {
        let ring = Rendezvous::new(backends.iter().map(|b| b.id.as_bytes()));
        Self {
            name: name.into(),
            path_prefix: path_prefix.to_owned(),
            key,
            missing_key,
            backends,
            ring,
        }
    }

    /// The backend that owns `key`, or `None` when the route has none.
    pub fn backend_for(&self, key: KeyHash) -> Option<&Backend> {
        self.ring.pick(key).map(|i| &self.backends[i])
    }
}

/// All routes, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<RouteEntry>,
}

impl RouteTable {
    /// A table of these routes.
    pub fn new(mut routes: Vec<RouteEntry>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        Self { routes }
    }

    /// The route with the longest prefix of `target`'s path.
    pub fn route_for(&self, target: &str) -> Option<&RouteEntry> {
        let path = target.split(['?', '#']).next().unwrap_or("");
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.path_prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, prefix: &str) -> RouteEntry {
        RouteEntry::new(
            name,
            prefix,
            KeySource::Query("k".into()),
            MissingKey::Reject,
            vec![],
        )
    }

    #[test]
    fn the_longest_prefix_wins() {
        let table = RouteTable::new(vec![
            route("root", "/"),
            route("chat", "/chat"),
            route("admin", "/chat/admin"),
        ]);
        let name = |t: &str| table.route_for(t).map(|r| r.name.to_string());
        assert_eq!(name("/chat/admin/x"), Some("admin".into()));
        assert_eq!(name("/chat?room=1"), Some("chat".into()));
        assert_eq!(name("/other"), Some("root".into()));
        let no_root = RouteTable::new(vec![route("chat", "/chat")]);
        assert!(no_root.route_for("/else").is_none());
        assert!(
            no_root.route_for("/x?/chat").is_none(),
            "the query is not the path"
        );
    }
}
