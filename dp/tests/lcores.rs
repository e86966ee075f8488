//! Loops on several lcores over real DPDK: `run_on_lcores` with two lcores
//! (`--lcores=0@1,1@1`, both on core 1) polling the two queue pairs of a
//! `net_null` port through `QueuePair` handles moved to them. One EAL per
//! process, so this file is one test.
#![cfg(dpdk)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dpuproxy_dp::{Eal, Error, Mempool, Port, PortConfig, run_on_lcores};

fn eal_args() -> Vec<String> {
    [
        "--lcores=0@1,1@1",
        "--no-huge",
        "-m",
        "256",
        "--no-shconf",
        &format!("--file-prefix=dplc{}", std::process::id()),
        "--no-telemetry",
        "--no-pci",
        "--log-level=lib.eal:warning",
        "--vdev=net_null0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

type Job<'a, R> = Box<dyn FnOnce() -> R + Send + 'a>;

#[test]
fn two_lcores_poll_their_own_queue_pairs() {
    let eal = Eal::init(eal_args()).expect("EAL init with two lcores");
    assert_eq!(eal.lcores(), [0, 1]);
    assert_eq!(eal.main_lcore(), 0);
    let pool = Mempool::new(&eal, "lcores", 4095, 64, None, None).unwrap();
    let mut port = Port::open(
        eal.ports()[0].id,
        &pool,
        &PortConfig {
            rx_queues: 2,
            tx_queues: 2,
            ..PortConfig::default()
        },
    )
    .unwrap();
    let pairs = port.queue_pairs();
    assert_eq!(pairs.len(), 2);

    // Each lcore polls its own queue for a while and sends back what it
    // got (net_null's tx frees them): (lcore, queue, packets).
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let jobs: Vec<Job<'_, (Option<u32>, u16, u64)>> = pairs
        .into_iter()
        .map(|qp| {
            Box::new(move || {
                let mut rx = Vec::new();
                let mut got = 0u64;
                let mut tx = qp.tx_batch(32, 0);
                let end = Instant::now() + Duration::from_millis(200);
                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    got += qp.rx_burst(&mut rx, 32) as u64;
                    for m in rx.drain(..) {
                        tx.push(m);
                    }
                    tx.flush();
                }
                (Eal::current_lcore(), qp.queue(), got)
            }) as Job<'_, _>
        })
        .collect();
    let results = run_on_lcores(&eal, jobs, || stop.store(true, Ordering::Relaxed)).unwrap();
    let results: Vec<_> = results.into_iter().map(|r| r.expect("no panic")).collect();
    assert_eq!(results[0].0, Some(0), "job 0 runs on the main lcore");
    assert_eq!(results[1].0, Some(1), "job 1 runs on the worker lcore");
    assert_eq!((results[0].1, results[1].1), (0, 1));
    assert!(results.iter().all(|r| r.2 > 0), "{results:?}");
    assert_eq!(pool.in_use(), 0, "every mbuf went back");

    // A panic on a worker comes back as an Err, and the lcore can be used
    // again afterwards.
    let jobs: Vec<Job<'_, u32>> = vec![
        Box::new(|| 7),
        Box::new(|| panic!("deliberate panic on the worker")),
    ];
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // the panic is expected: keep the output clean
    let results = run_on_lcores(&eal, jobs, || {}).unwrap();
    std::panic::set_hook(default_hook);
    assert_eq!(*results[0].as_ref().unwrap(), 7);
    let msg = results[1]
        .as_ref()
        .unwrap_err()
        .downcast_ref::<&str>()
        .copied();
    assert_eq!(msg, Some("deliberate panic on the worker"));
    let again: Vec<Job<'_, Option<u32>>> =
        vec![Box::new(Eal::current_lcore), Box::new(Eal::current_lcore)];
    let again: Vec<_> = run_on_lcores(&eal, again, || {})
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(again, [Some(0), Some(1)]);

    // More jobs than lcores: refused before anything runs.
    let ran = AtomicBool::new(false);
    let ran = &ran;
    let three: Vec<Job<'_, ()>> = (0..3)
        .map(|_| Box::new(move || ran.store(true, Ordering::Relaxed)) as Job<'_, ()>)
        .collect();
    assert!(matches!(
        run_on_lcores(&eal, three, || {}),
        Err(Error::Config(_))
    ));
    assert!(!ran.load(Ordering::Relaxed));
    drop(port);
}
