//! The session affinity table: `Mcp-Session-Id` → backend index.
//!
//! Contract:
//! - Shared by every worker (`Arc<AffinityTable>`), so any worker routes
//!   any session. It is sharded by a hash of the id; each shard has its own
//!   mutex, held only for one map operation, so there is no global lock.
//! - Bounded: at most `max_sessions` entries. When a shard is full, expired
//!   entries go first, then the least recently used one; every eviction is
//!   counted.
//! - Idle expiry: an entry unused for `idle_timeout` is treated as absent on
//!   lookup and removed by [`AffinityTable::sweep`]. Time is passed in.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Entry {
    backend: usize,
    last_used: Instant,
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
}

/// One listed session for the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The first 8 characters of the id (never the whole id: it is a bearer
    /// capability for the session).
    pub id_prefix: String,
    /// Backend index.
    pub backend: usize,
    /// Time since last use.
    pub idle: Duration,
}

/// Sharded, bounded session → backend map.
#[derive(Debug)]
pub struct AffinityTable {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    hasher: RandomState,
    per_shard_cap: usize,
    idle_timeout: Duration,
    /// Counters.
    pub stats: AffinityStats,
}

impl AffinityTable {
    /// A table holding at most `max_sessions` (rounded up to a multiple of
    /// the shard count) with the given idle expiry.
    pub fn new(max_sessions: usize, idle_timeout: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard_cap: max_sessions.div_ceil(SHARDS).max(1),
            idle_timeout,
            stats: AffinityStats::default(),
        }
    }

    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        let i = (self.hasher.hash_one(id) as usize) % SHARDS;
        // A poisoned shard only means another worker panicked mid-insert;
        // the map itself is still consistent, so keep serving.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bind `id` to `backend` (replacing any earlier binding).
    pub fn bind(&self, id: &str, backend: usize, now: Instant) {
        let mut shard = self.shard(id);
        if !shard.contains_key(id) && shard.len() >= self.per_shard_cap {
            let before = shard.len();
            let idle = self.idle_timeout;
            shard.retain(|_, e| now.saturating_duration_since(e.last_used) < idle);
            let expired = before - shard.len();
            self.stats
                .expired
                .fetch_add(expired as u64, Ordering::Relaxed);
            if shard.len() >= self.per_shard_cap
                && let Some(oldest) = shard
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone())
            {
                shard.remove(&oldest);
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        shard.insert(
            id.to_string(),
            Entry {
                backend,
                last_used: now,
            },
        );
        self.stats.learned.fetch_add(1, Ordering::Relaxed);
    }

    /// The backend bound to `id`, refreshing its idle timer. An expired
    /// entry is removed and reported as absent.
    pub fn lookup(&self, id: &str, now: Instant) -> Option<usize> {
        let mut shard = self.shard(id);
        let e = shard.get_mut(id)?;
        if now.saturating_duration_since(e.last_used) >= self.idle_timeout {
            shard.remove(id);
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        e.last_used = now;
        Some(e.backend)
    }

    /// Keep the binding alive without a lookup (long SSE streams).
    pub fn touch(&self, id: &str, now: Instant) {
        if let Some(e) = self.shard(id).get_mut(id) {
            e.last_used = now;
        }
    }

    /// Remove `id` after a client DELETE.
    pub fn remove_deleted(&self, id: &str) {
        if self.shard(id).remove(id).is_some() {
            self.stats.deleted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remove `id` because its backend no longer knows it.
    pub fn remove_dropped(&self, id: &str) {
        if self.shard(id).remove(id).is_some() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remove every entry idle for at least the idle timeout. Returns how
    /// many went.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut n = 0;
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.len();
            s.retain(|_, e| now.saturating_duration_since(e.last_used) < self.idle_timeout);
            n += before - s.len();
        }
        self.stats.expired.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Number of live bindings.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Upper bound on entries.
    pub fn capacity(&self) -> usize {
        self.per_shard_cap * SHARDS
    }

    /// A snapshot of at most `limit` sessions for the admin endpoint.
    pub fn list(&self, now: Instant, limit: usize) -> Vec<SessionInfo> {
        let mut out = Vec::new();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            for (id, e) in s.iter() {
                if out.len() >= limit {
                    return out;
                }
                out.push(SessionInfo {
                    id_prefix: id.chars().take(8).collect(),
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
        let t = AffinityTable::new(100, Duration::from_secs(60));
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
        let t = AffinityTable::new(100, Duration::from_secs(60));
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
        let t = AffinityTable::new(SHARDS, Duration::from_secs(600));
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
        let t = std::sync::Arc::new(AffinityTable::new(10_000, Duration::from_secs(60)));
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
}
