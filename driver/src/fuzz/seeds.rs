//! The seed corpus of the simulator target: short scripts, each walking
//! one path a mutation should start from.

use super::dictionary::{kind, response};
use super::script::{Event, Script, encode};

/// A seed: a named input.
#[derive(Debug, Clone)]
pub struct Seed {
    /// File name in the corpus directory.
    pub name: &'static str,
    /// The input.
    pub input: Vec<u8>,
}

fn send(client: u8, request: u8) -> Event {
    Event::Send {
        client,
        request,
        split: 0,
    }
}

fn respond(conn: u8, response: u8) -> Event {
    Event::Respond {
        conn,
        response,
        split: 0,
    }
}

fn advance(step: u8) -> Event {
    Event::Advance { step }
}

/// Client 0 initializes a session on the first backend connection.
fn init() -> [Event; 2] {
    [send(0, kind::INIT), respond(0, response::SESSION)]
}

fn with_init(rest: Vec<Event>) -> Vec<Event> {
    init().into_iter().chain(rest).collect()
}

/// A named script: file name, header byte, events.
type Named = (&'static str, u8, Vec<Event>);

/// Sessions, streams and stateless requests going right.
#[rustfmt::skip]
fn sessions_and_streams() -> Vec<Named> {
    use kind::*;
    use response::*;
    vec![
        ("lifecycle", 0, with_init(vec![
            send(0, CALL), respond(0, JSON), send(0, NOTIFY), respond(0, ACCEPTED),
            send(0, DELETE), respond(0, JSON), send(0, CALL),
            Event::ClientEof { client: 0 },
        ])),
        ("sse-stream", 0, with_init(vec![
            send(0, SSE), respond(0, SSE_HEAD), respond(0, SSE_EVENT), advance(4),
            respond(0, SSE_EVENT), respond(0, SSE_END), send(0, CALL), respond(0, JSON),
        ])),
        ("sse-answer-to-post", 1, with_init(vec![
            send(0, CALL), respond(0, SSE_HEAD), respond(0, SSE_EVENT), respond(0, SSE_END),
        ])),
        ("pipelined", 0, vec![
            Event::Pipeline { client: 0, first: INIT, second: CALL },
            respond(0, SESSION), respond(0, JSON),
            Event::Pipeline { client: 0, first: INIT_NO_TOKEN, second: INIT },
            respond(0, SESSION),
        ]),
        ("stateless", 1, vec![
            send(0, STATELESS), respond(0, JSON), send(0, STATELESS_MISMATCH),
            send(0, STATELESS), respond(0, SSE_HEAD), respond(0, SSE_END),
        ]),
        ("pool-reuse", 0, with_init(vec![
            send(0, CALL), respond(0, JSON), send(0, CALL), respond(0, JSON),
            Event::Connect { setup: 0 }, send(1, INIT), respond(0, SESSION),
        ])),
        ("chunked-and-500", 0, with_init(vec![
            send(0, CALL), respond(0, CHUNKED), send(0, CALL), respond(0, ERROR),
        ])),
        ("split-response", 0, vec![
            send(0, INIT), Event::Respond { conn: 0, response: SESSION, split: 60 },
            send(0, CALL), Event::Respond { conn: 0, response: CHUNKED, split: 128 },
        ]),
        ("http10", 0, with_init(vec![send(0, CALL_HTTP10), respond(0, JSON)])),
    ]
}

/// Refusals, and backends or clients failing.
#[rustfmt::skip]
fn refusals_and_failures() -> Vec<Named> {
    use kind::*;
    use response::*;
    vec![
        ("unauthorized", 0, vec![
            send(0, INIT_NO_TOKEN), send(0, INIT_EXPIRED), send(0, INIT_FORGED),
            send(0, DOUBLE_AUTH), send(0, CALL_NO_TOKEN), send(0, METADATA),
        ]),
        ("backend-404", 0, with_init(vec![send(0, CALL), respond(0, NOT_FOUND), send(0, CALL)])),
        ("cut-body", 0, with_init(vec![send(0, CALL), respond(0, CUT)])),
        ("garbage-response", 0, with_init(vec![send(0, CALL), respond(0, GARBAGE)])),
        ("backend-reset", 0, with_init(vec![
            send(0, SSE), respond(0, SSE_HEAD), Event::BackendReset { conn: 0 },
        ])),
        ("backend-eof-idle-pool", 0, with_init(vec![
            send(0, CALL), Event::BackendEof { conn: 0 }, send(0, CALL), respond(0, JSON),
        ])),
        ("until-close", 0, with_init(vec![send(0, CALL), respond(0, UNTIL_CLOSE)])),
        ("client-reset-mid-response", 0, with_init(vec![
            send(0, SSE), respond(0, SSE_HEAD), Event::ClientReset { client: 0 },
        ])),
        ("client-eof-in-flight", 0, vec![
            send(0, INIT), Event::ClientEof { client: 0 }, respond(0, SESSION),
        ]),
        ("backend-down", 1, vec![
            Event::ToggleBackend { backend: 0 }, send(0, INIT), respond(0, SESSION),
            Event::ToggleBackend { backend: 0 }, send(0, INIT), respond(0, SESSION),
        ]),
        ("raw-bytes", 0, vec![
            Event::Raw { client: 0, bytes: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec() },
            Event::Raw { client: 0, bytes: b"POST /mcp HTTP/1.1\r\nX: ".to_vec() },
            send(0, INIT), respond(0, SESSION),
        ]),
    ]
}

/// Several clients, time, and the drain.
#[rustfmt::skip]
fn clients_time_and_drain() -> Vec<Named> {
    use kind::*;
    use response::*;
    vec![
        ("two-clients", 1, vec![
            Event::Connect { setup: 0 }, send(0, INIT), send(1, INIT),
            respond(0, SESSION), respond(0, SESSION), send(1, CALL), send(0, CALL),
            respond(1, JSON), respond(0, JSON), send(1, FOREIGN_SESSION), respond(0, JSON),
        ]),
        ("session-quota", 0, vec![
            send(0, INIT), respond(0, SESSION), send(0, INIT_CLOSE), respond(0, SESSION),
            Event::Connect { setup: 0 }, send(1, INIT), respond(0, SESSION), send(1, INIT),
            respond(0, SESSION), send(1, INIT), respond(0, SESSION), send(1, INIT),
        ]),
        ("handshakes", 0, vec![
            Event::Connect { setup: 8 }, Event::Connect { setup: 12 }, Event::Connect { setup: 9 },
            send(1, INIT), respond(0, SESSION), advance(7),
        ]),
        ("admission", 0, vec![
            Event::Connect { setup: 0 }, Event::Connect { setup: 0 }, Event::Connect { setup: 0 },
            send(2, INIT), respond(0, SESSION),
        ]),
        ("read-sizes", 0, vec![
            Event::Connect { setup: 1 }, Event::Connect { setup: 2 }, send(1, INIT),
            send(2, STATELESS), respond(0, SESSION), respond(1, JSON),
        ]),
        ("slow-reader", 0, with_init(vec![
            Event::Window { client: 0, room: 2 }, send(0, SSE), respond(0, SSE_HEAD),
            respond(0, SSE_EVENT), respond(0, SSE_EVENT), advance(5),
            Event::Window { client: 0, room: 0 }, respond(0, SSE_END),
        ])),
        ("split-request-timeout", 0, vec![
            Event::Send { client: 0, request: INIT, split: 100 }, advance(5),
            Event::Send { client: 0, request: INIT, split: 200 }, respond(0, SESSION),
        ]),
        ("idle-timeouts", 0, with_init(vec![advance(6), advance(7), send(0, CALL)])),
        ("drain-sse", 0, with_init(vec![
            send(0, SSE), respond(0, SSE_HEAD), Event::Drain, respond(0, SSE_EVENT),
            Event::Connect { setup: 0 }, advance(4),
        ])),
        ("drain-streams", 1, with_init(vec![
            send(0, CALL), respond(0, SSE_HEAD), Event::DrainStreams, respond(0, SSE_EVENT),
        ])),
        ("drain-idle", 0, with_init(vec![Event::Drain, send(0, CALL)])),
    ]
}

/// The seed corpus, built deterministically.
pub fn seeds() -> Vec<Seed> {
    [
        sessions_and_streams(),
        refusals_and_failures(),
        clients_time_and_drain(),
    ]
    .into_iter()
    .flatten()
    .map(|(name, header, events)| Seed {
        name,
        input: encode(&Script { header, events }),
    })
    .collect()
}
