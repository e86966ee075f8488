//! Active open: a new connection to a remote endpoint, from a local address
//! the interface picks for the destination (or the caller fixes) and a local
//! port that is either fixed or the first free ephemeral port the caller's
//! predicate accepts. An ephemeral port is free when no listener holds it and
//! its 4-tuple is in the flow table neither as a connection nor as a
//! TIME-WAIT record; a fixed port only needs its 4-tuple unused. The SYN
//! leaves on the next egress pass; `settle` raises `Connected` once the
//! handshake is done.

use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint, Ipv4Address};

use super::conn::{Guard, Role, new_socket};
use super::{ConnId, Stack};
use crate::TcpError;
use crate::config::SocketConfig;
use crate::flow::FourTuple;

/// Options for `connect_with`.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Our address (default: the one smoltcp picks for the destination).
    pub local_addr: Option<Ipv4Address>,
    /// A fixed local port instead of an ephemeral one.
    pub local_port: Option<u16>,
    /// Settings for this connection (default: the stack's).
    pub socket: Option<SocketConfig>,
}

impl Stack {
    /// Open a connection to `remote` from an ephemeral port. The SYN leaves on
    /// the next `poll`.
    pub fn connect(&mut self, remote: Ipv4Address, port: u16) -> Result<ConnId, TcpError> {
        self.connect_with(remote, port, &ConnectOptions::default(), |_| true)
    }

    /// Open a connection with options; the local port (unless fixed in
    /// `opts`) is the first free ephemeral port for which `port_ok` is true.
    /// DPDK mode uses `port_ok` to pick ports whose RSS hash lands on the
    /// calling core.
    pub fn connect_with(
        &mut self,
        remote: Ipv4Address,
        port: u16,
        opts: &ConnectOptions,
        port_ok: impl FnMut(u16) -> bool,
    ) -> Result<ConnId, TcpError> {
        if port == 0 || remote.is_unspecified() || remote.is_broadcast() || remote.is_multicast() {
            return Err(TcpError::Unaddressable);
        }
        let local = match opts.local_addr {
            Some(a) if self.iface.has_ip_addr(a) => a,
            Some(_) => return Err(TcpError::Unaddressable),
            None => self
                .iface
                .get_source_address_ipv4(&remote)
                .ok_or(TcpError::Unaddressable)?,
        };
        let socket_cfg = match &opts.socket {
            Some(s) => {
                s.validate()?;
                s.clone()
            }
            None => self.cfg.socket.clone(),
        };
        let local_port = match opts.local_port {
            Some(0) => return Err(TcpError::Unaddressable),
            Some(p) => {
                let t = FourTuple {
                    local_addr: local,
                    local_port: p,
                    remote_addr: remote,
                    remote_port: port,
                };
                if self.flows.contains_key(&t) {
                    return Err(TcpError::AddrInUse);
                }
                p
            }
            None => self.pick_port(local, remote, port, port_ok)?,
        };
        let tuple = FourTuple {
            local_addr: local,
            local_port,
            remote_addr: remote,
            remote_port: port,
        };
        let mut sock = new_socket(&socket_cfg, self.clock);
        sock.connect(
            self.iface.context(),
            IpEndpoint::new(IpAddress::Ipv4(remote), port),
            IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(local)),
                port: local_port,
            },
        )
        .map_err(|_| TcpError::Unaddressable)?;
        let guard = Guard::of(&socket_cfg);
        let slot = self.insert_conn(sock, tuple, Role::User, guard);
        self.mark_ready(slot);
        Ok(ConnId {
            index: slot,
            generation: self.slots[slot as usize].generation,
        })
    }

    fn pick_port(
        &mut self,
        local: Ipv4Address,
        remote: Ipv4Address,
        remote_port: u16,
        mut port_ok: impl FnMut(u16) -> bool,
    ) -> Result<u16, TcpError> {
        let lo = u32::from(*self.cfg.ephemeral_ports.start());
        let n = u32::from(*self.cfg.ephemeral_ports.end()) - lo + 1;
        for _ in 0..n {
            let p = (lo + self.port_cursor % n) as u16;
            self.port_cursor = self.port_cursor.wrapping_add(1);
            if self.by_port.contains_key(&p) {
                continue;
            }
            let t = FourTuple {
                local_addr: local,
                local_port: p,
                remote_addr: remote,
                remote_port,
            };
            if !self.flows.contains_key(&t) && port_ok(p) {
                return Ok(p);
            }
        }
        Err(TcpError::NoPort)
    }
}
