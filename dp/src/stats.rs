//! Plain counters, compiled with or without DPDK.

/// `rte_eth_stats` of a port (whole-port totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Dropped by the hardware/PMD because rx queues were full.
    pub imissed: u64,
    /// Erroneous received packets.
    pub ierrors: u64,
    /// Failed transmits.
    pub oerrors: u64,
    /// Rx mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// What a [`TxBatch`](crate::TxBatch) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Mbufs pushed. Always `sent + dropped_full + dropped_unsent` plus
    /// what is still pending.
    pub queued: u64,
    /// Mbufs the PMD accepted.
    pub sent: u64,
    /// Extra `tx_burst` calls made because the ring was full.
    pub retries: u64,
    /// Mbufs freed because the ring stayed full after the retries.
    pub dropped_full: u64,
    /// Mbufs freed because the batch was dropped before a flush.
    pub dropped_unsent: u64,
}

/// Per-lcore loop counters, in the spirit of OVS-DPDK's pmd-stats:
/// `busy_cycles` are TSC cycles of loop turns that received or sent
/// something, `idle_cycles` those of empty turns. Their sum is the time
/// spent polling; busy / (busy + idle) is the load, and the rest is headroom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LcoreStats {
    /// The lcore id (`rte_lcore_id`), or `u32::MAX` for a non-EAL thread.
    pub lcore: u32,
    /// Loop turns.
    pub iterations: u64,
    /// Turns that did work.
    pub busy_iterations: u64,
    /// TSC cycles in turns that did work.
    pub busy_cycles: u64,
    /// TSC cycles in empty turns.
    pub idle_cycles: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets the handler queued for transmit.
    pub tx_queued: u64,
    /// TSC frequency, to turn cycles into time.
    pub tsc_hz: u64,
}

impl LcoreStats {
    /// Busy share of the polled cycles, 0.0 to 100.0.
    pub fn busy_percent(&self) -> f64 {
        let total = self.busy_cycles + self.idle_cycles;
        if total == 0 {
            0.0
        } else {
            100.0 * self.busy_cycles as f64 / total as f64
        }
    }

    /// Busy cycles per received packet (None before the first packet).
    pub fn cycles_per_packet(&self) -> Option<u64> {
        (self.rx_packets > 0).then(|| self.busy_cycles / self.rx_packets)
    }

    /// The change since `earlier` (same lcore).
    pub fn since(&self, earlier: &LcoreStats) -> LcoreStats {
        LcoreStats {
            lcore: self.lcore,
            iterations: self.iterations - earlier.iterations,
            busy_iterations: self.busy_iterations - earlier.busy_iterations,
            busy_cycles: self.busy_cycles - earlier.busy_cycles,
            idle_cycles: self.idle_cycles - earlier.idle_cycles,
            rx_packets: self.rx_packets - earlier.rx_packets,
            tx_queued: self.tx_queued - earlier.tx_queued,
            tsc_hz: self.tsc_hz,
        }
    }
}

/// A port the EAL found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// ethdev port id.
    pub id: u16,
    /// Device name (`net_af_packet0`, a PCI address, ...).
    pub name: String,
    /// Driver name (`net_af_packet`, `mlx5_pci`, ...).
    pub driver: String,
    /// NUMA socket, if known.
    pub socket: Option<u32>,
}
