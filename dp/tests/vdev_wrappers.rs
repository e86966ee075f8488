//! The safe wrappers over real DPDK: EAL with `--no-huge`, `net_ring`
//! (a loopback: what is sent on a queue is received on it) and `net_null`
//! (rx makes packets, tx frees them). One EAL per process, so this file is
//! one test that walks through the parts in order; every part checks that
//! the pool count is back to full afterwards.
#![cfg(dpdk)]

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use dpuproxy_dp::net::{Responder, Verdict};
use dpuproxy_dp::{Eal, Error, LoopOptions, Mbuf, Mempool, Port, PortConfig, run_loop};

fn eal_args() -> Vec<String> {
    [
        "-l",
        "1",
        "--no-huge",
        "-m",
        "256",
        "--no-shconf",
        &format!("--file-prefix=dpwrap{}", std::process::id()),
        "--no-telemetry",
        "--no-pci",
        "--log-level=lib.eal:warning",
        "--vdev=net_ring0",
        "--vdev=net_null0",
        "--vdev=net_ring1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn frame<'p>(pool: &'p Mempool<'_>, payload: &[u8]) -> Mbuf<'p> {
    let mut m = pool.alloc().expect("pool not empty");
    assert!(m.extend_from_slice(payload));
    m
}

#[test]
fn wrappers_over_ring_and_null_vdevs() {
    let eal = Eal::init(eal_args()).expect("EAL init with --no-huge");
    assert!(matches!(
        Eal::init(eal_args()),
        Err(Error::AlreadyInitialized)
    ));
    assert_eq!(Eal::current_lcore(), Some(1), "main thread is lcore 1");
    assert_eq!(eal.main_lcore(), 1);
    assert_eq!(eal.lcores(), [1]);

    let ports = eal.ports();
    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["net_ring0", "net_null0", "net_ring1"], "{ports:?}");
    assert_eq!(ports[1].driver, "net_null");

    let pool = Mempool::new(&eal, "wrap", 4095, 64, None, None).unwrap();
    assert_eq!(pool.capacity(), 4095);
    assert_eq!(pool.available(), 4095);

    mbuf_operations(&pool);
    assert_eq!(pool.in_use(), 0, "mbuf_operations returned everything");

    ring_loopback_and_full_tx_ring(&pool, ports[0].id);
    assert_eq!(pool.in_use(), 0, "ring port returned everything");

    null_rx_rss_and_reta(&pool, ports[1].id);
    assert_eq!(pool.in_use(), 0, "null port returned everything");

    // Closed, the id is no longer claimed (closing a vdev also releases
    // the device, so reopening finds no such device).
    assert!(matches!(
        Port::open(ports[1].id, &pool, &PortConfig::default()),
        Err(Error::Port { .. })
    ));

    run_loop_answers_arp_over_ring(&pool, ports[2].id);
    assert_eq!(pool.in_use(), 0, "run loop returned everything");
    assert_eq!(pool.available(), pool.capacity());
}

fn mbuf_operations(pool: &Mempool<'_>) {
    let mut m = pool.alloc().unwrap();
    assert!(m.is_empty());
    assert_eq!(pool.in_use(), 1);
    let (head, tail) = (m.headroom(), m.tailroom());
    // SAFETY: reads an immutable constant defined in the shim.
    let headroom = unsafe { dpuproxy_dpdk_sys::DPUPROXY_RTE_PKTMBUF_HEADROOM };
    assert_eq!(head, headroom, "RTE_PKTMBUF_HEADROOM");
    assert_eq!(m.append(10).map(|b| b.len()), Some(10));
    m.data_mut().copy_from_slice(b"0123456789");
    assert_eq!(m.tailroom(), tail - 10);
    assert!(m.adj(2));
    assert!(m.trim(3));
    assert_eq!(m.data(), b"23456");
    m.prepend(2).unwrap().copy_from_slice(b"xy");
    assert_eq!(m.data(), b"xy23456");
    assert_eq!((m.len(), m.pkt_len(), m.segments()), (7, 7, 1));
    assert!(!m.trim(8), "cannot trim more than there is");
    assert!(
        m.append(m.tailroom() + 1).is_none(),
        "no room past the buffer"
    );
    assert_eq!(m.data(), b"xy23456", "failed ops leave data alone");
    m.reset();
    assert!(m.is_empty());
    drop(m);
    assert_eq!(pool.in_use(), 0);

    let bulk = pool.alloc_bulk(100).unwrap();
    assert_eq!(pool.in_use(), 100);
    assert!(pool.alloc_bulk(5000).is_none(), "all or none");
    assert_eq!(pool.in_use(), 100);
    let raw: Vec<_> = bulk.into_iter().map(Mbuf::into_raw).collect();
    assert_eq!(
        pool.in_use(),
        100,
        "into_raw hands ownership over, frees nothing"
    );
    for r in raw {
        // SAFETY: each pointer came from into_raw above and is owned here.
        drop(unsafe { Mbuf::from_raw(r) });
    }
    assert_eq!(pool.in_use(), 0);
}

fn ring_loopback_and_full_tx_ring(pool: &Mempool<'_>, id: u16) {
    let mut port = Port::open(id, pool, &PortConfig::default()).unwrap();
    assert_eq!(port.info().name, "net_ring0");
    assert!(port.link().unwrap().up);
    port.reset_stats().unwrap();

    // Loopback: what goes out comes back, bytes intact.
    {
        let mut tx = port.tx_batch(0, 32, 0);
        for i in 0..10u8 {
            tx.push(frame(pool, &[i; 60]));
        }
        assert_eq!(tx.flush(), 10);
        let mut rx = Vec::new();
        assert_eq!(port.rx_burst(0, &mut rx, 32), 10);
        for (i, m) in rx.iter().enumerate() {
            assert_eq!(m.data(), &[i as u8; 60]);
        }
        let s = port.stats().unwrap();
        assert_eq!((s.opackets, s.ipackets), (10, 10));
    }
    assert_eq!(pool.in_use(), 0);

    // A full tx ring (net_ring's ring holds 1023): nothing leaks, nothing
    // is lost track of.
    let pushed = 2000u64;
    let tx_stats = {
        let mut tx = port.tx_batch(0, 64, 2);
        for i in 0..pushed {
            tx.push(frame(pool, &i.to_be_bytes()));
        }
        tx.flush();
        tx.stats()
    };
    assert_eq!(tx_stats.queued, pushed);
    assert_eq!(
        tx_stats.sent + tx_stats.dropped_full,
        pushed,
        "{tx_stats:?}"
    );
    assert!(
        tx_stats.dropped_full > 0 && tx_stats.retries > 0,
        "{tx_stats:?}"
    );
    assert_eq!(
        u64::from(pool.in_use()),
        tx_stats.sent,
        "exactly the sent mbufs are out (sitting in the ring)"
    );
    let mut got = Vec::new();
    while port.rx_burst(0, &mut got, 64) > 0 {}
    assert_eq!(got.len() as u64, tx_stats.sent);
    // Sent in order; the first ones made it.
    for (i, m) in got.iter().enumerate().take(5) {
        assert_eq!(m.data(), &(i as u64).to_be_bytes());
    }
    drop(got);
    assert_eq!(pool.in_use(), 0);

    // A batch dropped unflushed frees its mbufs.
    {
        let mut tx = port.tx_batch(0, 32, 0);
        tx.push(frame(pool, b"never sent"));
        assert_eq!(pool.in_use(), 1);
    }
    assert_eq!(pool.in_use(), 0);

    port.stop().unwrap();
    port.start().unwrap();
    drop(port);
}

fn null_rx_rss_and_reta(pool: &Mempool<'_>, id: u16) {
    let cfg = PortConfig {
        rx_queues: 2,
        tx_queues: 2,
        ..PortConfig::default()
    };
    let mut port = Port::open(id, pool, &cfg).unwrap();
    // Safe code cannot open one device twice (two threads could otherwise
    // configure or poll it at once).
    assert!(
        matches!(Port::open(id, pool, &cfg), Err(Error::PortInUse(p)) if p == id),
        "a second Port for the same id"
    );
    let mut rx = Vec::new();
    let n = port.rx_burst(1, &mut rx, 32);
    assert_eq!(n, 32, "net_null always has a burst");
    assert_eq!(pool.in_use(), 32);
    assert!(rx.iter().all(|m| m.len() == 64), "net_null's default size");
    {
        let mut tx = port.tx_batch(1, 64, 0);
        for m in rx.drain(..) {
            tx.push(m);
        }
        assert_eq!(tx.flush(), 32, "net_null takes everything");
    }
    assert_eq!(pool.in_use(), 0, "net_null's tx freed them");

    // RETA: spread over both queues, read it back.
    let size = usize::from(port.reta_size());
    assert!(size > 0, "net_null has a RETA");
    let table: Vec<u16> = (0..size).map(|i| (i % 3 == 0) as u16).collect();
    port.set_reta(&table).unwrap();
    assert_eq!(port.reta().unwrap(), table);
    assert!(
        port.set_reta(&vec![2; size]).is_err(),
        "queue 2 does not exist"
    );
    assert!(port.set_reta(&table[1..]).is_err(), "wrong size");

    // RSS key: write one, read it back.
    let (key, hf) = port.rss_key().unwrap();
    let new_key: Vec<u8> = (0..key.len()).map(|i| (i * 13 + 1) as u8).collect();
    port.set_rss_key(&new_key, hf).unwrap();
    assert_eq!(port.rss_key().unwrap().0, new_key);
    drop(port);
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let peer_mac = [0x02, 0, 0, 0, 0, 2];
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&peer_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&peer_mac);
    f.extend_from_slice(&[10, 77, 9, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

fn run_loop_answers_arp_over_ring(pool: &Mempool<'_>, id: u16) {
    let port = Port::open(id, pool, &PortConfig::default()).unwrap();
    let ip = Ipv4Addr::new(10, 77, 9, 1);
    let mut responder = Responder::new(port.mac().unwrap(), ip);
    // Inject requests: on a ring port they come back as received frames;
    // the loop's replies loop back too and are then ignored (not requests).
    let requests = 50u64;
    {
        let mut tx = port.tx_batch(0, 64, 0);
        for _ in 0..requests {
            tx.push(frame(pool, &arp_request(ip)));
        }
        tx.push(frame(pool, &arp_request(Ipv4Addr::new(10, 77, 9, 3))));
        tx.flush();
    }
    let stop = AtomicBool::new(false);
    let mut reports = 0;
    let opts = LoopOptions {
        report_every: Some(Duration::from_millis(50)),
        run_for: Some(Duration::from_millis(300)),
        ..LoopOptions::default()
    };
    let (lc, txs) = run_loop(
        &port,
        &opts,
        &stop,
        |mut m, tx| {
            if responder.handle(m.data_mut()) == Verdict::Reply {
                tx.push(m);
            }
        },
        |_, _| reports += 1,
    );
    let r = responder.stats();
    assert_eq!(r.arp_replies, requests, "{r:?}");
    assert_eq!(
        r.frames,
        2 * requests + 1,
        "requests, the foreign one, replies"
    );
    assert_eq!(lc.rx_packets, 2 * requests + 1);
    assert_eq!(lc.tx_queued, requests);
    assert_eq!(txs.sent, requests);
    assert_eq!(lc.lcore, 1);
    assert!(lc.busy_iterations > 0 && lc.busy_cycles > 0, "{lc:?}");
    assert!(lc.idle_cycles > lc.busy_cycles, "mostly idle: {lc:?}");
    assert!(lc.iterations > lc.busy_iterations);
    assert!(lc.tsc_hz > 0);
    // Every 50 ms for 300 ms: at most 6 (+1 at the edge); fewer only if
    // the thread was descheduled across report points.
    assert!(
        (1..=7).contains(&reports),
        "about every 50 ms for 300 ms: {reports}"
    );
    drop(port);
}
