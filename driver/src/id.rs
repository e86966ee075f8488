//! Which connection of which driver slot an event is for.

/// Bits of a slot generation: it repeats after 2^24 reuses of one index,
/// far past any event that can still be in flight for an old connection,
/// and it fits beside the index in a 64-bit event token.
pub const GENERATION_BITS: u32 = 24;

/// A client slot's identity. The generation makes a stale id (an event for
/// a connection that is gone, whose index was reused) match nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId {
    /// Dense index, reused after a slot is freed.
    pub index: u32,
    /// Bumped each time the index is reused (modulo 2^[`GENERATION_BITS`]).
    pub generation: u32,
}

/// Which of a slot's connections an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client connection.
    Client,
    /// The current backend connection.
    Backend,
}
