//! What the host's kernel does to the soak's packets, apart from the proxy.
//!
//! On this rig clients and backends send through veth pairs or loopback,
//! and every packet they send is queued on the sending CPU's backlog
//! (`net.core.netdev_max_backlog`, 1000 by default) before the kernel
//! receives it. A burst over that bound (every stream's `end` at once, a
//! reconnect storm) is dropped there, before the proxy sees it, and TCP
//! has to retransmit: the soak would measure the rig. [`BacklogRaised`]
//! raises the bound for the run and puts it back; [`softnet_dropped`]
//! counts what was dropped anyway, which the report prints.

use std::path::Path;

const MAX_BACKLOG: &str = "/proc/sys/net/core/netdev_max_backlog";

/// `net.core.netdev_max_backlog` raised for the length of the soak.
#[derive(Debug)]
pub struct BacklogRaised {
    before: u64,
}

impl BacklogRaised {
    /// Raise the backlog bound to at least `min`. `None` when it already
    /// is, or cannot be written (not root: logged, the soak goes on).
    pub fn at_least(min: u64) -> Option<Self> {
        let before = read_u64(Path::new(MAX_BACKLOG))?;
        if before >= min {
            return None;
        }
        match std::fs::write(MAX_BACKLOG, min.to_string()) {
            Ok(()) => {
                eprintln!("soak: net.core.netdev_max_backlog {before} -> {min} for the run");
                Some(Self { before })
            }
            Err(e) => {
                eprintln!(
                    "soak: cannot raise net.core.netdev_max_backlog ({before}): {e}; bursts may be dropped before the proxy"
                );
                None
            }
        }
    }
}

impl Drop for BacklogRaised {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(MAX_BACKLOG, self.before.to_string()) {
            eprintln!(
                "soak: cannot put net.core.netdev_max_backlog back to {}: {e}",
                self.before
            );
        }
    }
}

/// Packets the kernel dropped on full per-CPU backlogs so far, summed over
/// CPUs (second column of `/proc/net/softnet_stat`); 0 if unreadable.
pub fn softnet_dropped() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .map(|text| parse_softnet_dropped(&text))
        .unwrap_or(0)
}

fn parse_softnet_dropped(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .sum()
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_is_the_second_column_summed_over_cpus() {
        let text = "0301655d 00090f5a 00000004 00000000\n05312255 00000182 00000009 00000000\n";
        assert_eq!(parse_softnet_dropped(text), 0x90f5a + 0x182);
        assert_eq!(parse_softnet_dropped(""), 0);
        assert_eq!(parse_softnet_dropped("zz\n0 nothex 1\n"), 0);
    }
}
