//! Mbuf pools and owned mbufs.

use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use dpuproxy_dpdk_sys as sys;

use crate::Eal;
use crate::eal::{rte_errno, strerror};
use crate::error::{Error, Result};

/// A packet mbuf pool (`rte_pktmbuf_pool_create`) in EAL memory:
/// hugepages, or anonymous memory under `--no-huge`. Freed on drop; the
/// borrow of the [`Eal`] keeps it from outliving the EAL.
#[derive(Debug)]
pub struct Mempool<'e> {
    raw: NonNull<sys::rte_mempool>,
    size: u32,
    _eal: PhantomData<&'e Eal>,
}

// SAFETY: a mempool's get/put paths are multi-producer/multi-consumer safe
// (default ring ops "ring_mp_mc"), and the counters are plain reads; the
// pointer itself is never freed before drop, which needs ownership.
unsafe impl Send for Mempool<'_> {}
// SAFETY: as above: every &self method is safe to call concurrently.
unsafe impl Sync for Mempool<'_> {}

static POOL_SEQ: AtomicU32 = AtomicU32::new(0);

impl<'e> Mempool<'e> {
    /// A pool of `n` mbufs with `data_room` bytes of buffer each (headroom
    /// included; `None` is DPDK's default, 2048 + 128), a per-lcore cache
    /// of `cache` (at most 512), on NUMA `socket` (None = any).
    ///
    /// `n` of the form 2^k - 1 is the most memory-efficient for DPDK's
    /// ring-backed pools.
    pub fn new(
        _eal: &'e Eal,
        label: &str,
        n: u32,
        cache: u32,
        data_room: Option<u16>,
        socket: Option<u32>,
    ) -> Result<Self> {
        let seq = POOL_SEQ.fetch_add(1, Ordering::Relaxed);
        // Names are global in the EAL and short (RTE_MEMPOOL_NAMESIZE is
        // 26 or more with the "MP_" prefix): unique, and at most 24 bytes.
        let mut label = label.to_string();
        label.truncate(12);
        let name = format!("{label}_{}_{seq}", std::process::id() % 1_000_000);
        let c_name = CString::new(name.as_str())
            .map_err(|_| Error::Config("pool label has a NUL".into()))?;
        // SAFETY: reads an immutable constant defined in the shim.
        let default_room = unsafe { sys::DPUPROXY_RTE_MBUF_DEFAULT_BUF_SIZE };
        let socket_id = socket.map_or(sys::SOCKET_ID_ANY, |s| s as i32);
        // SAFETY: c_name is NUL-terminated and copied by DPDK; the EAL is
        // initialised (we hold a borrow of it).
        let raw = unsafe {
            sys::rte_pktmbuf_pool_create(
                c_name.as_ptr(),
                n,
                cache,
                0,
                data_room.unwrap_or(default_room),
                socket_id,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| {
            let code = rte_errno();
            Error::Mempool {
                name,
                n,
                msg: strerror(code),
                hint: if code == 12 {
                    "not enough EAL memory: reserve more hugepages or raise -m"
                } else {
                    "check the pool size and cache (cache <= 512 and <= n / 1.5)"
                },
            }
        })?;
        Ok(Mempool {
            raw,
            size: n,
            _eal: PhantomData,
        })
    }

    /// Mbufs in the pool when none is in use.
    pub fn capacity(&self) -> u32 {
        self.size
    }

    /// Mbufs free (in the ring and in per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: raw is a live pool; the count is a read-only query.
        unsafe { sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Mbufs out of the pool: held by us, by the PMD's rings, or leaked.
    pub fn in_use(&self) -> u32 {
        // SAFETY: as in `available`.
        unsafe { sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// One mbuf, reset, or None when the pool is empty.
    pub fn alloc(&self) -> Option<Mbuf<'_>> {
        // SAFETY: raw is a live pool; alloc is MP/MC safe.
        let m = unsafe { sys::dpuproxy_rte_pktmbuf_alloc(self.raw.as_ptr()) };
        // SAFETY: a fresh mbuf from this pool, owned by nobody else, and the
        // pool outlives the returned borrow.
        unsafe { Mbuf::from_raw(m) }
    }

    /// `n` mbufs at once, all or none.
    pub fn alloc_bulk(&self, n: usize) -> Option<Vec<Mbuf<'_>>> {
        let mut raw = vec![std::ptr::null_mut(); n];
        // SAFETY: raw has room for n pointers; the pool is live.
        let ret = unsafe {
            sys::dpuproxy_rte_pktmbuf_alloc_bulk(self.raw.as_ptr(), raw.as_mut_ptr(), n as u32)
        };
        if ret != 0 {
            return None;
        }
        Some(
            raw.into_iter()
                // SAFETY: each pointer is a fresh mbuf from this pool.
                .map(|m| unsafe { Mbuf::from_raw(m) }.expect("bulk alloc returned null"))
                .collect(),
        )
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for Mempool<'_> {
    fn drop(&mut self) {
        // SAFETY: nothing can borrow the pool any more (ports and mbufs
        // borrow it), so no mbuf of it is referenced from Rust; mbufs still
        // in a PMD's rings were released when the borrowing port closed.
        unsafe { sys::rte_mempool_free(self.raw.as_ptr()) };
    }
}

/// An owned packet mbuf (single segment: ports are configured without
/// scatter). Freed (`rte_pktmbuf_free`) on drop; [`Mbuf::into_raw`] hands
/// it to DPDK, which is what transmit does.
#[derive(Debug)]
pub struct Mbuf<'p> {
    raw: NonNull<sys::rte_mbuf>,
    _pool: PhantomData<&'p ()>,
}

// SAFETY: an mbuf is exclusively owned memory; freeing it from another
// thread returns it to an MP/MC-safe pool.
unsafe impl Send for Mbuf<'_> {}

impl<'p> Mbuf<'p> {
    /// Takes ownership of a raw mbuf; None for null.
    ///
    /// # Safety
    /// `raw` must be null or a valid mbuf that nothing else owns or will
    /// free, from a pool that outlives `'p`.
    pub unsafe fn from_raw(raw: *mut sys::rte_mbuf) -> Option<Self> {
        NonNull::new(raw).map(|raw| Mbuf {
            raw,
            _pool: PhantomData,
        })
    }

    /// Gives up ownership: the caller (or DPDK, at tx) frees it.
    #[must_use = "the mbuf leaks unless the pointer is freed or transmitted"]
    pub fn into_raw(self) -> *mut sys::rte_mbuf {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        raw
    }

    /// Bytes of packet data in this (first) segment.
    pub fn len(&self) -> usize {
        // SAFETY: raw is a valid owned mbuf.
        usize::from(unsafe { sys::dpuproxy_rte_pktmbuf_data_len(self.raw.as_ptr()) })
    }

    /// Whether there is no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total packet length over all segments.
    pub fn pkt_len(&self) -> usize {
        // SAFETY: raw is a valid owned mbuf.
        unsafe { sys::dpuproxy_rte_pktmbuf_pkt_len(self.raw.as_ptr()) as usize }
    }

    /// Segments in the chain.
    pub fn segments(&self) -> u16 {
        // SAFETY: raw is a valid owned mbuf.
        unsafe { sys::dpuproxy_rte_pktmbuf_nb_segs(self.raw.as_ptr()) }
    }

    /// The packet data of the first segment.
    pub fn data(&self) -> &[u8] {
        // SAFETY: mtod points at data_len initialised bytes inside the mbuf's
        // buffer, which we own for as long as &self lives.
        unsafe {
            std::slice::from_raw_parts(
                sys::dpuproxy_rte_pktmbuf_mtod(self.raw.as_ptr()),
                self.len(),
            )
        }
    }

    /// The packet data of the first segment, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as in `data`, and &mut self makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(sys::dpuproxy_rte_pktmbuf_mtod(self.raw.as_ptr()), len)
        }
    }

    /// Grows the data by `n` bytes at the tail and returns them (contents
    /// unspecified), or None without tailroom.
    pub fn append(&mut self, n: u16) -> Option<&mut [u8]> {
        // SAFETY: raw is a valid owned mbuf; append checks the tailroom.
        let p = unsafe { sys::dpuproxy_rte_pktmbuf_append(self.raw.as_ptr(), n) };
        if p.is_null() {
            return None;
        }
        // SAFETY: DPDK returned n writable bytes inside our buffer.
        Some(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), usize::from(n)) })
    }

    /// Appends `bytes`; false (and unchanged) without tailroom.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> bool {
        let Ok(n) = u16::try_from(bytes.len()) else {
            return false;
        };
        match self.append(n) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// Removes `n` bytes from the tail; false if there are fewer.
    pub fn trim(&mut self, n: u16) -> bool {
        // SAFETY: raw is a valid owned mbuf; trim checks the length.
        unsafe { sys::dpuproxy_rte_pktmbuf_trim(self.raw.as_ptr(), n) == 0 }
    }

    /// Removes `n` bytes from the head; false if there are fewer.
    pub fn adj(&mut self, n: u16) -> bool {
        // SAFETY: raw is a valid owned mbuf; adj checks the length.
        !unsafe { sys::dpuproxy_rte_pktmbuf_adj(self.raw.as_ptr(), n) }.is_null()
    }

    /// Grows the data by `n` bytes at the head (into the headroom).
    pub fn prepend(&mut self, n: u16) -> Option<&mut [u8]> {
        // SAFETY: raw is a valid owned mbuf; prepend checks the headroom.
        let p = unsafe { sys::dpuproxy_rte_pktmbuf_prepend(self.raw.as_ptr(), n) };
        if p.is_null() {
            return None;
        }
        // SAFETY: DPDK returned n writable bytes inside our buffer.
        Some(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), usize::from(n)) })
    }

    /// Bytes free before the data.
    pub fn headroom(&self) -> u16 {
        // SAFETY: raw is a valid owned mbuf.
        unsafe { sys::dpuproxy_rte_pktmbuf_headroom(self.raw.as_ptr()) }
    }

    /// Bytes free after the data.
    pub fn tailroom(&self) -> u16 {
        // SAFETY: raw is a valid owned mbuf.
        unsafe { sys::dpuproxy_rte_pktmbuf_tailroom(self.raw.as_ptr()) }
    }

    /// Empties the mbuf (length 0, default headroom).
    pub fn reset(&mut self) {
        // SAFETY: raw is a valid owned mbuf.
        unsafe { sys::dpuproxy_rte_pktmbuf_reset(self.raw.as_ptr()) }
    }

    /// The RSS hash the NIC computed, when it says it did
    /// (`RTE_MBUF_F_RX_RSS_HASH`).
    pub fn rss_hash(&self) -> Option<u32> {
        // SAFETY: raw is a valid owned mbuf; both read plain fields.
        unsafe {
            (sys::dpuproxy_rte_mbuf_has_rss_hash(self.raw.as_ptr()) != 0)
                .then(|| sys::dpuproxy_rte_mbuf_rss_hash(self.raw.as_ptr()))
        }
    }
}

impl Drop for Mbuf<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and nobody uses it after this.
        unsafe { sys::dpuproxy_rte_pktmbuf_free(self.raw.as_ptr()) }
    }
}
