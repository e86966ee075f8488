//! The backend set: names, addresses, health and load, shared by every
//! worker and lcore.
//!
//! Contract:
//! - A backend's identity is its **name** (`--backend NAME=host:port`; the
//!   default name is `host:port`). Sealed session ids carry the name, so
//!   reordering or adding backends never reroutes a session.
//! - Indexes are stable: the set only grows (at most [`MAX_BACKENDS`]
//!   entries over the process's life); a backend taken out by a reload is
//!   marked [`BackendState::Removed`] and its index is never reused, so
//!   pools, in-flight requests and affinity entries that hold an index stay
//!   valid. Reads take no lock.
//! - [`Backends::pick_round_robin`] returns the next healthy, active
//!   backend in turn (new handshake-era sessions), skipping any in
//!   `exclude` (backends that already failed for this request).
//! - [`Backends::pick_least_outstanding`] returns the healthy, active
//!   backend with the fewest requests in flight, ties broken round-robin
//!   (stateless requests).
//! - A **draining** backend keeps its sessions but gets no new ones; a
//!   **removed** one gets no request at all (its sessions end with 404).
//! - Health changes come from the data path: a failed connect marks a
//!   backend down, so neither pick returns it (requests of sessions already
//!   bound to it still go there); a successful probe or connect marks it up.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

/// Most backends a proxy can know over its life (a reload that would go
/// past it is refused).
pub const MAX_BACKENDS: usize = 1024;

/// Where a backend is in its configured life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Takes new sessions and stateless requests.
    Active = 0,
    /// Keeps its sessions; gets nothing new.
    Draining = 1,
    /// Gone from the configuration: no request goes there.
    Removed = 2,
}

impl BackendState {
    /// Label for metrics and `/backends`.
    pub fn label(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Removed => "removed",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => BackendState::Active,
            1 => BackendState::Draining,
            _ => BackendState::Removed,
        }
    }
}

/// One configured backend, as the caller resolved it (the core does no
/// name resolution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Stable identity (default: `addr`).
    pub name: String,
    /// `host:port` as configured.
    pub addr: String,
    /// The address to connect to.
    pub socket: SocketAddr,
    /// Keep its sessions, give it nothing new.
    pub drain: bool,
}

impl BackendSpec {
    /// A backend named after its address. An address that is not a
    /// literal `IP:port` gets the unspecified socket address (tests of the
    /// core that never connect).
    pub fn from_addr(addr: impl Into<String>) -> Self {
        let addr = addr.into();
        let socket = addr
            .parse()
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        Self {
            name: addr.clone(),
            addr,
            socket,
            drain: false,
        }
    }
}

impl From<String> for BackendSpec {
    fn from(addr: String) -> Self {
        Self::from_addr(addr)
    }
}

/// One backend's shared state.
#[derive(Debug)]
pub struct Backend {
    /// Stable identity (metric label, sealed session ids).
    pub name: String,
    /// `host:port` as configured (logs).
    pub addr: String,
    /// The address the data paths connect to.
    pub socket: SocketAddr,
    state: AtomicU8,
    healthy: AtomicBool,
    outstanding: AtomicUsize,
    /// Requests forwarded to this backend.
    pub requests: AtomicU64,
    /// Connect failures seen.
    pub connect_failures: AtomicU64,
}

impl Backend {
    fn new(spec: BackendSpec) -> Self {
        let state = if spec.drain {
            BackendState::Draining
        } else {
            BackendState::Active
        };
        Self {
            name: spec.name,
            addr: spec.addr,
            socket: spec.socket,
            state: AtomicU8::new(state as u8),
            healthy: AtomicBool::new(true),
            outstanding: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        }
    }

    /// Whether it is up (connects succeed); requests of sessions already
    /// bound to it ignore this.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Active, draining or removed.
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Whether the picks may choose it: active and healthy.
    pub fn takes_new(&self) -> bool {
        self.state() == BackendState::Active && self.is_healthy()
    }

    /// Requests currently in flight.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Names added.
    pub added: Vec<String>,
    /// Names removed.
    pub removed: Vec<String>,
    /// Names now draining.
    pub draining: Vec<String>,
    /// Names active again after draining.
    pub undrained: Vec<String>,
}

/// Why a reload was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// Two backends share a name.
    #[error("backend name {0:?} is used twice")]
    DuplicateName(String),
    /// The set would outgrow [`MAX_BACKENDS`].
    #[error("more than {MAX_BACKENDS} backends over the proxy's life; restart it")]
    Full,
}

/// Every backend the proxy has known.
#[derive(Debug)]
pub struct Backends {
    slots: Box<[OnceLock<Backend>]>,
    len: AtomicUsize,
    next: AtomicUsize,
    /// Name → index of its current (not removed) backend.
    by_name: RwLock<HashMap<String, usize>>,
    /// Reloads are serialized.
    update: Mutex<()>,
}

impl Backends {
    /// The configured backends, in order; all start healthy. Duplicate
    /// names keep the first.
    pub fn new<I, S>(specs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<BackendSpec>,
    {
        let b = Self {
            slots: (0..MAX_BACKENDS).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            by_name: RwLock::new(HashMap::new()),
            update: Mutex::new(()),
        };
        for spec in specs.into_iter().map(Into::into) {
            if b.index_of(&spec.name).is_none() {
                let _ = b.push(spec);
            }
        }
        b
    }

    fn push(&self, spec: BackendSpec) -> Result<usize, ReloadError> {
        let i = self.len.load(Ordering::Acquire);
        let slot = self.slots.get(i).ok_or(ReloadError::Full)?;
        let name = spec.name.clone();
        let _ = slot.set(Backend::new(spec));
        self.len.store(i + 1, Ordering::Release);
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, i);
        Ok(i)
    }

    /// Number of backends ever configured (removed ones included): every
    /// index below it is valid.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Backend by index. Panics on an index not handed out by this set.
    pub fn get(&self, i: usize) -> &Backend {
        self.slots[..self.len()][i]
            .get()
            .expect("indexes below len are set")
    }

    /// Every backend ever configured, by index.
    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.slots[..self.len()].iter().filter_map(OnceLock::get)
    }

    /// The index of the current (not removed) backend named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    /// Next healthy, active backend round-robin, not in `exclude`.
    pub fn pick_round_robin(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| self.get(*i).takes_new() && !exclude.contains(i))
    }

    /// Healthy, active backend with the fewest requests in flight, not in
    /// `exclude`.
    pub fn pick_least_outstanding(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| self.get(*i).takes_new() && !exclude.contains(i))
            .min_by_key(|i| self.get(*i).outstanding())
    }

    /// Mark a backend down after a failed connect. Returns true when this
    /// call changed its state.
    pub fn mark_down(&self, i: usize) -> bool {
        let b = self.get(i);
        b.connect_failures.fetch_add(1, Ordering::Relaxed);
        b.healthy.swap(false, Ordering::Relaxed)
    }

    /// Mark a backend up after a successful probe or connect. Returns true
    /// when this call changed its state.
    pub fn mark_up(&self, i: usize) -> bool {
        !self.get(i).healthy.swap(true, Ordering::Relaxed)
    }

    /// A request was sent to backend `i`.
    pub fn request_started(&self, i: usize) {
        let b = self.get(i);
        b.outstanding.fetch_add(1, Ordering::Relaxed);
        b.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A request to backend `i` finished (answered or aborted).
    pub fn request_finished(&self, i: usize) {
        // Saturating: a spurious call must not wrap the gauge.
        let _ = self
            .get(i)
            .outstanding
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// Make the set match `specs`: new names are added, missing ones
    /// removed, `drain` set or cleared; a name whose address changed is
    /// removed and added again (a new index). Nothing changes on an error.
    pub fn apply(&self, specs: &[BackendSpec]) -> Result<ReloadSummary, ReloadError> {
        let _serial = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        let mut fresh = 0;
        for s in specs {
            if !seen.insert(s.name.as_str()) {
                return Err(ReloadError::DuplicateName(s.name.clone()));
            }
            let same = self
                .index_of(&s.name)
                .is_some_and(|i| self.get(i).socket == s.socket && self.get(i).addr == s.addr);
            fresh += usize::from(!same);
        }
        if self.len() + fresh > MAX_BACKENDS {
            return Err(ReloadError::Full);
        }
        let mut summary = ReloadSummary::default();
        self.remove_missing(specs, &mut summary);
        for s in specs {
            self.apply_one(s, &mut summary)?;
        }
        Ok(summary)
    }

    /// Remove every current backend whose name `specs` no longer has.
    fn remove_missing(&self, specs: &[BackendSpec], summary: &mut ReloadSummary) {
        let current: Vec<(String, usize)> = self
            .by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        for (name, i) in current {
            if !specs.iter().any(|s| s.name == name) {
                self.retire(&name, i);
                summary.removed.push(name);
            }
        }
    }

    fn retire(&self, name: &str, i: usize) {
        self.get(i)
            .state
            .store(BackendState::Removed as u8, Ordering::Relaxed);
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    fn apply_one(&self, s: &BackendSpec, summary: &mut ReloadSummary) -> Result<(), ReloadError> {
        let wanted = if s.drain {
            BackendState::Draining
        } else {
            BackendState::Active
        };
        if let Some(i) = self.index_of(&s.name) {
            let b = self.get(i);
            if b.socket == s.socket && b.addr == s.addr {
                let was = BackendState::from_u8(b.state.swap(wanted as u8, Ordering::Relaxed));
                match (was, wanted) {
                    (BackendState::Active, BackendState::Draining) => {
                        summary.draining.push(s.name.clone())
                    }
                    (BackendState::Draining, BackendState::Active) => {
                        summary.undrained.push(s.name.clone())
                    }
                    _ => {}
                }
                return Ok(());
            }
            // Same name, new address: the old one goes, the new one comes.
            self.retire(&s.name, i);
            summary.removed.push(s.name.clone());
        }
        self.push(s.clone())?;
        summary.added.push(s.name.clone());
        if s.drain {
            summary.draining.push(s.name.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Backends {
        Backends::new(["a:1", "b:2", "c:3"].map(String::from))
    }

    fn spec(name: &str, addr: &str, drain: bool) -> BackendSpec {
        BackendSpec {
            name: name.into(),
            drain,
            ..BackendSpec::from_addr(addr)
        }
    }

    #[test]
    fn reload_adds_drains_removes_and_keeps_indexes() {
        let b = Backends::new([
            spec("b1", "10.0.0.1:1", false),
            spec("b2", "10.0.0.2:1", false),
        ]);
        let s = b
            .apply(&[
                spec("b2", "10.0.0.2:1", true),
                spec("b3", "10.0.0.3:1", false),
            ])
            .unwrap();
        assert_eq!(s.added, ["b3"]);
        assert_eq!(s.removed, ["b1"]);
        assert_eq!(s.draining, ["b2"]);
        assert_eq!(b.len(), 3, "indexes are never reused");
        assert_eq!(b.get(0).state(), BackendState::Removed);
        assert_eq!(b.get(1).state(), BackendState::Draining);
        assert_eq!(b.index_of("b1"), None);
        assert_eq!(b.index_of("b2"), Some(1));
        assert_eq!(b.index_of("b3"), Some(2));
        // Only the active one takes new work.
        for _ in 0..4 {
            assert_eq!(b.pick_round_robin(&[]), Some(2));
            assert_eq!(b.pick_least_outstanding(&[]), Some(2));
        }
        // Same name, new address: a new index; the old one is removed.
        let s = b
            .apply(&[
                spec("b2", "10.0.0.2:1", false),
                spec("b3", "10.0.0.9:1", false),
            ])
            .unwrap();
        assert_eq!(
            (s.added.as_slice(), s.undrained.as_slice()),
            (&["b3".to_string()][..], &["b2".to_string()][..])
        );
        assert_eq!(b.index_of("b3"), Some(3));
        assert_eq!(b.get(2).state(), BackendState::Removed);
        // A bad list changes nothing.
        let before = b.len();
        assert_eq!(
            b.apply(&[
                spec("x", "10.0.0.1:1", false),
                spec("x", "10.0.0.2:1", false)
            ]),
            Err(ReloadError::DuplicateName("x".into()))
        );
        assert_eq!(b.len(), before);
        assert_eq!(b.index_of("b2"), Some(1));
    }

    #[test]
    fn reload_past_capacity_is_refused() {
        let b = Backends::new([spec("b0", "10.0.0.1:1", false)]);
        let many: Vec<_> = (0..MAX_BACKENDS)
            .map(|i| spec(&format!("n{i}"), "10.0.0.1:2", false))
            .collect();
        assert_eq!(b.apply(&many), Err(ReloadError::Full));
        assert_eq!(b.index_of("b0"), Some(0));
    }

    #[test]
    fn round_robin_skips_down_and_excluded() {
        let b = three();
        let picks: Vec<_> = (0..6).map(|_| b.pick_round_robin(&[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        b.mark_down(1);
        let picks: Vec<_> = (0..4).map(|_| b.pick_round_robin(&[]).unwrap()).collect();
        assert!(!picks.contains(&1));
        assert!(picks.contains(&0) && picks.contains(&2));
        assert_eq!(b.pick_round_robin(&[0, 2]), None);
        b.mark_down(0);
        b.mark_down(2);
        assert_eq!(b.pick_round_robin(&[]), None);
        assert!(b.mark_up(2));
        assert_eq!(b.pick_round_robin(&[]), Some(2));
    }

    #[test]
    fn least_outstanding() {
        let b = three();
        b.request_started(0);
        b.request_started(0);
        b.request_started(1);
        assert_eq!(b.pick_least_outstanding(&[]), Some(2));
        b.request_started(2);
        b.request_started(2);
        assert_eq!(b.pick_least_outstanding(&[]), Some(1));
        b.request_finished(0);
        b.request_finished(0);
        b.request_finished(0); // spurious: stays at zero
        assert_eq!(b.get(0).outstanding(), 0);
        assert_eq!(b.pick_least_outstanding(&[]), Some(0));
    }
}
