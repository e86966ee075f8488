//! Replays the committed corpus of the handshake-feed fuzz target
//! (`tls/fuzz/corpus/handshake/`) and keeps it in step with the seed
//! generator. Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-tls --test fuzz_corpus_handshake`.
//!
//! ClientHellos carry fresh randoms and key shares, so a regenerated seed
//! differs byte for byte from the committed one: the generator is checked
//! for names, not bytes.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use dpuproxy_tls::fuzz::{handshake, handshake_seeds};

fn corpus_dir() -> PathBuf {
    dpuproxy_corpus::dir(env!("CARGO_MANIFEST_DIR"), "handshake")
}

#[test]
fn corpus_holds_every_generated_seed() {
    let dir = corpus_dir();
    let regen = std::env::var_os("DPUPROXY_REGEN_CORPUS").is_some();
    if regen {
        fs::create_dir_all(&dir).unwrap();
    }
    let on_disk: BTreeSet<String> = fs::read_dir(&dir)
        .expect("corpus directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for seed in handshake_seeds() {
        let name = format!("{}.bin", seed.name);
        if regen {
            fs::write(dir.join(&name), &seed.input).unwrap();
        } else {
            assert!(on_disk.contains(&name), "{name} missing (regenerate)");
        }
    }
}

#[test]
fn corpus_replays_without_findings() {
    let (mut n, mut completed, mut delivered, mut failed, mut answered) = (0, 0, 0, 0, 0);
    for (_, input) in dpuproxy_corpus::inputs(&corpus_dir()) {
        let out = handshake(&input);
        n += 1;
        completed += usize::from(out.completed);
        delivered += usize::from(!out.delivered.is_empty());
        failed += usize::from(out.error.is_some());
        answered += usize::from(out.server_output > 0 && !out.completed);
    }
    // Deep enough: handshakes that complete and carry data, hellos the
    // server answers, and failures.
    assert!(n >= 20, "only {n} corpus files");
    assert!(completed >= 8, "{completed} of {n} complete a handshake");
    assert!(
        delivered >= 8,
        "{delivered} of {n} deliver application data"
    );
    assert!(
        answered >= 8,
        "{answered} of {n} get a server flight without completing"
    );
    assert!(failed >= 6, "{failed} of {n} fail");
}

#[test]
fn every_prefix_of_a_hello_is_handled() {
    for seed in handshake_seeds()
        .iter()
        .filter(|s| s.name.starts_with("raw-hello-tls"))
        .take(2)
    {
        for cut in 1..seed.input.len() {
            let out = handshake(&seed.input[..cut]);
            assert!(
                !out.completed && out.delivered.is_empty(),
                "{} cut {cut}",
                seed.name
            );
        }
    }
}
