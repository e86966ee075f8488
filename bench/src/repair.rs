//! `bench repair`: the kernel TCP half of a live move, timed. N loopback
//! connections, each with bytes queued both ways (unread at our end; and,
//! behind the client's small receive window, in the client's buffer and in
//! our end's send queue), are moved one after the other from their socket to a
//! new one with `TCP_REPAIR` (`dpuproxy_kernel::repair`), then checked:
//! every queued byte arrives once, in order, and a round trip works on
//! each. The TLS state and the steering flip of a real switch are not in
//! these figures.
//!
//! Last line: `moved=N failed=F conns_per_s=R pause_p99_us=P`, where R
//! counts the connections moved per second of moving and a connection's
//! pause runs from the start of its capture to the end of its restore. A
//! connection that fails is reset (its client sees an RST) and the command
//! exits with an error.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dpuproxy_kernel::repair;

#[derive(clap::Args, Debug)]
pub struct RepairArgs {
    /// Connections to move.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Bytes queued in each direction on each connection before the move
    /// (past the client's small window, the rest waits in our send queue).
    #[arg(long, default_value_t = 16_000)]
    pub queued: usize,
}

/// Byte `i` of connection `conn`'s stream in direction `dir`.
fn pattern(conn: usize, dir: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ (conn as u8).wrapping_add(dir))
        .collect()
}

/// Read exactly `n` bytes, or fail after `limit`.
fn read_n(s: &mut TcpStream, n: usize, limit: Duration) -> std::io::Result<Vec<u8>> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(limit))?;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// A client connection whose receive buffer is small, so that what our
/// end writes past it stays in our end's send queue (on loopback the rest
/// would be acknowledged at once and never pass through the move).
fn small_window_client(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_recv_buffer_size(CLIENT_RCVBUF)?;
    s.connect(&addr.into())?;
    Ok(s.into())
}

/// The client's receive buffer (the kernel doubles it and keeps a floor).
const CLIENT_RCVBUF: usize = 4096;

/// Write as much of `data` as the socket takes now; how much it took.
fn write_some(s: &mut TcpStream, data: &[u8]) -> std::io::Result<usize> {
    s.set_nonblocking(true)?;
    let mut done = 0;
    while done < data.len() {
        match s.write(&data[done..]) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    s.set_nonblocking(false)?;
    Ok(done)
}

pub fn run(args: &RepairArgs) -> anyhow::Result<()> {
    let n = args.connections;
    if n == 0 {
        bail!("--connections must be at least 1");
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback")?;
    let addr = listener.local_addr()?;
    // (client, ours, bytes queued towards us, bytes queued towards the client)
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = small_window_client(addr)
            .with_context(|| format!("connection {i}: connect (open-file limit?)"))?;
        let (mut ours, _) = listener.accept()?;
        let to_us = write_some(&mut client, &pattern(i, 0, args.queued))?;
        let to_client = write_some(&mut ours, &pattern(i, 1, args.queued))?;
        pairs.push((client, ours, to_us, to_client));
    }
    eprintln!(
        "bench repair: {n} loopback connections, up to {} bytes queued each way on each \
         (client receive buffer {CLIENT_RCVBUF} B, so our send queues hold the rest)",
        args.queued
    );
    // Let the bytes land in the queues (and delayed ACKs go out).
    std::thread::sleep(Duration::from_millis(200));

    let mut pauses = Vec::with_capacity(n);
    let mut moved = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut with_send_queue = 0usize;
    let started = Instant::now();
    for (i, (client, ours, to_us, to_client)) in pairs.into_iter().enumerate() {
        let t = Instant::now();
        let state = match repair::capture(&ours) {
            Ok(s) => s,
            Err(e) => {
                if failed == 0 {
                    eprintln!("bench repair: connection {i}: capture: {e}");
                }
                failed += 1;
                continue;
            }
        };
        drop(ours);
        with_send_queue += usize::from(!state.send_queue.is_empty());
        match repair::restore(&state) {
            Ok(r) if r.pending.is_empty() => {
                pauses.push(t.elapsed());
                moved.push((i, client, r.stream, to_us, to_client));
            }
            Ok(r) => {
                eprintln!(
                    "bench repair: connection {i}: {} bytes left to write after the restore",
                    r.pending.len()
                );
                failed += 1;
            }
            Err(e) => {
                if failed == 0 {
                    eprintln!("bench repair: connection {i}: restore: {e}");
                }
                // The old socket is gone: the client gets an RST, not silence.
                let _ = repair::reset(&state);
                failed += 1;
            }
        }
    }
    let elapsed = started.elapsed();

    // Every byte once, in order, both ways; then a round trip.
    let limit = Duration::from_secs(5);
    let mut ok = 0usize;
    for (i, mut client, mut ours, to_us, to_client) in moved {
        let check = (|| -> std::io::Result<bool> {
            let to_client = read_n(&mut client, to_client, limit)? == pattern(i, 1, to_client);
            let to_us = read_n(&mut ours, to_us, limit)? == pattern(i, 0, to_us);
            client.write_all(b"ping")?;
            let ping = read_n(&mut ours, 4, limit)? == b"ping";
            ours.write_all(b"pong")?;
            let pong = read_n(&mut client, 4, limit)? == b"pong";
            Ok(to_client && to_us && ping && pong)
        })();
        match check {
            Ok(true) => ok += 1,
            Ok(false) => {
                eprintln!("bench repair: connection {i}: bytes differ after the move");
                failed += 1;
            }
            Err(e) => {
                eprintln!("bench repair: connection {i}: after the move: {e}");
                failed += 1;
            }
        }
    }
    pauses.sort();
    let pct = |p: f64| -> f64 {
        pauses
            .get(((pauses.len() as f64 * p) as usize).min(pauses.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    eprintln!(
        "bench repair: pause µs p50 {:.1} p99 {:.1} max {:.1}; {:.3} s for all; \
         {with_send_queue} captures held bytes in the send queue",
        pct(0.50),
        pct(0.99),
        pauses.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
        elapsed.as_secs_f64()
    );
    println!(
        "moved={ok} failed={failed} conns_per_s={:.0} pause_p99_us={:.0}",
        ok as f64 / elapsed.as_secs_f64(),
        pct(0.99)
    );
    if failed > 0 {
        bail!("{failed} of {n} connections failed to move");
    }
    Ok(())
}
