//! Device adapters through which the stack hands smoltcp's `Interface` exactly
//! one frame (ingress) or one socket's transmit path (egress), and watches
//! what smoltcp emits.

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::frame;

/// What was transmitted during one adapter's life.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TxObs {
    pub frames: u64,
    /// Of which TCP segments.
    pub segments: u64,
    /// `(seq_end, ack)` of the last TCP segment written.
    pub last_seq_ack: Option<(u32, u32)>,
    pub rst: bool,
    pub arp: bool,
}

/// A transmit token that notes what went through it.
pub(crate) struct InspectTx<'o, T> {
    pub inner: T,
    pub obs: &'o mut TxObs,
    pub medium: Medium,
}

impl<T: phy::TxToken> phy::TxToken for InspectTx<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let Self { inner, obs, medium } = self;
        inner.consume(len, |buf| {
            let r = f(buf);
            obs.frames += 1;
            if let Some((seq_end, ack, rst)) = frame::our_seq_ack(medium, buf) {
                obs.segments += 1;
                if rst {
                    obs.rst = true;
                } else {
                    obs.last_seq_ack = Some((seq_end, ack));
                }
            } else if frame::is_arp(medium, buf) {
                obs.arp = true;
            }
            r
        })
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.inner.set_meta(meta);
    }
}

/// The receive half of `OneShot`.
pub(crate) struct OneRx<'f> {
    frame: &'f [u8],
}

impl phy::RxToken for OneRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// A device that yields one already-received frame together with the reply
/// token the real device paired with it, then nothing.
pub(crate) struct OneShot<'f, T> {
    frame: Option<&'f [u8]>,
    tx: Option<T>,
    caps: DeviceCapabilities,
}

impl<'f, T> OneShot<'f, T> {
    pub(crate) fn new(frame: &'f [u8], tx: T, caps: DeviceCapabilities) -> Self {
        Self {
            frame: Some(frame),
            tx: Some(tx),
            caps,
        }
    }
}

impl OneShot<'static, NoTx> {
    /// A device with nothing to receive or send that only reports
    /// capabilities (for `Interface::new`).
    pub(crate) fn idle(caps: DeviceCapabilities) -> Self {
        Self {
            frame: None,
            tx: None,
            caps,
        }
    }
}

impl<'f, T: phy::TxToken> Device for OneShot<'f, T> {
    type RxToken<'a>
        = OneRx<'f>
    where
        Self: 'a;
    type TxToken<'a>
        = T
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(OneRx<'f>, T)> {
        let frame = self.frame.take()?;
        let tx = self.tx.take()?;
        Some((OneRx { frame }, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<T> {
        // Only reachable if smoltcp wanted to send without a received frame,
        // which it does not do from `poll_ingress_single`; hand over the
        // paired token if it is still here.
        self.tx.take()
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// The real device, seen by smoltcp while one socket transmits: no receive,
/// real-clock timestamps, and a record of what went out and whether the
/// device ran out of transmit slots.
pub(crate) struct EgressDev<'d, 'o, D: ?Sized> {
    pub inner: &'d mut D,
    pub obs: &'o mut TxObs,
    pub now: Instant,
    pub medium: Medium,
    pub exhausted: bool,
}

impl<D: Device + ?Sized> Device for EgressDev<'_, '_, D> {
    type RxToken<'a>
        = D::RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = InspectTx<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        None
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        match self.inner.transmit(self.now) {
            Some(inner) => Some(InspectTx {
                inner,
                obs: &mut *self.obs,
                medium: self.medium,
            }),
            None => {
                self.exhausted = true;
                None
            }
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

/// The token type of an idle `OneShot`: never constructed.
pub(crate) enum NoTx {}

impl phy::TxToken for NoTx {
    fn consume<R, F>(self, _len: usize, _f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        match self {}
    }
}
