//! Which driver slot each TCP connection of one lcore belongs to.
//!
//! Indexed by the stack's dense `ConnId::index()`, but an entry answers
//! only for the very handle it was made for: an event for a connection
//! that is gone (whose index a new connection took) matches nothing.

use dpuproxy_driver::{Side, SlotId};
use dpuproxy_tcp::ConnId;

/// What a TCP connection is to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// One side of a client slot.
    Slot(SlotId, Side),
    /// An idle backend connection in the pool (its events reach no slot).
    Pooled,
}

/// A handle with a dense index, reused once the handle is gone.
pub(crate) trait Handle: Copy + Eq {
    fn index(&self) -> usize;
}

impl Handle for ConnId {
    fn index(&self) -> usize {
        ConnId::index(self)
    }
}

/// The owner table.
#[derive(Debug)]
pub(crate) struct Owners<H> {
    entries: Vec<Option<(H, Owner)>>,
}

impl<H: Handle> Default for Owners<H> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<H: Handle> Owners<H> {
    pub(crate) fn get(&self, conn: H) -> Option<Owner> {
        match self.entries.get(conn.index())? {
            Some((h, owner)) if *h == conn => Some(*owner),
            _ => None,
        }
    }

    pub(crate) fn insert(&mut self, conn: H, owner: Owner) {
        let i = conn.index();
        if i >= self.entries.len() {
            self.entries.resize(i + 1, None);
        }
        self.entries[i] = Some((conn, owner));
    }

    pub(crate) fn remove(&mut self, conn: H) {
        if let Some(e) = self.entries.get_mut(conn.index())
            && e.is_some_and(|(h, _)| h == conn)
        {
            *e = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct H(usize, u32);

    impl Handle for H {
        fn index(&self) -> usize {
            self.0
        }
    }

    fn slot(index: u32) -> Owner {
        Owner::Slot(
            SlotId {
                index,
                generation: 0,
            },
            Side::Client,
        )
    }

    #[test]
    fn a_stale_handle_matches_nothing() {
        let mut o = Owners::default();
        let old = H(5, 1);
        o.insert(old, slot(1));
        assert_eq!(o.get(old), Some(slot(1)));
        o.remove(old);
        // A new connection takes index 5 for another slot.
        let new = H(5, 2);
        o.insert(new, slot(2));
        assert_eq!(o.get(old), None, "an event for the old handle");
        assert_eq!(o.get(new), Some(slot(2)));
        // Removing through the old handle leaves the new entry alone.
        o.remove(old);
        assert_eq!(o.get(new), Some(slot(2)));
    }
}
