//! The routing table: routes by path prefix, each with its key source. A
//! table is immutable and part of a [`super::RoutingState`], which is
//! replaced whole (one `Arc` swapped), so the hot path never takes a lock
//! to read it.

use std::{net::SocketAddr, sync::Arc};

use super::{KeySource, MissingKey};

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
}

impl RouteEntry {
    /// A route.
    pub fn new(name: &str, path_prefix: &str, key: KeySource, missing_key: MissingKey) -> Self {
        Self {
            name: name.into(),
            path_prefix: path_prefix.to_owned(),
            key,
            missing_key,
        }
    }
}

/// All routes, longest prefix first. A route's index in the table is its
/// index in each version's backend pools.
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

    /// The route with the longest prefix of `target`'s path, and its index.
    pub fn route_for(&self, target: &str) -> Option<(usize, &RouteEntry)> {
        let path = target.split(['?', '#']).next().unwrap_or("");
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| path.starts_with(&r.path_prefix))
    }

    /// The index of the route named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| &*r.name == name)
    }

    /// The routes, in index order.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
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
        )
    }

    #[test]
    fn the_longest_prefix_wins() {
        let table = RouteTable::new(vec![
            route("root", "/"),
            route("chat", "/chat"),
            route("admin", "/chat/admin"),
        ]);
        let name = |t: &str| table.route_for(t).map(|(_, r)| r.name.to_string());
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
