//! The control channel's edge: routing types from and to their
//! `ringway.control.v1` messages, and the check of a snapshot's routes
//! (the one check every route passes, the operator's and the config
//! file's alike).

use ringway_dataplane_api::v1;

use super::{KeyKind, KeySource, MissingKey, RouteEntry, RouteTable, Version};

/// Which names a message uses for a route's fields: the control channel's
/// (`path_prefix`, `key.header`) or the config file's (`pathPrefix`,
/// `key.name`), so that a refusal names the field its reader wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// The protobuf message's field names.
    Wire,
    /// The config file's keys.
    File,
}

/// What is wrong with one route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteProblem {
    /// Its name is empty.
    NameEmpty,
    /// An earlier route has its name.
    NameTaken,
    /// Its path prefix does not start with '/'.
    PrefixNotAbsolute,
    /// An earlier route has its path prefix.
    PrefixTaken,
    /// Its key has no source.
    NoKeySource,
    /// Its key's header, query parameter or cookie name is empty.
    KeyNameEmpty(KeyKind),
}

/// Why the routes of a snapshot were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// There is none.
    #[error("routes: at least one route is needed")]
    NoRoutes,
    /// Route `index`, named `name`, has `problem`.
    #[error("{}", self.describe(Spelling::Wire))]
    Route {
        /// Its index in the snapshot (and in the config file).
        index: usize,
        /// Its name.
        name: String,
        /// What is wrong.
        problem: RouteProblem,
    },
}

impl RouteError {
    /// The message, naming fields as `spelling` does.
    pub fn describe(&self, spelling: Spelling) -> String {
        let Self::Route {
            index,
            name,
            problem,
        } = self
        else {
            return self.to_string();
        };
        let file = spelling == Spelling::File;
        let prefix = if file { "pathPrefix" } else { "path_prefix" };
        let (field, what) = match problem {
            RouteProblem::NameEmpty => return format!("routes[{index}].name: must not be empty"),
            RouteProblem::NameTaken => ("name", "another route has this name"),
            RouteProblem::PrefixNotAbsolute => (prefix, "must start with '/'"),
            RouteProblem::PrefixTaken => (prefix, "another route has this prefix"),
            RouteProblem::NoKeySource => ("key", "no key source"),
            RouteProblem::KeyNameEmpty(_) if file => ("key.name", "must not be empty"),
            RouteProblem::KeyNameEmpty(kind) => (wire_key_field(*kind), "must not be empty"),
        };
        format!("routes[{index}] ({name}).{field}: {what}")
    }
}

fn wire_key_field(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Header => "key.header",
        KeyKind::Query => "key.query",
        KeyKind::Cookie => "key.cookie",
        KeyKind::PathSegment => "key.path_segment",
    }
}

/// The route table a snapshot's routes describe, once each makes sense.
impl TryFrom<&[v1::Route]> for RouteTable {
    type Error = RouteError;

    fn try_from(routes: &[v1::Route]) -> Result<Self, RouteError> {
        if routes.is_empty() {
            return Err(RouteError::NoRoutes);
        }
        let mut entries = Vec::with_capacity(routes.len());
        for (index, r) in routes.iter().enumerate() {
            let refuse = |problem| RouteError::Route {
                index,
                name: r.name.clone(),
                problem,
            };
            let earlier = &routes[..index];
            let problem = if r.name.is_empty() {
                Some(RouteProblem::NameEmpty)
            } else if earlier.iter().any(|o| o.name == r.name) {
                Some(RouteProblem::NameTaken)
            } else if !r.path_prefix.starts_with('/') {
                Some(RouteProblem::PrefixNotAbsolute)
            } else if earlier.iter().any(|o| o.path_prefix == r.path_prefix) {
                Some(RouteProblem::PrefixTaken)
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(refuse(problem));
            }
            let key = r
                .key
                .as_ref()
                .ok_or(RouteProblem::NoKeySource)
                .and_then(KeySource::try_from)
                .map_err(refuse)?;
            let missing = v1::MissingKeyPolicy::try_from(r.missing_key)
                .map_or(MissingKey::Reject, MissingKey::from);
            entries.push(RouteEntry::new(&r.name, &r.path_prefix, key, missing));
        }
        Ok(Self::new(entries))
    }
}

impl TryFrom<&v1::KeySource> for KeySource {
    type Error = RouteProblem;

    fn try_from(key: &v1::KeySource) -> Result<Self, RouteProblem> {
        use v1::key_source::Source;
        let named = |name: &str, kind| {
            if name.is_empty() {
                Err(RouteProblem::KeyNameEmpty(kind))
            } else {
                Ok(name.to_owned())
            }
        };
        Ok(
            match key.source.as_ref().ok_or(RouteProblem::NoKeySource)? {
                Source::Header(n) => Self::Header(named(n, KeyKind::Header)?),
                Source::Query(n) => Self::Query(named(n, KeyKind::Query)?),
                Source::Cookie(n) => Self::Cookie(named(n, KeyKind::Cookie)?),
                Source::PathSegment(s) => Self::PathSegment(*s as usize),
            },
        )
    }
}

/// An unspecified policy rejects, as the default does.
impl From<v1::MissingKeyPolicy> for MissingKey {
    fn from(policy: v1::MissingKeyPolicy) -> Self {
        match policy {
            v1::MissingKeyPolicy::Random => Self::Random,
            v1::MissingKeyPolicy::Reject | v1::MissingKeyPolicy::Unspecified => Self::Reject,
        }
    }
}

impl From<MissingKey> for v1::MissingKeyPolicy {
    fn from(policy: MissingKey) -> Self {
        match policy {
            MissingKey::Reject => Self::Reject,
            MissingKey::Random => Self::Random,
        }
    }
}

/// An unspecified version is no version: it comes back as the error.
impl TryFrom<v1::Version> for Version {
    type Error = v1::Version;

    fn try_from(version: v1::Version) -> Result<Self, v1::Version> {
        match version {
            v1::Version::Stable => Ok(Self::Stable),
            v1::Version::Canary => Ok(Self::Canary),
            v1::Version::Unspecified => Err(version),
        }
    }
}

impl From<Version> for v1::Version {
    fn from(version: Version) -> Self {
        match version {
            Version::Stable => Self::Stable,
            Version::Canary => Self::Canary,
        }
    }
}
