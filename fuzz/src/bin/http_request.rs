//! HTTP request heads, bodies and pipelining (see `dpuproxy_l7::fuzz::http_request`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_l7::fuzz::http_request(data);
    });
}
