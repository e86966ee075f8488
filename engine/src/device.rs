//! The smoltcp device over DPDK mbufs (DPDK builds only). Public for
//! the bench rig's peer, which runs our TCP stack over a DPDK port too.

use std::collections::VecDeque;

use dpuproxy_dp::{Mbuf, Mempool};
use dpuproxy_tcp::smoltcp::phy::{self, DeviceCapabilities};

/// Ethernet MTU frames (ARP and TCP).
pub const ARP_AND_TCP_MTU: usize = 1514;

/// smoltcp device over DPDK mbufs: received mbufs are handed to the stack
/// as they are; transmitted frames are written into fresh mbufs and queued
/// for the turn's single tx burst.
#[derive(Debug)]
pub struct MbufDevice<'p> {
    /// Where transmitted frames' mbufs come from.
    pub pool: &'p Mempool<'p>,
    /// Received frames the stack has not taken yet.
    pub rx: VecDeque<Mbuf<'p>>,
    /// Frames the stack wrote, for the next tx burst.
    pub tx: Vec<Mbuf<'p>>,
    /// Frames lost because the pool was empty.
    pub tx_nombuf: u64,
    /// What the stack is told about the device.
    pub caps: DeviceCapabilities,
}

impl<'p> MbufDevice<'p> {
    /// An empty device over `pool`.
    pub fn new(pool: &'p Mempool<'p>, caps: DeviceCapabilities) -> Self {
        Self {
            pool,
            rx: VecDeque::new(),
            tx: Vec::new(),
            tx_nombuf: 0,
            caps,
        }
    }
}

/// A received frame.
#[derive(Debug)]
pub struct RxTok<'p>(Mbuf<'p>);

/// Room for one frame to transmit.
#[derive(Debug)]
pub struct TxTok<'a, 'p> {
    dev: &'a mut MbufDevice<'p>,
}

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        // The mbuf goes back to the pool when `self.0` drops.
        f(self.0.data())
    }
}

impl phy::TxToken for TxTok<'_, '_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let slot = self.dev.pool.alloc().and_then(|mut m| {
            let len16 = u16::try_from(len).ok()?;
            m.append(len16)?;
            Some(m)
        });
        match slot {
            Some(mut m) => {
                let r = f(m.data_mut());
                self.dev.tx.push(m);
                r
            }
            None => {
                // No mbuf: the frame is lost like on a busy wire; TCP
                // retransmits. Counted.
                self.dev.tx_nombuf += 1;
                let mut scratch = [0u8; ARP_AND_TCP_MTU];
                match scratch.get_mut(..len) {
                    Some(frame) => f(frame),
                    None => f(&mut vec![0u8; len]),
                }
            }
        }
    }
}

impl dpuproxy_tcp::RxPeek for MbufDevice<'_> {
    fn peek_rx(&self, ahead: usize, f: &mut dyn FnMut(&[u8])) {
        if let Some(m) = self.rx.get(ahead) {
            f(m.data());
        }
    }
}

impl<'p> phy::Device for MbufDevice<'p> {
    type RxToken<'a>
        = RxTok<'p>
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a, 'p>
    where
        Self: 'a;

    fn receive(
        &mut self,
        _t: dpuproxy_tcp::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let m = self.rx.pop_front()?;
        Some((RxTok(m), TxTok { dev: self }))
    }

    fn transmit(&mut self, _t: dpuproxy_tcp::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxTok { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}
