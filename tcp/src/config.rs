//! Stack and per-connection configuration, with data-centre defaults.

use core::ops::RangeInclusive;

use smoltcp::time::Duration;
use smoltcp::wire::{HardwareAddress, Ipv4Address, Ipv4Cidr};

use crate::TcpError;

/// Congestion control run by each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// No congestion window: send whatever the peer's window allows.
    None,
    /// NewReno-style slow start and congestion avoidance (smoltcp's `Reno`).
    Reno,
}

/// Per-connection settings, fixed when the connection is created (a
/// listener's settings apply to every connection it accepts).
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// Receive buffer in bytes; it is also the largest window we advertise.
    /// Above 64 KiB smoltcp negotiates window scaling.
    pub rx_buffer: usize,
    /// Send buffer in bytes.
    pub tx_buffer: usize,
    /// Nagle's algorithm. Off by default: a proxy writes whole requests and
    /// responses and must not wait for an ACK before sending the tail.
    pub nagle: bool,
    /// Delayed ACK. Short by default: long enough to piggyback the ACK on a
    /// response computed in-process, short against data-centre RTOs. An ACK is
    /// still sent at once for every full segment of new data.
    pub ack_delay: Option<Duration>,
    /// Keep-alive probe interval (off by default; the proxy has idle timeouts).
    pub keep_alive: Option<Duration>,
    /// Abort the connection when sent data or a keep-alive goes unacknowledged
    /// this long (the "user timeout").
    pub timeout: Option<Duration>,
    /// How long a handshake (SYN-SENT or SYN-RECEIVED) may take before the
    /// connection is dropped.
    pub handshake_timeout: Duration,
    /// Congestion control.
    pub congestion: Congestion,
    /// IP TTL of our segments (smoltcp's default, 64, when `None`).
    pub hop_limit: Option<u8>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            rx_buffer: 8 * 1024,
            tx_buffer: 4 * 1024,
            nagle: false,
            ack_delay: Some(Duration::from_millis(1)),
            keep_alive: None,
            timeout: Some(Duration::from_secs(30)),
            handshake_timeout: Duration::from_secs(5),
            congestion: Congestion::Reno,
            hop_limit: None,
        }
    }
}

impl SocketConfig {
    pub(crate) fn validate(&self) -> Result<(), TcpError> {
        if self.rx_buffer == 0 || self.rx_buffer > (1 << 30) {
            return Err(TcpError::Config("rx_buffer must be within 1 ..= 1 GiB"));
        }
        if self.tx_buffer == 0 || self.tx_buffer > (1 << 30) {
            return Err(TcpError::Config("tx_buffer must be within 1 ..= 1 GiB"));
        }
        if self.hop_limit == Some(0) {
            return Err(TcpError::Config("hop_limit must not be 0"));
        }
        if self.handshake_timeout == Duration::ZERO {
            return Err(TcpError::Config("handshake_timeout must be positive"));
        }
        Ok(())
    }
}

/// Stack-wide settings.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// `HardwareAddress::Ip` for an L3 device (the in-memory wire),
    /// `HardwareAddress::Ethernet(mac)` for an L2 one (tap, DPDK port).
    pub hardware_addr: HardwareAddress,
    /// Our IPv4 addresses: at least one, at most smoltcp's
    /// `IFACE_MAX_ADDR_COUNT` (a build-time setting, 2 by default); more
    /// makes `Stack::new` fail.
    pub addresses: Vec<Ipv4Cidr>,
    /// Default gateway, if peers are off-link.
    pub gateway: Option<Ipv4Address>,
    /// Seed for everything random: initial sequence numbers, the flow-table
    /// hash key and the first ephemeral port tried. Give it real entropy in
    /// production (predictable ISNs and hash keys invite attacks); tests give
    /// fixed seeds.
    pub seed: u64,
    /// Floor of the retransmission timeout (1 ms ..= 1 s). See the crate doc
    /// on time dilation for how this is applied to smoltcp.
    pub min_rto: Duration,
    /// Ports tried for active opens.
    pub ephemeral_ports: RangeInclusive<u16>,
    /// How long a TIME-WAIT record lives.
    pub time_wait: Duration,
    /// Most TIME-WAIT records kept; past it the oldest is dropped early
    /// (like Linux's `tcp_max_tw_buckets`).
    pub max_time_wait: usize,
    /// How long an exported connection's 4-tuple is held at most (frames
    /// for it dropped, not answered) when the caller does not `unhold` it.
    pub hold: Duration,
    /// Frames taken from the device per `poll` (bounds the work of one call).
    pub rx_burst: usize,
    /// Segments one connection may send per `poll` before others get a turn.
    pub tx_burst_per_conn: usize,
    /// Settings for connections whose caller gives none.
    pub socket: SocketConfig,
}

impl StackConfig {
    /// The defaults, with one address; `hardware_addr` must match the
    /// device's medium (see the field).
    pub fn new(hardware_addr: HardwareAddress, address: Ipv4Cidr) -> Self {
        Self {
            hardware_addr,
            addresses: vec![address],
            gateway: None,
            seed: 0x5eed_0fd9_0a11_7c93,
            min_rto: Duration::from_millis(50),
            ephemeral_ports: 49152..=65535,
            time_wait: Duration::from_secs(60),
            max_time_wait: 256 * 1024,
            hold: Duration::from_secs(30),
            rx_burst: 64,
            tx_burst_per_conn: 32,
            socket: SocketConfig::default(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), TcpError> {
        if self.addresses.is_empty() {
            return Err(TcpError::Config("addresses must hold an IPv4 CIDR"));
        }
        if self.min_rto < Duration::from_millis(1) || self.min_rto > Duration::from_secs(1) {
            return Err(TcpError::Config("min_rto must be within 1 ms ..= 1 s"));
        }
        if self.ephemeral_ports.is_empty() || *self.ephemeral_ports.start() == 0 {
            return Err(TcpError::Config(
                "ephemeral_ports must be a non-empty range without port 0",
            ));
        }
        if self.hold == Duration::ZERO {
            return Err(TcpError::Config("hold must be positive"));
        }
        if self.rx_burst == 0 || self.tx_burst_per_conn == 0 {
            return Err(TcpError::Config(
                "rx_burst and tx_burst_per_conn must be positive",
            ));
        }
        self.socket.validate()
    }
}
