//! Idle backend connections kept for reuse: without them every request
//! would cost a TCP handshake and leave a TIME-WAIT record on an ephemeral
//! port.

use std::time::Instant;

use crate::metrics::PathMetrics;
use crate::transport::{Close, Transport};

struct Idle<B> {
    conn: B,
    since: Instant,
}

/// Idle connections per backend index, newest last.
pub(crate) struct BackendPool<B> {
    lists: Vec<Vec<Idle<B>>>,
}

impl<B> BackendPool<B> {
    pub(crate) fn new(backends: usize) -> Self {
        Self {
            lists: (0..backends).map(|_| Vec::new()).collect(),
        }
    }

    /// Connections held.
    pub(crate) fn len(&self) -> usize {
        self.lists.iter().map(Vec::len).sum()
    }

    /// Keep `conn` for reuse unless the backend's list is full (then it is
    /// closed).
    pub(crate) fn put<T: Transport<Backend = B>>(
        &mut self,
        t: &mut T,
        backend: usize,
        mut conn: B,
        now: Instant,
        max: usize,
    ) {
        // Backends added by a reload get their list on first use.
        if backend >= self.lists.len() && backend < dpuproxy_l7::backends::MAX_BACKENDS {
            self.lists.resize_with(backend + 1, Vec::new);
        }
        match self.lists.get_mut(backend) {
            Some(list) if list.len() < max => {
                t.park(&mut conn);
                list.push(Idle { conn, since: now });
            }
            _ => t.close_backend(conn, Close::Graceful),
        }
    }

    /// The newest live connection to `backend` younger than `max_idle`;
    /// expired and dead ones met on the way are closed.
    pub(crate) fn take<T: Transport<Backend = B>>(
        &mut self,
        t: &mut T,
        backend: usize,
        now: Instant,
        max_idle: std::time::Duration,
        metrics: &PathMetrics,
    ) -> Option<B> {
        let list = self.lists.get_mut(backend)?;
        while let Some(mut idle) = list.pop() {
            if now.saturating_duration_since(idle.since) >= max_idle {
                PathMetrics::inc(&metrics.pool_expired);
                t.close_backend(idle.conn, Close::Graceful);
                continue;
            }
            if t.idle_alive(&mut idle.conn) {
                return Some(idle.conn);
            }
            PathMetrics::inc(&metrics.pool_dead);
            t.close_backend(idle.conn, Close::Abort);
        }
        None
    }

    /// Close every connection idle for `max_idle` or longer.
    pub(crate) fn expire<T: Transport<Backend = B>>(
        &mut self,
        t: &mut T,
        now: Instant,
        max_idle: std::time::Duration,
        metrics: &PathMetrics,
    ) {
        for list in &mut self.lists {
            // Oldest first: stop at the first one still young.
            let old = list
                .iter()
                .take_while(|i| now.saturating_duration_since(i.since) >= max_idle)
                .count();
            for idle in list.drain(..old) {
                PathMetrics::inc(&metrics.pool_expired);
                t.close_backend(idle.conn, Close::Graceful);
            }
        }
    }

    /// Close everything (shutdown).
    pub(crate) fn clear<T: Transport<Backend = B>>(&mut self, t: &mut T, how: Close) {
        for list in &mut self.lists {
            for idle in list.drain(..) {
                t.close_backend(idle.conn, how);
            }
        }
    }
}
