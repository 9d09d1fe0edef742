//! Routing: which route an upgrade request takes, its key, and the backend
//! that key belongs to. Every step is a pure function of the request and the
//! routing table, so that every pod holding the same table gives the same
//! answer.

mod hash;
mod key;
mod state;
mod table;

pub use hash::{KeyHash, Rendezvous, hash_key};
pub use key::{KeySource, RequestView};
pub use state::{
    BUCKETS, Placement, Pool, RoutingState, Seat, Shard, Version, VersionState, bucket, must_move,
};
pub use table::{Backend, RouteEntry, RouteTable};
