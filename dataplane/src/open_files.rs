//! The process's open-files limit. Every proxied connection holds two file
//! descriptors (client and backend, or one end and a hand-off link), so
//! `connections.maxConnections` needs about twice as many. Container
//! runtimes often start a process with a soft limit of 1,024 and a hard
//! limit far above it (containerd 2 does), which would refuse accepts past
//! about 500 connections. So the data plane raises its soft limit to the
//! hard one at start, as Go's runtime does for every Go server, and warns
//! when even the hard limit is too low for `maxConnections`.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept beside the connections: the listeners, the runtime's
/// epoll and eventfds, admin and control connections, stdio, files read at
/// start.
pub const SPARE_DESCRIPTORS: u64 = 100;

/// The open-files limits before and after [`raise`]; `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process started with.
    pub before: Option<u64>,
    /// The soft limit now.
    pub now: Option<u64>,
}

impl OpenFiles {
    /// How many connections the current limit leaves room for, if limited.
    pub fn connections(&self) -> Option<u64> {
        self.now.map(|n| n.saturating_sub(SPARE_DESCRIPTORS) / 2)
    }
}

/// File descriptors `max_connections` proxied connections need.
pub fn needed(max_connections: usize) -> u64 {
    2 * max_connections as u64 + SPARE_DESCRIPTORS
}

/// Raises the soft open-files limit to the hard limit.
pub fn raise() -> std::io::Result<OpenFiles> {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(OpenFiles {
        before,
        now: getrlimit(Resource::Nofile).current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        // Each test runs in its own process (nextest), so lowering this
        // process's soft limit touches no other test.
        let start = getrlimit(Resource::Nofile);
        let low = start.maximum.map_or(1024, |m| m.min(1024));
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(low),
                maximum: start.maximum,
            },
        )
        .unwrap();
        let raised = raise().unwrap();
        assert_eq!(raised.before, Some(low));
        assert_eq!(raised.now, start.maximum);
        assert_eq!(getrlimit(Resource::Nofile).current, start.maximum);
    }

    #[test]
    fn two_descriptors_per_connection_and_the_spares() {
        assert_eq!(needed(9_900), 19_900);
        let limits = OpenFiles {
            before: Some(1024),
            now: Some(20_000),
        };
        assert_eq!(limits.connections(), Some(9_950));
        assert!(needed(9_950) <= 20_000);
        assert!(needed(9_951) > 20_000);
    }
}
