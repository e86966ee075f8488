//! The deterministic simulator lives in the library
//! (`dpuproxy_driver::fuzz`), so that these tests and the fuzz target
//! share one copy.
#![allow(unused_imports)]

pub use dpuproxy_driver::fuzz::*;
