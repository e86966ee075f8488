//! Bearer token checks (see `dpuproxy_l7::fuzz::jwt`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_l7::fuzz::jwt(data);
    });
}
