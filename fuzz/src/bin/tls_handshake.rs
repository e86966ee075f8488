//! TLS server handshake feed and hand-over (see `dpuproxy_tls::fuzz`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_tls::fuzz::handshake(data);
    });
}
