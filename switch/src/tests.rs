//! The board's protocol with a recording steering (the real one, our XDP
//! program, is tested in `dp/tests/xdp_steer.rs`) and numbers as parcels.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::AtomicUsize;

use super::*;

#[derive(Debug, Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
}

impl Steer for Recorder {
    fn set(&self, flow: Flow, owner: FlowOwner) -> Result<(), String> {
        self.log
            .lock()
            .unwrap()
            .push(format!("set {flow} {owner:?}"));
        Ok(())
    }
    fn forget(&self, flow: Flow) {
        self.log.lock().unwrap().push(format!("forget {flow}"));
    }
    fn set_default(&self, path: Path) -> Result<(), String> {
        self.log
            .lock()
            .unwrap()
            .push(format!("default {}", path.label()));
        Ok(())
    }
    fn owner(&self, flow: Flow) -> Option<FlowOwner> {
        // The last set or forget of this flow in the log.
        let log = self.log.lock().unwrap();
        let set = format!("set {flow} ");
        for line in log.iter().rev() {
            if line == &format!("forget {flow}") {
                return None;
            }
            if let Some(o) = line.strip_prefix(&set) {
                return Some(match o {
                    "Path(Dpdk)" => FlowOwner::Path(Path::Dpdk),
                    "Path(Kernel)" => FlowOwner::Path(Path::Kernel),
                    _ => FlowOwner::Hold,
                });
            }
        }
        None
    }
}

fn flow(port: u16) -> Flow {
    Flow {
        remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port),
        local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443),
    }
}

fn board() -> (SwitchBoard<u32>, Arc<Recorder>) {
    let b = SwitchBoard::new(Path::Dpdk);
    let r = Arc::new(Recorder::default());
    b.set_steer(r.clone()).unwrap();
    b.mark_ready(Path::Dpdk);
    b.mark_ready(Path::Kernel);
    (b, r)
}

fn moving(n: u32, from: Path, started: Instant) -> Moving<u32> {
    Moving {
        parcel: n,
        from,
        started,
        take_back: false,
    }
}

#[test]
fn a_board_without_steering_is_not_ready() {
    let b: SwitchBoard<u32> = SwitchBoard::new(Path::Dpdk);
    assert_eq!(
        b.request(Path::Kernel),
        Err(SwitchError::NotReady(Path::Dpdk))
    );
    assert_eq!(b.current(), Path::Dpdk);
}

#[test]
fn switching_to_the_current_path_or_twice_at_once_is_refused() {
    let (b, _) = board();
    assert_eq!(b.request(Path::Dpdk), Err(SwitchError::Already(Path::Dpdk)));
    b.request(Path::Kernel).unwrap();
    assert_eq!(
        b.request(Path::Kernel),
        Err(SwitchError::Busy(Path::Kernel))
    );
    assert_eq!(b.request(Path::Dpdk), Err(SwitchError::Busy(Path::Kernel)));
}

#[test]
fn the_source_pins_before_the_default_flips_and_the_switch_settles_when_all_landed() {
    let (b, r) = board();
    let woken = Arc::new(AtomicUsize::new(0));
    let w = woken.clone();
    b.set_waker(
        Path::Kernel,
        Box::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }),
    );
    let (mut dpdk, mut kernel) = (Station::new(Path::Dpdk), Station::new(Path::Kernel));
    let t0 = Instant::now();
    // Nothing to do before a request.
    assert_eq!(
        dpdk.poll(&b, t0, |_| panic!("no pin without a switch")),
        None
    );
    b.request(Path::Kernel).unwrap();
    assert!(
        woken.load(Ordering::Relaxed) >= 1,
        "the sleeping path is woken"
    );
    assert!(dpdk.news(&b) && kernel.news(&b));
    // The destination has nothing to export and pins nothing.
    assert_eq!(
        kernel.poll(&b, t0, |_| panic!("the destination pins nothing")),
        None
    );
    let to = dpdk.poll(&b, t0, |s| {
        s.set(flow(1000), FlowOwner::Path(Path::Dpdk)).unwrap();
    });
    assert_eq!(to, Some(Path::Kernel));
    assert_eq!(
        *r.log.lock().unwrap(),
        [
            "default dpdk",
            "set 10.0.0.2:1000 -> 10.0.0.1:443 Path(Dpdk)",
            "default kernel"
        ],
        "set_steer's default, then the pin, then the flip"
    );
    assert_eq!(b.current(), Path::Kernel);
    // One parcel out; the export is over (nothing waits).
    b.send(Path::Kernel, moving(7, Path::Dpdk, t0));
    dpdk.exported(&b, t0, 0, 0);
    assert_eq!(dpdk.next_due(), None);
    assert!(!b.settled(), "a parcel is in flight");
    let m = b.take(Path::Kernel).unwrap();
    assert_eq!(m.parcel, 7);
    b.landed(
        m.from,
        Path::Kernel,
        Landing::Moved,
        Duration::from_micros(300),
    );
    assert!(b.settled());
    assert_eq!(b.switching_to(), None);
    let s = b.metrics.summary();
    assert_eq!((s.moved, s.failed, s.taken_back, s.pauses), (1, 0, 0, 1));
    assert_eq!(s.pause_p99_us, 500, "300 µs falls in the bucket up to 500");
    // And back: now the kernel is the source.
    b.request(Path::Dpdk).unwrap();
    assert_eq!(dpdk.poll(&b, t0, |_| panic!("not the source")), None);
    assert_eq!(kernel.poll(&b, t0, |_| {}), Some(Path::Dpdk));
    assert_eq!(b.current(), Path::Dpdk);
}

#[test]
fn a_failed_restore_goes_back_to_the_source_and_counts_once() {
    let (b, _) = board();
    let mut dpdk = Station::new(Path::Dpdk);
    let t0 = Instant::now();
    b.request(Path::Kernel).unwrap();
    dpdk.poll(&b, t0, |_| {}).unwrap();
    b.send(Path::Kernel, moving(1, Path::Dpdk, t0));
    b.send(Path::Kernel, moving(2, Path::Dpdk, t0));
    dpdk.exported(&b, t0, 0, 0);
    // The destination fails on parcel 1: it goes back, still in flight.
    let m1 = b.take(Path::Kernel).unwrap();
    b.take_back(m1);
    let m2 = b.take(Path::Kernel).unwrap();
    b.landed(m2.from, Path::Kernel, Landing::Moved, Duration::ZERO);
    assert!(!b.settled(), "the taken-back parcel has not landed");
    let back = b.take(Path::Dpdk).unwrap();
    assert!(back.take_back);
    assert_eq!(back.parcel, 1);
    b.landed(back.from, Path::Dpdk, Landing::TakenBack, Duration::ZERO);
    assert!(b.settled());
    let s = b.metrics.summary();
    assert_eq!((s.moved, s.taken_back, s.failed), (1, 1, 0));
}

#[test]
fn the_source_retries_waiting_slots_until_its_time_is_up() {
    let (b, _) = board();
    let mut dpdk = Station::new(Path::Dpdk);
    let t0 = Instant::now();
    b.request(Path::Kernel).unwrap();
    assert!(dpdk.poll(&b, t0, |_| {}).is_some());
    dpdk.exported(&b, t0, 3, 0);
    assert_eq!(dpdk.next_due(), Some(t0 + RETRY_EVERY));
    assert_eq!(dpdk.poll(&b, t0, |_| {}), None, "not due yet");
    let t1 = t0 + RETRY_EVERY;
    assert_eq!(dpdk.poll(&b, t1, |_| {}), Some(Path::Kernel));
    // A full window: the next batch as soon as a parcel lands.
    for n in 0..WINDOW as u32 {
        b.send(Path::Kernel, moving(n, Path::Dpdk, t1));
    }
    assert_eq!(b.room(), 0);
    dpdk.exported(&b, t1, 3, 1);
    assert_eq!(dpdk.poll(&b, t1, |_| {}), None, "no room yet");
    let m = b.take(Path::Kernel).unwrap();
    b.landed(m.from, Path::Kernel, Landing::Moved, Duration::ZERO);
    assert_eq!(b.room(), 1);
    assert_eq!(dpdk.poll(&b, t1, |_| {}), Some(Path::Kernel), "room again");
    while let Some(m) = b.take(Path::Kernel) {
        b.landed(m.from, Path::Kernel, Landing::Moved, Duration::ZERO);
    }
    // Past the retry time the waiting slots stay.
    let late = t0 + RETRY_FOR;
    dpdk.exported(&b, late, 3, 0);
    assert_eq!(dpdk.next_due(), None);
    assert!(b.settled());
}

#[test]
fn summaries_subtract_and_failures_record_no_pause() {
    let m = SwitchMetrics::default();
    let before = m.summary();
    for us in [10, 20, 30] {
        m.count(Path::Kernel, Landing::Moved, Duration::from_micros(us));
    }
    m.count(Path::Dpdk, Landing::Failed, Duration::from_secs(9));
    m.count_stayed();
    let mid = m.summary();
    m.count(Path::Dpdk, Landing::Moved, Duration::from_millis(2));
    let all = m.summary();
    assert_eq!(
        (all.moved, all.failed, all.stayed, all.pauses),
        (4, 1, 1, 4)
    );
    assert_eq!(all.pause_p99_us, 2_500);
    let last = all.since(&mid);
    assert_eq!(
        (last.moved, last.failed, last.pauses, last.pause_p99_us),
        (1, 0, 1, 2_500)
    );
    assert_eq!(mid.since(&before).pause_p99_us, 50);
    assert_eq!(m.pause_max_us.load(Ordering::Relaxed), 2_000);
    let empty = SwitchMetrics::default().summary();
    assert_eq!((empty.pauses, empty.pause_p99_us), (0, 0));
}

#[test]
fn paths_parse_and_flows_print() {
    assert_eq!("kernel".parse::<Path>(), Ok(Path::Kernel));
    assert_eq!("dpdk".parse::<Path>(), Ok(Path::Dpdk));
    assert!(
        "both"
            .parse::<Path>()
            .unwrap_err()
            .contains("dpdk or kernel")
    );
    assert_eq!(flow(5).to_string(), "10.0.0.2:5 -> 10.0.0.1:443");
}

#[test]
fn injected_restore_failures_are_taken_one_at_a_time() {
    let (b, _) = board();
    assert!(!b.restore_fails_on_purpose());
    b.request_drill(Path::Kernel, 2).unwrap();
    // A refused request arms nothing.
    assert_eq!(
        b.request_drill(Path::Dpdk, 5),
        Err(SwitchError::Busy(Path::Kernel))
    );
    assert!(b.restore_fails_on_purpose());
    assert!(b.restore_fails_on_purpose());
    assert!(!b.restore_fails_on_purpose());
}

#[test]
fn no_switch_before_both_paths_are_up_and_an_abandoned_one_ends_when_settled() {
    let b: SwitchBoard<u32> = SwitchBoard::new(Path::Dpdk);
    b.set_steer(Arc::new(Recorder::default())).unwrap();
    b.mark_ready(Path::Dpdk);
    assert_eq!(
        b.request(Path::Kernel),
        Err(SwitchError::NotReady(Path::Kernel))
    );
    b.mark_ready(Path::Kernel);
    b.request(Path::Kernel).unwrap();
    // Its requester stopped waiting; the source finishes later.
    let mut dpdk = Station::new(Path::Dpdk);
    let t0 = Instant::now();
    dpdk.poll(&b, t0, |_| {}).unwrap();
    dpdk.exported(&b, t0, 0, 0);
    // The next request finds the old switch settled, not busy.
    assert_eq!(
        b.request(Path::Kernel),
        Err(SwitchError::Already(Path::Kernel))
    );
    b.request(Path::Dpdk).unwrap();
}

#[test]
fn lingering_flows_are_forgotten_late_and_only_while_still_ours() {
    let (b, r) = board();
    let steer = b.steer().unwrap();
    let mut l = Lingering::default();
    let t0 = Instant::now();
    for port in [1, 2, 3] {
        steer.set(flow(port), FlowOwner::Path(Path::Dpdk)).unwrap();
        l.push(flow(port), t0);
    }
    // Flow 2 moved to the kernel meanwhile; flow 3 is a live connection again.
    steer.set(flow(2), FlowOwner::Path(Path::Kernel)).unwrap();
    l.sweep(steer, Path::Dpdk, t0 + Duration::from_secs(1), 10, |_| {
        false
    });
    assert_eq!(l.len(), 3, "nothing is due before Lingering::AFTER");
    let late = t0 + Lingering::AFTER;
    assert!(l.due(late));
    l.sweep(steer, Path::Dpdk, late, 10, |f| *f == flow(3));
    assert_eq!(steer.owner(flow(1)), None, "ours and closed: forgotten");
    assert_eq!(
        steer.owner(flow(2)),
        Some(FlowOwner::Path(Path::Kernel)),
        "the kernel's now: kept"
    );
    assert_eq!(
        steer.owner(flow(3)),
        Some(FlowOwner::Path(Path::Dpdk)),
        "live: kept"
    );
    assert_eq!(
        l.flows().copied().collect::<Vec<_>>(),
        [flow(3)],
        "the live one waits another round"
    );
    assert!(!l.due(late));
    // Sweeps are spaced: what a sweep left due waits for the next one.
    let mut m = Lingering::default();
    m.push(flow(5), t0);
    assert!(m.due(late));
    m.sweep(steer, Path::Dpdk, late, 0, |_| false);
    assert_eq!(m.len(), 1);
    assert!(!m.due(late + Duration::from_millis(500)));
    assert!(m.due(late + Lingering::SWEEP_EVERY));
    drop(r);
}
