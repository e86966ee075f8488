//! Replays the committed corpus of the ingress fuzz target
//! (`tcp/fuzz/corpus/ingress/`) and keeps it in step with the seed
//! generator. Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-tcp --test fuzz_corpus`.

use std::path::PathBuf;

use dpuproxy_tcp::fuzz::{ingress, seeds};

fn corpus_dir() -> PathBuf {
    dpuproxy_corpus::dir(env!("CARGO_MANIFEST_DIR"), "ingress")
}

#[test]
fn corpus_matches_the_seed_generator() {
    let seeds = seeds();
    dpuproxy_corpus::sync_seeds(&corpus_dir(), seeds.iter().map(|s| (&s.name, &s.input)));
}

#[test]
fn corpus_replays_without_findings() {
    let (mut n, mut established, mut time_wait, mut tw_acks, mut reused, mut expired) =
        (0, 0, 0, 0, 0, 0);
    for (_, input) in dpuproxy_corpus::inputs(&corpus_dir()) {
        let out = ingress(&input);
        n += 1;
        established += usize::from(out.established);
        time_wait += usize::from(out.stats.time_wait_created > 0);
        tw_acks += usize::from(out.stats.time_wait_acks > 0);
        reused += usize::from(out.stats.time_wait_reused > 0);
        expired += usize::from(out.stats.time_wait_expired + out.stats.time_wait_evicted > 0);
    }
    // Deep enough: established connections, TIME-WAIT records that answer,
    // give way to a new connection, and expire or are evicted.
    assert!(n >= 20, "only {n} corpus files");
    assert!(
        established >= 10,
        "{established} of {n} establish a connection"
    );
    assert!(time_wait >= 5, "{time_wait} of {n} reach TIME-WAIT");
    assert!(
        tw_acks >= 2,
        "{tw_acks} of {n} get an ACK from a TIME-WAIT record"
    );
    assert!(reused >= 1, "no seed reuses a TIME-WAIT 4-tuple");
    assert!(expired >= 2, "{expired} of {n} expire or evict a record");
}
