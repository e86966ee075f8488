//! Replays the committed corpora of the L7 fuzz targets
//! (`l7/fuzz/corpus/<target>/`, see `dpuproxy_l7::fuzz`) and keeps their
//! seeds in step with the seed generators. Regenerate the seeds with
//! `DPUPROXY_REGEN_CORPUS=1 cargo test -p dpuproxy-l7 --test fuzz_corpus`
//! (files the fuzzer saved, `afl-*`, are left alone).
//!
//! Each corpus must also keep reaching deep: the counts below fail the
//! test when a change to the code or the corpus leaves the targets stuck
//! in their first checks.

use std::collections::HashSet;
use std::path::PathBuf;

use dpuproxy_l7::fuzz::{self, TARGETS, http_request::End};
use dpuproxy_l7::http::BodyFraming;
use dpuproxy_l7::mcp::Route;

fn corpus_dir(target: &str) -> PathBuf {
    dpuproxy_corpus::dir(env!("CARGO_MANIFEST_DIR"), target)
}

/// Every input of a target's corpus, sorted by file name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = dpuproxy_corpus::inputs(&corpus_dir(target))
        .into_iter()
        .map(|(path, input)| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, input)
        })
        .collect();
    assert!(
        files.len() >= 10,
        "{target}: only {} corpus files",
        files.len()
    );
    files
}

#[test]
fn corpus_matches_the_seed_generators() {
    for target in TARGETS {
        let seeds = fuzz::seeds(target);
        assert!(seeds.len() >= 10, "{target}: {} seeds", seeds.len());
        let names: HashSet<&str> = seeds.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), seeds.len(), "{target}: seed names repeat");
        dpuproxy_corpus::sync_seeds(
            &corpus_dir(target),
            seeds.iter().map(|s| (&s.name, &s.input)),
        );
    }
}

#[test]
fn http_request_corpus() {
    let (mut requests, mut pipelined, mut chunked, mut refused) = (0, 0, 0, 0);
    for (name, input) in corpus("http_request") {
        // Shown with a failure: the last name is the input that failed.
        println!("http_request/{name}");
        let out = fuzz::http_request(&input);
        requests += out.accepted();
        pipelined += usize::from(out.accepted() >= 2);
        chunked += out
            .requests
            .iter()
            .filter(|r| r.head.framing == BodyFraming::Chunked)
            .count();
        refused += usize::from(matches!(out.end, End::Refused(_)));
    }
    assert!(requests >= 20, "{requests} requests framed");
    assert!(pipelined >= 3, "{pipelined} inputs pipeline requests");
    assert!(chunked >= 3, "{chunked} chunked bodies");
    assert!(refused >= 20, "{refused} inputs refused");
}

#[test]
fn http_response_corpus() {
    let (mut relayed, mut whole, mut local, mut sse) = (0, 0, 0, 0);
    for (name, input) in corpus("http_response") {
        // Shown with a failure: the last name is the input that failed.
        println!("http_response/{name}");
        let out = fuzz::http_response(&input);
        relayed += usize::from(!out.local);
        whole += usize::from(!out.local && out.complete && !out.body.is_empty());
        local += usize::from(out.local);
        sse += usize::from(out.event_stream && out.sse_events > 0);
    }
    assert!(relayed >= 15, "{relayed} responses relayed");
    assert!(whole >= 8, "{whole} whole bodies relayed");
    assert!(local >= 6, "{local} responses refused");
    assert!(sse >= 4, "{sse} event streams with events");
}

#[test]
fn sse_corpus() {
    let (mut events, mut at_boundary) = (0, 0);
    for (name, input) in corpus("sse") {
        // Shown with a failure: the last name is the input that failed.
        println!("sse/{name}");
        let out = fuzz::sse(&input);
        events += out.events;
        at_boundary += usize::from(out.events > 0 && out.ends_at_boundary);
    }
    assert!(events >= 15, "{events} events");
    assert!(at_boundary >= 5, "{at_boundary} streams end between events");
}

#[test]
fn mcp_corpus() {
    let (mut readable, mut refused) = (0, 0);
    let mut routes = HashSet::new();
    for (name, input) in corpus("mcp") {
        // Shown with a failure: the last name is the input that failed.
        println!("mcp/{name}");
        let out = fuzz::mcp(&input);
        readable += usize::from(out.calls.is_some_and(|n| n > 0));
        match &out.route {
            Ok(Route::NewSession { initialize }) => routes.insert(format!("new-{initialize}")),
            Ok(Route::Session { .. }) => routes.insert("session".into()),
            Ok(Route::Stateless { .. }) => routes.insert("stateless".into()),
            Err(_) => {
                refused += 1;
                false
            }
        };
    }
    assert!(readable >= 10, "{readable} bodies read as JSON-RPC");
    assert!(refused >= 5, "{refused} requests refused");
    assert_eq!(routes.len(), 4, "routes reached: {routes:?}");
}

#[test]
fn jwt_corpus() {
    let mut accepted = 0;
    let mut reasons = HashSet::new();
    for (name, input) in corpus("jwt") {
        // Shown with a failure: the last name is the input that failed.
        println!("jwt/{name}");
        match fuzz::jwt(&input).verdict {
            Ok(_) => accepted += 1,
            Err(r) => {
                reasons.insert(r.label());
            }
        }
    }
    assert!(accepted >= 6, "{accepted} tokens accepted");
    assert!(
        reasons.len() >= 10,
        "rejection reasons reached: {reasons:?}"
    );
}
