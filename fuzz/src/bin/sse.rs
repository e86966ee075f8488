//! SSE event boundary tracking (see `dpuproxy_l7::fuzz::sse`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_l7::fuzz::sse(data);
    });
}
