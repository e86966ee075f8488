//! The 4-tuple demux table: open addressing with linear probing over one
//! array of `(tuple, entry)` pairs, at most half full, with backward-shift
//! deletion (no tombstones, so probes stay short however many connections
//! come and go).
//!
//! Why not `std`'s map: a lookup there reads a control group and then a
//! bucket elsewhere, two cache misses once the table outgrows the caches,
//! and nothing can ask where a key lives before looking it up. Here a key
//! lives at (or just after) its home slot, one array index away from its
//! hash, so the stack can [`FlowTable::prefetch`] it for a frame still
//! waiting in the receive burst (see `Stack::poll`).

use std::hash::BuildHasher;

use crate::flow::{FlowEntry, FlowHashBuilder, FourTuple};
use crate::prefetch::prefetch;

/// Slots of a new table.
const MIN_SLOTS: usize = 64;

#[derive(Debug)]
pub(crate) struct FlowTable {
    slots: Vec<Option<(FourTuple, FlowEntry)>>,
    len: usize,
    hasher: FlowHashBuilder,
}

impl FlowTable {
    pub(crate) fn new(hasher: FlowHashBuilder) -> Self {
        Self {
            slots: (0..MIN_SLOTS).map(|_| None).collect(),
            len: 0,
            hasher,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The hash that places `t`.
    pub(crate) fn hash(&self, t: &FourTuple) -> u64 {
        self.hasher.hash_one(t)
    }

    fn home(&self, t: &FourTuple) -> usize {
        (self.hash(t) as usize) & self.mask()
    }

    /// The slot holding `t`, if any.
    fn find(&self, t: &FourTuple) -> Option<usize> {
        self.find_hashed(t, self.hash(t))
    }

    /// [`Self::find`] with `t`'s [`Self::hash`] already known.
    fn find_hashed(&self, t: &FourTuple, hash: u64) -> Option<usize> {
        let mask = self.mask();
        let mut i = (hash as usize) & mask;
        loop {
            match &self.slots[i] {
                None => return None,
                Some((k, _)) if k == t => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// Ask the CPU to bring `t`'s home slot into the cache, for a lookup
    /// soon after. Only a hint: nothing is read or changed.
    /// Prefetch the home slot of the key whose [`Self::hash`] is `hash`.
    pub(crate) fn prefetch_hashed(&self, hash: u64) {
        prefetch(&self.slots[(hash as usize) & self.mask()]);
    }

    /// [`Self::get`] with `t`'s [`Self::hash`] already known (the whole
    /// hash: it stays valid when the table grows).
    pub(crate) fn get_hashed(&self, t: &FourTuple, hash: u64) -> Option<&FlowEntry> {
        let i = self.find_hashed(t, hash)?;
        self.slots[i].as_ref().map(|(_, e)| e)
    }

    pub(crate) fn get(&self, t: &FourTuple) -> Option<&FlowEntry> {
        let i = self.find(t)?;
        self.slots[i].as_ref().map(|(_, e)| e)
    }

    pub(crate) fn get_mut(&mut self, t: &FourTuple) -> Option<&mut FlowEntry> {
        let i = self.find(t)?;
        self.slots[i].as_mut().map(|(_, e)| e)
    }

    pub(crate) fn contains_key(&self, t: &FourTuple) -> bool {
        self.find(t).is_some()
    }

    /// Insert or replace; the entry `t` had, if any.
    pub(crate) fn insert(&mut self, t: FourTuple, e: FlowEntry) -> Option<FlowEntry> {
        let hash = self.hash(&t);
        if let Some(i) = self.find_hashed(&t, hash) {
            return self.slots[i].replace((t, e)).map(|(_, old)| old);
        }
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
        }
        self.place(hash, t, e);
        self.len += 1;
        None
    }

    /// Put a key that is not in the table into the first free slot of its
    /// probe run.
    fn place(&mut self, hash: u64, t: FourTuple, e: FlowEntry) {
        let mask = self.mask();
        let mut i = (hash as usize) & mask;
        while self.slots[i].is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Some((t, e));
    }

    /// Remove `t`; its entry, if it had one. The entries after it in its
    /// probe run move back into the hole where their own home allows.
    pub(crate) fn remove(&mut self, t: &FourTuple) -> Option<FlowEntry> {
        let mut hole = self.find(t)?;
        let (_, removed) = self.slots[hole].take()?;
        self.len -= 1;
        let mask = self.mask();
        let mut j = (hole + 1) & mask;
        while let Some((k, _)) = &self.slots[j] {
            let home = self.home(k);
            // The entry may fill the hole if the hole lies on its probe
            // path, from its home to where it sits.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
            j = (j + 1) & mask;
        }
        Some(removed)
    }

    fn grow(&mut self) {
        let doubled = (0..2 * self.slots.len()).map(|_| None).collect();
        let old = std::mem::replace(&mut self.slots, doubled);
        for (t, e) in old.into_iter().flatten() {
            self.place(self.hash(&t), t, e);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&FourTuple, &FlowEntry)> + '_ {
        self.slots.iter().flatten().map(|(t, e)| (t, e))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes the table's array takes.
    pub(crate) fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Option<(FourTuple, FlowEntry)>>()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use smoltcp::wire::Ipv4Address;

    use super::*;
    use crate::flow::splitmix;

    fn t(n: u32) -> FourTuple {
        FourTuple {
            local_addr: Ipv4Address::new(10, 0, 0, 1),
            local_port: 443,
            remote_addr: Ipv4Address::from_bits(0x0a00_0000 | (n >> 16)),
            remote_port: n as u16,
        }
    }

    /// Random inserts, replacements and removals agree with `HashMap`,
    /// through growth and long probe runs (a small key space keeps many
    /// keys colliding).
    #[test]
    fn agrees_with_a_hash_map_through_churn() {
        let mut table = FlowTable::new(FlowHashBuilder::new(7));
        let mut model: HashMap<u32, FlowEntry> = HashMap::new();
        let mut rng = 99u64;
        for step in 0..200_000u32 {
            let r = splitmix(&mut rng);
            let key = (r % 5_000) as u32;
            if r.is_multiple_of(3) {
                assert_eq!(table.remove(&t(key)), model.remove(&key), "step {step}");
            } else {
                let e = FlowEntry::Conn(step);
                assert_eq!(table.insert(t(key), e), model.insert(key, e), "step {step}");
            }
            if step.is_multiple_of(10_007) {
                assert_eq!(table.len(), model.len());
                for k in 0..5_000 {
                    assert_eq!(table.get(&t(k)), model.get(&k), "key {k} at step {step}");
                }
            }
        }
        assert_eq!(table.iter().count(), model.len());
        for (k, e) in &model {
            assert_eq!(table.get(&t(*k)), Some(e));
            assert!(table.contains_key(&t(*k)));
        }
        if let Some(FlowEntry::Conn(v)) = table.get_mut(&t(*model.keys().next().unwrap())) {
            *v = u32::MAX;
        }
        assert_eq!(
            table
                .iter()
                .filter(|(_, e)| **e == FlowEntry::Conn(u32::MAX))
                .count(),
            1
        );
    }

    #[test]
    fn stays_at_most_half_full() {
        let mut table = FlowTable::new(FlowHashBuilder::new(1));
        for n in 0..100_000 {
            table.insert(t(n), FlowEntry::Conn(n));
            assert!(2 * table.len() <= table.slots.len());
        }
        for n in 0..100_000 {
            assert_eq!(table.remove(&t(n)), Some(FlowEntry::Conn(n)));
        }
        assert_eq!(table.len(), 0);
        assert!(table.slots.iter().all(Option::is_none));
    }
}
