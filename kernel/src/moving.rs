//! Driver slots of the kernel transport out and in, for the live mode
//! switch. Out: the flows are held in the steering, both sockets captured
//! with `TCP_REPAIR` and closed in repair mode (the peers hear nothing),
//! the TLS session taken from our record layer. In: both sockets restored
//! (`TCP_REPAIR`), our record layer resumed on the client's.
//!
//! Only a client whose records are ours can move (OpenSSL's `SSL_read`
//! state cannot be carried, and there is no kTLS here): with the switch,
//! kernel workers always run `records = "ours"`.

use std::os::fd::AsRawFd;

use dpuproxy_driver::Detached;
use dpuproxy_switch::{
    ClientParcel, Flow, FlowOwner, NotRestored, Parcel, Path, Retry, Unexported,
};
use dpuproxy_tls::Limits;
use dpuproxy_tls::session::ServerSession;
use mio::net::TcpStream;

use crate::handoff::{HandoffError, to_kernel, to_userspace};
use crate::records_fd::FdRecords;
use crate::repair::{self, TcpState};
use crate::transport::{ClientTls, KernelBackend, KernelClient, KernelTransport, flow_of};

/// A slot of this transport, detached from its driver.
pub(crate) type Slot = Detached<KernelClient, KernelBackend>;

impl KernelTransport {
    fn steer_all(&self, flows: &[Flow], owner: FlowOwner) -> Result<(), String> {
        let Some(steer) = self.steer() else {
            return Ok(());
        };
        flows.iter().try_for_each(|f| steer.set(*f, owner))
    }

    /// Take a detached slot's connections out of the kernel (see the
    /// module docs). On failure the slot comes back as it was (its
    /// sockets out of repair mode and steered here again), its client out
    /// of epoll: attaching it again registers it anew.
    pub(crate) fn export(
        &mut self,
        d: Slot,
    ) -> Result<Parcel, Unexported<KernelClient, KernelBackend>> {
        self.take_out(d).map_err(|mut b| {
            self.unregister_client(&mut b.0.client);
            b
        })
    }

    fn take_out(&mut self, d: Slot) -> Result<Parcel, Box<(Slot, Retry)>> {
        let ClientTls::Ours(records) = &d.client.tls else {
            return Err(Box::new((d, Retry::Never)));
        };
        let Some(tls) = records.snapshot() else {
            return Err(Box::new((d, Retry::Later)));
        };
        let client_stream = records.stream();
        let Some(client_flow) = flow_of(client_stream) else {
            return Err(Box::new((d, Retry::Never)));
        };
        let backend_flow = match d.upstream.as_ref().map(|u| flow_of(&u.conn.stream)) {
            None => None,
            Some(Some(f)) => Some(f),
            Some(None) => return Err(Box::new((d, Retry::Never))),
        };
        let flows: Vec<Flow> = std::iter::once(client_flow).chain(backend_flow).collect();
        // Held first: once the socket is closed in repair mode, a frame
        // reaching the kernel would be answered with RST.
        if let Err(e) = self.steer_all(&flows, FlowOwner::Hold) {
            tracing::warn!(flow = %client_flow, error = %e, "cannot hold a flow; it stays");
            let _ = self.steer_all(&flows, FlowOwner::Path(Path::Kernel));
            return Err(Box::new((d, Retry::Later)));
        }
        let captured = capture_both(client_stream, d.upstream.as_ref().map(|u| &u.conn.stream));
        let (client, backend) = match captured {
            Ok(states) => states,
            Err(why) => {
                let _ = self.steer_all(&flows, FlowOwner::Path(Path::Kernel));
                return Err(Box::new((d, why)));
            }
        };
        // Out of epoll and the tables; the sockets close (silently, still
        // in repair mode) when the slot's objects drop below.
        let mut d = d;
        if let ClientTls::Ours(r) = &mut d.client.tls {
            let fd = r.stream().as_raw_fd();
            let _ = self.registry.deregister(r.stream_mut());
            self.client_flows.remove(&fd);
        }
        if let Some(u) = d.upstream.as_mut() {
            let _ = self.registry.deregister(&mut u.conn.stream);
            self.backends.try_remove(u.conn.id);
        }
        Ok(d.with(ClientParcel { tcp: client, tls }, backend))
    }

    /// Restore a parcel's connections as kernel sockets. Fails, leaving
    /// nothing behind (a socket already restored is closed silently) and
    /// giving the parcel back, when a socket cannot be restored.
    pub(crate) fn import(&mut self, p: Parcel, limits: &Limits) -> Result<Slot, NotRestored> {
        // The TLS session is resumed before any socket exists: a socket
        // restored and then dropped would end the peer's connection.
        let mut session = match ServerSession::resume(&p.client.tls, limits.clone()) {
            Ok(s) => s,
            Err(e) => return Err(Box::new((p, format!("TLS state: {e}")))),
        };
        let restored = match repair::restore(&to_kernel(&p.client.tcp)) {
            Ok(r) => r,
            Err(e) => return Err(Box::new((p, format!("client socket: {e}")))),
        };
        // Sealed bytes the new socket could not take yet go first, ahead
        // of what the session still holds.
        session.prepend_out(&restored.pending);
        let records = FdRecords::with_session(
            nodelay(TcpStream::from_std(restored.stream)),
            session,
            &p.client.tls,
        );
        let backend = match p.upstream.as_ref().map(|u| &u.conn) {
            None => None,
            Some(state) => {
                let failure = match repair::restore(&to_kernel(state)) {
                    Ok(r) if r.pending.is_empty() => {
                        let addr = r.stream.peer_addr();
                        match addr {
                            Ok(addr) => Ok(KernelBackend {
                                stream: nodelay(TcpStream::from_std(r.stream)),
                                addr,
                                id: usize::MAX,
                            }),
                            Err(e) => {
                                let _ = repair::close_silently(r.stream);
                                Err(e.to_string())
                            }
                        }
                    }
                    Ok(r) => {
                        let _ = repair::close_silently(r.stream);
                        Err("its send queue did not fit the new socket".to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match failure {
                    Ok(b) => Some(b),
                    Err(e) => {
                        let _ = repair::close_silently(records.into_stream());
                        return Err(Box::new((p, format!("backend socket: {e}"))));
                    }
                }
            }
        };
        Ok(p.with(KernelClient::moved(records), backend))
    }
}

/// Capture the client's socket and the backend's (each left in repair
/// mode), in the userspace stack's terms. On failure every captured
/// socket resumes.
fn capture_both(
    client: &TcpStream,
    backend: Option<&TcpStream>,
) -> Result<(dpuproxy_tcp::ConnState, Option<dpuproxy_tcp::ConnState>), Retry> {
    let convert = |s: &TcpStream| -> Result<dpuproxy_tcp::ConnState, Retry> {
        let state: TcpState = repair::capture(s).map_err(|e| {
            tracing::debug!(error = %e, "capture failed; the connection stays for now");
            Retry::Later
        })?;
        to_userspace(&state).map_err(|e| {
            let _ = repair::resume(s);
            match e {
                HandoffError::Ipv6 | HandoffError::Timestamps => {
                    tracing::info!(error = %e, "a kernel connection cannot move");
                    Retry::Never
                }
            }
        })
    };
    let c = convert(client)?;
    let b = match backend {
        None => None,
        Some(s) => match convert(s) {
            Ok(b) => Some(b),
            Err(why) => {
                let _ = repair::resume(client);
                return Err(why);
            }
        },
    };
    Ok((c, b))
}

/// A restored socket gets `TCP_NODELAY` like every socket the kernel path
/// accepts or opens (a repaired socket starts without it: small records
/// would wait behind Nagle and the peer's delayed ACK).
fn nodelay(stream: TcpStream) -> TcpStream {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY on a restored socket");
    }
    stream
}
