//! Replays the committed corpus of the steering fuzz target
//! (`dp/fuzz/corpus/steer/`) and keeps it in step with the seed generator.
//! Needs no DPDK (steering is sans-IO). Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-dp --test fuzz_corpus`.

use std::path::PathBuf;

use dpuproxy_dp::fuzz::{Route, seeds, steer};
use dpuproxy_dp::steer::FrameKind;

fn corpus_dir() -> PathBuf {
    dpuproxy_corpus::dir(env!("CARGO_MANIFEST_DIR"), "steer")
}

#[test]
fn corpus_matches_the_seed_generator() {
    let seeds = seeds();
    dpuproxy_corpus::sync_seeds(&corpus_dir(), seeds.iter().map(|s| (&s.name, &s.input)));
}

#[test]
fn corpus_replays_without_findings() {
    let (mut n, mut handed, mut local_tcp, mut arp, mut other) = (0, 0, 0, 0, 0);
    for (_, input) in dpuproxy_corpus::inputs(&corpus_dir()) {
        let out = steer(&input);
        n += 1;
        match (out.kind, out.route) {
            (FrameKind::Tcp(_), Route::HandTo(_)) => handed += 1,
            (FrameKind::Tcp(_), _) => local_tcp += 1,
            (FrameKind::ArpReply, _) => arp += 1,
            (FrameKind::Other, _) => other += 1,
        }
    }
    // Every class and both TCP outcomes, so the corpus cannot rot into
    // frames that stop at the first check.
    assert!(n >= 15, "only {n} corpus files");
    assert!(handed >= 1, "no seed is handed to another lcore");
    assert!(local_tcp >= 1, "no TCP seed stays where it landed");
    assert!(
        handed + local_tcp >= 6,
        "only {} TCP seeds",
        handed + local_tcp
    );
    assert!(arp >= 1 && other >= 5, "{arp} ARP replies, {other} others");
}
