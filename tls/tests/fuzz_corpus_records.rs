//! Replays the committed corpus of the record round-trip fuzz target
//! (`tls/fuzz/corpus/records/`) and keeps it in step with the seed
//! generator. Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-tls --test fuzz_corpus_records`.

use std::path::PathBuf;

use dpuproxy_tls::fuzz::{records, records_seeds};

fn corpus_dir() -> PathBuf {
    dpuproxy_corpus::dir(env!("CARGO_MANIFEST_DIR"), "records")
}

#[test]
fn corpus_matches_the_seed_generator() {
    let seeds = records_seeds();
    dpuproxy_corpus::sync_seeds(&corpus_dir(), seeds.iter().map(|s| (&s.name, &s.input)));
}

#[test]
fn corpus_replays_without_findings() {
    let (mut n, mut multi, mut big, mut rekeyed, mut refused) = (0, 0, 0, 0, 0);
    for (_, input) in dpuproxy_corpus::inputs(&corpus_dir()) {
        let out = records(&input);
        n += 1;
        multi += usize::from(out.records >= 4);
        big += usize::from(out.bytes >= 16 * 1024);
        rekeyed += usize::from(out.key_updates > 0);
        refused += usize::from(out.corruption_refused);
    }
    // Deep enough: several records, full-size ones, KeyUpdates, and a
    // flipped bit refused in most.
    assert!(n >= 18, "only {n} corpus files");
    assert!(multi >= 12, "{multi} of {n} round-trip 4 records or more");
    assert!(big >= 10, "{big} of {n} carry 16 KiB or more");
    assert!(rekeyed >= 3, "{rekeyed} of {n} update keys");
    assert!(refused >= 15, "{refused} of {n} refuse a flipped bit");
}
