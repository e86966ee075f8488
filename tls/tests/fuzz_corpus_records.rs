//! Replays the committed corpus of the record round-trip fuzz target
//! (`tls/fuzz/corpus/records/`) and keeps it in step with the seed
//! generator. Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-tls --test fuzz_corpus_records`.

use std::fs;
use std::path::PathBuf;

use dpuproxy_tls::fuzz::{records, records_seeds};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/records")
}

#[test]
fn corpus_matches_the_seed_generator() {
    let dir = corpus_dir();
    let regen = std::env::var_os("DPUPROXY_REGEN_CORPUS").is_some();
    if regen {
        fs::create_dir_all(&dir).unwrap();
    }
    for seed in records_seeds() {
        let path = dir.join(format!("{}.bin", seed.name));
        if regen {
            fs::write(&path, &seed.input).unwrap();
        }
        let on_disk = fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (regenerate the corpus)", path.display()));
        assert_eq!(on_disk, seed.input, "{} is stale (regenerate)", seed.name);
    }
}

#[test]
fn corpus_replays_without_findings() {
    let (mut n, mut multi, mut big, mut rekeyed, mut refused) = (0, 0, 0, 0, 0);
    for entry in fs::read_dir(corpus_dir()).expect("corpus directory") {
        let out = records(&fs::read(entry.unwrap().path()).unwrap());
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
