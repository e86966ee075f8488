//! Loading JWT verification keys from files, and keeping a JWKS fresh.
//!
//! The L7 core only takes bytes; this module owns the file I/O and the
//! reload policy: a JWKS is re-read when its modification time or size
//! changes (polled every second), on SIGHUP, and when the core reports an
//! unknown `kid` (debounced to once per 5 s, so a flood of forged kids
//! cannot turn into a flood of file reads). A reload that fails keeps the
//! old keys and is logged and counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use dpuproxy_l7::Shared;
use dpuproxy_l7::auth::KeyEntry;

use crate::config::AuthSection;
use dpuproxy_bench::background::Background;

/// Reload counters for the admin endpoint.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Successful reloads.
    pub ok: AtomicU64,
    /// Failed reloads (old keys kept).
    pub failed: AtomicU64,
}

/// Read every configured key source.
pub fn load_keys(a: &AuthSection) -> anyhow::Result<Vec<KeyEntry>> {
    let mut keys = Vec::new();
    for p in &a.keys {
        let pem =
            std::fs::read(p).with_context(|| format!("cannot read JWT key {}", p.display()))?;
        keys.push(KeyEntry::from_pem(
            &pem,
            &p.display().to_string(),
            None,
            None,
        )?);
    }
    if let Some(p) = &a.jwks {
        keys.extend(load_jwks(p)?);
    }
    if let Some(p) = &a.hs256_secret_file {
        let secret = std::fs::read(p)
            .with_context(|| format!("cannot read HS256 secret {}", p.display()))?;
        let secret = secret.trim_ascii_end();
        if secret.len() < 32 {
            bail!(
                "HS256 secret {} is {} bytes; use at least 32 (RFC 7518 §3.2)",
                p.display(),
                secret.len()
            );
        }
        keys.push(KeyEntry::hs256_secret(secret, &p.display().to_string()));
    }
    if keys.is_empty() {
        bail!("the configured key sources hold no usable key");
    }
    Ok(keys)
}

fn load_jwks(p: &Path) -> anyhow::Result<Vec<KeyEntry>> {
    let json = std::fs::read(p).with_context(|| format!("cannot read JWKS {}", p.display()))?;
    let keys = KeyEntry::from_jwks(&json, &p.display().to_string())?;
    if keys.is_empty() {
        bail!("JWKS {} holds no signing key", p.display());
    }
    Ok(keys)
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Watches the key files in the background.
#[derive(Debug)]
pub struct KeyReloader {
    thread: Background,
}

impl KeyReloader {
    /// Start watching. `reload_now` is set by the SIGHUP handler.
    pub fn start(
        section: AuthSection,
        shared: Arc<Shared>,
        reload_now: Arc<AtomicBool>,
        stats: Arc<ReloadStats>,
    ) -> anyhow::Result<Self> {
        let thread = Background::spawn("dpuproxy-keys", move |stop| {
            watch(section, shared, reload_now, stats, stop)
        })?;
        Ok(Self { thread })
    }

    /// Stop watching.
    pub fn shutdown(self) {
        self.thread.shutdown();
    }
}

const POLL: Duration = Duration::from_millis(200);
const STAT_EVERY: Duration = Duration::from_secs(1);
const UNKNOWN_KID_DEBOUNCE: Duration = Duration::from_secs(5);

fn watch(
    section: AuthSection,
    shared: Arc<Shared>,
    reload_now: Arc<AtomicBool>,
    stats: Arc<ReloadStats>,
    stop: Arc<AtomicBool>,
) {
    let Some(auth) = shared.auth.as_ref() else {
        return;
    };
    let watched: Vec<PathBuf> = section
        .keys
        .iter()
        .cloned()
        .chain(section.jwks.clone())
        .chain(section.hs256_secret_file.clone())
        .collect();
    let mut stamps: Vec<_> = watched.iter().map(|p| stamp(p)).collect();
    let mut last_stat = Instant::now();
    let mut last_kid_reload: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        let now = Instant::now();
        let mut why = None;
        if reload_now.swap(false, Ordering::Relaxed) {
            why = Some("SIGHUP");
        }
        if now.duration_since(last_stat) >= STAT_EVERY {
            last_stat = now;
            let fresh: Vec<_> = watched.iter().map(|p| stamp(p)).collect();
            if fresh != stamps {
                stamps = fresh;
                why.get_or_insert("key file changed");
            }
        }
        if section.jwks.is_some()
            && auth.take_unknown_kid_signal()
            && last_kid_reload.is_none_or(|t| now.duration_since(t) >= UNKNOWN_KID_DEBOUNCE)
        {
            last_kid_reload = Some(now);
            why.get_or_insert("unknown kid");
        }
        let Some(why) = why else { continue };
        match load_keys(&section) {
            Ok(keys) => {
                let n = keys.len();
                auth.replace_keys(keys);
                stats.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(reason = why, keys = n, "JWT keys reloaded");
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    reason = why,
                    "JWT key reload failed, keeping the old keys: {e:#}"
                );
            }
        }
    }
}
