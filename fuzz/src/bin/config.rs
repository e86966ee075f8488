//! The config file: parse and resolve (see `fuzz_target` in
//! ctl/src/config.rs, a module of the `dpuproxy` binary crate, included
//! here by path).
#![allow(dead_code)]

#[path = "../../../ctl/src/config.rs"]
mod config;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        config::fuzz_target(data);
    });
}
