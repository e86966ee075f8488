//! TCP receive path: demux, listener, TIME-WAIT (see `dpuproxy_tcp::fuzz`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_tcp::fuzz::ingress(data);
    });
}
