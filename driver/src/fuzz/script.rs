//! The fuzzer's input as a script: a header byte, then at most
//! [`MAX_EVENTS`] events, each an opcode byte and its arguments. Every
//! byte string decodes to some script (missing argument bytes read as 0,
//! an opcode is taken modulo the number of events), so no input is wasted
//! on a parse error, and [`encode`] is the inverse of [`decode`] for the
//! seed generator.

/// Most events one input runs (the rest of the input is ignored).
pub const MAX_EVENTS: usize = 64;
/// Most raw bytes one [`Event::Raw`] sends.
pub const MAX_RAW: usize = 48;

/// One step of a script. Clients and connections are chosen by index
/// modulo what exists when the event runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new client connects. `setup`: bits 0-1 pick its read size,
    /// bits 2-3 its handshake (immediate, immediate, two steps, failing).
    Connect {
        /// Read size and handshake.
        setup: u8,
    },
    /// A client sends one request from the dictionary, in two writes cut at
    /// `split`/256 of its length (0: one write).
    Send {
        /// Which client.
        client: u8,
        /// Which dictionary request.
        request: u8,
        /// Where the first write ends.
        split: u8,
    },
    /// A client sends two dictionary requests in one write.
    Pipeline {
        /// Which client.
        client: u8,
        /// The first request.
        first: u8,
        /// The second request.
        second: u8,
    },
    /// A client sends fuzzer bytes as they are.
    Raw {
        /// Which client.
        client: u8,
        /// The bytes (at most [`MAX_RAW`]).
        bytes: Vec<u8>,
    },
    /// A backend answers on one of the connections a slot holds, in two
    /// writes cut at `split`/256 (0: one write).
    Respond {
        /// Which live backend connection.
        conn: u8,
        /// Which canned response.
        response: u8,
        /// Where the first write ends.
        split: u8,
    },
    /// A backend closes a live connection (FIN).
    BackendEof {
        /// Which live backend connection.
        conn: u8,
    },
    /// A backend resets a live connection.
    BackendReset {
        /// Which live backend connection.
        conn: u8,
    },
    /// A client ends its side (FIN or close_notify).
    ClientEof {
        /// Which client.
        client: u8,
    },
    /// A client's connection breaks.
    ClientReset {
        /// Which client.
        client: u8,
    },
    /// A client reads only `room * 8` more bytes (0: it reads everything
    /// from now on).
    Window {
        /// Which client.
        client: u8,
        /// Bytes it takes, in units of 8.
        room: u8,
    },
    /// The clock moves (see `STEPS` in the runner) and due timers fire.
    Advance {
        /// Which step.
        step: u8,
    },
    /// The worker starts a graceful drain.
    Drain,
    /// The drain's time is nearly up: SSE streams end at their next event.
    DrainStreams,
    /// A backend goes down, or comes back up (connects fail while down).
    ToggleBackend {
        /// Which backend.
        backend: u8,
    },
}

const OPCODES: u8 = 14;

/// A decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Bit 0: three backends instead of two.
    pub header: u8,
    /// The events, in order.
    pub events: Vec<Event>,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// Decode fuzzer bytes into a script.
pub fn decode(data: &[u8]) -> Script {
    let mut c = Cursor { data, pos: 0 };
    let header = c.byte();
    let mut events = Vec::new();
    while !c.done() && events.len() < MAX_EVENTS {
        events.push(decode_event(&mut c));
    }
    Script { header, events }
}

fn decode_event(c: &mut Cursor<'_>) -> Event {
    match c.byte() % OPCODES {
        0 => Event::Connect { setup: c.byte() },
        1 => Event::Send {
            client: c.byte(),
            request: c.byte(),
            split: c.byte(),
        },
        2 => Event::Pipeline {
            client: c.byte(),
            first: c.byte(),
            second: c.byte(),
        },
        3 => {
            let client = c.byte();
            let len = usize::from(c.byte()) % (MAX_RAW + 1);
            let bytes = (0..len).map(|_| c.byte()).collect();
            Event::Raw { client, bytes }
        }
        4 => Event::Respond {
            conn: c.byte(),
            response: c.byte(),
            split: c.byte(),
        },
        5 => Event::BackendEof { conn: c.byte() },
        6 => Event::BackendReset { conn: c.byte() },
        7 => Event::ClientEof { client: c.byte() },
        8 => Event::ClientReset { client: c.byte() },
        9 => Event::Window {
            client: c.byte(),
            room: c.byte(),
        },
        10 => Event::Advance { step: c.byte() },
        11 => Event::Drain,
        12 => Event::DrainStreams,
        _ => Event::ToggleBackend { backend: c.byte() },
    }
}

/// Encode a script (the inverse of [`decode`]; `Raw` bytes beyond
/// [`MAX_RAW`] are cut).
pub fn encode(script: &Script) -> Vec<u8> {
    let mut out = vec![script.header];
    for e in script.events.iter().take(MAX_EVENTS) {
        encode_event(e, &mut out);
    }
    out
}

fn encode_event(e: &Event, out: &mut Vec<u8>) {
    match e {
        Event::Connect { setup } => out.extend([0, *setup]),
        Event::Send {
            client,
            request,
            split,
        } => out.extend([1, *client, *request, *split]),
        Event::Pipeline {
            client,
            first,
            second,
        } => out.extend([2, *client, *first, *second]),
        Event::Raw { client, bytes } => {
            let bytes = &bytes[..bytes.len().min(MAX_RAW)];
            out.extend([3, *client, bytes.len() as u8]);
            out.extend_from_slice(bytes);
        }
        Event::Respond {
            conn,
            response,
            split,
        } => out.extend([4, *conn, *response, *split]),
        Event::BackendEof { conn } => out.extend([5, *conn]),
        Event::BackendReset { conn } => out.extend([6, *conn]),
        Event::ClientEof { client } => out.extend([7, *client]),
        Event::ClientReset { client } => out.extend([8, *client]),
        Event::Window { client, room } => out.extend([9, *client, *room]),
        Event::Advance { step } => out.extend([10, *step]),
        Event::Drain => out.push(11),
        Event::DrainStreams => out.push(12),
        Event::ToggleBackend { backend } => out.extend([13, *backend]),
    }
}
