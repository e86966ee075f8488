//! `dpuproxy tls-echo`: a TLS echo server on a kernel TCP socket that uses
//! the memory-buffer handshake (`dpuproxy_tls::OpensslHandshake`) and our
//! record layer for every application record, never `SSL_read` or
//! `SSL_write`. A diagnostic for operators and an interop target for real
//! clients (`openssl s_client`, Python `ssl`, curl).
//!
//! One thread per connection with blocking sockets: simple, and enough for
//! a diagnostic. Each loop turn opens every whole record received in place,
//! answers control records (KeyUpdate, close_notify), and echoes the data
//! of the turn coalesced into full-size records.
//!
//! When the listener is up it prints `tls-echo listening on ADDR` on stdout
//! (ADDR is the real port when `--listen` asked for port 0). Every
//! connection ends with one `tls-echo connection` log line on stderr giving
//! version, suite, record and byte counts, KeyUpdates, and how it ended.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use dpuproxy_tls::{
    Handshake, HandshakeConfig, HandshakeOptions, Incoming, OpensslHandshake, RecordLayer, Side,
    TlsError,
};

/// `dpuproxy tls-echo` arguments.
#[derive(clap::Args, Debug)]
pub struct TlsEchoArgs {
    /// Address to listen on (port 0 picks a free port; the real one is printed).
    #[arg(long)]
    pub listen: SocketAddr,
    /// PEM certificate chain.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// TLS 1.3 ciphersuites to accept, OpenSSL syntax (default: all three
    /// the record layer carries).
    #[arg(long)]
    pub tls13_ciphersuites: Option<String>,
    /// TLS 1.2 cipher list, OpenSSL syntax (default: ECDHE with AES-GCM and
    /// ChaCha20-Poly1305).
    #[arg(long)]
    pub tls12_ciphers: Option<String>,
    /// Close a connection after this many seconds without input.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// Exit after serving this many connections (default: run until killed).
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// Append SSLKEYLOGFILE lines here, for Wireshark. The file holds secrets.
    #[arg(long)]
    pub keylog_file: Option<PathBuf>,
}

/// Run the echo server.
pub fn run(args: &TlsEchoArgs) -> anyhow::Result<()> {
    let config = Arc::new(server_config(args)?);
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("tls-echo listening on {addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, "tls-echo listening");
    let idle = Duration::from_secs(args.idle_timeout_secs.max(1));
    accept_loop(&listener, config, idle, args.max_connections);
    Ok(())
}

/// Serve connections, one thread each, until `max` have been accepted (then
/// wait for them) or forever.
fn accept_loop(
    listener: &TcpListener,
    config: Arc<HandshakeConfig>,
    idle: Duration,
    max: Option<u64>,
) {
    let mut threads = Vec::new();
    let mut served = 0u64;
    for (id, conn) in (1u64..).zip(listener.incoming()) {
        let sock = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let config = config.clone();
        threads.push(std::thread::spawn(move || serve(&config, sock, id, idle)));
        served += 1;
        if max.is_some_and(|m| served >= m) {
            break;
        }
    }
    for t in threads {
        let _ = t.join();
    }
}

fn server_config(args: &TlsEchoArgs) -> anyhow::Result<HandshakeConfig> {
    let builder = dpuproxy_tls::server_builder(&args.tls_cert, &args.tls_key)?;
    let mut opts = HandshakeOptions::default();
    if let Some(s) = &args.tls13_ciphersuites {
        opts.tls13_ciphersuites = s.clone();
    }
    if let Some(s) = &args.tls12_ciphers {
        opts.tls12_cipher_list = s.clone();
    }
    if let Some(path) = &args.keylog_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let file = Mutex::new(file);
        opts.keylog_sink = Some(Arc::new(move |line: &str| {
            if let Ok(mut f) = file.lock() {
                let _ = writeln!(f, "{line}");
            }
        }));
    }
    HandshakeConfig::new(builder, Side::Server, opts).context("TLS configuration")
}

/// How a connection ended.
enum End {
    CloseNotify,
    Eof,
    Error(String, &'static str),
}

fn serve(config: &HandshakeConfig, mut sock: TcpStream, id: u64, idle: Duration) {
    let peer = sock
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(idle));
    let rl = match handshake(config, &mut sock) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(conn = id, %peer, error = %format!("{e:#}"), "tls-echo handshake failed");
            let _ = sock.shutdown(Shutdown::Both);
            return;
        }
    };
    let (mut rl, leftover) = rl;
    let start_tx = rl.tx_seq();
    let start_rx = rl.rx_seq();
    tracing::debug!(conn = id, %peer, version = %rl.version(), suite = %rl.suite(), "tls-echo handshake done");
    let end = echo(&mut rl, &mut sock, leftover);
    let _ = sock.shutdown(Shutdown::Both);
    let s = rl.stats();
    let (how, error, kind) = match &end {
        End::CloseNotify => ("close_notify", String::new(), ""),
        End::Eof => ("eof_without_close_notify", String::new(), ""),
        End::Error(e, k) => ("error", e.clone(), *k),
    };
    tracing::info!(
        conn = id,
        %peer,
        version = %rl.version(),
        suite = %rl.suite(),
        start_seq_tx = start_tx,
        start_seq_rx = start_rx,
        records_in = s.records_in,
        records_out = s.records_out,
        bytes_in = s.app_bytes_in,
        bytes_out = s.app_bytes_out,
        key_updates_rx = s.key_updates_received,
        key_updates_tx = s.key_updates_sent,
        end = how,
        error_kind = kind,
        error = %error,
        "tls-echo connection"
    );
}

fn handshake(
    config: &HandshakeConfig,
    sock: &mut TcpStream,
) -> anyhow::Result<(RecordLayer, Vec<u8>)> {
    let mut hs = OpensslHandshake::new(config)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    while hs.is_handshaking() {
        let n = sock.read(&mut buf).context("reading the handshake")?;
        if n == 0 {
            anyhow::bail!("peer closed during the handshake");
        }
        let fed = hs.feed(&buf[..n]);
        // OpenSSL's alert goes out even when the handshake failed.
        if hs.poll_output(&mut out) > 0 {
            sock.write_all(&out).context("writing the handshake")?;
            out.clear();
        }
        fed?;
    }
    let est = hs.into_established()?;
    sock.write_all(&est.output)?;
    Ok((est.record_layer, est.leftover))
}

const READ_CHUNK: usize = 64 * 1024;

fn echo(rl: &mut RecordLayer, sock: &mut TcpStream, leftover: Vec<u8>) -> End {
    let mut rx = leftover;
    let mut out = Vec::new();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    loop {
        // Open every whole record in place; remember where the data lies.
        let mut pos = 0;
        let mut closed = false;
        let mut failure: Option<TlsError> = None;
        ranges.clear();
        while pos < rx.len() {
            let base = rx.as_ptr() as usize;
            match rl.open_next(&mut rx[pos..]) {
                Ok(o) => {
                    match o.incoming {
                        Incoming::NeedMore => break,
                        Incoming::AppData(d) => {
                            let at = d.as_ptr() as usize - base;
                            ranges.push((at, at + d.len()));
                        }
                        Incoming::Control => {}
                        Incoming::CloseNotify => closed = true,
                    }
                    pos += o.consumed;
                    if closed {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        out.clear();
        let _ = rl.poll_output(&mut out);
        if failure.is_none() && !ranges.is_empty() {
            // The turn's data, coalesced into full-size records.
            let parts: Vec<&[u8]> = ranges.iter().map(|&(a, b)| &rx[a..b]).collect();
            if let Err(e) = rl.write_app_data_vectored(&parts, &mut out) {
                failure = Some(e);
                let _ = rl.poll_output(&mut out);
            }
        }
        if let Some(e) = failure {
            // The alert (if any) is in `out`.
            let _ = sock.write_all(&out);
            return End::Error(e.to_string(), e.kind().name());
        }
        if closed {
            let _ = rl.send_close_notify();
            let _ = rl.poll_output(&mut out);
            let _ = sock.write_all(&out);
            return End::CloseNotify;
        }
        if !out.is_empty()
            && let Err(e) = sock.write_all(&out)
        {
            return End::Error(format!("write: {e}"), "io");
        }
        rx.drain(..pos);
        // Read straight into the receive buffer.
        let have = rx.len();
        rx.resize(have + READ_CHUNK, 0);
        match sock.read(&mut rx[have..]) {
            Ok(0) => return End::Eof,
            Ok(n) => rx.truncate(have + n),
            Err(e) if e.kind() == IoErrorKind::Interrupted => rx.truncate(have),
            Err(e) => return End::Error(format!("read: {e}"), "io"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

    #[test]
    fn echoes_for_an_openssl_client_through_our_record_layer() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        dpuproxy_tls::certs::write_self_signed(&cert, &key, 1).unwrap();
        let args = TlsEchoArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: cert.clone(),
            tls_key: key,
            tls13_ciphersuites: Some("TLS_CHACHA20_POLY1305_SHA256".into()),
            tls12_ciphers: None,
            idle_timeout_secs: 30,
            max_connections: Some(1),
            keylog_file: None,
        };
        let config = Arc::new(server_config(&args).unwrap());
        let listener = TcpListener::bind(args.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            accept_loop(&listener, config, Duration::from_secs(30), Some(1))
        });

        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_ca_file(&cert).unwrap();
        b.set_verify(SslVerifyMode::PEER);
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut tls = b.build().connect("localhost", tcp).unwrap();
        assert_eq!(
            tls.ssl().current_cipher().unwrap().name(),
            "TLS_CHACHA20_POLY1305_SHA256"
        );
        // Lock-step chunks so neither side's socket buffer has to hold it all.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut echo = vec![0u8; data.len()];
        for (src, dst) in data.chunks(50_000).zip(echo.chunks_mut(50_000)) {
            tls.write_all(src).unwrap();
            tls.read_exact(dst).unwrap();
        }
        assert!(echo == data, "echo differs");
        // close_notify both ways: OpenSSL sees ours as a clean EOF.
        tls.shutdown().unwrap();
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        server.join().unwrap();
    }
}
