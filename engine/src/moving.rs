//! Driver slots out of and into the userspace transport, for the live mode
//! switch: a detached slot's client connection (TCP + TLS) and backend
//! connection become a [`Parcel`], and a parcel from the other path
//! becomes a detached slot of this one.

use dpuproxy_driver::Detached;
use dpuproxy_switch::{ClientParcel, NotRestored, Parcel, Retry, Unexported};
use dpuproxy_tcp::{ConnId, Instant};
use dpuproxy_tls::Limits;
use dpuproxy_tls::session::ServerSession;

use crate::transport::{UserspaceClient, UserspaceTransport};

/// A slot of this transport, detached from its driver.
pub type Slot = Detached<UserspaceClient, ConnId>;

impl UserspaceTransport<'_> {
    /// Take a detached slot's connections out of the stack. Their 4-tuples
    /// stay held (frames dropped silently, never answered with RST) until
    /// the parcel comes back, or the stack's hold time ends.
    ///
    /// Fails, giving the slot back as it was, unless the TLS session is
    /// established and both connections are ESTABLISHED (e.g. a peer's FIN
    /// arrived: the slot finishes here).
    pub fn export(
        &mut self,
        mut d: Slot,
        now: Instant,
    ) -> Result<Parcel, Unexported<UserspaceClient, ConnId>> {
        let Some(tls) = d.client.tls.snapshot() else {
            return Err(Box::new((d, Retry::Later)));
        };
        let Ok(client) = self.stack.export(now, d.client.tcp) else {
            return Err(Box::new((d, Retry::Later)));
        };
        let backend = match d.upstream.as_ref().map(|u| u.conn) {
            None => None,
            Some(conn) => match self.stack.export(now, conn) {
                Ok(state) => Some(state),
                Err(_) => {
                    // The client goes back where it was (its held 4-tuple
                    // is taken over); the slot stays.
                    match self.stack.import(&client, None) {
                        Ok(id) => d.client.tcp = id,
                        Err(e) => tracing::warn!(
                            error = %e,
                            "a client connection could not be put back after a failed export"
                        ),
                    }
                    return Err(Box::new((d, Retry::Later)));
                }
            },
        };
        self.owners.remove(d.client.tcp);
        if let Some(u) = &d.upstream {
            self.owners.remove(u.conn);
        }
        Ok(d.with(ClientParcel { tcp: client, tls }, backend))
    }

    /// Continue a parcel's connections on this stack (nothing is sent
    /// before the next egress). Fails, leaving the stack as it was and
    /// giving the parcel back, when the TLS state or either connection
    /// cannot be restored here.
    pub fn import(
        &mut self,
        p: Parcel,
        limits: &Limits,
        now: Instant,
    ) -> Result<Slot, NotRestored> {
        let tls = match ServerSession::resume(&p.client.tls, limits.clone()) {
            Ok(t) => t,
            Err(e) => return Err(Box::new((p, format!("TLS state: {e}")))),
        };
        let tcp = match self.stack.import(&p.client.tcp, None) {
            Ok(id) => id,
            Err(e) => return Err(Box::new((p, format!("client TCP state: {e}")))),
        };
        let backend = match p.upstream.as_ref().map(|u| &u.conn) {
            None => None,
            Some(state) => match self.stack.import(state, None) {
                Ok(id) => Some(id),
                Err(e) => {
                    // Undo the client silently: out again, then unheld.
                    let _ = self.stack.export(now, tcp);
                    self.stack.unhold(&p.client.tcp.tuple);
                    return Err(Box::new((p, format!("backend TCP state: {e}"))));
                }
            },
        };
        Ok(p.with(UserspaceClient { tcp, tls }, backend))
    }
}
