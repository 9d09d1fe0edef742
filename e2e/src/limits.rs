//! How many connections one load-generator process may open. Every
//! connection is a file descriptor, and the machines here allow a process
//! at most 20,000 (their hard limit), so larger runs are split over several
//! processes, each with its own source addresses.

use anyhow::bail;

/// The most connections one `ringway-load` process opens: 20,000 file
/// descriptors less room for the runtime, stdio and sockets in setup.
pub const MAX_CONNECTIONS_PER_PROCESS: usize = 19_000;

/// File descriptors kept free beside the connections, for the runtime's
/// own (epoll, eventfd, timers), stdio and sockets being set up.
const SPARE_DESCRIPTORS: u64 = 64;

/// Refuses a run of `connections` that one process cannot hold: above
/// [`MAX_CONNECTIONS_PER_PROCESS`], or above this process's open-files limit.
pub fn check_connection_budget(connections: usize) -> anyhow::Result<()> {
    if connections > MAX_CONNECTIONS_PER_PROCESS {
        bail!(
            "--connections {connections} is more than one process may hold \
             ({MAX_CONNECTIONS_PER_PROCESS}, for a limit of 20,000 file descriptors); \
             run several ringway-load processes, each with at most \
             {MAX_CONNECTIONS_PER_PROCESS} connections (and, past ~28,000 in all, \
             their own --sources)"
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(soft) = open_files_soft_limit(&limits) {
        let needed = connections as u64 + SPARE_DESCRIPTORS;
        if needed > soft {
            bail!(
                "--connections {connections} needs about {needed} file descriptors but this \
                 process may open {soft}: raise it (ulimit -n) or run several processes"
            );
        }
    }
    Ok(())
}

/// The soft "Max open files" limit in the text of `/proc/<pid>/limits`;
/// `None` when absent or unlimited.
pub fn open_files_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            20000                20000                files
Max locked memory         8388608              8388608              bytes
";

    #[test]
    fn the_soft_open_files_limit_is_read_from_proc() {
        assert_eq!(open_files_soft_limit(LIMITS), Some(20_000));
        assert_eq!(
            open_files_soft_limit("Max open files  unlimited  unlimited  files"),
            None
        );
        assert_eq!(open_files_soft_limit(""), None);
    }

    #[test]
    fn more_connections_than_one_process_holds_are_refused_with_advice() {
        let err = check_connection_budget(MAX_CONNECTIONS_PER_PROCESS + 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("run several ringway-load processes"),
            "{err}"
        );
        check_connection_budget(10).unwrap();
    }
}
