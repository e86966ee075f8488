//! Ethernet ports: configuration, start/stop, queries, burst I/O.

use std::marker::PhantomData;

use dpuproxy_dpdk_sys as sys;

use crate::eal::{port_info, strerror};
use crate::error::{Error, Result};
use crate::mbuf::{Mbuf, Mempool};
use crate::stats::{PortStats, TxStats};
use crate::{MAX_BURST, PortInfo};

/// How to set a port up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// Receive queues (more than one turns RSS on).
    pub rx_queues: u16,
    /// Transmit queues.
    pub tx_queues: u16,
    /// Rx descriptors per queue (adjusted to the PMD's limits).
    pub rx_desc: u16,
    /// Tx descriptors per queue (adjusted to the PMD's limits).
    pub tx_desc: u16,
    /// Receive frames for any MAC.
    pub promiscuous: bool,
    /// RSS key to configure the port with (multi-queue only; used when its
    /// length is the PMD's key size, else left to `set_rss_key`).
    pub rss_key: Option<Vec<u8>>,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            promiscuous: true,
            rss_key: None,
        }
    }
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Up or down.
    pub up: bool,
    /// Mbit/s as the PMD reports it (0 when unknown).
    pub speed_mbps: u32,
}

/// A configured and started port whose rx queues fill from the pool `'p`.
/// Stopped and closed on drop. Not `Send`/`Sync`: polled by one thread.
#[derive(Debug)]
pub struct Port<'p> {
    id: u16,
    info: PortInfo,
    rx_queues: u16,
    tx_queues: u16,
    started: bool,
    reta_size: u16,
    hash_key_size: u8,
    /// Every RSS key handed to DPDK: ethdev keeps configure's pointer (and
    /// some PMDs read the bytes at every start), so they live as long as
    /// the port.
    rss_keys: Vec<Vec<u8>>,
    /// This port id is ours until the port is closed (dropped after
    /// `Drop::drop` closed the device).
    _claim: PortClaim,
    _pool: PhantomData<&'p ()>,
    _single_thread: PhantomData<*const ()>,
}

/// Whether RSS hash types `hash_types` (as [`Port::rss_key`] reports them)
/// include the ports of IPv4 TCP.
pub fn hashes_ipv4_tcp_ports(hash_types: u64) -> bool {
    // SAFETY: reads an immutable constant defined in the shim.
    let tcp4 = unsafe { sys::DPUPROXY_RTE_ETH_RSS_NONFRAG_IPV4_TCP };
    hash_types & tcp4 != 0
}

/// Port ids held by a live [`Port`] in this process.
static CLAIMED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// Exclusive use of one port id: safe code cannot configure or poll one
/// device through two `Port`s.
#[derive(Debug)]
struct PortClaim(u16);

impl PortClaim {
    fn take(id: u16) -> Result<Self> {
        let mut held = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
        if held.contains(&id) {
            return Err(Error::PortInUse(id));
        }
        held.push(id);
        Ok(Self(id))
    }
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        let mut held = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|&p| p != self.0);
    }
}

fn check(port: u16, op: &'static str, ret: i32) -> Result<()> {
    if ret < 0 {
        Err(Error::Port {
            port,
            op,
            code: ret,
            msg: strerror(ret),
        })
    } else {
        Ok(())
    }
}

impl<'p> Port<'p> {
    /// Configures port `id` with `cfg`, fills its rx queues from `pool`,
    /// and starts it. One `Port` per port id at a time
    /// ([`Error::PortInUse`] otherwise). Once configuring has begun, a
    /// failure closes the device.
    pub fn open(id: u16, pool: &'p Mempool<'_>, cfg: &PortConfig) -> Result<Port<'p>> {
        let claim = PortClaim::take(id)?;
        let dev = dev_info(id)?;
        if cfg.rx_queues == 0 || cfg.rx_queues > dev.max_rx_queues {
            return Err(Error::Config(format!(
                "port {id}: {} rx queues requested, the PMD allows 1..={}",
                cfg.rx_queues, dev.max_rx_queues
            )));
        }
        if cfg.tx_queues == 0 || cfg.tx_queues > dev.max_tx_queues {
            return Err(Error::Config(format!(
                "port {id}: {} tx queues requested, the PMD allows 1..={}",
                cfg.tx_queues, dev.max_tx_queues
            )));
        }
        let mut conf = sys::rte_eth_conf::default();
        if cfg.rx_queues > 1 {
            // SAFETY: reads immutable constants defined in the shim.
            let wanted = unsafe {
                sys::DPUPROXY_RTE_ETH_RSS_IP
                    | sys::DPUPROXY_RTE_ETH_RSS_TCP
                    | sys::DPUPROXY_RTE_ETH_RSS_UDP
            };
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = wanted & dev.flow_type_rss_offloads;
        }
        // Moved into the port below, which outlives every use of it.
        let mut key = cfg.rss_key.clone().unwrap_or_default();
        if cfg.rx_queues > 1 && !key.is_empty() && key.len() == usize::from(dev.hash_key_size) {
            conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
            conf.rx_adv_conf.rss_conf.rss_key_len = dev.hash_key_size;
        }
        // From here on a failure must close the port: build the guard now.
        let mut port = Port {
            id,
            info: port_info(id),
            rx_queues: cfg.rx_queues,
            tx_queues: cfg.tx_queues,
            started: false,
            reta_size: dev.reta_size,
            hash_key_size: dev.hash_key_size,
            rss_keys: Vec::new(),
            _claim: claim,
            _pool: PhantomData,
            _single_thread: PhantomData,
        };
        // SAFETY: conf is a valid rte_eth_conf that DPDK copies; its key
        // pointer (if set) points at rss_key_len bytes of `key`, whose heap
        // buffer the port keeps until after rte_eth_dev_close.
        check(id, "rte_eth_dev_configure", unsafe {
            sys::rte_eth_dev_configure(id, cfg.rx_queues, cfg.tx_queues, &conf)
        })?;
        let (mut nrx, mut ntx) = (cfg.rx_desc, cfg.tx_desc);
        // SAFETY: two valid in/out u16s.
        check(id, "rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut nrx, &mut ntx)
        })?;
        // SAFETY: plain query.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        let socket = u32::try_from(socket).unwrap_or(sys::SOCKET_ID_ANY as u32);
        for q in 0..cfg.rx_queues {
            // SAFETY: the port is configured; null rxconf means the PMD
            // default; the pool outlives the port ('p).
            check(id, "rte_eth_rx_queue_setup", unsafe {
                sys::rte_eth_rx_queue_setup(id, q, nrx, socket, std::ptr::null(), pool.as_ptr())
            })?;
        }
        for q in 0..cfg.tx_queues {
            // SAFETY: the port is configured; null txconf means the default.
            check(id, "rte_eth_tx_queue_setup", unsafe {
                sys::rte_eth_tx_queue_setup(id, q, ntx, socket, std::ptr::null())
            })?;
        }
        if cfg.promiscuous {
            // SAFETY: plain control call. Some PMDs (memif, ring) do not
            // support it; that is not an error for us.
            let _ = unsafe { sys::rte_eth_promiscuous_enable(id) };
        }
        // Some PMDs size their RETA only once configured.
        if let Ok(dev_now) = dev_info(id) {
            port.reta_size = dev_now.reta_size;
            port.hash_key_size = dev_now.hash_key_size;
        }
        port.rss_keys.push(key);
        port.start()?;
        Ok(port)
    }

    /// Starts a stopped port.
    pub fn start(&mut self) -> Result<()> {
        if !self.started {
            // SAFETY: the port is configured with its queues set up.
            check(self.id, "rte_eth_dev_start", unsafe {
                sys::rte_eth_dev_start(self.id)
            })?;
            self.started = true;
        }
        Ok(())
    }

    /// Stops the port (queues keep their setup; `start` resumes).
    pub fn stop(&mut self) -> Result<()> {
        if self.started {
            self.started = false;
            // SAFETY: the port is started; &mut self means no burst call runs.
            check(self.id, "rte_eth_dev_stop", unsafe {
                sys::rte_eth_dev_stop(self.id)
            })?;
        }
        Ok(())
    }

    /// Name, driver, socket.
    pub fn info(&self) -> &PortInfo {
        &self.info
    }

    /// The port's MAC address.
    pub fn mac(&self) -> Result<[u8; 6]> {
        let mut a = sys::rte_ether_addr::default();
        // SAFETY: a is a valid out-parameter.
        check(self.id, "rte_eth_macaddr_get", unsafe {
            sys::rte_eth_macaddr_get(self.id, &mut a)
        })?;
        Ok(a.addr_bytes)
    }

    /// Link state, without waiting.
    pub fn link(&self) -> Result<Link> {
        let mut l = sys::rte_eth_link::default();
        // SAFETY: l is a valid out-parameter.
        check(self.id, "rte_eth_link_get_nowait", unsafe {
            sys::rte_eth_link_get_nowait(self.id, &mut l)
        })?;
        Ok(Link {
            up: l.link_status() != 0,
            speed_mbps: l.link_speed,
        })
    }

    /// Port counters.
    pub fn stats(&self) -> Result<PortStats> {
        stats_of(self.id)
    }

    /// Most rx and tx queues the PMD of port `id` allows.
    pub fn max_queues(id: u16) -> Result<(u16, u16)> {
        let dev = dev_info(id)?;
        Ok((dev.max_rx_queues, dev.max_tx_queues))
    }

    /// RSS key length the PMD expects (0: it takes no key).
    pub fn hash_key_size(&self) -> u8 {
        self.hash_key_size
    }

    /// Zeroes the port counters.
    pub fn reset_stats(&self) -> Result<()> {
        // SAFETY: plain control call.
        check(self.id, "rte_eth_stats_reset", unsafe {
            sys::rte_eth_stats_reset(self.id)
        })
    }

    /// The RSS hash key and enabled hash types.
    pub fn rss_key(&self) -> Result<(Vec<u8>, u64)> {
        let mut key = vec![0u8; usize::from(self.hash_key_size.max(40))];
        let mut conf = sys::rte_eth_rss_conf {
            rss_key: key.as_mut_ptr(),
            rss_key_len: key.len() as u8,
            rss_hf: 0,
        };
        // SAFETY: rss_key points at rss_key_len writable bytes.
        check(self.id, "rte_eth_dev_rss_hash_conf_get", unsafe {
            sys::rte_eth_dev_rss_hash_conf_get(self.id, &mut conf)
        })?;
        key.truncate(usize::from(conf.rss_key_len));
        Ok((key, conf.rss_hf))
    }

    /// Sets the RSS hash key (length as the PMD wants, often 40 or 52).
    pub fn set_rss_key(&mut self, key: &[u8], hash_types: u64) -> Result<()> {
        let mut key = key.to_vec();
        let mut conf = sys::rte_eth_rss_conf {
            rss_key: key.as_mut_ptr(),
            rss_key_len: u8::try_from(key.len())
                .map_err(|_| Error::Config("RSS key longer than 255 bytes".into()))?,
            rss_hf: hash_types,
        };
        // SAFETY: rss_key points at rss_key_len bytes, kept with the port
        // (below) in case the PMD holds on to the pointer.
        let r = check(self.id, "rte_eth_dev_rss_hash_update", unsafe {
            sys::rte_eth_dev_rss_hash_update(self.id, &mut conf)
        });
        self.rss_keys.push(key);
        r
    }

    /// Redirection table size (0 when the PMD has none).
    pub fn reta_size(&self) -> u16 {
        self.reta_size
    }

    /// The redirection table: entry i is the rx queue for hash bucket i.
    pub fn reta(&self) -> Result<Vec<u16>> {
        let mut groups = self.reta_groups()?;
        for g in &mut groups {
            g.mask = u64::MAX;
        }
        // SAFETY: groups holds reta_size / 64 entries, as the size says.
        check(self.id, "rte_eth_dev_rss_reta_query", unsafe {
            sys::rte_eth_dev_rss_reta_query(self.id, groups.as_mut_ptr(), self.reta_size)
        })?;
        Ok(groups
            .iter()
            .flat_map(|g| g.reta.iter().copied())
            .take(usize::from(self.reta_size))
            .collect())
    }

    /// Writes the redirection table (`table.len()` must be the RETA size;
    /// every entry must be a configured rx queue).
    pub fn set_reta(&mut self, table: &[u16]) -> Result<()> {
        if table.len() != usize::from(self.reta_size) {
            return Err(Error::Config(format!(
                "port {}: RETA has {} entries, {} given",
                self.id,
                self.reta_size,
                table.len()
            )));
        }
        if let Some(q) = table.iter().find(|&&q| q >= self.rx_queues) {
            return Err(Error::Config(format!(
                "port {}: RETA entry names rx queue {q}, only {} configured",
                self.id, self.rx_queues
            )));
        }
        let mut groups = self.reta_groups()?;
        for (g, chunk) in groups.iter_mut().zip(table.chunks(64)) {
            g.mask = if chunk.len() == 64 {
                u64::MAX
            } else {
                (1u64 << chunk.len()) - 1
            };
            g.reta[..chunk.len()].copy_from_slice(chunk);
        }
        // SAFETY: groups holds reta_size / 64 entries.
        check(self.id, "rte_eth_dev_rss_reta_update", unsafe {
            sys::rte_eth_dev_rss_reta_update(self.id, groups.as_mut_ptr(), self.reta_size)
        })
    }

    fn reta_groups(&self) -> Result<Vec<sys::rte_eth_rss_reta_entry64>> {
        if self.reta_size == 0 {
            return Err(Error::Config(format!(
                "port {} ({}) has no RSS redirection table",
                self.id, self.info.driver
            )));
        }
        let n = usize::from(self.reta_size).div_ceil(64);
        Ok(vec![sys::rte_eth_rss_reta_entry64::default(); n])
    }

    /// Receives up to `max` (at most [`MAX_BURST`]) packets from `queue`,
    /// appending them to `out`; returns how many.
    pub fn rx_burst(&self, queue: u16, out: &mut Vec<Mbuf<'p>>, max: usize) -> usize {
        assert!(queue < self.rx_queues, "rx queue {queue} not configured");
        rx_burst_raw(self.id, queue, out, max)
    }

    /// A transmit batch for `queue` holding up to `burst` packets; on a full
    /// ring a flush calls `tx_burst` at most `1 + retries` times.
    pub fn tx_batch(&self, queue: u16, burst: usize, retries: u32) -> TxBatch<'_, 'p> {
        assert!(queue < self.tx_queues, "tx queue {queue} not configured");
        TxBatch::new(self.id, queue, burst, retries)
    }

    /// One handle per rx/tx queue pair (`min(rx_queues, tx_queues)` of
    /// them), each to be moved to the one lcore that polls it. They borrow
    /// the port exclusively: while they live, nothing else (no
    /// [`Port::rx_burst`], no [`TxBatch`]) touches its queues.
    pub fn queue_pairs(&mut self) -> Vec<QueuePair<'_, 'p>> {
        (0..self.rx_queues.min(self.tx_queues))
            .map(|queue| QueuePair {
                port: self.id,
                queue,
                _port: PhantomData,
                _mbufs: PhantomData,
                _one_poller: PhantomData,
            })
            .collect()
    }
}

/// Rx/tx queue `queue` of a started port, polled by exactly one thread
/// (the lcore it was moved to). Borrows the port, so the port is stopped
/// only after every handle is gone.
#[derive(Debug)]
pub struct QueuePair<'a, 'p> {
    port: u16,
    queue: u16,
    _port: PhantomData<&'a ()>,
    _mbufs: PhantomData<fn() -> Mbuf<'p>>,
    /// `Send` (it moves to its lcore) but not `Sync`: one thread polls it.
    _one_poller: PhantomData<std::cell::Cell<()>>,
}

impl<'p> QueuePair<'_, 'p> {
    /// Queue index (rx and tx).
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// As [`Port::rx_burst`] on this queue.
    pub fn rx_burst(&self, out: &mut Vec<Mbuf<'p>>, max: usize) -> usize {
        rx_burst_raw(self.port, self.queue, out, max)
    }

    /// The whole port's counters.
    pub fn port_stats(&self) -> Result<PortStats> {
        stats_of(self.port)
    }

    /// As [`Port::tx_batch`] on this queue.
    pub fn tx_batch(&self, burst: usize, retries: u32) -> TxBatch<'_, 'p> {
        TxBatch::new(self.port, self.queue, burst, retries)
    }
}

/// What the PMD of port `id` says about it.
pub(crate) fn dev_info(id: u16) -> Result<sys::rte_eth_dev_info> {
    let mut dev = sys::rte_eth_dev_info::default();
    // SAFETY: dev is a valid out-parameter; a bad id returns -ENODEV.
    check(id, "rte_eth_dev_info_get", unsafe {
        sys::rte_eth_dev_info_get(id, &mut dev)
    })?;
    Ok(dev)
}

/// Counters of port `id` (safe from any thread: the PMD sums its
/// per-queue counters).
fn stats_of(id: u16) -> Result<PortStats> {
    let mut s = sys::rte_eth_stats::default();
    // SAFETY: s is a valid out-parameter.
    check(id, "rte_eth_stats_get", unsafe {
        sys::rte_eth_stats_get(id, &mut s)
    })?;
    Ok(PortStats {
        ipackets: s.ipackets,
        opackets: s.opackets,
        ibytes: s.ibytes,
        obytes: s.obytes,
        imissed: s.imissed,
        ierrors: s.ierrors,
        oerrors: s.oerrors,
        rx_nombuf: s.rx_nombuf,
    })
}

fn rx_burst_raw<'p>(port: u16, queue: u16, out: &mut Vec<Mbuf<'p>>, max: usize) -> usize {
    let mut raw = [std::ptr::null_mut::<sys::rte_mbuf>(); MAX_BURST];
    let max = max.min(MAX_BURST) as u16;
    // SAFETY: the caller checked the queue exists and is its only poller:
    // Port is !Sync, and its QueuePairs (one per queue, !Sync) borrow it
    // exclusively, so the two kinds of access never overlap. raw has room
    // for max pointers.
    let n = unsafe { sys::dpuproxy_rte_eth_rx_burst(port, queue, raw.as_mut_ptr(), max) };
    out.extend(raw[..usize::from(n)].iter().map(|&m| {
        // SAFETY: the PMD handed us these mbufs, filled from our pool.
        unsafe { Mbuf::from_raw(m) }.expect("rx_burst returned a null mbuf")
    }));
    usize::from(n)
}

impl Drop for Port<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("dp: {e}");
        }
        // SAFETY: the port is stopped and no batch borrows it; close frees
        // the mbufs in its rings back to the pool, which is still alive.
        let ret = unsafe { sys::rte_eth_dev_close(self.id) };
        if ret < 0 {
            eprintln!("dp: rte_eth_dev_close({}): {}", self.id, strerror(ret));
        }
    }
}

/// Packets waiting to go out on one tx queue, sent once per loop turn by
/// [`TxBatch::flush`] (or when `burst` are pending).
///
/// A full tx ring never leaks: the batch retries `retries` times, then
/// frees what the PMD did not take and counts it in
/// [`TxStats::dropped_full`]. Dropping a batch frees anything unsent
/// ([`TxStats::dropped_unsent`]).
#[derive(Debug)]
pub struct TxBatch<'a, 'p> {
    port: u16,
    queue: u16,
    _queue: PhantomData<&'a ()>,
    _mbufs: PhantomData<fn() -> Mbuf<'p>>,
    burst: usize,
    retries: u32,
    pending: Vec<*mut sys::rte_mbuf>,
    stats: TxStats,
}

impl<'p> TxBatch<'_, 'p> {
    fn new(port: u16, queue: u16, burst: usize, retries: u32) -> Self {
        TxBatch {
            port,
            queue,
            _queue: PhantomData,
            _mbufs: PhantomData,
            burst: burst.clamp(1, MAX_BURST),
            retries,
            pending: Vec::with_capacity(MAX_BURST),
            stats: TxStats::default(),
        }
    }

    /// Queues one packet; flushes first when `burst` are already pending.
    pub fn push(&mut self, m: Mbuf<'p>) {
        if self.pending.len() >= self.burst {
            self.flush();
        }
        self.pending.push(m.into_raw());
        self.stats.queued += 1;
    }

    /// Counters so far.
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// Sends everything pending; returns how many the PMD took.
    pub fn flush(&mut self) -> usize {
        let n = self.pending.len();
        if n == 0 {
            return 0;
        }
        let mut off = 0usize;
        let mut attempts = 0u32;
        while off < n {
            // SAFETY: the queue exists (checked at construction); pending
            // holds owned mbufs; what tx_burst takes now belongs to the PMD.
            let sent = unsafe {
                sys::dpuproxy_rte_eth_tx_burst(
                    self.port,
                    self.queue,
                    self.pending.as_mut_ptr().add(off),
                    (n - off) as u16,
                )
            };
            off += usize::from(sent);
            if off < n {
                if attempts == self.retries {
                    break;
                }
                attempts += 1;
                self.stats.retries += 1;
            }
        }
        if off < n {
            // SAFETY: the PMD did not take pending[off..n]; we still own them.
            unsafe {
                sys::dpuproxy_rte_pktmbuf_free_bulk(
                    self.pending.as_mut_ptr().add(off),
                    (n - off) as u32,
                )
            };
            self.stats.dropped_full += (n - off) as u64;
        }
        self.stats.sent += off as u64;
        self.pending.clear();
        off
    }
}

impl Drop for TxBatch<'_, '_> {
    fn drop(&mut self) {
        let n = self.pending.len();
        if n > 0 {
            // SAFETY: the pending mbufs are still ours.
            unsafe { sys::dpuproxy_rte_pktmbuf_free_bulk(self.pending.as_mut_ptr(), n as u32) };
            self.stats.dropped_unsent += n as u64;
        }
    }
}
