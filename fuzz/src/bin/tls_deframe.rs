//! TLS record deframer and receive path (see `dpuproxy_tls::fuzz`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_tls::fuzz::deframe_target(data);
    });
}
