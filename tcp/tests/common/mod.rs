//! Shared harness: two stacks over the in-memory wire, on a virtual clock.
#![allow(dead_code)]

use dpuproxy_tcp::fault::{Faults, FaultyDevice};
// Not every test file uses them.
#[allow(unused_imports)]
pub use dpuproxy_tcp::pattern::{Stream, recv_pattern, send_pattern};
use dpuproxy_tcp::smoltcp::phy::{Device, Medium};
use dpuproxy_tcp::smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Address, Ipv4Cidr};
use dpuproxy_tcp::wire::{self, WirePort};
use dpuproxy_tcp::{ConnId, Duration, Event, Instant, Stack, StackConfig};

pub const A: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);
pub const B: Ipv4Address = Ipv4Address::new(10, 77, 0, 2);
pub const MAC_A: EthernetAddress = EthernetAddress([0x02, 0, 0, 0x77, 0, 1]);
pub const MAC_B: EthernetAddress = EthernetAddress([0x02, 0, 0, 0x77, 0, 2]);

pub fn config(addr: Ipv4Address, seed: u64) -> StackConfig {
    let mut c = StackConfig::new(HardwareAddress::Ip, Ipv4Cidr::new(addr, 24));
    c.seed = seed;
    c
}

pub struct Pair {
    pub a: Stack,
    pub b: Stack,
    pub da: FaultyDevice<WirePort>,
    pub db: FaultyDevice<WirePort>,
    pub now: Instant,
    pub a_events: Vec<Event>,
    pub b_events: Vec<Event>,
}

impl Pair {
    pub fn new(seed: u64, ca: StackConfig, cb: StackConfig) -> Self {
        let medium = match ca.hardware_addr {
            HardwareAddress::Ethernet(_) => Medium::Ethernet,
            _ => Medium::Ip,
        };
        let mtu = if medium == Medium::Ethernet {
            1514
        } else {
            1500
        };
        let (pa, pb) = wire::pair(medium, mtu, 4096);
        let da = FaultyDevice::new(pa, seed ^ 0xa);
        let db = FaultyDevice::new(pb, seed ^ 0xb);
        let now = Instant::from_secs(1);
        let a = Stack::new(ca, da.capabilities(), now).unwrap();
        let b = Stack::new(cb, db.capabilities(), now).unwrap();
        Self {
            a,
            b,
            da,
            db,
            now,
            a_events: Vec::new(),
            b_events: Vec::new(),
        }
    }

    /// Two stacks on an Ethernet wire (ARP between them).
    pub fn ethernet(seed: u64) -> Self {
        let mut ca = config(A, seed);
        let mut cb = config(B, seed.wrapping_add(1));
        ca.hardware_addr = HardwareAddress::Ethernet(MAC_A);
        cb.hardware_addr = HardwareAddress::Ethernet(MAC_B);
        Self::new(seed, ca, cb)
    }

    pub fn default_pair(seed: u64) -> Self {
        Self::new(seed, config(A, seed), config(B, seed.wrapping_add(1)))
    }

    /// Faults on frames sent by A (A→B) and by B (B→A).
    pub fn faults(&mut self, ab: Faults, ba: Faults) {
        self.da.set_tx_faults(ab);
        self.db.set_tx_faults(ba);
    }

    /// Poll both stacks once; returns frames handled.
    pub fn step(&mut self) -> usize {
        let n = self.a.poll(self.now, &mut self.da) + self.b.poll(self.now, &mut self.db);
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
        n
    }

    /// Advance the clock: a little if there was work, else to the next deadline.
    pub fn advance(&mut self, worked: bool) {
        if worked || self.da.inner().in_flight() > 0 {
            self.now += Duration::from_micros(10);
            return;
        }
        let next = [
            self.a.poll_at(),
            self.b.poll_at(),
            self.da.poll_at(),
            self.db.poll_at(),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(t) if t > self.now => self.now = t,
            _ => self.now += Duration::from_micros(10),
        }
    }

    /// Step until `done` holds; false if `max_steps` ran out first.
    pub fn run_until(&mut self, max_steps: usize, mut done: impl FnMut(&mut Pair) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            let n = self.step();
            self.advance(n > 0);
        }
        done(self)
    }

    pub fn take_a(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.a_events)
    }

    pub fn take_b(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.b_events)
    }
}

/// Connect A→B:80 and accept; returns (client, server) handles.
pub fn established(p: &mut Pair) -> (ConnId, ConnId) {
    let l = p.b.listen(80, 16).unwrap();
    let c = p.a.connect(B, 80).unwrap();
    assert!(
        p.run_until(1000, |p| p.a_events.contains(&Event::Connected(c))
            && p.b_events.contains(&Event::Accept(l)))
    );
    let s = p.b.accept(l).unwrap().unwrap();
    p.take_a();
    p.take_b();
    (c, s)
}
