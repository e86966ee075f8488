//! Criterion micro-benchmarks of the record layer: seal and open one
//! application-data record in place, TLS 1.3 AES-128-GCM, 1 KiB and 16 KiB.
//! `cargo bench -p dpuproxy-tls --bench records`. Figures only.
//! (`dpuproxy bench records` compares every suite against raw EVP.)

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dpuproxy_tls::fuzz::fuzz_secrets;
use dpuproxy_tls::{CipherSuite, Incoming, Limits, RecordLayer, Side};

const SUITE: CipherSuite = CipherSuite::Tls13Aes128GcmSha256;

fn layer(side: Side) -> RecordLayer {
    RecordLayer::new(&fuzz_secrets(SUITE, side), Limits::default()).expect("keys")
}

fn records(c: &mut Criterion) {
    for size in [1024usize, 16 * 1024] {
        let mut g = c.benchmark_group(format!("record_{}KiB", size / 1024));
        g.throughput(Throughput::Bytes(size as u64));
        let mut server = layer(Side::Server);
        let overhead = server.tx_overhead();
        let header = server.tx_header_len();
        let mut record = vec![0u8; size + overhead];
        // Any bytes will do as plaintext: each pass seals the last one's
        // ciphertext.
        record[header..header + size].fill(0x61);
        let mut control = Vec::new();
        g.bench_function("seal_in_place", |b| {
            b.iter(|| {
                let n = server
                    .seal_app_data_in_place(black_box(&mut record), size, &mut control)
                    .expect("seal");
                control.clear();
                n
            })
        });
        g.bench_function("open_in_place", |b| {
            b.iter_batched(
                || {
                    // A fresh pair per record: sequence numbers must match.
                    let mut tx = layer(Side::Server);
                    let rx = layer(Side::Client);
                    let mut wire = Vec::new();
                    tx.write_app_data(&vec![0x62; size], &mut wire)
                        .expect("seal");
                    (rx, wire)
                },
                |(mut rx, mut wire)| {
                    let o = rx.open_next(black_box(&mut wire)).expect("open");
                    assert!(matches!(o.incoming, Incoming::AppData(d) if d.len() == size));
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, records);
criterion_main!(benches);
