//! The caller's calls on one connection it owns: send and receive (closures
//! over the socket buffers, no copy beyond the caller's own), queue sizes,
//! state and 4-tuple, `shutdown`, `close` and `abort`.
//!
//! Every call checks the handle (slot, generation, caller-owned) and fails
//! with `InvalidHandle` otherwise. Calls only mark the connection for the
//! next egress pass; no segment leaves from here. Reading re-arms
//! `Readable`; a short write (or a full send buffer) asks for `Writable`.
//! After a clean close the unread bytes saved from the dropped socket are
//! served first.

use smoltcp::socket::tcp;

use super::conn::{Conn, Dead, INITIAL_TX, grow_tx, push_ready};
use super::slots::user_conn_in;
use super::{ConnId, Stack};
use crate::TcpError;
use crate::flow::FourTuple;

impl Stack {
    fn user_conn(&mut self, id: ConnId) -> Result<&mut Conn, TcpError> {
        user_conn_in(&mut self.slots, id)
    }

    fn user_socket(&mut self, id: ConnId) -> Result<&mut tcp::Socket<'static>, TcpError> {
        self.user_conn(id)?.socket()
    }

    /// Write through `write`, which returns a value and whether the write
    /// fell short of what the caller had; the send buffer grows first when
    /// fewer than `want` bytes are free. Then: a full send buffer or a short
    /// write asks for `Writable`; queued bytes have the connection transmit
    /// on the next poll.
    fn with_send<R>(
        &mut self,
        id: ConnId,
        want: usize,
        write: impl FnOnce(&mut tcp::Socket<'static>) -> Result<(R, bool), tcp::SendError>,
    ) -> Result<R, TcpError> {
        let c = user_conn_in(&mut self.slots, id)?;
        let tx_max = c.tx_max;
        let sock = c.socket()?;
        grow_tx(sock, want, tx_max);
        let before = sock.send_queue();
        let (r, short) = write(sock).map_err(|_| TcpError::InvalidState)?;
        let after = sock.send_queue();
        if short || after == sock.send_capacity() {
            c.want_writable = true;
        }
        if after != before {
            push_ready(c, &mut self.ready, id.index);
        }
        Ok(r)
    }

    /// Write into the send buffer: `f` gets the free space (one contiguous
    /// run of it) and returns how many bytes it filled and a value.
    pub fn send<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, TcpError> {
        // The caller's size is unknown: the buffer grows once half of it is
        // taken.
        self.with_send(id, INITIAL_TX / 2, |sock| {
            // A closure that claims more than it was given must not panic smoltcp.
            let r = sock.send(|buf| {
                let (n, r) = f(buf);
                (n.min(buf.len()), r)
            })?;
            Ok((r, false))
        })
    }

    /// Copy as much of `data` as fits into the send buffer; returns the count.
    pub fn send_slice(&mut self, id: ConnId, data: &[u8]) -> Result<usize, TcpError> {
        self.with_send(id, data.len(), |sock| {
            let n = sock.send_slice(data)?;
            Ok((n, n < data.len()))
        })
    }

    /// Read from the connection: `saved` gets the unread bytes kept from a
    /// socket dropped after a clean close (and returns how many it consumed),
    /// otherwise `read` gets the socket; `ctx` goes to whichever runs.
    /// Re-arms `Readable`; a read that frees receive space has the connection
    /// transmit on the next poll.
    fn with_recv<C, R>(
        &mut self,
        id: ConnId,
        ctx: C,
        saved: impl FnOnce(C, &mut [u8]) -> (usize, R),
        read: impl FnOnce(C, &mut tcp::Socket<'static>) -> Result<R, tcp::RecvError>,
    ) -> Result<R, TcpError> {
        let c = user_conn_in(&mut self.slots, id)?;
        c.readable_sent = false;
        if c.leftover_pos < c.leftover.len() {
            let (n, r) = saved(ctx, &mut c.leftover[c.leftover_pos..]);
            c.leftover_pos = (c.leftover_pos + n).min(c.leftover.len());
            if c.leftover_pos == c.leftover.len() {
                c.leftover = Vec::new();
                c.leftover_pos = 0;
            }
            return Ok(r);
        }
        let sock = match (&mut c.set, c.dead) {
            (Some(set), _) => set.get_mut::<tcp::Socket>(c.handle),
            (None, Some(Dead::Reset)) => return Err(TcpError::Reset),
            (None, _) => return Err(TcpError::Finished),
        };
        let before = sock.recv_queue();
        let r = read(ctx, sock).map_err(|e| match e {
            tcp::RecvError::Finished => TcpError::Finished,
            _ => TcpError::InvalidState,
        });
        if sock.recv_queue() != before {
            // Reading may open the window enough to need a window update.
            push_ready(c, &mut self.ready, id.index);
        }
        r
    }

    /// Read from the receive buffer: `f` gets the queued bytes (one
    /// contiguous run; they may be modified in place, e.g. decrypted) and
    /// returns how many it consumed and a value. `Err(Finished)` once the
    /// peer has closed and everything was read.
    pub fn recv<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, TcpError> {
        self.with_recv(
            id,
            f,
            |f, saved| f(saved),
            |f, sock| {
                // A closure that claims more than it was given must not panic smoltcp.
                sock.recv(|buf| {
                    let (n, r) = f(buf);
                    (n.min(buf.len()), r)
                })
            },
        )
    }

    /// Copy queued bytes into `buf`; returns the count (0: nothing queued yet).
    pub fn recv_slice(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        self.with_recv(
            id,
            buf,
            |buf, saved| {
                let n = saved.len().min(buf.len());
                buf[..n].copy_from_slice(&saved[..n]);
                (n, n)
            },
            |buf, sock| sock.recv_slice(buf),
        )
    }

    /// Bytes waiting to be read.
    pub fn recv_queue(&mut self, id: ConnId) -> Result<usize, TcpError> {
        let c = self.user_conn(id)?;
        let left = c.leftover.len() - c.leftover_pos;
        match &c.set {
            Some(set) => Ok(left + set.get::<tcp::Socket>(c.handle).recv_queue()),
            None => Ok(left),
        }
    }

    /// Bytes the send buffer takes now, counting the growth it is allowed.
    pub fn send_room(&mut self, id: ConnId) -> Result<usize, TcpError> {
        let c = self.user_conn(id)?;
        let max = c.tx_max;
        let s = c.socket()?;
        Ok(max.max(s.send_capacity()) - s.send_queue())
    }

    /// The TCP state (`Closed` once the connection is dead).
    pub fn state(&mut self, id: ConnId) -> Result<tcp::State, TcpError> {
        let c = self.user_conn(id)?;
        Ok(match &c.set {
            Some(set) => set.get::<tcp::Socket>(c.handle).state(),
            None => tcp::State::Closed,
        })
    }

    /// The connection's 4-tuple.
    pub fn tuple(&mut self, id: ConnId) -> Result<FourTuple, TcpError> {
        Ok(self.user_conn(id)?.tuple)
    }

    /// Send a FIN after the queued data; keep receiving.
    pub fn shutdown(&mut self, id: ConnId) -> Result<(), TcpError> {
        let sock = self.user_socket(id)?;
        sock.close();
        // The final ACK must not be delayed: the TIME-WAIT record is built
        // from it (see `settle`).
        sock.set_ack_delay(None);
        self.mark_ready(id.index);
        Ok(())
    }

    /// Close gracefully (FIN after queued data) and give up the handle. Data
    /// that arrives afterwards is discarded.
    pub fn close(&mut self, id: ConnId) -> Result<(), TcpError> {
        self.user_conn(id)?;
        self.release(id.index, false);
        Ok(())
    }

    /// Reset the connection and give up the handle.
    pub fn abort(&mut self, id: ConnId) -> Result<(), TcpError> {
        self.user_conn(id)?;
        self.release(id.index, true);
        Ok(())
    }
}
