//! Flow-steering classifier (see `dpuproxy_dp::fuzz`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_dp::fuzz::steer(data);
    });
}
