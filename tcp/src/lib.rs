//! dpuproxy-tcp: a userspace TCP stack for a proxy core, over any
//! `smoltcp::phy::Device`.
//!
//! Contract (built out by the userspace-TCP issue): smoltcp's `tcp::Socket`
//! is the protocol engine; this crate owns the 4-tuple demux hash table, a
//! bounded accept queue per listener, active open with a port predicate
//! (for RSS-aware source ports), deadline-ordered timers, and a
//! fault-injecting test device. Time is always passed in.
//! No code yet: the kernel data path uses kernel TCP.
