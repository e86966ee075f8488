//! Process limits the configuration needs: open files for kernel mode.
//!
//! Each client connection holds a socket, and its backend connection
//! another; idle pooled connections hold more; the admin listener and the
//! files the proxy reads need a few. Kernel mode raises the soft open-file
//! limit to what the configuration can use (up to the hard limit), and when
//! even the hard limit is too low, lowers the connections per worker to fit
//! and says so, instead of failing accepts with EMFILE later.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Files kept for everything but client and backend sockets: listeners,
/// the admin listener and its clients, key and config files, epoll.
pub const RESERVED_FILES: u64 = 256;

/// The open files `workers` workers can use: per client its socket and its
/// backend's, plus each worker's idle pool.
pub fn files_needed(workers: usize, max_per_worker: usize, pooled_per_worker: usize) -> u64 {
    (workers as u64) * (2 * max_per_worker as u64 + pooled_per_worker as u64) + RESERVED_FILES
}

/// Raise the soft open-file limit towards `needed`; returns the limit in
/// force afterwards (logged when it moved or stays short).
pub fn ensure_open_files(needed: u64) -> u64 {
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if soft >= needed {
        return soft;
    }
    let target = needed.min(hard);
    if target <= soft {
        tracing::warn!(
            soft,
            hard,
            needed,
            "the hard open-file limit is below what is needed"
        );
        return soft;
    }
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: lim.maximum,
        },
    );
    match raised {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = target,
                needed,
                "raised the open-file limit"
            );
            target
        }
        Err(e) => {
            tracing::warn!(soft, hard, needed, error = %e, "cannot raise the open-file limit");
            soft
        }
    }
}

/// Client connections per worker that fit in `files` open files.
pub fn connections_that_fit(files: u64, workers: usize, pooled_per_worker: usize) -> usize {
    let per_worker = files.saturating_sub(RESERVED_FILES) / workers.max(1) as u64;
    (per_worker.saturating_sub(pooled_per_worker as u64) / 2) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        assert_eq!(files_needed(2, 1000, 100), 2 * 2100 + RESERVED_FILES);
        assert_eq!(
            connections_that_fit(2 * 2100 + RESERVED_FILES, 2, 100),
            1000
        );
        assert_eq!(connections_that_fit(10, 4, 0), 0);
    }

    #[test]
    fn the_soft_limit_is_raised_to_what_is_needed_or_the_hard_limit() {
        let before = getrlimit(Resource::Nofile);
        let hard = before.maximum.unwrap_or(u64::MAX);
        let soft = before.current.unwrap_or(u64::MAX);
        let want = soft.saturating_add(1).min(hard);
        assert!(ensure_open_files(want) >= want);
        assert_eq!(
            ensure_open_files(1),
            getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
        );
    }
}
