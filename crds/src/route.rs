//! Routes: which requests a route takes, where its routing key comes from,
//! and which backend serves it.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ringway_dataplane_api::v1;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;

/// One route: a path prefix, the key that places each connection, and the
/// backend Service that serves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Name of the route, unique within the gateway. It labels the route's
    /// metrics and status counts. A DNS label: lower-case letters, digits
    /// and '-'.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Requests whose path starts with this prefix take this route; the
    /// longest matching prefix wins. Must start with '/'. A request that
    /// matches no route is answered with 404.
    #[serde(default = "defaults::path_prefix")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/[^?#\s]*$"))]
    pub path_prefix: String,

    /// Where the routing key comes from. Connections with the same key
    /// always land on the same data-plane pod and the same backend pod (for
    /// example every client of one chat room).
    pub key: RouteKey,

    /// What to do with an upgrade request that carries no key: `Reject`
    /// answers 400, `Random` places the connection with a random key.
    #[serde(default)]
    pub missing_key: MissingKeyPolicy,

    /// The backend Service whose ready endpoints serve this route.
    pub backend: BackendRef,
}

/// Where a route's key is read from in the HTTP upgrade request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.source == 'PathSegment' ? (has(self.segment) && !has(self.name)) : (has(self.name) && !has(self.segment))",
        "message": "source PathSegment takes `segment` (and no `name`); Header, Query and Cookie take `name` (and no `segment`)",
    },
]))]
pub struct RouteKey {
    /// The part of the request that holds the key: `Header`, `Query`
    /// (a query parameter), `Cookie` or `PathSegment`.
    pub source: KeyKind,

    /// Name of the header, query parameter or cookie that holds the key.
    /// Header names match case-insensitively. Required unless source is
    /// `PathSegment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,

    /// Zero-based index of the path segment that holds the key, counted from
    /// the start of the path: for `/rooms/42/ws`, segment 1 is `42`.
    /// Required when source is `PathSegment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 63))]
    pub segment: Option<u8>,
}

/// The part of the upgrade request that holds a route's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KeyKind {
    /// A request header, named by `name`.
    Header,
    /// A query parameter, named by `name`.
    Query,
    /// A cookie, named by `name`.
    Cookie,
    /// A segment of the request path, chosen by `segment`.
    PathSegment,
}

/// What a route does with an upgrade request that has no key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MissingKeyPolicy {
    /// Answer 400 Bad Request.
    #[default]
    Reject,
    /// Place the connection by a random key.
    Random,
}

/// The key source as the operator sends it to the pods. The schema's rule
/// guarantees `name` or `segment` for the source; a missing one is sent
/// empty (or 0), and the pod refuses an empty name.
impl From<&RouteKey> for v1::KeySource {
    fn from(key: &RouteKey) -> Self {
        use v1::key_source::Source;
        let name = || key.name.clone().unwrap_or_default();
        Self {
            source: Some(match key.source {
                KeyKind::Header => Source::Header(name()),
                KeyKind::Query => Source::Query(name()),
                KeyKind::Cookie => Source::Cookie(name()),
                KeyKind::PathSegment => Source::PathSegment(u32::from(key.segment.unwrap_or(0))),
            }),
        }
    }
}

impl From<MissingKeyPolicy> for v1::MissingKeyPolicy {
    fn from(policy: MissingKeyPolicy) -> Self {
        match policy {
            MissingKeyPolicy::Reject => Self::Reject,
            MissingKeyPolicy::Random => Self::Random,
        }
    }
}

/// A backend Service in the gateway's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Name of the Service. Its ready endpoints (from its EndpointSlices)
    /// are the route's backends.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub service: String,

    /// The Service port that speaks WebSocket: its number (1-65535), or its
    /// name as written in the Service (a DNS label: at most 63 lower-case
    /// letters, digits and '-'). A quoted number such as "8080" is a name.
    // Plain OpenAPI bounds, not a CEL rule: the API server applies `minimum`
    // and `maximum` to the integer form and `maxLength` and `pattern` to the
    // string form, at no cost against the CRD's CEL budget (a CEL rule on
    // an int-or-string is costed as a 3 MiB string on servers before 1.34).
    #[schemars(extend(
        "minimum" = 1,
        "maximum" = 65535,
        "minLength" = 1,
        "maxLength" = 63,
        "pattern" = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    ))]
    pub port: IntOrString,
}
