//! The session affinity table: `Mcp-Session-Id` → backend index.
//!
//! Contract:
//! - Shared by every worker (`Arc<AffinityTable>`), so any worker routes
//!   any session. It is sharded by a hash of the id; each shard has its own
//!   mutex, held only for one map operation, so there is no global lock on
//!   the request path.
//! - Bounded: at most `max_sessions` entries, exactly (the capacity the
//!   metrics report). When full, a session that was **never used** after
//!   its `initialize` is evicted first (oldest first), so a flood of
//!   `initialize` evicts its own sessions, not the ones clients use; only
//!   when every session is in use does the least recently used one go.
//!   Every eviction is counted.
//! - Fair: each owner (a client address, or a token subject when auth is
//!   on) holds at most `max_per_owner` sessions; [`AffinityTable::owner_full`]
//!   tells the core to refuse another `initialize` (429) before it reaches
//!   a backend.
//! - Idle expiry: an entry unused for `idle_timeout` is treated as absent on
//!   lookup and removed by [`AffinityTable::sweep`]. Time is passed in.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

#[derive(Debug, Clone)]
struct Entry {
    backend: usize,
    last_used: Instant,
    /// Looked up or touched since it was bound.
    used: bool,
    /// Who created it (counted against its quota).
    owner: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Arc<str>, Entry>,
    /// Ids bound and not yet used, oldest first (lazily cleaned: an id may
    /// since have been used or removed).
    unused: VecDeque<Arc<str>>,
}

impl Shard {
    /// Remove and return the oldest entry that is still unused.
    fn pop_unused(&mut self) -> Option<(Arc<str>, Entry)> {
        while let Some(id) = self.unused.pop_front() {
            if self.map.get(&id).is_some_and(|e| !e.used) {
                let e = self.map.remove(&id)?;
                return Some((id, e));
            }
        }
        None
    }

    /// Remove and return the least recently used entry.
    fn pop_lru(&mut self) -> Option<(Arc<str>, Entry)> {
        let id = self
            .map
            .iter()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone())?;
        let e = self.map.remove(&id)?;
        Some((id, e))
    }
}

/// Counters the admin endpoint exports.
#[derive(Debug, Default)]
pub struct AffinityStats {
    /// Bindings learned from backend responses.
    pub learned: AtomicU64,
    /// Bindings removed after a client DELETE.
    pub deleted: AtomicU64,
    /// Bindings removed because the backend answered 404 or became unreachable.
    pub dropped: AtomicU64,
    /// Bindings removed by idle expiry.
    pub expired: AtomicU64,
    /// Bindings evicted because the table was full.
    pub evicted: AtomicU64,
    /// Of those, bindings that had been used (the table was full of
    /// sessions in use).
    pub evicted_used: AtomicU64,
    /// `initialize` requests refused because their owner held its quota.
    pub owner_refused: AtomicU64,
}

/// One listed session for the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// A short handle for the id that does not give it away (it is a bearer
    /// capability for the session): its first 8 characters when it is at
    /// least 32 long, else `sha256:` and 12 hex digits of its hash.
    pub id_prefix: String,
    /// Backend index.
    pub backend: usize,
    /// Time since last use.
    pub idle: Duration,
}

/// The handle `/sessions` shows for an id (see [`SessionInfo::id_prefix`]).
pub fn id_handle(id: &str) -> String {
    if id.len() >= 32 {
        return id.chars().take(8).collect();
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Sharded, bounded session → backend map.
#[derive(Debug)]
pub struct AffinityTable {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    max: usize,
    len: AtomicUsize,
    max_per_owner: usize,
    owners: Mutex<HashMap<Arc<str>, usize>>,
    idle_timeout: Duration,
    /// Counters.
    pub stats: AffinityStats,
}

impl AffinityTable {
    /// A table holding at most `max_sessions`, each owner at most
    /// `max_per_owner`, with the given idle expiry.
    pub fn new(max_sessions: usize, max_per_owner: usize, idle_timeout: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            max: max_sessions.max(1),
            len: AtomicUsize::new(0),
            max_per_owner: max_per_owner.max(1),
            owners: Mutex::new(HashMap::new()),
            idle_timeout,
            stats: AffinityStats::default(),
        }
    }

    fn shard_of(&self, id: &str) -> usize {
        (self.hasher.hash_one(id) as usize) % SHARDS
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A poisoned shard only means another worker panicked mid-insert;
        // the map itself is still consistent, so keep serving.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, id: &str) -> MutexGuard<'_, Shard> {
        self.lock(self.shard_of(id))
    }

    /// Whether `owner` already holds its quota of sessions: its next
    /// `initialize` is refused (and counted).
    pub fn owner_full(&self, owner: &str) -> bool {
        let full = self
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(owner)
            .is_some_and(|&n| n >= self.max_per_owner);
        if full {
            self.stats.owner_refused.fetch_add(1, Ordering::Relaxed);
        }
        full
    }

    fn owner_delta(&self, owner: &Option<Arc<str>>, add: bool) {
        let Some(o) = owner else { return };
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        if add {
            *owners.entry(o.clone()).or_insert(0) += 1;
        } else if let Some(n) = owners.get_mut(o) {
            *n -= 1;
            if *n == 0 {
                owners.remove(o);
            }
        }
    }

    /// An entry left the table (any reason).
    fn gone(&self, e: &Entry) {
        self.len.fetch_sub(1, Ordering::Relaxed);
        self.owner_delta(&e.owner, false);
    }

    /// Bind `id` to `backend` (replacing any earlier binding), with no owner
    /// (a session another proxy learned, seen here through a sealed id).
    pub fn bind(&self, id: &str, backend: usize, now: Instant) {
        self.bind_owned(id, backend, None, now);
    }

    /// Bind a new session `id` created by `owner`.
    pub fn bind_owned(&self, id: &str, backend: usize, owner: Option<&str>, now: Instant) {
        let i = self.shard_of(id);
        let replaced = self.lock(i).map.remove(id);
        if let Some(old) = &replaced {
            self.gone(old);
        }
        while self.len.load(Ordering::Relaxed) >= self.max && self.evict_one(i) {}
        let entry = Entry {
            backend,
            last_used: now,
            used: false,
            owner: owner.map(Arc::from),
        };
        self.owner_delta(&entry.owner, true);
        let id: Arc<str> = Arc::from(id);
        let mut shard = self.lock(i);
        shard.unused.push_back(id.clone());
        if shard.unused.len() > 2 * shard.map.len() + 64 {
            // Compact the lazily cleaned queue.
            let map = std::mem::take(&mut shard.map);
            shard.unused.retain(|k| map.get(k).is_some_and(|e| !e.used));
            shard.map = map;
        }
        shard.map.insert(id, entry);
        drop(shard);
        self.len.fetch_add(1, Ordering::Relaxed);
        self.stats.learned.fetch_add(1, Ordering::Relaxed);
    }

    /// Make room for one: an unused session first (this shard, then the
    /// others), else the least recently used one of this shard. False when
    /// the table is empty.
    fn evict_one(&self, home: usize) -> bool {
        let victim = (0..SHARDS)
            .map(|k| (home + k) % SHARDS)
            .find_map(|i| self.lock(i).pop_unused())
            .map(|(_, e)| (e, false))
            .or_else(|| self.pop_global_lru().map(|e| (e, true)));
        let Some((e, used)) = victim else {
            return false;
        };
        self.gone(&e);
        self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        if used {
            self.stats.evicted_used.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Remove the least recently used entry of the whole table (every
    /// session is in use: the table is full of real work).
    fn pop_global_lru(&self) -> Option<Entry> {
        let oldest = (0..SHARDS)
            .filter_map(|i| {
                let t = self.lock(i).map.values().map(|e| e.last_used).min()?;
                Some((i, t))
            })
            .min_by_key(|(_, t)| *t)?;
        self.lock(oldest.0).pop_lru().map(|(_, e)| e)
    }

    /// The backend bound to `id`, refreshing its idle timer. An expired
    /// entry is removed and reported as absent.
    pub fn lookup(&self, id: &str, now: Instant) -> Option<usize> {
        let mut shard = self.shard(id);
        let e = shard.map.get_mut(id)?;
        if now.saturating_duration_since(e.last_used) >= self.idle_timeout {
            let e = shard.map.remove(id)?;
            drop(shard);
            self.gone(&e);
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        e.last_used = now;
        e.used = true;
        Some(e.backend)
    }

    /// Keep the binding alive without a lookup (long SSE streams).
    pub fn touch(&self, id: &str, now: Instant) {
        if let Some(e) = self.shard(id).map.get_mut(id) {
            e.last_used = now;
            e.used = true;
        }
    }

    fn remove(&self, id: &str) -> bool {
        let removed = self.shard(id).map.remove(id);
        if let Some(e) = &removed {
            self.gone(e);
        }
        removed.is_some()
    }

    /// Remove `id` after a client DELETE.
    pub fn remove_deleted(&self, id: &str) {
        if self.remove(id) {
            self.stats.deleted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remove `id` because its backend no longer knows it.
    pub fn remove_dropped(&self, id: &str) {
        if self.remove(id) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remove every entry idle for at least the idle timeout. Returns how
    /// many went.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut gone = Vec::new();
        for i in 0..SHARDS {
            let mut s = self.lock(i);
            let idle = self.idle_timeout;
            s.map.retain(|_, e| {
                let keep = now.saturating_duration_since(e.last_used) < idle;
                if !keep {
                    gone.push(e.clone());
                }
                keep
            });
        }
        for e in &gone {
            self.gone(e);
        }
        self.stats
            .expired
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        gone.len()
    }

    /// Number of live bindings.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most entries, as configured.
    pub fn capacity(&self) -> usize {
        self.max
    }

    /// Most sessions one owner may hold.
    pub fn max_per_owner(&self) -> usize {
        self.max_per_owner
    }

    /// A snapshot of at most `limit` sessions for the admin endpoint.
    pub fn list(&self, now: Instant, limit: usize) -> Vec<SessionInfo> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let s = self.lock(i);
            for (id, e) in s.map.iter() {
                if out.len() >= limit {
                    return out;
                }
                out.push(SessionInfo {
                    id_prefix: id_handle(id),
                    backend: e.backend,
                    idle: now.saturating_duration_since(e.last_used),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_lookup_remove() {
        let t = AffinityTable::new(100, 100, Duration::from_secs(60));
        let now = Instant::now();
        t.bind("s1", 2, now);
        assert_eq!(t.lookup("s1", now), Some(2));
        assert_eq!(t.lookup("s2", now), None);
        t.remove_deleted("s1");
        assert_eq!(t.lookup("s1", now), None);
        assert_eq!(t.stats.deleted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn idle_expiry() {
        let t = AffinityTable::new(100, 100, Duration::from_secs(60));
        let t0 = Instant::now();
        t.bind("a", 0, t0);
        t.bind("b", 1, t0);
        assert_eq!(t.lookup("a", t0 + Duration::from_secs(59)), Some(0));
        // "a" was refreshed at 59 s, "b" was not.
        assert_eq!(t.sweep(t0 + Duration::from_secs(60)), 1);
        assert_eq!(t.lookup("b", t0 + Duration::from_secs(60)), None);
        assert_eq!(t.lookup("a", t0 + Duration::from_secs(118)), Some(0));
        assert_eq!(t.lookup("a", t0 + Duration::from_secs(178)), None);
    }

    #[test]
    fn bounded_at_capacity() {
        let t = AffinityTable::new(SHARDS, SHARDS, Duration::from_secs(600));
        let t0 = Instant::now();
        let cap = t.capacity();
        for i in 0..cap * 4 {
            t.bind(
                &format!("s{i}"),
                i % 3,
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert!(t.len() <= cap, "len {} cap {cap}", t.len());
        assert_eq!(
            t.stats.evicted.load(Ordering::Relaxed) as usize,
            cap * 4 - t.len()
        );
        // The newest binding always survives.
        let last = format!("s{}", cap * 4 - 1);
        assert!(t.lookup(&last, t0 + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn shared_across_threads() {
        let t = std::sync::Arc::new(AffinityTable::new(10_000, 10_000, Duration::from_secs(60)));
        let now = Instant::now();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        t.bind(&format!("w{w}-{i}"), w, now);
                    }
                })
            })
            .collect();
        for h in writers {
            h.join().unwrap();
        }
        for w in 0..4 {
            for i in 0..500 {
                assert_eq!(t.lookup(&format!("w{w}-{i}"), now), Some(w));
            }
        }
    }

    #[test]
    fn capacity_is_exact_and_floods_evict_unused_sessions_first() {
        let t = AffinityTable::new(50, 1000, Duration::from_secs(600));
        assert_eq!(t.capacity(), 50);
        let t0 = Instant::now();
        // Ten sessions in use ...
        for i in 0..10 {
            t.bind_owned(&format!("used{i}"), 1, Some("alice"), t0);
            assert_eq!(t.lookup(&format!("used{i}"), t0), Some(1));
        }
        // ... and a flood of initializes that are never used.
        for i in 0..1000 {
            t.bind_owned(
                &format!("flood{i}"),
                0,
                Some("mallory"),
                t0 + Duration::from_millis(i),
            );
            assert!(t.len() <= 50, "{}", t.len());
        }
        assert_eq!(t.len(), 50);
        for i in 0..10 {
            assert_eq!(
                t.lookup(&format!("used{i}"), t0),
                Some(1),
                "used{i} evicted"
            );
        }
        assert_eq!(t.stats.evicted_used.load(Ordering::Relaxed), 0);
        // The newest of the flood survives; its oldest went first.
        assert!(t.lookup("flood999", t0).is_some());
        assert!(t.lookup("flood0", t0).is_none());
        // With every session in use, the least recently used one goes.
        let t = AffinityTable::new(2, 10, Duration::from_secs(600));
        t.bind("a", 0, t0);
        t.bind("b", 0, t0);
        t.lookup("a", t0 + Duration::from_secs(2));
        t.lookup("b", t0 + Duration::from_secs(1));
        t.bind("c", 0, t0 + Duration::from_secs(3));
        assert!(t.lookup("b", t0).is_none() && t.lookup("a", t0).is_some());
        assert_eq!(t.stats.evicted_used.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn each_owner_has_a_quota() {
        let t = AffinityTable::new(100, 3, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..3 {
            assert!(!t.owner_full("10.0.0.1"));
            t.bind_owned(&format!("s{i}"), 0, Some("10.0.0.1"), now);
        }
        assert!(t.owner_full("10.0.0.1"));
        assert!(!t.owner_full("10.0.0.2"), "another owner is not affected");
        t.remove_deleted("s0");
        assert!(!t.owner_full("10.0.0.1"), "a DELETE frees a place");
        t.bind_owned("s3", 0, Some("10.0.0.1"), now);
        t.sweep(now + Duration::from_secs(61));
        assert!(!t.owner_full("10.0.0.1"), "expiry frees places");
        assert_eq!(t.stats.owner_refused.load(Ordering::Relaxed), 1);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn listed_ids_are_never_given_away() {
        let long = "0123456789abcdef0123456789abcdef0123";
        assert_eq!(id_handle(long), "01234567");
        let short = id_handle("abc12345");
        assert!(short.starts_with("sha256:") && short.len() == 19, "{short}");
        assert!(!short.contains("abc12345"));
    }
}
