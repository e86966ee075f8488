//! The L7 simulator, shared by the driver's tests and the coverage-guided
//! fuzz target [`sim`] (`fuzz/src/bin/l7_sim.rs`), and that target's seed
//! corpus (`driver/fuzz/corpus/sim/`, replayed by `tests/fuzz_corpus.rs`).
//!
//! The simulator is the production [`crate::Driver`] over a fake transport
//! ([`FakeTransport`]: plaintext "TLS", in-memory sockets) on a fake clock
//! ([`Sim`]). The fuzz target decodes its input as a [`Script`] of events
//! over up to four clients and two or three backends (connects, requests
//! from a dictionary or raw bytes, cut at chosen points, canned backend
//! answers, closes and resets, time, drain), with auth on (HS256, one
//! token per client), then closes everything down.
//!
//! Oracles, checked with `assert!` (a violation is a finding):
//! - no panic, and the driver settles after every event;
//! - auth and attribution: every request a backend receives carries the
//!   `X-Authenticated-Subject` of the client whose slot sent it, exactly
//!   once, and the tag of a request that client sent with a valid token;
//!   refused requests never reach a backend;
//! - isolation: no client receives bytes of a response a backend wrote
//!   for another client;
//! - no leak: once every client is gone, no slot, open count, outstanding
//!   backend request or active SSE stream remains, and every backend
//!   connection is closed or in the pool.

mod dictionary;
mod fake;
mod harness;
mod script;
mod seeds;
mod world;

pub use dictionary::{
    EXPIRED_TOKEN, FORGED_TOKEN, MAX_CLIENTS, SECRET, VALID_TOKENS, WALL_MS, authenticator, kind,
    response,
};
pub use fake::{ClientRef, FakeClient, FakeConn, FakeTransport};
pub use harness::{
    CALL, INIT, MAX_TURNS, Sim, chunk, initialize, json_response, post, shared_with, sse_head,
    status_of,
};
pub use script::{Event, MAX_EVENTS, MAX_RAW, Script, decode, encode};
pub use seeds::{Seed, seeds};
pub use world::{Outcome, World};

/// The fuzz target: run the script `data` decodes to, check every oracle
/// (panics on a violation) and say what happened.
pub fn sim(data: &[u8]) -> Outcome {
    World::run(&decode(data))
}
