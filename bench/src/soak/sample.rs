//! What the soak samples from the proxy process and its admin listener,
//! and the RSS trend.

use std::net::SocketAddr;

use crate::proxy::targets::metric;

/// One sample.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the load was fully up.
    pub t: f64,
    /// Resident set size of the proxy (KiB).
    pub rss_kb: u64,
    /// Open file descriptors of the proxy.
    pub fds: u64,
    /// Sessions in the affinity table.
    pub sessions: u64,
    /// Bytes the proxy buffers for clients (plaintext and TLS records).
    pub buffered: u64,
    /// Open client connections the proxy counts.
    pub connections: u64,
    /// SSE streams the proxy relays.
    pub proxy_streams: u64,
    /// Kernel TCP memory of the whole namespace (pages, /proc/net/sockstat).
    pub tcp_mem_pages: u64,
    /// Frames the proxies' ports missed so far (DPDK: rx queue or af_packet
    /// ring full; kernel mode has no such counter).
    pub rx_missed: u64,
}

impl Sample {
    /// Read every figure now, summed over the proxy processes (pid, admin).
    pub fn take(t: f64, proxies: &[(u32, SocketAddr)]) -> Self {
        let mut s = Self {
            t,
            tcp_mem_pages: tcp_mem_pages().unwrap_or(0),
            ..Self::default()
        };
        for &(pid, admin) in proxies {
            let m = |name| metric(admin, name).unwrap_or(0.0) as u64;
            s.rss_kb += rss_kb(pid).unwrap_or(0);
            s.fds += open_fds(pid).unwrap_or(0);
            s.sessions += m("dpuproxy_sessions_active");
            s.buffered += m("dpuproxy_buffered_bytes");
            s.connections += m("dpuproxy_connections_open");
            s.proxy_streams += m("dpuproxy_sse_streams_active");
            s.rx_missed += m("dpuproxy_port_rx_missed_total");
        }
        s
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Pages of kernel TCP buffer memory in the caller's namespace.
pub fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Least-squares slope of RSS over time, in KiB per minute (0 with fewer
/// than two samples).
pub fn rss_slope_kb_per_min(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.t / 60.0).sum::<f64>() / n;
    let mean_r = samples.iter().map(|s| s.rss_kb as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        let dt = s.t / 60.0 - mean_t;
        num += dt * (s.rss_kb as f64 - mean_r);
        den += dt * dt;
    }
    if den == 0.0 { 0.0 } else { num / den }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(min: f64, kb: u64) -> Sample {
        Sample {
            t: min * 60.0,
            rss_kb: kb,
            ..Sample::default()
        }
    }

    #[test]
    fn slope_is_kb_per_minute() {
        let flat = [at(0.0, 1000), at(1.0, 1000), at(2.0, 1000)];
        assert_eq!(rss_slope_kb_per_min(&flat), 0.0);
        let rising = [at(0.0, 1000), at(1.0, 1100), at(2.0, 1200), at(3.0, 1300)];
        assert!((rss_slope_kb_per_min(&rising) - 100.0).abs() < 1e-9);
        assert_eq!(rss_slope_kb_per_min(&[at(0.0, 5)]), 0.0);
    }

    #[test]
    fn this_process_has_a_rss_and_fds() {
        let me = std::process::id();
        assert!(rss_kb(me).unwrap() > 0);
        assert!(open_fds(me).unwrap() >= 3);
        assert!(tcp_mem_pages().is_some());
    }
}
