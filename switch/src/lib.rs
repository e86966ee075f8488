//! The live mode switch between the data paths (DPDK and kernel) of one
//! process: what a moving connection is ([`Parcel`]), how frames are
//! steered while it moves ([`Steer`]), and the [`SwitchBoard`] the two
//! paths and the admin endpoint share.
//!
//! A connection moves as a driver slot taken out of its driver
//! ([`dpuproxy_driver::Detached`]) whose transport objects are replaced by
//! their state: the client's TCP state in the userspace stack's terms
//! ([`ConnState`]; the kernel converts) plus its TLS session
//! ([`SessionState`]: secrets, sequence numbers, records half in or out),
//! and the backend connection's TCP state. The L7 object (request in
//! flight, SSE relay position, buffers) moves as it is, in memory: both
//! paths run in this process, so nothing is serialised.
//!
//! The order of a switch from path A (new connections go there now) to B:
//! 1. [`SwitchBoard::request`]: the target is set and both paths woken.
//! 2. A, in its own loop ([`Station::poll`]), pins every flow it owns to
//!    itself in the steering (new ones included, so the default can flip
//!    without stranding them), then flips the default to B: new
//!    connections go to B from then on.
//! 3. A exports its movable slots in bounded batches: each flow is held
//!    (its frames dropped; TCP retransmits), its state taken, and the
//!    parcel mailed to B. Slots that may move later (handshaking, backend
//!    connect under way) are retried; those that cannot (closing) finish
//!    on A.
//! 4. B restores each parcel, attaches it to its driver, and steers the
//!    flows to itself ([`SwitchBoard::landed`]). If the restore fails the
//!    parcel goes back to A, which restores it again (nothing was steered
//!    yet); if that fails too the connection is reset. Either way only
//!    that connection is affected, and it is counted.
//! 5. The switch is settled when A has nothing left to send and nothing is
//!    in flight ([`SwitchBoard::settled`]).

#![forbid(unsafe_code)]

pub mod metrics;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use dpuproxy_driver::{Detached, Driver, Movable, SlotId, Transport};
use dpuproxy_tcp::{ConnState, FourTuple};
use dpuproxy_tls::session::SessionState;

pub use metrics::{SwitchMetrics, SwitchSummary};

/// A data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// The DPDK poll-mode path (userspace TCP, our record layer).
    Dpdk,
    /// Kernel sockets (epoll workers).
    Kernel,
}

impl Path {
    /// Its name in the API and the logs.
    pub fn label(self) -> &'static str {
        match self {
            Path::Dpdk => "dpdk",
            Path::Kernel => "kernel",
        }
    }

    fn index(self) -> usize {
        match self {
            Path::Dpdk => 0,
            Path::Kernel => 1,
        }
    }

    fn from_u8(v: u8) -> Path {
        if v == 0 { Path::Dpdk } else { Path::Kernel }
    }
}

impl std::str::FromStr for Path {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dpdk" => Ok(Path::Dpdk),
            "kernel" => Ok(Path::Kernel),
            other => Err(format!("unknown path {other:?} (dpdk or kernel)")),
        }
    }
}

/// One TCP flow as the steering sees it: the peer's and our address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The peer's address and port.
    pub remote: SocketAddrV4,
    /// Our address and port.
    pub local: SocketAddrV4,
}

impl Flow {
    /// The flow of a userspace stack 4-tuple.
    pub fn of(t: &FourTuple) -> Flow {
        Flow {
            remote: SocketAddrV4::new(t.remote_addr, t.remote_port),
            local: SocketAddrV4::new(t.local_addr, t.local_port),
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.remote, self.local)
    }
}

/// Where the steering sends a flow's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOwner {
    /// To a data path.
    Path(Path),
    /// Nowhere: dropped while the connection moves (the peer retransmits).
    Hold,
}

/// The per-flow steering in front of both paths (our XDP program through
/// `net_af_xdp`'s `xdp_prog=` here; rte_flow rules on a NIC that has them).
/// Flows without an entry go to the default path. Calls may block for a
/// few microseconds; errors are a sentence for the log.
pub trait Steer: Send + Sync + fmt::Debug {
    /// Send `flow`'s frames to `owner`.
    fn set(&self, flow: Flow, owner: FlowOwner) -> Result<(), String>;
    /// Drop `flow`'s entry (its frames follow the default again).
    fn forget(&self, flow: Flow);
    /// Where flows without an entry (new connections) go.
    fn set_default(&self, path: Path) -> Result<(), String>;
    /// `flow`'s entry, if it has one (`None` also when it cannot be read).
    fn owner(&self, flow: Flow) -> Option<FlowOwner>;
}

/// Flows a path may have left pinned to itself after their connection
/// closed there (their last segments, FIN and TIME-WAIT must still reach
/// it, not the default path, which would answer RST). Each is forgotten
/// [`Lingering::AFTER`] later, if it still names this path and no live
/// connection of this path uses the 4-tuple again.
#[derive(Debug, Default)]
pub struct Lingering {
    flows: std::collections::VecDeque<(Flow, Instant)>,
    /// When `sweep` last ran.
    swept: Option<Instant>,
}

impl Lingering {
    /// How long a closed flow keeps its entry: past FIN_WAIT and TIME-WAIT.
    pub const AFTER: Duration = Duration::from_secs(120);

    /// Remember `flow`, closed (or pinned) at `now`.
    pub fn push(&mut self, flow: Flow, now: Instant) {
        self.flows.push_back((flow, now));
    }

    /// The flows remembered.
    pub fn flows(&self) -> impl Iterator<Item = &Flow> + '_ {
        self.flows.iter().map(|(f, _)| f)
    }

    /// How many are remembered.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Sweeps run at most this often: a sweep asks the caller for its live
    /// flows, and with a steady close rate some entry is due on every turn.
    pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

    /// Whether a sweep is due at `now`: some entry is, and the last sweep
    /// was [`Lingering::SWEEP_EVERY`] ago or more.
    pub fn due(&self, now: Instant) -> bool {
        self.front_due(now)
            && self
                .swept
                .is_none_or(|t| now.saturating_duration_since(t) >= Self::SWEEP_EVERY)
    }

    fn front_due(&self, now: Instant) -> bool {
        self.flows
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= Self::AFTER)
    }

    /// Forget the due entries that still name `me` in `steer`; a due flow
    /// that `live` says is a connection of this path again is kept for
    /// another round. At most `max` entries per call.
    pub fn sweep(
        &mut self,
        steer: &dyn Steer,
        me: Path,
        now: Instant,
        max: usize,
        live: impl Fn(&Flow) -> bool,
    ) {
        self.swept = Some(now);
        for _ in 0..max {
            if !self.front_due(now) {
                return;
            }
            let Some((flow, _)) = self.flows.pop_front() else {
                return;
            };
            if live(&flow) {
                self.flows.push_back((flow, now));
            } else if steer.owner(flow) == Some(FlowOwner::Path(me)) {
                steer.forget(flow);
            }
        }
    }
}

/// A client connection's state on its way between the paths.
#[derive(Debug)]
pub struct ClientParcel {
    /// TCP, in the userspace stack's terms.
    pub tcp: ConnState,
    /// TLS: the record layer's state and the records half in or out.
    pub tls: SessionState,
}

/// A driver slot on its way: the L7 object and its phase as they were,
/// the client's state, and its backend connection's TCP state.
pub type Parcel = Detached<ClientParcel, ConnState>;

/// A parcel a path could not restore, and why (boxed: it is large, and
/// the failure path is rare).
pub type NotRestored = Box<(Parcel, String)>;

/// The flows of a parcel (client first, then the backend connection).
pub fn flows_of(p: &Parcel) -> impl Iterator<Item = Flow> + '_ {
    std::iter::once(Flow::of(&p.client.tcp.tuple))
        .chain(p.upstream.as_ref().map(|u| Flow::of(&u.conn.tuple)))
}

/// A parcel in a mailbox.
#[derive(Debug)]
pub struct Moving<P = Parcel> {
    /// The connection.
    pub parcel: P,
    /// The path it left.
    pub from: Path,
    /// When its flows were held (its pause runs from here).
    pub started: Instant,
    /// The destination failed to restore it: this is the source taking it
    /// back (nothing was steered to the destination).
    pub take_back: bool,
}

/// How a parcel ended at the path that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    /// Restored, attached and steered here.
    Moved,
    /// Restored back on its source after the destination failed.
    TakenBack,
    /// Lost: it could not be restored anywhere and was reset.
    Failed,
}

/// Why a switch cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// A path is still starting (the DPDK one until its steering is up).
    #[error("the {} path is not up yet", .0.label())]
    NotReady(Path),
    /// Another switch is still moving connections.
    #[error("a switch to {} is still in progress", .0.label())]
    Busy(Path),
    /// New connections already go to the requested path.
    #[error("already on the {} path", .0.label())]
    Already(Path),
}

const NO_SWITCH: u8 = u8::MAX;

/// Wakes a path that sleeps (e.g. in epoll).
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// The state both paths and the admin endpoint share. Lock-free except
/// for registering wakers at start.
pub struct SwitchBoard<P = Parcel> {
    /// Where new connections go ([`Path`] as a number).
    current: AtomicU8,
    /// The path of the switch in progress, or [`NO_SWITCH`].
    target: AtomicU8,
    /// Bumped by every request.
    epoch: AtomicU64,
    /// The source has nothing left to send in this switch.
    source_done: AtomicBool,
    /// Parcels mailed and not landed yet.
    in_flight: AtomicU64,
    /// Restores still to fail on purpose.
    injected: AtomicU64,
    /// Each path is up and taking mail.
    ready: [AtomicBool; 2],
    steer: OnceLock<Arc<dyn Steer>>,
    mail: [SegQueue<Moving<P>>; 2],
    wakers: Mutex<[Option<Waker>; 2]>,
    /// Counters and the pause histogram.
    pub metrics: SwitchMetrics,
}

impl<P> fmt::Debug for SwitchBoard<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchBoard")
            .field("current", &self.current())
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<P> SwitchBoard<P> {
    /// A board whose new connections go to `current`. It cannot switch
    /// until [`SwitchBoard::set_steer`].
    pub fn new(current: Path) -> Self {
        Self {
            current: AtomicU8::new(current.index() as u8),
            target: AtomicU8::new(NO_SWITCH),
            epoch: AtomicU64::new(0),
            source_done: AtomicBool::new(true),
            in_flight: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            ready: [AtomicBool::new(false), AtomicBool::new(false)],
            steer: OnceLock::new(),
            mail: [SegQueue::new(), SegQueue::new()],
            wakers: Mutex::new([None, None]),
            metrics: SwitchMetrics::default(),
        }
    }

    /// The steering, once the DPDK port is up with our XDP program. Also
    /// sets its default to the current path. A second call is ignored.
    pub fn set_steer(&self, steer: Arc<dyn Steer>) -> Result<(), String> {
        steer.set_default(self.current())?;
        let _ = self.steer.set(steer);
        Ok(())
    }

    /// The steering, if it is up.
    pub fn steer(&self) -> Option<&dyn Steer> {
        self.steer.get().map(|s| &**s)
    }

    /// `path` is up and takes mail: a switch may start once both are.
    pub fn mark_ready(&self, path: Path) {
        self.ready[path.index()].store(true, Ordering::Release);
    }

    /// Called when `path` has mail or a switch starts (a path that polls
    /// needs none; one that sleeps in epoll registers its waker).
    pub fn set_waker(&self, path: Path, wake: Waker) {
        if let Ok(mut w) = self.wakers.lock() {
            w[path.index()] = Some(wake);
        }
    }

    fn wake(&self, path: Path) {
        if let Ok(w) = self.wakers.lock()
            && let Some(f) = &w[path.index()]
        {
            f();
        }
    }

    /// Where new connections go.
    pub fn current(&self) -> Path {
        Path::from_u8(self.current.load(Ordering::Acquire))
    }

    /// The switch in progress, if any.
    pub fn switching_to(&self) -> Option<Path> {
        match self.target.load(Ordering::Acquire) {
            NO_SWITCH => None,
            v => Some(Path::from_u8(v)),
        }
    }

    /// Start a switch to `to`; the counters before it, for
    /// [`SwitchMetrics::since`].
    pub fn request(&self, to: Path) -> Result<SwitchSummary, SwitchError> {
        self.request_drill(to, 0)
    }

    /// [`SwitchBoard::request`], making the first `fail` restores of this
    /// switch fail on purpose (a drill of the take-back path).
    pub fn request_drill(&self, to: Path, fail: u64) -> Result<SwitchSummary, SwitchError> {
        if self.steer.get().is_none() {
            return Err(SwitchError::NotReady(Path::Dpdk));
        }
        for p in [Path::Dpdk, Path::Kernel] {
            if !self.ready[p.index()].load(Ordering::Acquire) {
                return Err(SwitchError::NotReady(p));
            }
        }
        // A switch nobody waited for to the end is over once it settles.
        self.settled();
        if let Some(busy) = self.switching_to() {
            return Err(SwitchError::Busy(busy));
        }
        if self.current() == to {
            return Err(SwitchError::Already(to));
        }
        if self
            .target
            .compare_exchange(
                NO_SWITCH,
                to.index() as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(SwitchError::Busy(self.switching_to().unwrap_or(to)));
        }
        let before = self.metrics.summary();
        self.injected.store(fail, Ordering::Relaxed);
        self.source_done.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.metrics.switches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            from = self.current().label(),
            to = to.label(),
            "switch requested"
        );
        self.wake(Path::Dpdk);
        self.wake(Path::Kernel);
        Ok(before)
    }

    /// Whether the switch in progress is over (the source sent everything
    /// and every parcel landed); ends it when so. True with no switch.
    pub fn settled(&self) -> bool {
        let Some(to) = self.switching_to() else {
            return true;
        };
        if !self.source_done.load(Ordering::Acquire) || self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        if self
            .target
            .compare_exchange(
                to.index() as u8,
                NO_SWITCH,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            tracing::info!(to = to.label(), "switch settled");
        }
        true
    }

    /// Flip the default to `to` (the source calls this once its flows
    /// are pinned).
    fn flip(&self, to: Path) -> Result<(), String> {
        if let Some(s) = self.steer.get() {
            s.set_default(to)?;
        }
        self.current.store(to.index() as u8, Ordering::Release);
        Ok(())
    }

    /// Mail a parcel to `to`.
    pub fn send(&self, to: Path, m: Moving<P>) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.mail[to.index()].push(m);
        self.wake(to);
    }

    /// How many more parcels may be sent now (see [`WINDOW`]).
    pub fn room(&self) -> usize {
        WINDOW.saturating_sub(self.in_flight.load(Ordering::Acquire) as usize)
    }

    /// The next parcel for `me`.
    pub fn take(&self, me: Path) -> Option<Moving<P>> {
        self.mail[me.index()].pop()
    }

    /// Whether `me` has mail (cheap; for a loop deciding to sleep).
    pub fn has_mail(&self, me: Path) -> bool {
        !self.mail[me.index()].is_empty()
    }

    /// A parcel taken with [`SwitchBoard::take`] (which left `from`)
    /// ended as `how` at `to`, after a pause of `pause`. One returned to
    /// its source for a take-back is not an end: it is counted when that
    /// lands.
    pub fn landed(&self, from: Path, to: Path, how: Landing, pause: Duration) {
        self.metrics.count(to, how, pause);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.switching_to().is_some() {
            self.wake(from);
        }
    }

    /// Whether this restore is one to fail on purpose (takes one).
    pub fn restore_fails_on_purpose(&self) -> bool {
        self.injected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// A parcel the destination could not restore goes back to its
    /// source (still in flight).
    pub fn take_back(&self, mut m: Moving<P>) {
        m.take_back = true;
        let from = m.from;
        self.mail[from.index()].push(m);
        self.wake(from);
    }
}

impl SwitchBoard<Parcel> {
    /// Land parcel `m` at path `me`: `restore` restores it there and
    /// attaches it to the driver (`Ok(Some(slot))`; `Ok(None)` when the
    /// driver refused it, which closes it). Then its flows are steered to
    /// `me` and the landing counted. A restore that fails sends the parcel
    /// back to its source, or, when this is the source taking it back,
    /// loses it: its flows are forgotten, so the peers' next segments meet
    /// a RST. Returns the slot of a connection taken back (the source does
    /// not offer it again in this switch).
    pub fn land<Id>(
        &self,
        me: Path,
        m: Moving,
        restore: impl FnOnce(Parcel) -> Result<Option<Id>, NotRestored>,
    ) -> Option<Id> {
        let Moving {
            parcel,
            from,
            started,
            take_back,
        } = m;
        let flows: Vec<Flow> = flows_of(&parcel).collect();
        let restored = if !take_back && self.restore_fails_on_purpose() {
            Err(Box::new((
                parcel,
                "failed on purpose (fault injection)".to_string(),
            )))
        } else {
            restore(parcel)
        };
        let steer = self.steer();
        let (how, kept) = match restored {
            Ok(Some(id)) => {
                for f in &flows {
                    if let Some(s) = steer
                        && let Err(e) = s.set(*f, FlowOwner::Path(me))
                    {
                        // Without an entry the flow follows the default,
                        // which is this path during its switch (not on a
                        // take-back: then the connection is cut off).
                        s.forget(*f);
                        tracing::error!(
                            flow = %f, error = %e, path = me.label(), follows_default = self.current() == me,
                            "cannot steer a moved flow here; its entry is removed"
                        );
                    }
                }
                if take_back {
                    (Landing::TakenBack, Some(id))
                } else {
                    (Landing::Moved, None)
                }
            }
            Ok(None) => (Landing::Failed, None),
            Err(b) if !take_back => {
                let (parcel, e) = *b;
                tracing::warn!(flow = %flows[0], error = %e, path = me.label(), "restore failed; its source takes it back");
                self.take_back(Moving {
                    parcel,
                    from,
                    started,
                    take_back,
                });
                return None;
            }
            Err(b) => {
                tracing::warn!(flow = %flows[0], error = %b.1, path = me.label(), "taking a connection back failed: it is lost");
                (Landing::Failed, None)
            }
        };
        if how == Landing::Failed
            && let Some(s) = steer
        {
            flows.iter().for_each(|f| s.forget(*f));
        }
        self.landed(
            from,
            me,
            how,
            Instant::now().saturating_duration_since(started),
        );
        kept
    }
}

/// How long a source keeps retrying slots that may become movable
/// (handshakes, backend connects) before they finish where they are.
pub const RETRY_FOR: Duration = Duration::from_secs(5);
/// How often a source retries them.
pub const RETRY_EVERY: Duration = Duration::from_millis(1);
/// Most parcels in flight at once: a source exports only while fewer are
/// on their way, so that a connection waits behind at most this many
/// restores (its pause stays short however many move), and the rest of
/// its connections keep being served between batches.
pub const WINDOW: usize = 16;

/// Why a slot offered for export did not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not now (e.g. a connection not ESTABLISHED yet): offered again.
    Later,
    /// Never (e.g. TCP timestamps, IPv6): it stays on this path, counted.
    Never,
}

/// A slot the transport did not export, given back ready to be attached
/// again, and why (boxed: it is large, and the path is rare).
pub type Unexported<C, B> = Box<(Detached<C, B>, Retry)>;

/// One path's view of the switches: tells its loop when to pin its flows
/// and export, and for how long, and runs the export batches.
#[derive(Debug)]
pub struct Station {
    me: Path,
    seen: u64,
    leaving: Option<Leaving>,
    /// Slots still to offer in this switch (taken from the driver once,
    /// when the switch begins), and those to offer again after a retry
    /// interval.
    queue: Vec<SlotId>,
    later: Vec<SlotId>,
    /// Slots not offered again in this switch (taken back, or unable to
    /// move).
    stay: HashSet<SlotId>,
}

#[derive(Debug, Clone, Copy)]
struct Leaving {
    to: Path,
    until: Instant,
    next: Instant,
    /// Slots were movable but the window was full: go on as soon as a
    /// parcel lands.
    blocked: bool,
    /// The queue is still to be taken from the driver.
    fill: bool,
}

impl Station {
    /// The station of path `me`.
    pub fn new(me: Path) -> Self {
        Self {
            me,
            seen: 0,
            leaving: None,
            queue: Vec::new(),
            later: Vec::new(),
            stay: HashSet::new(),
        }
    }

    /// Slot `id` (a connection taken back) is not offered again in this
    /// switch.
    pub fn keep(&mut self, id: SlotId) {
        self.stay.insert(id);
    }

    /// Whether a switch began that this station has not looked at (cheap:
    /// one atomic load).
    pub fn news<P>(&self, board: &SwitchBoard<P>) -> bool {
        board.epoch.load(Ordering::Acquire) != self.seen
    }

    /// When this station next wants [`Station::poll`] (a sleeping loop's
    /// timeout), if it is exporting.
    pub fn next_due(&self) -> Option<Instant> {
        self.leaving.map(|l| l.next)
    }

    /// Call every loop turn (or on [`Station::news`]). When a switch away
    /// from this path begins, `pin` is called with the steering to pin
    /// every flow this path owns (connections in every state), then the
    /// default flips. Returns the destination when a batch is due: run
    /// [`Station::export_batch`].
    pub fn poll<P>(
        &mut self,
        board: &SwitchBoard<P>,
        now: Instant,
        pin: impl FnOnce(&dyn Steer),
    ) -> Option<Path> {
        let epoch = board.epoch.load(Ordering::Acquire);
        if epoch != self.seen {
            self.seen = epoch;
            if let Some(to) = board.switching_to()
                && to != self.me
                && board.current() == self.me
            {
                if let Some(s) = board.steer() {
                    pin(s);
                }
                if let Err(e) = board.flip(to) {
                    tracing::error!(error = %e, "cannot flip the steering default; nothing moves");
                    board.source_done.store(true, Ordering::Release);
                    return None;
                }
                self.leaving = Some(Leaving {
                    to,
                    until: now + RETRY_FOR,
                    next: now,
                    blocked: false,
                    fill: true,
                });
                self.queue.clear();
                self.later.clear();
                self.stay.clear();
            }
        }
        let l = self.leaving?;
        (now >= l.next || (l.blocked && board.room() > 0)).then_some(l.to)
    }

    /// One export batch to `to` (see [`Station::poll`]): the slots of
    /// `driver` are offered, while the window has room, to `export`, which
    /// takes a detached slot out of `transport` (its parcel, or the slot
    /// back, ready to attach again, with why it stays). Parcels are mailed
    /// to `to`; slots handshaking or connecting are offered again after a
    /// retry interval, for up to [`RETRY_FOR`]. The driver's slots are
    /// listed once per switch, so a switch costs O(slots), whatever the
    /// window. Returns how many were mailed.
    pub fn export_batch<T: Transport>(
        &mut self,
        board: &SwitchBoard,
        to: Path,
        driver: &mut Driver<T>,
        transport: &mut T,
        now: Instant,
        mut export: impl FnMut(
            &mut T,
            Detached<T::Client, T::Backend>,
        ) -> Result<Parcel, Unexported<T::Client, T::Backend>>,
    ) -> usize {
        if let Some(l) = self.leaving.as_mut()
            && std::mem::take(&mut l.fill)
        {
            self.queue = driver.ids();
        }
        let room = board.room();
        let mut sent = 0;
        while sent < room {
            let Some(id) = self.queue.pop() else {
                break;
            };
            if self.stay.contains(&id) {
                continue;
            }
            match driver.movable(id) {
                Some(Movable::Now) => {}
                Some(Movable::Later) => {
                    self.later.push(id);
                    continue;
                }
                Some(Movable::Never) | None => continue,
            }
            let Some(d) = driver.detach(id) else {
                continue;
            };
            let started = Instant::now();
            match export(transport, d) {
                Ok(parcel) => {
                    let m = Moving {
                        parcel,
                        from: self.me,
                        started,
                        take_back: false,
                    };
                    board.send(to, m);
                    sent += 1;
                }
                Err(b) => {
                    let (d, why) = *b;
                    match (driver.attach(transport, d, now), why) {
                        (Some(new), Retry::Never) => {
                            board.metrics.count_stayed();
                            self.stay.insert(new);
                        }
                        (Some(new), Retry::Later) => self.later.push(new),
                        (None, _) => {
                            tracing::warn!(
                                path = self.me.label(),
                                "a connection that did not move could not stay either: closed"
                            );
                            board.metrics.count_lost();
                        }
                    }
                }
            }
        }
        let blocked = self.queue.len();
        let waiting = self.later.len();
        if blocked == 0 {
            // The next round offers the waiting ones again.
            std::mem::swap(&mut self.queue, &mut self.later);
        }
        self.exported(board, now, waiting, blocked);
        sent
    }

    /// A batch is done: `blocked` slots could move now but the window was
    /// full, `waiting` ones may become movable later. The export ends when
    /// neither remain, or only waiting ones after the retry time.
    pub fn exported<P>(
        &mut self,
        board: &SwitchBoard<P>,
        now: Instant,
        waiting: usize,
        blocked: usize,
    ) {
        let Some(l) = self.leaving.as_mut() else {
            return;
        };
        l.blocked = blocked > 0;
        if blocked > 0 {
            // Next batch when a parcel lands (the board wakes this path),
            // at the latest after a retry interval.
            l.next = now + RETRY_EVERY;
            return;
        }
        if waiting == 0 || now >= l.until {
            if waiting > 0 {
                tracing::info!(
                    waiting,
                    "slots still handshaking or connecting stay on the old path"
                );
            }
            self.leaving = None;
            board.source_done.store(true, Ordering::Release);
            return;
        }
        l.next = now + RETRY_EVERY;
    }
}

#[cfg(test)]
mod tests;
