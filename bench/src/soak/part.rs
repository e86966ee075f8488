//! `dpuproxy bench soak-part`: one process of the soak's load, backends or
//! clients, driven by the orchestrator over stdin/stdout, one command per
//! line and one answer line each.
//!
//! Why processes: this machine's hard open-file limit (20,000, and no
//! CAP_SYS_RESOURCE to raise it) caps every process, so 100,000 streams
//! need their client sockets and backend sockets spread over several.
//!
//! Backends answer `down I`, `up I` (I: local index), `pause`, `stats`.
//! Clients answer `killed I`, `up I` (I: global backend index), `quiet`,
//! `stats`, and `finish` (then exit). Both answer `ok` or `stats k=v …`,
//! or `error …`; stdin closing ends the process.

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

use super::backend::{BackendSettings, SoakBackends};
use super::client::{ClientSettings, SoakClients};
use super::kills::KillBook;

/// `dpuproxy bench soak-part` arguments (set by the orchestrator).
#[derive(clap::Args, Debug, Clone)]
pub struct PartArgs {
    /// backends or clients.
    #[arg(long)]
    pub role: String,
    /// Network namespace (`ip netns` name) to run in.
    #[arg(long)]
    pub netns: Option<String>,
    /// Backends: the address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: Ipv4Addr,
    /// Backends: global index of the first one here.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Backends: how many here. Clients: how many in the whole soak.
    #[arg(long, default_value_t = 1)]
    pub backends: usize,
    /// Backends: seconds between two events of a stream.
    #[arg(long, default_value_t = 10.0)]
    pub event_every: f64,
    /// Backends: padding bytes per event.
    #[arg(long, default_value_t = 64)]
    pub event_pad: usize,
    /// Clients: the proxy's TLS address.
    #[arg(long)]
    pub proxy: Option<SocketAddr>,
    /// Clients: source addresses (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<Ipv4Addr>,
    /// Clients: file holding the bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Clients: streams.
    #[arg(long, default_value_t = 0)]
    pub streams: usize,
    /// Clients: requesters.
    #[arg(long, default_value_t = 0)]
    pub requesters: usize,
    /// Clients: milliseconds between two requests of a requester.
    #[arg(long, default_value_t = 100)]
    pub request_every_ms: u64,
    /// Clients: churners.
    #[arg(long, default_value_t = 0)]
    pub churners: usize,
    /// Clients: milliseconds between two churn cycles.
    #[arg(long, default_value_t = 200)]
    pub churn_every_ms: u64,
    /// Clients: new connections per second at most.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Clients: connections still opening (before their first response)
    /// at most.
    #[arg(long, default_value_t = 256)]
    pub max_connecting: usize,
}

/// Run one part until stdin closes (or `finish`).
pub fn run(args: &PartArgs) -> anyhow::Result<()> {
    if let Some(ns) = &args.netns {
        crate::proxy::netns::enter_named(ns)?;
    }
    raise_soft_nofile();
    match args.role.as_str() {
        "backends" => backends(args),
        "clients" => clients(args),
        other => anyhow::bail!("--role must be backends or clients, not {other:?}"),
    }
}

/// Soft open-file limit up to the hard one (no privilege needed).
fn raise_soft_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        },
    );
}

fn answer(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn stats_line(pairs: &[(&str, &AtomicU64)]) -> String {
    let mut s = String::from("stats");
    for (k, v) in pairs {
        s.push_str(&format!(" {k}={}", v.load(Ordering::Relaxed)));
    }
    s
}

/// Parse `VERB N`.
fn verb_index(line: &str) -> Option<(&str, usize)> {
    let (verb, n) = line.split_once(' ')?;
    Some((verb, n.trim().parse().ok()?))
}

fn backends(args: &PartArgs) -> anyhow::Result<()> {
    let b = SoakBackends::start(BackendSettings {
        ip: args.ip,
        first: args.first,
        count: args.backends,
        event_every: Duration::from_secs_f64(args.event_every),
        event_pad: args.event_pad,
    })?;
    for (i, a) in b.addrs.iter().enumerate() {
        answer(&format!("addr {} {a}", args.first + i))?;
    }
    answer("ready")?;
    let c = &b.control;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let reply = match (line.trim(), verb_index(line.trim())) {
            (_, Some(("down", i))) if c.set_down(i, true) => "ok".to_string(),
            (_, Some(("up", i))) if c.set_down(i, false) => "ok".to_string(),
            ("pause", _) => {
                c.pause();
                "ok".to_string()
            }
            ("stats", _) => stats_line(&[
                ("requests", &c.requests),
                ("events", &c.events),
                ("stuck", &c.stuck),
            ]),
            ("quit", _) => break,
            _ => format!("error unknown command {line:?}"),
        };
        answer(&reply)?;
    }
    Ok(())
}

fn clients(args: &PartArgs) -> anyhow::Result<()> {
    let token_file = args.token_file.as_ref().context("--token-file")?;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?;
    let book = Arc::new(KillBook::new(args.backends));
    let clients = SoakClients::start(
        ClientSettings {
            proxy: args.proxy.context("--proxy")?,
            sources: args.sources.clone(),
            token: token.trim().to_string(),
            ciphersuite: "TLS_AES_128_GCM_SHA256".into(),
            streams: args.streams,
            requesters: args.requesters,
            request_every: Duration::from_millis(args.request_every_ms),
            churners: args.churners,
            churn_every: Duration::from_millis(args.churn_every_ms),
            connect_rate: args.connect_rate,
            max_connecting: args.max_connecting,
        },
        book.clone(),
    )?;
    answer("ready")?;
    let stats = clients.stats.clone();
    let line_of_stats = || {
        stats_line(&[
            ("streams_open", &stats.streams_open),
            ("streams_awaiting_end", &stats.streams_awaiting_end),
            ("events", &stats.events),
            ("events_lost", &stats.events_lost),
            ("events_duplicated", &stats.events_duplicated),
            ("requests_ok", &stats.requests_ok),
            ("requests_failed", &stats.requests_failed),
            ("requests_excused", &stats.requests_excused),
            ("reconnects", &stats.reconnects),
        ])
    };
    let mut clients = Some(clients);
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let reply = match (line.trim(), verb_index(line.trim())) {
            (_, Some(("killed", i))) => {
                book.killed(i);
                "ok".to_string()
            }
            (_, Some(("up", i))) => {
                book.up(i);
                "ok".to_string()
            }
            ("quiet", _) => {
                if let Some(c) = &clients {
                    c.quiet();
                }
                "ok".to_string()
            }
            ("stats", _) if clients.as_ref().is_some_and(|c| c.is_finished()) => {
                "error the client thread ended".to_string()
            }
            ("stats", _) => line_of_stats(),
            ("finish", _) => {
                if let Some(c) = clients.take() {
                    c.finish()?;
                }
                answer(&line_of_stats())?;
                return Ok(());
            }
            _ => format!("error unknown command {line:?}"),
        };
        answer(&reply)?;
    }
    Ok(())
}
