//! An in-memory wire: two devices joined by two bounded frame queues.
//!
//! Single-threaded (`Rc<RefCell<_>>`): both stacks are polled by one loop, as
//! in the benchmark and the tests. Frame buffers are recycled.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

#[derive(Debug)]
struct Link {
    /// `queues[i]` carries frames sent by port `i`.
    queues: [VecDeque<Vec<u8>>; 2],
    pool: Vec<Vec<u8>>,
    capacity: usize,
}

/// One end of the wire; implements `smoltcp::phy::Device`.
#[derive(Debug)]
pub struct WirePort {
    link: Rc<RefCell<Link>>,
    side: usize,
    caps: DeviceCapabilities,
}

/// Two connected ports. `capacity` bounds the frames queued per direction
/// (a full queue makes `transmit` return `None`, as a full NIC ring would).
pub fn pair(medium: Medium, mtu: usize, capacity: usize) -> (WirePort, WirePort) {
    let link = Rc::new(RefCell::new(Link {
        queues: [VecDeque::new(), VecDeque::new()],
        pool: Vec::new(),
        capacity: capacity.max(1),
    }));
    let mut caps = DeviceCapabilities::default();
    caps.medium = medium;
    caps.max_transmission_unit = mtu;
    (
        WirePort {
            link: link.clone(),
            side: 0,
            caps: caps.clone(),
        },
        WirePort {
            link,
            side: 1,
            caps,
        },
    )
}

/// Frame buffers kept for reuse (enough for a deep queue in the benchmark).
const POOL_MAX: usize = 1 << 18;

impl WirePort {
    /// Frames waiting in both directions.
    pub fn in_flight(&self) -> usize {
        let l = self.link.borrow();
        l.queues[0].len() + l.queues[1].len()
    }

    /// Take the next frame sent by the other port, bypassing any stack (for
    /// transcript tests).
    pub fn take_incoming(&mut self) -> Option<Vec<u8>> {
        self.link.borrow_mut().queues[1 - self.side].pop_front()
    }

    /// Put a frame on the wire as if this port had sent it.
    pub fn inject(&mut self, frame: &[u8]) {
        self.link.borrow_mut().queues[self.side].push_back(frame.to_vec());
    }
}

/// Receive token of a `WirePort`.
#[derive(Debug)]
pub struct WireRx<'a> {
    link: &'a RefCell<Link>,
    frame: Vec<u8>,
}

impl phy::RxToken for WireRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(&self.frame);
        let mut l = self.link.borrow_mut();
        if l.pool.len() < POOL_MAX {
            l.pool.push(self.frame);
        }
        r
    }
}

/// Transmit token of a `WirePort`.
#[derive(Debug)]
pub struct WireTx<'a> {
    link: &'a RefCell<Link>,
    side: usize,
}

impl phy::TxToken for WireTx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = self.link.borrow_mut().pool.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        let mut l = self.link.borrow_mut();
        // A reply token from `receive` may find the queue full: the frame is
        // lost, as on a real link.
        if l.queues[self.side].len() < l.capacity {
            l.queues[self.side].push_back(buf);
        }
        r
    }
}

impl crate::RxPeek for WirePort {
    fn peek_rx(&self, ahead: usize, f: &mut dyn FnMut(&[u8])) {
        if let Some(frame) = self.link.borrow().queues[1 - self.side].get(ahead) {
            f(frame);
        }
    }
}

impl Device for WirePort {
    type RxToken<'a>
        = WireRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = WireTx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(WireRx<'_>, WireTx<'_>)> {
        let frame = self.link.borrow_mut().queues[1 - self.side].pop_front()?;
        Some((
            WireRx {
                link: &self.link,
                frame,
            },
            WireTx {
                link: &self.link,
                side: self.side,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<WireTx<'_>> {
        let l = self.link.borrow();
        if l.queues[self.side].len() >= l.capacity {
            return None;
        }
        drop(l);
        Some(WireTx {
            link: &self.link,
            side: self.side,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}
