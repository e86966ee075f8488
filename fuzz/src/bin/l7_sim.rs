//! The L7 simulator: the production driver and core over a fake transport,
//! driven by fuzzer-chosen event scripts (see `dpuproxy_driver::fuzz`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_driver::fuzz::sim(data);
    });
}
