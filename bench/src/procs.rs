//! Helpers for the child processes the demo and the benchmarks start.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Wait until `addr` accepts TCP connections, failing early (with the tail
/// of `log`, when given) if `child` exits first.
pub fn wait_listening(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
    timeout: Duration,
    log: Option<&Path>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let tail = || {
        let Some(log) = log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(":\n{}", lines[from..].join("\n"))
    };
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited ({st}) before listening on {addr}{}", tail());
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{what} did not listen on {addr} within {timeout:?}{}",
        tail()
    )
}
