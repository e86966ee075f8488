//! TLS record round trip: seal, open, flipped bits (see `dpuproxy_tls::fuzz`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_tls::fuzz::records(data);
    });
}
