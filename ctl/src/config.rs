//! The run configuration: a TOML file, overridden by CLI flags.
//!
//! Unknown keys are errors (serde `deny_unknown_fields`), so a typo never
//! silently falls back to a default; the error names the key and its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use dpuproxy_l7::CoreConfig;
use serde::Deserialize;

/// Data path selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Kernel TCP, epoll, OpenSSL on the fd, kTLS when the kernel allows.
    Kernel,
    /// DPDK poll-mode path with userspace TCP and our record layer.
    Dpdk,
    /// DPDK when it can start, kernel otherwise (with the reason logged).
    Auto,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data path.
    pub mode: Option<Mode>,
    /// Client-facing TLS listen address.
    pub listen: Option<SocketAddr>,
    /// Backends: `"[NAME=]host:port"` or `{ name, addr, drain }`.
    pub backends: Option<Vec<BackendEntry>>,
    /// Worker threads.
    pub workers: Option<usize>,
    /// Admin listener (plain HTTP: /metrics, /sessions, /backends, /healthz).
    pub admin: Option<SocketAddr>,
    /// TLS files.
    #[serde(default)]
    pub tls: TlsSection,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Timeouts (humantime strings: "30s", "5m", "1h").
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// OAuth2 resource server (JWT).
    #[serde(default)]
    pub auth: AuthSection,
    /// The DPDK data path (`--mode dpdk|auto`).
    #[serde(default)]
    pub dpdk: DpdkSection,
    /// Sealed session ids.
    #[serde(default)]
    pub session: SessionSection,
}

/// `[session]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    /// Key file for sealed session ids: the current secret, then optionally
    /// the previous one (hex or base64, one per line); re-read on change
    /// and SIGHUP.
    pub key_file: Option<PathBuf>,
}

/// One backend as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum BackendEntry {
    /// `"host:port"` or `"NAME=host:port"`.
    Short(String),
    /// `{ name = "b1", addr = "host:port", drain = true }`.
    Table {
        /// Stable identity (default: `addr`).
        name: Option<String>,
        /// `host:port`.
        addr: String,
        /// Keep its sessions, give it nothing new.
        #[serde(default)]
        drain: bool,
    },
}

/// A backend entry, checked: name, `host:port`, drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConf {
    /// Stable identity.
    pub name: String,
    /// `host:port`.
    pub addr: String,
    /// Draining.
    pub drain: bool,
}

impl BackendEntry {
    /// Check the entry's syntax.
    pub fn check(&self) -> anyhow::Result<BackendConf> {
        let (name, addr, drain) = match self {
            BackendEntry::Short(s) => match s.split_once('=') {
                Some((n, a)) => (Some(n.to_string()), a.to_string(), false),
                None => (None, s.clone(), false),
            },
            BackendEntry::Table { name, addr, drain } => (name.clone(), addr.clone(), *drain),
        };
        validate_backend(&addr)?;
        let name = name.unwrap_or_else(|| addr.clone());
        let ok_char = |b: u8| (0x21..=0x7e).contains(&b) && b != b'=' && b != b'"';
        if name.is_empty() || name.len() > dpuproxy_l7::seal::MAX_NAME || !name.bytes().all(ok_char)
        {
            bail!(
                "backend name {name:?} must be 1-{} visible ASCII characters without '=' or '\"'",
                dpuproxy_l7::seal::MAX_NAME
            );
        }
        Ok(BackendConf { name, addr, drain })
    }
}

impl BackendConf {
    /// Resolve `addr` (first address; IPv4 only when `ipv4_only`).
    pub fn resolve(&self, ipv4_only: bool) -> anyhow::Result<dpuproxy_l7::BackendSpec> {
        use std::net::ToSocketAddrs;
        let mut addrs = self
            .addr
            .to_socket_addrs()
            .with_context(|| format!("backend {} ({}) does not resolve", self.name, self.addr))?;
        let socket = if ipv4_only {
            addrs.find(SocketAddr::is_ipv4).with_context(|| {
                format!(
                    "backend {} ({}): the DPDK path is IPv4 only",
                    self.name, self.addr
                )
            })?
        } else {
            addrs
                .next()
                .with_context(|| format!("backend {} ({}) has no address", self.name, self.addr))?
        };
        Ok(dpuproxy_l7::BackendSpec {
            name: self.name.clone(),
            addr: self.addr.clone(),
            socket,
            drain: self.drain,
        })
    }
}

/// Check every entry; names must be unique.
pub fn check_backends(entries: &[BackendEntry]) -> anyhow::Result<Vec<BackendConf>> {
    let confs = entries
        .iter()
        .map(BackendEntry::check)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, c) in confs.iter().enumerate() {
        if confs[..i].iter().any(|o| o.name == c.name) {
            bail!("backend name {:?} is used twice", c.name);
        }
    }
    Ok(confs)
}

/// `[dpdk]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpdkSection {
    /// EAL arguments, e.g. "-l 1 --in-memory --no-pci --vdev=net_af_packet0,iface=veth0".
    pub eal: Option<String>,
    /// Our address and prefix on the port, e.g. "10.77.9.1/24".
    pub ip: Option<String>,
    /// Next hop for off-link backends.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Port name when the EAL finds several.
    pub device: Option<String>,
    /// Run the kernel path beside the DPDK path, ready for `POST /switch`
    /// (the live mode switch; needs a `net_af_xdp` port and one lcore).
    pub switchable: Option<bool>,
}

/// Resolved DPDK settings.
#[derive(Debug, Clone)]
pub struct DpdkSettings {
    /// EAL arguments, split.
    pub eal_args: Vec<String>,
    /// Our address.
    pub ip: std::net::Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Gateway.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Port name.
    pub device: Option<String>,
    /// The kernel path runs beside, ready for the live mode switch.
    pub switchable: bool,
}

/// Overlay: a value given on the command line replaces the file's.
fn over<T>(file: &mut Option<T>, cli: Option<T>) {
    if cli.is_some() {
        *file = cli;
    }
}

/// Overlay: a non-empty list given on the command line replaces the file's.
fn over_vec<T>(file: &mut Vec<T>, cli: Vec<T>) {
    if !cli.is_empty() {
        *file = cli;
    }
}

impl DpdkSection {
    /// Overlay CLI values.
    pub fn overlay(&mut self, cli: DpdkSection) {
        over(&mut self.eal, cli.eal);
        over(&mut self.ip, cli.ip);
        over(&mut self.gateway, cli.gateway);
        over(&mut self.device, cli.device);
        over(&mut self.switchable, cli.switchable);
    }

    /// Check and resolve; `None` when nothing DPDK-related was given.
    pub fn resolve(&self) -> anyhow::Result<Option<DpdkSettings>> {
        if self.eal.is_none() && self.ip.is_none() {
            return Ok(None);
        }
        let eal = self
            .eal
            .as_deref()
            .context("missing `dpdk.eal`: pass --dpdk-eal \"-l 1 ... --vdev=...\"")?;
        let ip = self
            .ip
            .as_deref()
            .context("missing `dpdk.ip`: pass --dpdk-ip ADDR/PREFIX")?;
        let (addr, prefix) = ip
            .split_once('/')
            .context("`dpdk.ip` must be ADDR/PREFIX, e.g. 10.77.9.1/24")?;
        let addr: std::net::Ipv4Addr = addr
            .parse()
            .with_context(|| format!("`dpdk.ip`: {addr:?} is not an IPv4 address"))?;
        let prefix_len: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .with_context(|| format!("`dpdk.ip`: prefix {prefix:?} must be 1-32"))?;
        let eal_args = dpuproxy_dp::split_eal_args(eal);
        if eal_args.is_empty() {
            bail!("`dpdk.eal` is empty");
        }
        Ok(Some(DpdkSettings {
            eal_args,
            ip: addr,
            prefix_len,
            gateway: self.gateway,
            device: self.device.clone(),
            switchable: self.switchable.unwrap_or(false),
        }))
    }
}

/// `[auth]`: present keys turn auth on.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519).
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// A JWKS file, re-read on change, SIGHUP and unknown `kid`.
    pub jwks: Option<PathBuf>,
    /// File holding an HS256 shared secret.
    pub hs256_secret_file: Option<PathBuf>,
    /// Accepted issuers.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock-skew allowance.
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    /// Longest token.
    pub max_token_bytes: Option<usize>,
    /// Scope rules: `SCOPES`, `METHOD=SCOPES`, `METHOD:NAME=SCOPES`.
    #[serde(default)]
    pub require_scopes: Vec<String>,
    /// Authorization servers listed in the metadata.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// `resource` in the metadata.
    pub resource: Option<String>,
    /// Pass `Authorization` to backends.
    #[serde(default)]
    pub forward_token: bool,
    /// Add `X-Authenticated-Subject` for backends.
    #[serde(default)]
    pub subject_header: bool,
}

impl AuthSection {
    /// Whether any key source is configured.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty() || self.jwks.is_some() || self.hs256_secret_file.is_some()
    }

    /// Whether any setting at all is present.
    pub fn any_setting(&self) -> bool {
        self.has_keys()
            || !self.issuers.is_empty()
            || !self.audiences.is_empty()
            || self.leeway.is_some()
            || self.max_token_bytes.is_some()
            || !self.require_scopes.is_empty()
            || !self.authorization_servers.is_empty()
            || self.resource.is_some()
            || self.forward_token
            || self.subject_header
    }

    /// Overlay CLI values (lists replace, flags add).
    pub fn overlay(&mut self, cli: AuthSection) {
        over_vec(&mut self.keys, cli.keys);
        over(&mut self.jwks, cli.jwks);
        over(&mut self.hs256_secret_file, cli.hs256_secret_file);
        over_vec(&mut self.issuers, cli.issuers);
        over_vec(&mut self.audiences, cli.audiences);
        over(&mut self.leeway, cli.leeway);
        over(&mut self.max_token_bytes, cli.max_token_bytes);
        over_vec(&mut self.require_scopes, cli.require_scopes);
        over_vec(&mut self.authorization_servers, cli.authorization_servers);
        over(&mut self.resource, cli.resource);
        self.forward_token |= cli.forward_token;
        self.subject_header |= cli.subject_header;
    }

    /// The core's auth settings (keys are loaded separately).
    pub fn to_config(&self) -> anyhow::Result<dpuproxy_l7::auth::AuthConfig> {
        let d = dpuproxy_l7::auth::AuthConfig::default();
        let scope_rules = self
            .require_scopes
            .iter()
            .map(|r| {
                dpuproxy_l7::auth::ScopeRule::parse(r)
                    .map_err(|e| anyhow::anyhow!("`auth.require_scopes`: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let max_token_bytes = self.max_token_bytes.unwrap_or(d.max_token_bytes);
        if max_token_bytes < 64 {
            bail!("`auth.max_token_bytes` must be at least 64");
        }
        Ok(dpuproxy_l7::auth::AuthConfig {
            issuers: self.issuers.clone(),
            audiences: self.audiences.clone(),
            leeway: self.leeway.unwrap_or(d.leeway),
            max_token_bytes,
            scope_rules,
            forward_token: self.forward_token,
            subject_header: self.subject_header,
            authorization_servers: self.authorization_servers.clone(),
            resource: self.resource.clone(),
            ..d
        })
    }
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Who processes records in kernel mode after the handshake:
    /// `openssl` (default: kTLS when the kernel takes it, else
    /// `SSL_read`/`SSL_write`) or `ours` (the DPDK path's record layer on
    /// the socket). DPDK mode always uses ours.
    pub records: Option<RecordsChoice>,
}

/// `tls.records`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RecordsChoice {
    /// OpenSSL on the socket.
    Openssl,
    /// Our record layer on the socket.
    Ours,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest request head.
    pub max_header_bytes: Option<usize>,
    /// Most request header fields.
    pub max_headers: Option<usize>,
    /// Largest request body.
    pub max_body_bytes: Option<u64>,
    /// Most sessions in the affinity table.
    pub max_sessions: Option<usize>,
    /// Most sessions one client (address, or token subject) may hold.
    pub max_sessions_per_client: Option<usize>,
    /// Bytes buffered for a slow client before backpressure.
    pub max_downstream_buffer: Option<usize>,
    /// Client connections per worker.
    pub max_connections_per_worker: Option<usize>,
    /// Client connections per worker still in their TLS handshake.
    pub max_handshaking_per_worker: Option<usize>,
    /// Listen backlog (per worker or lcore).
    pub listen_backlog: Option<usize>,
    /// Idle pooled backend connections per backend per worker.
    pub pool_max_per_backend: Option<usize>,
}

/// `[timeouts]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    /// Keep-alive client connection without a request.
    #[serde(default, with = "humantime_serde")]
    pub client_idle: Option<Duration>,
    /// Whole request after its first byte.
    #[serde(default, with = "humantime_serde")]
    pub request: Option<Duration>,
    /// Backend connect.
    #[serde(default, with = "humantime_serde")]
    pub connect: Option<Duration>,
    /// Backend response head, and non-SSE body progress.
    #[serde(default, with = "humantime_serde")]
    pub response: Option<Duration>,
    /// Silence allowed on an SSE stream.
    #[serde(default, with = "humantime_serde")]
    pub sse_idle: Option<Duration>,
    /// Keepalive comment interval on quiet SSE streams ("0s" disables).
    #[serde(default, with = "humantime_serde")]
    pub sse_keepalive: Option<Duration>,
    /// Session binding idle expiry.
    #[serde(default, with = "humantime_serde")]
    pub session_idle: Option<Duration>,
    /// TLS handshake.
    #[serde(default, with = "humantime_serde")]
    pub handshake: Option<Duration>,
    /// Idle pooled backend connection lifetime.
    #[serde(default, with = "humantime_serde")]
    pub pool_idle: Option<Duration>,
    /// Longest graceful drain (SIGTERM, POST /drain) before the rest is cut.
    #[serde(default, with = "humantime_serde")]
    pub drain: Option<Duration>,
}

impl FileConfig {
    /// Read and parse a config file; errors name the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parse TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

/// CLI values that override the file.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    /// `--mode`
    pub mode: Option<Mode>,
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--backend` (repeatable; replaces the file's list when given)
    pub backends: Vec<String>,
    /// `--workers`
    pub workers: Option<usize>,
    /// `--admin`
    pub admin: Option<SocketAddr>,
    /// `--tls-cert`
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`
    pub tls_key: Option<PathBuf>,
    /// `--tls-records`
    pub tls_records: Option<RecordsChoice>,
    /// `--jwt-*`, `--auth-*`, `--forward-token`, `--subject-header`
    pub auth: AuthSection,
    /// `--dpdk-*`
    pub dpdk: DpdkSection,
    /// `--session-key`
    pub session_key: Option<PathBuf>,
    /// `--drain-timeout`
    pub drain_timeout: Option<Duration>,
}

/// Fully resolved settings for `dpuproxy run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Data path.
    pub mode: Mode,
    /// Kernel data path settings.
    pub kernel: dpuproxy_kernel::KernelConfig,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// L7 core limits and timeouts.
    pub core: CoreConfig,
    /// Auth settings; `None` when auth is off.
    pub auth: Option<AuthSection>,
    /// DPDK settings; `None` when none were given.
    pub dpdk: Option<DpdkSettings>,
    /// Backends, checked (resolved when the proxy starts or reloads).
    pub backends: Vec<BackendConf>,
    /// `--backend` was given: a reload keeps these and ignores the file's.
    pub backends_from_cli: bool,
    /// Sealed session ids: the key file; `None`: ids pass through.
    pub session_key: Option<PathBuf>,
    /// Longest graceful drain.
    pub drain_timeout: Duration,
}

fn validate_backend(b: &str) -> anyhow::Result<()> {
    let Some((host, port)) = b.rsplit_once(':') else {
        bail!("backend {b:?} must be host:port");
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("backend {b:?} must be host:port with a port in 1-65535");
    }
    Ok(())
}

impl RunConfig {
    /// Merge file and CLI, apply defaults, validate.
    pub fn resolve(file: FileConfig, cli: CliOverrides) -> anyhow::Result<Self> {
        let mode = cli.mode.or(file.mode).unwrap_or(Mode::Kernel);
        let listen = cli
            .listen
            .or(file.listen)
            .context("missing `listen`: pass --listen ADDR or set `listen` in the config file")?;
        let backends_from_cli = !cli.backends.is_empty();
        let entries = if backends_from_cli {
            cli.backends.into_iter().map(BackendEntry::Short).collect()
        } else {
            file.backends.unwrap_or_default()
        };
        if entries.is_empty() {
            bail!(
                "no backends: pass --backend [NAME=]HOST:PORT (repeatable) or set `backends` in the config file"
            );
        }
        let backends = check_backends(&entries)?;
        let cert = cli.tls_cert.or(file.tls.cert).context(
            "missing TLS certificate: pass --tls-cert FILE or set `tls.cert` (`dpuproxy demo` makes a self-signed pair)",
        )?;
        let key = cli
            .tls_key
            .or(file.tls.key)
            .context("missing TLS key: pass --tls-key FILE or set `tls.key`")?;
        let mut kernel = dpuproxy_kernel::KernelConfig::new(listen, cert, key);
        if let Some(r) = cli.tls_records.or(file.tls.records) {
            kernel.records = match r {
                RecordsChoice::Openssl => dpuproxy_kernel::KernelRecords::Openssl,
                RecordsChoice::Ours => dpuproxy_kernel::KernelRecords::Ours,
            };
        }
        if let Some(w) = cli.workers.or(file.workers) {
            if w == 0 || w > 1024 {
                bail!("`workers` must be 1-1024, got {w}");
            }
            kernel.workers = w;
        }
        let t = &file.timeouts;
        let l = &file.limits;
        if let Some(v) = t.handshake {
            kernel.handshake_timeout = v;
        }
        if let Some(v) = t.pool_idle {
            kernel.pool_idle_timeout = v;
        }
        if let Some(v) = l.max_connections_per_worker {
            kernel.max_connections_per_worker = v;
        }
        if let Some(v) = l.max_handshaking_per_worker {
            kernel.max_handshaking_per_worker = v;
        }
        if let Some(v) = l.listen_backlog {
            kernel.listen_backlog = v;
        }
        if let Some(v) = l.pool_max_per_backend {
            kernel.pool_max_per_backend = v;
        }
        let d = CoreConfig::default();
        let core = CoreConfig {
            max_header_bytes: l.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_headers: l.max_headers.unwrap_or(d.max_headers),
            max_body_bytes: l.max_body_bytes.unwrap_or(d.max_body_bytes),
            max_sessions: l.max_sessions.unwrap_or(d.max_sessions),
            max_sessions_per_client: l
                .max_sessions_per_client
                .unwrap_or(d.max_sessions_per_client),
            max_downstream_buffer: l.max_downstream_buffer.unwrap_or(d.max_downstream_buffer),
            client_idle_timeout: t.client_idle.unwrap_or(d.client_idle_timeout),
            request_timeout: t.request.unwrap_or(d.request_timeout),
            connect_timeout: t.connect.unwrap_or(d.connect_timeout),
            response_timeout: t.response.unwrap_or(d.response_timeout),
            sse_idle_timeout: t.sse_idle.unwrap_or(d.sse_idle_timeout),
            sse_keepalive_interval: t.sse_keepalive.unwrap_or(d.sse_keepalive_interval),
            session_idle_timeout: t.session_idle.unwrap_or(d.session_idle_timeout),
            ..d
        };
        if core.max_header_bytes < 256 {
            bail!("`limits.max_header_bytes` must be at least 256");
        }
        if core.max_headers == 0 {
            bail!("`limits.max_headers` must be at least 1");
        }
        if core.max_sessions == 0 {
            bail!("`limits.max_sessions` must be at least 1");
        }
        check_capacities(&kernel, &core)?;
        for (name, v) in [
            ("timeouts.request", core.request_timeout),
            ("timeouts.connect", core.connect_timeout),
            ("timeouts.response", core.response_timeout),
            ("timeouts.sse_idle", core.sse_idle_timeout),
            ("timeouts.session_idle", core.session_idle_timeout),
            ("timeouts.client_idle", core.client_idle_timeout),
            ("timeouts.handshake", kernel.handshake_timeout),
        ] {
            if v.is_zero() {
                bail!("`{name}` must be greater than zero");
            }
        }
        let mut dpdk = file.dpdk;
        dpdk.overlay(cli.dpdk);
        let dpdk = dpdk.resolve()?;
        if mode == Mode::Dpdk && dpdk.is_none() {
            bail!(
                "--mode dpdk needs --dpdk-eal and --dpdk-ip (or [dpdk] eal and ip in the config file)"
            );
        }
        let mut auth = file.auth;
        auth.overlay(cli.auth);
        let auth = if auth.has_keys() {
            auth.to_config()?;
            Some(auth)
        } else if auth.any_setting() {
            bail!(
                "auth settings given but no key: pass --jwt-key PEM, --jwt-jwks FILE or --jwt-hs256-secret-file FILE (or set them under [auth])"
            );
        } else {
            None
        };
        let drain_timeout = cli
            .drain_timeout
            .or(t.drain)
            .unwrap_or(Duration::from_secs(30));
        let resolved = Self {
            mode,
            kernel,
            admin: cli.admin.or(file.admin),
            core,
            auth,
            dpdk,
            backends,
            backends_from_cli,
            session_key: cli.session_key.or(file.session.key_file),
            drain_timeout,
        };
        for (name, d) in durations(&resolved) {
            if d > MAX_DURATION {
                bail!("`{name}` must be at most 3650days (ten years), got {d:?}");
            }
        }
        Ok(resolved)
    }
}

/// The most a per-worker connection count may be: far above what one
/// worker can serve, and small enough that the open files the workers
/// need can be counted (`limits::files_needed`) without overflow.
pub const MAX_PER_WORKER: usize = 1 << 24;

/// Largest listen backlog (the kernel caps it at `net.core.somaxconn`
/// anyway; in dpdk mode each slot may hold a half-open connection's
/// buffers).
pub const MAX_LISTEN_BACKLOG: usize = 65_535;

/// Counts that would make the proxy refuse every connection, read no
/// request or accept no body (zero), or overflow the open-file arithmetic
/// (huge), are refused.
fn check_capacities(
    kernel: &dpuproxy_kernel::KernelConfig,
    core: &CoreConfig,
) -> anyhow::Result<()> {
    for (name, v, min) in [
        (
            "max_connections_per_worker",
            kernel.max_connections_per_worker,
            1,
        ),
        (
            "max_handshaking_per_worker",
            kernel.max_handshaking_per_worker,
            1,
        ),
        ("pool_max_per_backend", kernel.pool_max_per_backend, 0),
    ] {
        if !(min..=MAX_PER_WORKER).contains(&v) {
            bail!("`limits.{name}` must be {min}-{MAX_PER_WORKER}, got {v}");
        }
    }
    if !(1..=MAX_LISTEN_BACKLOG).contains(&kernel.listen_backlog) {
        bail!(
            "`limits.listen_backlog` must be 1-{MAX_LISTEN_BACKLOG}, got {}",
            kernel.listen_backlog
        );
    }
    if core.max_downstream_buffer == 0 {
        bail!("`limits.max_downstream_buffer` must be at least 1");
    }
    if core.max_body_bytes == 0 {
        bail!("`limits.max_body_bytes` must be at least 1 (MCP requests have bodies)");
    }
    Ok(())
}

/// The longest duration a setting may have: ten years, "never" in
/// practice, and far enough from the end of `Instant`'s range that every
/// deadline computed from it exists (a longer one would panic the first
/// connection that armed it).
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Every duration of a resolved config, by its config key.
fn durations(r: &RunConfig) -> Vec<(&'static str, Duration)> {
    let c = &r.core;
    let mut all = vec![
        ("timeouts.client_idle", c.client_idle_timeout),
        ("timeouts.request", c.request_timeout),
        ("timeouts.connect", c.connect_timeout),
        ("timeouts.response", c.response_timeout),
        ("timeouts.sse_idle", c.sse_idle_timeout),
        ("timeouts.sse_keepalive", c.sse_keepalive_interval),
        ("timeouts.session_idle", c.session_idle_timeout),
        ("timeouts.handshake", r.kernel.handshake_timeout),
        ("timeouts.pool_idle", r.kernel.pool_idle_timeout),
        ("timeouts.drain", r.drain_timeout),
    ];
    if let Some(leeway) = r.auth.as_ref().and_then(|a| a.leeway) {
        all.push(("auth.leeway", leeway));
    }
    all
}

/// What the config fuzz target made of one input.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuzzVerdict {
    /// Not UTF-8 (a TOML file never is).
    NotUtf8,
    /// `FileConfig::parse` refused it.
    Unparsable,
    /// It parsed, and `RunConfig::resolve` refused it.
    Refused,
    /// It resolved (and the resolved config passed every check).
    Resolved,
}

/// The config fuzz target (`fuzz/src/bin/config.rs`, corpus
/// `ctl/fuzz/corpus/config/`): parse `data` as a config file and resolve
/// it without CLI overrides. Invariants, checked with `assert!`: no
/// panic; a refusal explains itself; a resolved config satisfies what
/// `resolve` promises (see `check_resolved`) and keeps every value the
/// file gave (see `check_file_kept`).
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub fn fuzz_target(data: &[u8]) -> FuzzVerdict {
    let Ok(text) = std::str::from_utf8(data) else {
        return FuzzVerdict::NotUtf8;
    };
    let file = match FileConfig::parse(text) {
        Ok(f) => f,
        Err(e) => {
            assert!(!format!("{e:#}").is_empty(), "an unexplained parse error");
            return FuzzVerdict::Unparsable;
        }
    };
    match RunConfig::resolve(file, CliOverrides::default()) {
        Ok(r) => {
            check_resolved(&r);
            let again = FileConfig::parse(text).expect("parsing the same text twice agrees");
            check_file_kept(&again, &r);
            FuzzVerdict::Resolved
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an unexplained refusal");
            FuzzVerdict::Refused
        }
    }
}

/// Fuzz oracle: what a resolved config promises the data paths.
#[cfg(any(test, fuzzing))]
fn check_resolved(r: &RunConfig) {
    assert!(!r.backends.is_empty(), "no backends");
    for (i, b) in r.backends.iter().enumerate() {
        assert!(
            r.backends[..i].iter().all(|o| o.name != b.name),
            "backend name {:?} twice",
            b.name
        );
        let resolved_again = BackendEntry::Table {
            name: Some(b.name.clone()),
            addr: b.addr.clone(),
            drain: b.drain,
        }
        .check()
        .expect("a resolved backend passes its own check");
        assert_eq!(&resolved_again, b);
    }
    assert!((1..=1024).contains(&r.kernel.workers), "workers");
    assert!(r.core.max_header_bytes >= 256 && r.core.max_headers >= 1);
    assert!(r.core.max_sessions >= 1, "max_sessions");
    // Zero would refuse every connection, read no request or accept no body.
    let k = &r.kernel;
    assert!(k.max_connections_per_worker >= 1 && k.max_handshaking_per_worker >= 1);
    assert!(r.core.max_downstream_buffer >= 1 && r.core.max_body_bytes >= 1);
    // The open files the workers need (see `limits::files_needed`) are countable.
    let per_worker = (k.max_connections_per_worker as u64)
        .checked_mul(2)
        .zip((k.pool_max_per_backend as u64).checked_mul(r.backends.len() as u64))
        .and_then(|(clients, pooled)| clients.checked_add(pooled));
    let files = per_worker.and_then(|n| n.checked_mul(k.workers as u64));
    assert!(
        files.is_some_and(|f| f < u64::MAX / 2),
        "open files overflow: {k:?}"
    );
    for (name, d) in durations(r) {
        assert!(
            d <= MAX_DURATION && std::time::Instant::now().checked_add(d).is_some(),
            "`{name}` = {d:?} overflows a deadline"
        );
    }
    assert!(!r.backends_from_cli, "no CLI was given");
    if r.mode == Mode::Dpdk {
        assert!(r.dpdk.is_some(), "dpdk mode without dpdk settings");
    }
    if let Some(d) = &r.dpdk {
        assert!(!d.eal_args.is_empty() && (1..=32).contains(&d.prefix_len));
    }
    if let Some(a) = &r.auth {
        assert!(a.has_keys(), "auth on without a key");
        a.to_config().expect("resolved auth settings convert");
    }
}

/// Fuzz oracle: a value the file gives is the value in force (none is
/// dropped or changed on the way).
#[cfg(any(test, fuzzing))]
fn check_file_kept(file: &FileConfig, r: &RunConfig) {
    let (l, c, k) = (&file.limits, &r.core, &r.kernel);
    let counts = [
        ("max_header_bytes", l.max_header_bytes, c.max_header_bytes),
        ("max_headers", l.max_headers, c.max_headers),
        ("max_sessions", l.max_sessions, c.max_sessions),
        (
            "max_sessions_per_client",
            l.max_sessions_per_client,
            c.max_sessions_per_client,
        ),
        (
            "max_downstream_buffer",
            l.max_downstream_buffer,
            c.max_downstream_buffer,
        ),
        (
            "max_connections_per_worker",
            l.max_connections_per_worker,
            k.max_connections_per_worker,
        ),
        (
            "max_handshaking_per_worker",
            l.max_handshaking_per_worker,
            k.max_handshaking_per_worker,
        ),
        (
            "pool_max_per_backend",
            l.pool_max_per_backend,
            k.pool_max_per_backend,
        ),
        ("listen_backlog", l.listen_backlog, k.listen_backlog),
        ("workers", file.workers, k.workers),
    ];
    for (name, given, used) in counts {
        assert!(
            given.is_none_or(|g| g == used),
            "{name}: file {given:?}, in force {used}"
        );
    }
    assert!(l.max_body_bytes.is_none_or(|g| g == c.max_body_bytes));
    let t = &file.timeouts;
    let given = [
        t.client_idle,
        t.request,
        t.connect,
        t.response,
        t.sse_idle,
        t.sse_keepalive,
        t.session_idle,
        t.handshake,
        t.pool_idle,
        t.drain,
    ];
    for (g, (name, used)) in given.into_iter().zip(durations(r)) {
        assert!(
            g.is_none_or(|g| g == used),
            "{name}: file {g:?}, in force {used:?}"
        );
    }
    assert!(file.mode.is_none_or(|m| m == r.mode));
    assert_eq!(file.admin, r.admin);
    assert_eq!(file.listen, Some(k.listen), "listen");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli_min() -> CliOverrides {
        CliOverrides {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..CliOverrides::default()
        }
    }

    #[test]
    fn full_file_parses_and_cli_overrides() {
        let f = FileConfig::parse(
            r#"
            mode = "kernel"
            listen = "127.0.0.1:8443"
            backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
            workers = 2
            admin = "127.0.0.1:9100"
            [tls]
            cert = "cert.pem"
            key = "key.pem"
            [limits]
            max_body_bytes = 1000
            max_sessions = 50
            [timeouts]
            sse_idle = "2h"
            sse_keepalive = "10s"
            request = "5s"
            "#,
        )
        .unwrap();
        let cli = CliOverrides {
            workers: Some(3),
            backends: vec!["10.0.0.1:1".into()],
            ..CliOverrides::default()
        };
        let r = RunConfig::resolve(f, cli).unwrap();
        assert_eq!(r.kernel.workers, 3);
        assert_eq!(r.backends.len(), 1);
        assert_eq!(r.backends[0].name, "10.0.0.1:1");
        assert!(r.backends_from_cli);
        assert_eq!(r.kernel.tls_cert, PathBuf::from("cert.pem"));
        assert_eq!(r.core.max_body_bytes, 1000);
        assert_eq!(r.core.max_sessions, 50);
        assert_eq!(r.core.sse_idle_timeout, Duration::from_secs(7200));
        assert_eq!(r.core.sse_keepalive_interval, Duration::from_secs(10));
        assert_eq!(r.core.request_timeout, Duration::from_secs(5));
        assert_eq!(r.admin, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn auth_section_and_cli_overlay() {
        let f = FileConfig::parse(
            r#"
            listen = "127.0.0.1:1"
            backends = ["a:1"]
            [auth]
            jwks = "keys.json"
            issuers = ["https://issuer"]
            audiences = ["mcp-proxy"]
            leeway = "10s"
            require_scopes = ["tools/call:echo=mcp:echo"]
            "#,
        )
        .unwrap();
        let cli = CliOverrides {
            auth: AuthSection {
                audiences: vec!["other".into()],
                subject_header: true,
                ..AuthSection::default()
            },
            ..cli_min()
        };
        let r = RunConfig::resolve(f, cli).unwrap();
        let a = r.auth.expect("auth on");
        assert_eq!(a.audiences, vec!["other".to_string()]);
        assert_eq!(a.issuers, vec!["https://issuer".to_string()]);
        assert!(a.subject_header);
        let c = a.to_config().unwrap();
        assert_eq!(c.leeway, Duration::from_secs(10));
        assert_eq!(c.scope_rules.len(), 1);
        // Settings without a key are refused, and a bad scope rule is named.
        let f = FileConfig::parse(
            "listen = \"127.0.0.1:1\"\nbackends=[\"a:1\"]\n[auth]\nissuers=[\"x\"]",
        )
        .unwrap();
        let e = RunConfig::resolve(f, cli_min()).unwrap_err();
        assert!(e.to_string().contains("no key"), "{e}");
        let f = FileConfig::parse("listen = \"127.0.0.1:1\"\nbackends=[\"a:1\"]\n[auth]\njwks=\"k\"\nrequire_scopes=[\"=x\"]").unwrap();
        let e = RunConfig::resolve(f, cli_min()).unwrap_err();
        assert!(e.to_string().contains("require_scopes"), "{e}");
        // No auth settings at all: auth off.
        let f = FileConfig::parse("listen = \"127.0.0.1:1\"\nbackends=[\"a:1\"]").unwrap();
        assert!(RunConfig::resolve(f, cli_min()).unwrap().auth.is_none());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = FileConfig::parse("listen = \"127.0.0.1:1\"\nbakends = []\n").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("bakends"), "{msg}");
        let e = FileConfig::parse("[limits]\nmax_body = 3\n").unwrap_err();
        assert!(format!("{e:#}").contains("max_body"));
        let e = FileConfig::parse("[timeouts]\nsse_idle = \"forever\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("sse_idle"), "{e:#}");
    }

    #[test]
    fn missing_and_bad_values_are_explained() {
        let e = RunConfig::resolve(FileConfig::default(), cli_min()).unwrap_err();
        assert!(e.to_string().contains("listen"));
        let f = FileConfig::parse("listen = \"127.0.0.1:1\"").unwrap();
        let e = RunConfig::resolve(f, cli_min()).unwrap_err();
        assert!(e.to_string().contains("backend"));
        let f = FileConfig::parse("listen = \"127.0.0.1:1\"\nbackends=[\"nohost\"]").unwrap();
        let e = RunConfig::resolve(f, cli_min()).unwrap_err();
        assert!(e.to_string().contains("host:port"));
        let f =
            FileConfig::parse("listen = \"127.0.0.1:1\"\nbackends=[\"a:1\"]\nworkers = 0").unwrap();
        let e = RunConfig::resolve(f, cli_min()).unwrap_err();
        assert!(e.to_string().contains("workers"));
    }

    #[test]
    fn backend_names_drain_and_session_settings() {
        let f = FileConfig::parse(
            r#"
            listen = "127.0.0.1:1"
            backends = ["b1=127.0.0.1:9001", "127.0.0.1:9002", { name = "b3", addr = "127.0.0.1:9003", drain = true }]
            [session]
            key_file = "session.key"
            [timeouts]
            drain = "5s"
            "#,
        )
        .unwrap();
        let r = RunConfig::resolve(f, cli_min()).unwrap();
        let names: Vec<_> = r
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.drain))
            .collect();
        assert_eq!(
            names,
            [("b1", false), ("127.0.0.1:9002", false), ("b3", true)]
        );
        assert!(!r.backends_from_cli);
        assert_eq!(r.session_key, Some(PathBuf::from("session.key")));
        assert_eq!(r.drain_timeout, Duration::from_secs(5));
        let spec = r.backends[0].resolve(true).unwrap();
        assert_eq!(spec.socket, "127.0.0.1:9001".parse().unwrap());
        // Names are unique and plain.
        for bad in [
            r#"["x=127.0.0.1:1", "x=127.0.0.1:2"]"#,
            r#"["=127.0.0.1:1"]"#,
            r#"["a b=127.0.0.1:1"]"#,
        ] {
            let f =
                FileConfig::parse(&format!("listen = \"127.0.0.1:1\"\nbackends = {bad}")).unwrap();
            let e = RunConfig::resolve(f, cli_min()).unwrap_err();
            assert!(e.to_string().contains("name"), "{bad}: {e}");
        }
        // The default drain timeout is 30 s.
        let f = FileConfig::parse("listen = \"127.0.0.1:1\"\nbackends=[\"a:1\"]").unwrap();
        assert_eq!(
            RunConfig::resolve(f, cli_min()).unwrap().drain_timeout,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../dpuproxy.example.toml");
        let f = FileConfig::parse(text).expect("dpuproxy.example.toml is valid");
        let r = RunConfig::resolve(f, CliOverrides::default()).unwrap();
        assert_eq!(r.backends.len(), 3);
        assert_eq!(r.backends[0].name, "b1");
        assert_eq!(r.drain_timeout, Duration::from_secs(30));
    }

    /// Found by the config fuzz target: a timeout too long for a deadline
    /// resolved, and the first connection then panicked adding it to its
    /// start (`since + client_idle_timeout`).
    #[test]
    fn a_duration_past_any_deadline_is_refused() {
        let keys = [
            "timeouts.client_idle",
            "timeouts.request",
            "timeouts.connect",
            "timeouts.response",
            "timeouts.sse_idle",
            "timeouts.sse_keepalive",
            "timeouts.session_idle",
            "timeouts.handshake",
            "timeouts.pool_idle",
            "timeouts.drain",
            "auth.leeway",
        ];
        for key in keys {
            let (section, name) = key.split_once('.').unwrap();
            let text = format!(
                "listen = \"127.0.0.1:1\"\nbackends = [\"a:1\"]\n[{section}]\n{name} = \"500000000000years\"\n"
            );
            let text = text.replace("[auth]\n", "[auth]\njwks = \"k.json\"\n");
            let f = FileConfig::parse(&text).unwrap();
            let e = RunConfig::resolve(f, cli_min()).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
        // Ten years is still fine.
        let f = FileConfig::parse(
            "listen = \"127.0.0.1:1\"\nbackends = [\"a:1\"]\n[timeouts]\nsse_idle = \"3650days\"\n",
        )
        .unwrap();
        let r = RunConfig::resolve(f, cli_min()).unwrap();
        assert_eq!(r.core.sse_idle_timeout, MAX_DURATION);
    }

    /// Found with the config fuzz target's invariants: zero capacities
    /// resolved (the proxy then refused every connection, or read no
    /// request), and huge ones overflowed the open-file count.
    #[test]
    fn capacities_that_cannot_serve_are_refused() {
        let resolve = |limits: &str| {
            let text =
                format!("listen = \"127.0.0.1:1\"\nbackends = [\"a:1\"]\n[limits]\n{limits}\n");
            RunConfig::resolve(FileConfig::parse(&text).unwrap(), cli_min())
        };
        for (key, value) in [
            ("max_connections_per_worker", "0"),
            ("max_handshaking_per_worker", "0"),
            ("max_downstream_buffer", "0"),
            ("max_body_bytes", "0"),
            ("max_connections_per_worker", "9223372036854775807"),
            ("pool_max_per_backend", "9223372036854775807"),
            ("max_handshaking_per_worker", "16777217"),
            ("listen_backlog", "0"),
            ("listen_backlog", "65536"),
        ] {
            let e = resolve(&format!("{key} = {value}")).unwrap_err();
            assert!(e.to_string().contains(key), "{key} = {value}: {e}");
        }
        let r = resolve("pool_max_per_backend = 0\nmax_connections_per_worker = 16777216").unwrap();
        assert_eq!(r.kernel.max_connections_per_worker, MAX_PER_WORKER);
        assert_eq!(r.kernel.pool_max_per_backend, 0);
    }

    /// Replays the committed corpus of the config fuzz target.
    #[test]
    fn fuzz_corpus_replays_without_findings() {
        let dir = dpuproxy_corpus::dir(env!("CARGO_MANIFEST_DIR"), "config");
        let verdicts: Vec<_> = dpuproxy_corpus::inputs(&dir)
            .into_iter()
            .map(|(path, data)| (path, fuzz_target(&data)))
            .collect();
        let count = |v: FuzzVerdict| verdicts.iter().filter(|(_, x)| *x == v).count();
        assert!(verdicts.len() >= 25, "only {} corpus files", verdicts.len());
        assert!(count(FuzzVerdict::Resolved) >= 8, "{verdicts:#?}");
        assert!(count(FuzzVerdict::Refused) >= 8, "{verdicts:#?}");
        assert!(count(FuzzVerdict::Unparsable) >= 5, "{verdicts:#?}");
        let example = include_bytes!("../../dpuproxy.example.toml");
        assert_eq!(fuzz_target(example), FuzzVerdict::Resolved);
        assert_eq!(fuzz_target(b"\xff\xfe"), FuzzVerdict::NotUtf8);
    }

    #[test]
    fn the_longest_sealed_id_is_what_the_readme_says() {
        assert_eq!(dpuproxy_l7::seal::MAX_SEALED_LEN, 471);
    }
}
