//! A fault-injecting `Device` wrapper for tests and the benchmark.
//!
//! Each direction (frames received from the inner device, frames transmitted
//! to it) has its own rates. Faults are drawn from a seeded SplitMix64, so a
//! seed replays the same faults for the same traffic.
//! - drop: the frame vanishes;
//! - duplicate: the frame is delivered twice;
//! - reorder: the frame is held back until 1 to 3 later frames have passed
//!   (or `reorder_window` of time has gone by, so the last frame of a burst
//!   is not held forever);
//! - corrupt: one byte past the link-layer header is XORed with a non-zero
//!   value. The Internet checksums cover every byte from the IP header on, so
//!   the stack must drop every corrupted frame; a real NIC's FCS check is what
//!   covers the Ethernet header, which is why that is left alone.

use std::collections::VecDeque;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::{Duration, Instant};

use crate::flow::splitmix;

/// Fault probabilities for one direction, each within 0.0 ..= 1.0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Probability that a frame is dropped.
    pub drop: f64,
    /// Probability that a frame is held back behind later ones.
    pub reorder: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that one byte of a frame is corrupted.
    pub corrupt: f64,
}

/// What was done to the frames of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Frames that entered the fault stage.
    pub frames: u64,
    /// Dropped.
    pub dropped: u64,
    /// Held back behind later frames.
    pub reordered: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Corrupted.
    pub corrupted: u64,
    /// Lost because the inner device had no transmit slot when a held or
    /// duplicated frame was due.
    pub lost_full: u64,
}

#[derive(Debug)]
struct Held {
    frame: Vec<u8>,
    /// Later frames still to let pass.
    remaining: u32,
    deadline: Instant,
}

#[derive(Debug)]
struct Stage {
    faults: Faults,
    stats: FaultStats,
    held: Vec<Held>,
    /// Frames due for delivery (released, duplicated, or pulled and kept).
    due: VecDeque<Vec<u8>>,
}

impl Stage {
    fn new(faults: Faults) -> Self {
        Self {
            faults,
            stats: FaultStats::default(),
            held: Vec::new(),
            due: VecDeque::new(),
        }
    }

    /// A frame passed through: count it against held frames, release those
    /// whose turn (or time) has come.
    fn pass(&mut self, now: Instant, passed: bool) {
        let mut i = 0;
        while i < self.held.len() {
            let h = &mut self.held[i];
            if passed {
                h.remaining = h.remaining.saturating_sub(1);
            }
            if h.remaining == 0 || h.deadline <= now {
                let h = self.held.swap_remove(i);
                self.due.push_back(h.frame);
            } else {
                i += 1;
            }
        }
    }
}

#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((splitmix(&mut self.0) >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn below(&mut self, n: u64) -> u64 {
        splitmix(&mut self.0) % n.max(1)
    }
}

#[derive(Debug)]
struct State {
    rng: Rng,
    rx: Stage,
    tx: Stage,
    skip: usize,
    reorder_window: Duration,
}

impl State {
    fn decide(&mut self, rx: bool) -> (Fate, bool, bool) {
        let f = if rx { self.rx.faults } else { self.tx.faults };
        let dropped = self.rng.chance(f.drop);
        let corrupt = !dropped && self.rng.chance(f.corrupt);
        let dup = !dropped && self.rng.chance(f.duplicate);
        let hold = !dropped && self.rng.chance(f.reorder);
        let stats = if rx {
            &mut self.rx.stats
        } else {
            &mut self.tx.stats
        };
        stats.frames += 1;
        stats.dropped += u64::from(dropped);
        stats.corrupted += u64::from(corrupt);
        stats.duplicated += u64::from(dup);
        stats.reordered += u64::from(hold);
        let fate = if dropped {
            Fate::Drop
        } else if hold {
            Fate::Hold
        } else {
            Fate::Pass
        };
        (fate, corrupt, dup)
    }

    fn corrupt(&mut self, frame: &mut [u8]) {
        if frame.len() > self.skip {
            let i = self.skip + self.rng.below((frame.len() - self.skip) as u64) as usize;
            frame[i] ^= 1 + self.rng.below(255) as u8;
        }
    }
}

/// Wraps any device and injects faults (see the module doc).
#[derive(Debug)]
pub struct FaultyDevice<D> {
    inner: D,
    state: State,
}

/// Decision for one frame.
enum Fate {
    Drop,
    Hold,
    Pass,
}

impl<D: Device> FaultyDevice<D> {
    /// Wrap `inner`; no faults until set.
    pub fn new(inner: D, seed: u64) -> Self {
        let skip = if inner.capabilities().medium == Medium::Ethernet {
            14
        } else {
            0
        };
        Self {
            inner,
            state: State {
                rng: Rng(seed),
                rx: Stage::new(Faults::default()),
                tx: Stage::new(Faults::default()),
                skip,
                reorder_window: Duration::from_millis(1),
            },
        }
    }

    /// Faults applied to frames received from the inner device.
    pub fn set_rx_faults(&mut self, faults: Faults) {
        self.state.rx.faults = faults;
    }

    /// Faults applied to frames transmitted to the inner device.
    pub fn set_tx_faults(&mut self, faults: Faults) {
        self.state.tx.faults = faults;
    }

    /// The longest a reordered frame is held (in the caller's clock).
    pub fn set_reorder_window(&mut self, window: Duration) {
        self.state.reorder_window = window;
    }

    /// Counters for received and transmitted frames.
    pub fn stats(&self) -> (FaultStats, FaultStats) {
        (self.state.rx.stats, self.state.tx.stats)
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutably.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Frames held back or queued for delivery in either direction.
    pub fn pending(&self) -> usize {
        self.state.rx.held.len()
            + self.state.rx.due.len()
            + self.state.tx.held.len()
            + self.state.tx.due.len()
    }

    /// The earliest time a held frame is released on its own (`None`: none held).
    pub fn poll_at(&self) -> Option<Instant> {
        let due = (!self.state.rx.due.is_empty() || !self.state.tx.due.is_empty())
            .then_some(Instant::from_micros(i64::MIN));
        self.state
            .rx
            .held
            .iter()
            .chain(&self.state.tx.held)
            .map(|h| h.deadline)
            .chain(due)
            .min()
    }

    /// Send transmit-side frames whose time has come.
    pub fn flush(&mut self, now: Instant) {
        self.state.tx.pass(now, false);
        while let Some(frame) = self.state.tx.due.pop_front() {
            match self.inner.transmit(now) {
                Some(t) => phy::TxToken::consume(t, frame.len(), |b| b.copy_from_slice(&frame)),
                None => self.state.tx.stats.lost_full += 1,
            }
        }
    }
}

/// Receive token: owns the (possibly corrupted) frame.
#[derive(Debug)]
pub struct FaultyRx {
    frame: Vec<u8>,
}

impl phy::RxToken for FaultyRx {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.frame)
    }
}

/// Transmit token: applies the transmit-side faults.
pub struct FaultyTx<'a, T> {
    inner: Option<T>,
    state: &'a mut State,
    now: Instant,
}

impl<T> core::fmt::Debug for FaultyTx<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FaultyTx").finish_non_exhaustive()
    }
}

impl<T: phy::TxToken> phy::TxToken for FaultyTx<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let Self { inner, state, now } = self;
        let (fate, corrupt, dup) = state.decide(false);
        let mut scratch;
        let (r, frame) = match (fate, inner) {
            (Fate::Pass, Some(t)) => {
                return t.consume(len, |buf| {
                    let r = f(buf);
                    if dup {
                        state.tx.due.push_back(buf.to_vec());
                    }
                    if corrupt {
                        state.corrupt(buf);
                    }
                    state.tx.pass(now, true);
                    r
                });
            }
            (Fate::Drop, _) | (_, None) => {
                scratch = vec![0u8; len];
                (f(&mut scratch), None)
            }
            (Fate::Hold, Some(_)) => {
                scratch = vec![0u8; len];
                let r = f(&mut scratch);
                (r, Some(scratch))
            }
        };
        if let Some(mut frame) = frame {
            if corrupt {
                state.corrupt(&mut frame);
            }
            if dup {
                state.tx.due.push_back(frame.clone());
            }
            let remaining = 1 + state.rng.below(3) as u32;
            state.tx.held.push(Held {
                frame,
                remaining,
                deadline: now + state.reorder_window,
            });
        }
        r
    }
}

impl<D: Device> Device for FaultyDevice<D> {
    type RxToken<'a>
        = FaultyRx
    where
        Self: 'a;
    type TxToken<'a>
        = FaultyTx<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, now: Instant) -> Option<(FaultyRx, Self::TxToken<'_>)> {
        self.flush(now);
        self.state.rx.pass(now, false);
        // Pull from the inner device until a frame is due (bounded).
        for _ in 0..16 {
            if !self.state.rx.due.is_empty() {
                break;
            }
            let Some((rx, _)) = self.inner.receive(now) else {
                break;
            };
            let mut frame = phy::RxToken::consume(rx, |b| b.to_vec());
            let (fate, corrupt, dup) = self.state.decide(true);
            if matches!(fate, Fate::Drop) {
                continue;
            }
            if corrupt {
                self.state.corrupt(&mut frame);
            }
            if dup {
                self.state.rx.due.push_back(frame.clone());
            }
            match fate {
                Fate::Hold => {
                    let remaining = 1 + self.state.rng.below(3) as u32;
                    self.state.rx.held.push(Held {
                        frame,
                        remaining,
                        deadline: now + self.state.reorder_window,
                    });
                }
                _ => {
                    self.state.rx.pass(now, true);
                    self.state.rx.due.push_front(frame);
                }
            }
        }
        let frame = self.state.rx.due.pop_front()?;
        let FaultyDevice { inner, state } = self;
        Some((
            FaultyRx { frame },
            FaultyTx {
                inner: inner.transmit(now),
                state,
                now,
            },
        ))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        self.flush(now);
        let FaultyDevice { inner, state } = self;
        let t = inner.transmit(now)?;
        Some(FaultyTx {
            inner: Some(t),
            state,
            now,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}
