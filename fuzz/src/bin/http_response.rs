//! Backend responses relayed by a connection (see `dpuproxy_l7::fuzz::http_response`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_l7::fuzz::http_response(data);
    });
}
