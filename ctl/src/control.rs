//! Changes to a running proxy without a restart: reloading the backend
//! list and the session keys (SIGHUP, `POST /reload`, a changed key file),
//! and the graceful drain (SIGTERM, `POST /drain`).
//!
//! A reload reads everything first (the config file's backend list, every
//! address, the session key file) and applies nothing unless all of it is
//! good: a config that does not parse is refused with the error logged,
//! and the old configuration stays. Established client connections and SSE
//! streams are not touched by a reload.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use dpuproxy_bench::background::Background;
use dpuproxy_l7::{BackendSpec, Shared};

use crate::config::{BackendConf, FileConfig, RunConfig, check_backends};

/// Reload counters for the admin endpoint.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Reloads applied.
    pub reloads_ok: AtomicU64,
    /// Reloads refused (nothing changed).
    pub reloads_failed: AtomicU64,
}

/// The live controls of one running proxy.
#[derive(Debug)]
pub struct Control {
    config_path: Option<PathBuf>,
    /// `--backend` given: reloads keep this list.
    cli_backends: Option<Vec<BackendConf>>,
    ipv4_only: bool,
    shared: Arc<Shared>,
    session_key: Option<PathBuf>,
    /// Counters.
    pub stats: ControlStats,
    draining: AtomicBool,
    drain_started: Mutex<Option<Instant>>,
    /// Longest drain.
    pub drain_timeout: Duration,
}

/// Resolve every backend (IPv4 only for the DPDK path).
pub fn resolve_backends(
    confs: &[BackendConf],
    ipv4_only: bool,
) -> anyhow::Result<Vec<BackendSpec>> {
    confs.iter().map(|c| c.resolve(ipv4_only)).collect()
}

/// The secrets of a session key file (the current one, then optionally the
/// previous one), checked.
pub fn load_session_secrets(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read session key file {}", path.display()))?;
    let secrets = dpuproxy_l7::seal::parse_key_file(&text)
        .map_err(|e| anyhow::anyhow!("session key file {}: {e}", path.display()))?;
    dpuproxy_l7::seal::Sealer::new(&secrets)
        .with_context(|| format!("session key file {}", path.display()))?;
    Ok(secrets)
}

impl Control {
    /// Controls for a proxy started from `cfg` (read from `config_path`).
    pub fn new(
        cfg: &RunConfig,
        config_path: Option<PathBuf>,
        shared: Arc<Shared>,
        ipv4_only: bool,
    ) -> Self {
        Self {
            config_path,
            cli_backends: cfg.backends_from_cli.then(|| cfg.backends.clone()),
            ipv4_only,
            shared,
            session_key: cfg.session_key.clone(),
            stats: ControlStats::default(),
            draining: AtomicBool::new(false),
            drain_started: Mutex::new(None),
            drain_timeout: cfg.drain_timeout,
        }
    }

    /// Re-read the backend list and the session keys and apply them; on
    /// any error nothing changes. Logged and counted either way.
    pub fn reload(&self, why: &str) -> anyhow::Result<String> {
        let r = self.reload_inner();
        match &r {
            Ok(summary) => {
                self.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(reason = why, "reloaded: {summary}");
            }
            Err(e) => {
                self.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    reason = why,
                    "reload refused, the old configuration stays: {e:#}"
                );
            }
        }
        r
    }

    fn reload_inner(&self) -> anyhow::Result<String> {
        let confs = match (&self.cli_backends, &self.config_path) {
            (Some(cli), _) => cli.clone(),
            (None, Some(p)) => {
                let file = FileConfig::load(p)?;
                let entries = file.backends.unwrap_or_default();
                if entries.is_empty() {
                    anyhow::bail!("{} lists no backends", p.display());
                }
                check_backends(&entries)?
            }
            (None, None) => anyhow::bail!("no config file to reload from"),
        };
        let specs = resolve_backends(&confs, self.ipv4_only)?;
        let secrets = match &self.session_key {
            Some(p) => Some(load_session_secrets(p)?),
            None => None,
        };
        let summary = self.shared.backends.apply(&specs)?;
        if let (Some(sealer), Some(secrets)) = (&self.shared.sealer, secrets) {
            sealer.rotate(&secrets)?;
        }
        Ok(format!(
            "backends added {:?}, removed {:?}, draining {:?}, active again {:?}{}",
            summary.added,
            summary.removed,
            summary.draining,
            summary.undrained,
            if self.cli_backends.is_some() {
                " (the backend list comes from --backend; the file's is not used)"
            } else {
                ""
            }
        ))
    }

    /// Re-read only the session key file (it changed on disk).
    pub fn rotate_session_keys(&self) {
        let (Some(sealer), Some(p)) = (&self.shared.sealer, &self.session_key) else {
            return;
        };
        match load_session_secrets(p).and_then(|s| Ok(sealer.rotate(&s)?)) {
            Ok(()) => {
                self.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = %p.display(), "session keys reloaded");
            }
            Err(e) => {
                self.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("session key reload refused, the old keys stay: {e:#}");
            }
        }
    }

    /// Begin the graceful drain (idempotent): `/healthz` says `draining` at
    /// once; the data path stops accepting and closes each connection after
    /// its request. True when this call started it.
    pub fn start_drain(&self) -> bool {
        if self.draining.swap(true, Ordering::SeqCst) {
            return false;
        }
        *self.drain_started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        tracing::info!(
            timeout = ?self.drain_timeout,
            "draining: no new connections; each open one closes after its request, SSE streams at an event boundary"
        );
        true
    }

    /// Whether a drain was asked for.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The flag the data paths watch.
    pub fn drain_flag(&self) -> &AtomicBool {
        &self.draining
    }

    /// When the drain must be cut short.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain_started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t + self.drain_timeout)
    }
}

/// Before the drain deadline, the time left to end SSE streams at their
/// next event boundary (answers to POSTs included).
fn stream_grace(timeout: Duration) -> Duration {
    (timeout / 5).min(Duration::from_secs(3))
}

/// Wait, while draining, until `open` says no connection is left or the
/// drain deadline passes; true when it emptied in time. Shortly before the
/// deadline `end_streams` is called once: every SSE stream still open then
/// ends at its next event boundary.
pub fn wait_drained(control: &Control, open: impl Fn() -> u64, end_streams: impl Fn()) -> bool {
    let deadline = control
        .drain_deadline()
        .unwrap_or_else(|| Instant::now() + control.drain_timeout);
    let cut_at = deadline - stream_grace(control.drain_timeout);
    let mut cut = false;
    loop {
        if !cut && Instant::now() >= cut_at {
            cut = true;
            tracing::info!("drain: ending the SSE streams still open at their next event boundary");
            end_streams();
        }
        let left = open();
        if left == 0 {
            tracing::info!("drained: every connection closed");
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                connections = left,
                "drain timeout: closing the connections still open"
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Runs reloads asked for by SIGHUP and re-reads the session key file when
/// it changes (polled every second).
#[derive(Debug)]
pub struct Watcher {
    thread: Background,
}

impl Watcher {
    /// Start; `sighup` is set by the signal handler.
    pub fn start(control: Arc<Control>, sighup: Arc<AtomicBool>) -> anyhow::Result<Self> {
        let thread = Background::spawn("dpuproxy-control", move |stop| {
            let key = control.session_key.clone();
            let mut last = key.as_deref().and_then(stamp);
            let mut ticks = 0u32;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if sighup.swap(false, Ordering::Relaxed) {
                    let _ = control.reload("SIGHUP");
                    last = key.as_deref().and_then(stamp);
                }
                ticks += 1;
                if ticks.is_multiple_of(5)
                    && let Some(k) = &key
                {
                    let now = stamp(k);
                    if now != last {
                        last = now;
                        control.rotate_session_keys();
                    }
                }
            }
        })?;
        Ok(Self { thread })
    }

    /// Stop.
    pub fn shutdown(self) {
        self.thread.shutdown();
    }
}
