//! Part of `dpuproxy bench records`: OpenSSL's own record path
//! (`SSL_write` on one end, `SSL_read` on the other, over memory pipes)
//! against our `RecordLayer` seal and open, per record, for TLS 1.3
//! AES-128-GCM. This is the kernel path's question: its records go through
//! OpenSSL's SSL layer today (no kTLS here), and taking over connections it
//! did not handshake needs our record layer there.
//!
//! Per record, OpenSSL's side includes one copy of the record out of the
//! writer's pipe into the reader's (where a socket would copy into and out
//! of the kernel); ours seals and opens in place, with no copy. Fastest of
//! interleaved batches, as in the main table.

use std::io;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dpuproxy_tls::handshake::MemPipe;
use openssl::ssl::{
    ErrorCode, Ssl, SslAcceptor, SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion,
};

/// A connected server/client pair of OpenSSL streams over memory pipes.
struct SslPair {
    server: SslStream<MemPipe>,
    client: SslStream<MemPipe>,
}

/// Move what `from` wrote into `to`'s input.
fn carry(from: &mut SslStream<MemPipe>, to: &mut SslStream<MemPipe>) {
    let out = std::mem::take(&mut from.get_mut().output);
    to.get_mut().input.extend_from_slice(&out);
}

fn progressed(r: Result<(), openssl::ssl::Error>) -> anyhow::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
            Ok(false)
        }
        Err(e) => bail!("TLS handshake failed: {e}"),
    }
}

impl SslPair {
    fn new() -> anyhow::Result<Self> {
        let (cert, key) = dpuproxy_tls::certs::self_signed(1).context("test certificate")?;
        let mut s = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
        s.set_certificate(&cert)?;
        s.set_private_key(&key)?;
        s.set_ciphersuites("TLS_AES_128_GCM_SHA256")?;
        s.set_min_proto_version(Some(SslVersion::TLS1_3))?;
        let sctx = s.build().into_context();
        let mut c = SslConnector::builder(SslMethod::tls_client())?;
        c.set_verify(SslVerifyMode::NONE);
        c.set_ciphersuites("TLS_AES_128_GCM_SHA256")?;
        let cctx = c.build().into_context();
        let mut server = SslStream::new(Ssl::new(&sctx)?, MemPipe::default())?;
        let mut client = SslStream::new(Ssl::new(&cctx)?, MemPipe::default())?;
        let (mut s_done, mut c_done) = (false, false);
        for _ in 0..32 {
            if !c_done {
                c_done = progressed(client.connect())?;
            }
            carry(&mut client, &mut server);
            if !s_done {
                s_done = progressed(server.accept())?;
            }
            carry(&mut server, &mut client);
            if s_done && c_done {
                break;
            }
        }
        if !(s_done && c_done) {
            bail!("TLS handshake did not finish over memory pipes");
        }
        // The client takes the session tickets now, not inside a timed batch.
        let mut sink = [0u8; 16];
        match client.ssl_read(&mut sink) {
            Err(e) if e.code() == ErrorCode::WANT_READ => {}
            Ok(n) => bail!("{n} unexpected application bytes after the handshake"),
            Err(e) => bail!("reading the session tickets: {e}"),
        }
        Ok(SslPair { server, client })
    }

    /// `records` records of `payload` from server to client; the time taken.
    fn batch(
        &mut self,
        payload: &[u8],
        records: usize,
        buf: &mut [u8],
    ) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for _ in 0..records {
            let n = self.server.ssl_write(payload)?;
            if n != payload.len() {
                bail!("SSL_write took {n} of {} bytes", payload.len());
            }
            carry(&mut self.server, &mut self.client);
            let mut got = 0;
            while got < payload.len() {
                got += self
                    .client
                    .ssl_read(&mut buf[got..payload.len()])
                    .map_err(|e| io::Error::other(format!("SSL_read: {e}")))?;
            }
        }
        Ok(t.elapsed())
    }
}

/// OpenSSL's record path for `size`-byte records: ns per record (write +
/// read), fastest batch within `budget`.
pub(crate) fn ssl_ns_per_record(
    size: usize,
    batch_bytes: usize,
    budget: Duration,
) -> anyhow::Result<f64> {
    let mut pair = SslPair::new()?;
    let payload = vec![0x5au8; size];
    let mut buf = vec![0u8; size];
    let records = (batch_bytes / size).max(1);
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut batches = 0;
    while batches < 3 || start.elapsed() < budget {
        best = best.min(pair.batch(&payload, records, &mut buf)?);
        batches += 1;
    }
    Ok(best.as_secs_f64() * 1e9 / records as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_records_arrive_whole_over_the_pipes() {
        let mut pair = SslPair::new().unwrap();
        for size in [1, 256, 16384] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let mut buf = vec![0u8; size];
            pair.batch(&payload, 3, &mut buf).unwrap();
            assert_eq!(buf, payload, "{size}-byte records");
            assert!(pair.client.get_ref().input.is_empty(), "nothing left over");
        }
    }
}
