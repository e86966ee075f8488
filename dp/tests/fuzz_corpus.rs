//! Replays the committed corpus of the steering fuzz target
//! (`dp/fuzz/corpus/steer/`) and keeps it in step with the seed generator.
//! Needs no DPDK (steering is sans-IO). Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-dp --test fuzz_corpus`.

use std::fs;
use std::path::PathBuf;

use dpuproxy_dp::fuzz::{Route, seeds, steer};
use dpuproxy_dp::steer::FrameKind;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/steer")
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
    let (mut n, mut handed, mut local_tcp, mut arp, mut other) = (0, 0, 0, 0, 0);
    for entry in fs::read_dir(corpus_dir()).expect("corpus directory") {
        let input = fs::read(entry.unwrap().path()).unwrap();
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
