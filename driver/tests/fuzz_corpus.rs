//! Replays the committed corpus of the L7 simulator fuzz target
//! (`driver/fuzz/corpus/sim/`) and keeps it in step with the seed
//! generator. Regenerate with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-driver --test fuzz_corpus`.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use dpuproxy_driver::fuzz::{
    EXPIRED_TOKEN, FORGED_TOKEN, Outcome, VALID_TOKENS, WALL_MS, authenticator, decode, encode,
    seeds, sim,
};

fn corpus_dir() -> PathBuf {
    dpuproxy_corpus::dir(env!("CARGO_MANIFEST_DIR"), "sim")
}

#[test]
fn corpus_matches_the_seed_generator() {
    let seeds = seeds();
    dpuproxy_corpus::sync_seeds(&corpus_dir(), seeds.iter().map(|s| (s.name, &s.input)));
    for seed in &seeds {
        assert_eq!(encode(&decode(&seed.input)), seed.input, "{}", seed.name);
    }
}

fn replay() -> Vec<(String, Outcome)> {
    dpuproxy_corpus::inputs(&corpus_dir())
        .into_iter()
        .map(|(path, input)| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, sim(&input))
        })
        .collect()
}

#[test]
fn corpus_replays_without_findings_and_reaches_deep() {
    let runs = replay();
    let count = |f: fn(&Outcome) -> bool| runs.iter().filter(|(_, o)| f(o)).count();
    assert!(runs.len() >= 25, "only {} corpus files", runs.len());
    // Responses get through to their clients, refusals happen, and the
    // other paths are walked.
    assert!(count(|o| o.answered > 0) >= 15, "{runs:#?}");
    assert!(count(|o| o.auth_refusals > 0) >= 2, "{runs:#?}");
    assert!(count(|o| o.sse_events > 0) >= 3, "{runs:#?}");
    assert!(count(|o| o.stateless > 0) >= 1, "{runs:#?}");
    assert!(count(|o| o.drained) >= 2, "{runs:#?}");
    assert!(count(|o| o.clients >= 3) >= 2, "{runs:#?}");
    assert!(count(|o| o.sessions > 0) >= 10, "{runs:#?}");
    let named = |name: &str| &runs.iter().find(|(n, _)| n == name).expect(name).1;
    assert!(named("unauthorized.bin").auth_refusals >= 4);
    assert_eq!(named("unauthorized.bin").forwarded, 0);
    assert!(named("lifecycle.bin").forwarded >= 4);
}

#[test]
fn every_prefix_of_every_seed_is_handled() {
    for seed in seeds() {
        for cut in 0..seed.input.len() {
            sim(&seed.input[..cut]);
        }
    }
}

#[test]
fn the_fixed_tokens_verify_as_documented() {
    let auth = authenticator();
    let now = WALL_MS / 1000;
    for (c, token) in VALID_TOKENS.iter().enumerate() {
        let p = auth.verify_cold(token, now).expect("a valid token");
        assert_eq!(p.subject.as_deref(), Some(format!("client-{c}").as_str()));
    }
    assert!(auth.verify_cold(EXPIRED_TOKEN, now).is_err());
    assert!(auth.verify_cold(FORGED_TOKEN, now).is_err());
}

#[test]
fn one_run_is_cheap() {
    // The fuzzer needs hundreds of runs a second on one core; a debug
    // build is ~10x slower than the instrumented release one.
    let longest = seeds().into_iter().max_by_key(|s| s.input.len()).unwrap();
    let start = Instant::now();
    for _ in 0..20 {
        sim(&longest.input);
    }
    let per_run = start.elapsed() / 20;
    assert!(per_run.as_millis() < 50, "{per_run:?} per run");
}

/// Reproduce a finding: `DPUPROXY_FUZZ_INPUT=fuzz/out/l7_sim/default/crashes/id:... cargo
/// test -p dpuproxy-driver --test fuzz_corpus replay_one -- --ignored --nocapture`.
#[test]
#[ignore]
fn replay_one() {
    let path = std::env::var("DPUPROXY_FUZZ_INPUT").expect("DPUPROXY_FUZZ_INPUT names a file");
    let input = fs::read(&path).unwrap();
    println!("{:#?}", decode(&input));
    println!("{:?}", sim(&input));
}
