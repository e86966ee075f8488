//! Randomized mutation test of the receive path, with a fixed seed: valid
//! streams (data, KeyUpdates, tickets, empty records, close_notify) are
//! mutated (bit flips, byte changes, truncation, insertion, deletion,
//! duplication, swaps) and fed through the fuzz target, whose own asserts
//! check that every delivered byte authenticates independently. Here we
//! also check that what is delivered is always a prefix of what was sent.

use std::collections::BTreeMap;

use dpuproxy_tls::fuzz::{Seed, deframe_target, seeds};

const SEED: u64 = 0x5EED_7153;
const CASES: usize = 4000;

fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.usize(1..=3) {
        if v.len() < 3 {
            break;
        }
        // Byte 0 is the selector: keep suite and side, maybe change chunking.
        let body = 1..v.len();
        match rng.u8(0..8) {
            0 => {
                let i = rng.usize(body);
                v[i] ^= 1 << rng.u8(0..8);
            }
            1 => {
                let i = rng.usize(body);
                v[i] = rng.u8(..);
            }
            2 => v.truncate(rng.usize(body)),
            3 => {
                let i = rng.usize(body.start..=v.len());
                let junk: Vec<u8> = (0..rng.usize(1..40)).map(|_| rng.u8(..)).collect();
                v.splice(i..i, junk);
            }
            4 => {
                let a = rng.usize(body);
                let b = (a + rng.usize(1..200)).min(v.len());
                v.drain(a..b);
            }
            5 => {
                let a = rng.usize(body);
                let b = (a + rng.usize(1..300)).min(v.len());
                let dup = v[a..b].to_vec();
                v.splice(b..b, dup);
            }
            6 => {
                let a = rng.usize(body.clone());
                let b = rng.usize(body);
                v.swap(a, b);
            }
            _ => v[0] = (v[0] & !0x18) | (rng.u8(0..4) << 3),
        }
    }
    v
}

#[test]
fn mutated_streams_never_deliver_unsent_bytes() {
    let corpus: Vec<Seed> = seeds()
        .into_iter()
        .filter(|s| !s.delivered.is_empty())
        .collect();
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..CASES {
        let seed = &corpus[rng.usize(..corpus.len())];
        let input = mutate(&mut rng, &seed.input);
        let out = deframe_target(&input);
        assert!(
            seed.delivered.starts_with(&out.delivered),
            "{}: delivered bytes that were never sent",
            seed.name
        );
        *outcomes.entry(out.error.unwrap_or("none")).or_default() += 1;
    }
    eprintln!("mutation outcomes over {CASES} cases: {outcomes:?}");
    for kind in ["bad_record_mac", "unexpected_message", "none"] {
        assert!(
            outcomes.contains_key(kind),
            "no case ended in {kind}: {outcomes:?}"
        );
    }
    assert!(
        outcomes.len() >= 4,
        "too few distinct outcomes: {outcomes:?}"
    );
}
