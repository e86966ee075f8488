//! The soak's processes: load parts (backends, clients) spoken to over
//! pipes, and the proxies under test (one dpdk process, or as many kernel
//! processes sharing the listen port by SO_REUSEPORT as the open-file
//! limit requires).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::procs::{free_port, wait_listening};
use crate::proxy::targets::{self, Job, Running};

/// How long a part may take to answer one command.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// One load process; killed on drop.
#[derive(Debug)]
pub struct Part {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Part {
    /// Start `dpuproxy bench soak-part ARGS`, its stderr into `log`.
    pub fn spawn(name: &str, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the dpuproxy binary")?;
        let mut child = Command::new(exe)
            .args(["bench", "soak-part"])
            .args(args)
            .env("DPUPROXY_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("cannot start soak part {name}"))?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("soak-part-{name}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            name: name.to_string(),
            child,
            stdin,
            lines: rx,
        })
    }

    /// The next line the part prints.
    pub fn line(&mut self) -> anyhow::Result<String> {
        match self.lines.recv_timeout(ANSWER_WITHIN) {
            Ok(l) if l.starts_with("error") => bail!("soak part {}: {l}", self.name),
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "soak part {} did not answer within {ANSWER_WITHIN:?}",
                    self.name
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                bail!("soak part {} ended ({status:?}); see its log", self.name)
            }
        }
    }

    /// Send one command, return its answer.
    pub fn command(&mut self, cmd: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|_| self.stdin.flush())
            .with_context(|| format!("soak part {} is gone", self.name))?;
        self.line()
    }

    /// Send a command whose answer must be `ok`.
    pub fn ok(&mut self, cmd: &str) -> anyhow::Result<()> {
        let a = self.command(cmd)?;
        if a != "ok" {
            bail!("soak part {}: {cmd:?} answered {a:?}", self.name);
        }
        Ok(())
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `k=v` pairs of a `stats …` line.
pub fn parse_stats(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Sum the `stats` lines of several parts.
pub fn sum_stats(lines: &[String]) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for l in lines {
        for (k, v) in parse_stats(l) {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

/// `n` kernel-mode proxies, one worker each, sharing `listen` by
/// SO_REUSEPORT, each with its own admin listener.
pub fn start_kernel_fleet(job: &Job, n: usize, listen: SocketAddr) -> anyhow::Result<Vec<Running>> {
    let exe = std::env::current_exe().context("cannot find the dpuproxy binary")?;
    let mut fleet = Vec::new();
    for k in 0..n {
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let log = job.out_dir.join(format!("soak-proxy-{k}.log"));
        let mut cmd = targets::pinned(&job.proxy_cpus, &exe);
        cmd.args(["run", "--mode", "kernel", "--workers", "1", "--admin"])
            .arg(admin.to_string());
        targets::same_job_args(&mut cmd, job, listen, &log)?;
        let mut child = cmd.spawn().context("cannot start dpuproxy (kernel)")?;
        wait_listening(
            admin,
            &mut child,
            "dpuproxy kernel (admin)",
            targets::WAIT,
            Some(&log),
        )?;
        wait_listening(
            listen,
            &mut child,
            "dpuproxy kernel",
            targets::WAIT,
            Some(&log),
        )?;
        fleet.push(Running {
            child,
            addr: listen,
            describe: format!("dpuproxy kernel #{k}"),
            admin: Some(admin),
        });
    }
    Ok(fleet)
}
