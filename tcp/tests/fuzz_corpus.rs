//! Replays the committed corpus of the ingress fuzz target
//! (`tcp/fuzz/corpus/ingress/`) and keeps it in step with the seed
//! generator. Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-tcp --test fuzz_corpus`.

use std::fs;
use std::path::PathBuf;

use dpuproxy_tcp::fuzz::{ingress, seeds};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ingress")
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
    }
}

#[test]
fn corpus_replays_without_findings() {
    let (mut n, mut established, mut time_wait, mut tw_acks, mut reused, mut expired) =
        (0, 0, 0, 0, 0, 0);
    for entry in fs::read_dir(corpus_dir()).expect("corpus directory") {
        let out = ingress(&fs::read(entry.unwrap().path()).unwrap());
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
