//! Replays the committed corpus of the record-deframer fuzz target
//! (`tls/fuzz/corpus/deframe/`) and keeps it in step with the seed
//! generator. Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-tls --test fuzz_corpus`.

use std::path::PathBuf;

use dpuproxy_tls::fuzz::{deframe_target, seeds};

fn corpus_dir() -> PathBuf {
    dpuproxy_corpus::dir(env!("CARGO_MANIFEST_DIR"), "deframe")
}

#[test]
fn corpus_matches_the_seed_generator() {
    let seeds = seeds();
    dpuproxy_corpus::sync_seeds(&corpus_dir(), seeds.iter().map(|s| (&s.name, &s.input)));
    for seed in &seeds {
        let out = deframe_target(&seed.input);
        assert_eq!(out.delivered, seed.delivered, "{}", seed.name);
    }
}

#[test]
fn corpus_replays_without_findings() {
    let mut n = 0;
    let mut with_data = 0;
    let mut errors = 0;
    for (_, input) in dpuproxy_corpus::inputs(&corpus_dir()) {
        let out = deframe_target(&input);
        n += 1;
        with_data += usize::from(!out.delivered.is_empty());
        errors += usize::from(out.error.is_some());
    }
    // The corpus must reach past authentication and into the error paths.
    assert!(n >= 20, "only {n} corpus files");
    assert!(with_data >= 16, "{with_data} of {n} deliver data");
    assert!(errors >= 3, "{errors} of {n} end in an error");
}

#[test]
fn every_prefix_of_every_seed_is_handled() {
    // Truncation at every byte: delivered data is always a prefix.
    for seed in seeds().into_iter().filter(|s| s.input.len() < 400) {
        for cut in 1..seed.input.len() {
            let out = deframe_target(&seed.input[..cut]);
            assert!(
                seed.delivered.starts_with(&out.delivered),
                "{} cut {cut}",
                seed.name
            );
        }
    }
}
