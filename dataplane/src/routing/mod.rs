//! Routing: which route an upgrade request takes, its key, and the backend
//! that key belongs to. Every step is a pure function of the request and the
//! routing table, so that every pod holding the same table gives the same
//! answer. The routing types are the data plane's one shape of each
//! idea; `proto.rs` converts them from and to the control channel's
//! messages.

mod hash;
mod key;
mod proto;
mod state;
mod table;

pub use hash::{KeyHash, Rendezvous, hash_key};
pub use key::{KeyKind, KeySource, MissingKey, RequestView};
pub use proto::{RouteError, RouteProblem, Spelling};
pub use state::{
    BUCKETS, Placement, Pool, RoutingState, Seat, Shard, Version, VersionState, bucket, must_move,
};
pub use table::{Backend, RouteEntry, RouteTable};
