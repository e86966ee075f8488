//! Replays the committed corpus of the record-deframer fuzz target
//! (`tls/fuzz/corpus/deframe/`) and keeps it in step with the seed
//! generator. Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-tls --test fuzz_corpus`.

use std::fs;
use std::path::PathBuf;

use dpuproxy_tls::fuzz::{deframe_target, seeds};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/deframe")
}

#[test]
fn corpus_matches_the_seed_generator() {
    let dir = corpus_dir();
    let regen = std::env::var_os("DPUPROXY_REGEN_CORPUS").is_some();
    if regen {
        fs::create_dir_all(&dir).unwrap();
    }
    for seed in seeds() {
        let path = dir.join(format!("{}.bin", seed.name));
        if regen {
            fs::write(&path, &seed.input).unwrap();
        }
        let on_disk = fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (regenerate the corpus)", path.display()));
        assert_eq!(on_disk, seed.input, "{} is stale (regenerate)", seed.name);
        let out = deframe_target(&seed.input);
        assert_eq!(out.delivered, seed.delivered, "{}", seed.name);
    }
}

#[test]
fn corpus_replays_without_findings() {
    let mut n = 0;
    let mut with_data = 0;
    let mut errors = 0;
    for entry in fs::read_dir(corpus_dir()).expect("corpus directory") {
        let path = entry.unwrap().path();
        let input = fs::read(&path).unwrap();
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
