//! `dpuproxy bench tcp`: the command-line contract checks rely on.

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dpuproxy"))
        .args(["bench", "tcp"])
        .args(args)
        .output()
        .expect("run dpuproxy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parse the last line: `connections=N completed=X/N corrupted=C ns_per_packet=T connect_ns_per_packet=U bytes_per_conn=M active=A`.
fn last_line(stdout: &str) -> Vec<(String, String)> {
    let line = stdout.lines().last().expect("some output");
    line.split(' ')
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("not k=v: {kv:?} in {line:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn last_line_contract_under_faults() {
    let (ok, out, err) = bench(&[
        "--connections",
        "200",
        "--loss",
        "0.05",
        "--reorder",
        "0.05",
        "--duplicate",
        "0.02",
        "--bytes",
        "400000",
    ]);
    assert!(ok, "{out}\n{err}");
    let kv = last_line(&out);
    let keys: Vec<&str> = kv.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "connections",
            "completed",
            "corrupted",
            "ns_per_packet",
            "connect_ns_per_packet",
            "bytes_per_conn",
            "active"
        ]
    );
    assert_eq!(kv[6].1, "1024", "exchanges in flight by default");
    assert_eq!(kv[0].1, "200");
    assert_eq!(kv[1].1, "200/200");
    assert_eq!(kv[2].1, "0");
    let ns: u64 = kv[3].1.parse().unwrap();
    let connect_ns: u64 = kv[4].1.parse().unwrap();
    let bytes: u64 = kv[5].1.parse().unwrap();
    assert!(ns > 0 && connect_ns > 0, "{kv:?}");
    // Measured, so only a loose sanity range: more than the buffers a
    // connection starts with (2 KiB + 1 KiB), less than 64 KiB.
    assert!(
        (3 * 1024..64 * 1024).contains(&bytes),
        "bytes_per_conn={bytes}"
    );
    assert!(
        out.contains("dropped") && out.contains("reordered"),
        "{out}"
    );
}

#[test]
fn bad_arguments_are_clean_errors() {
    for args in [
        &["--connections", "0"][..],
        &["--connections", "10", "--loss", "1.5"],
        &["--connections", "10", "--reorder", "-0.1"],
        &["--connections", "10", "--loss", "0.9"],
        &["--connections", "many"],
    ] {
        let (ok, _, err) = bench(args);
        assert!(!ok, "{args:?} accepted");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn lock_step_and_a_small_window_both_complete() {
    for (active, shown) in [("0", "60"), ("7", "7")] {
        let (ok, out, err) = bench(&["--connections", "60", "--active", active]);
        assert!(ok, "{out}\n{err}");
        let kv = last_line(&out);
        assert_eq!(kv[1].1, "60/60", "{out}");
        assert_eq!(kv[6], ("active".to_string(), shown.to_string()), "{out}");
        // The window held: never more exchanges at once than allowed, and
        // (60 connections) it was filled.
        let peak: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("bench tcp: at most "))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no peak line: {out}"));
        let limit: usize = shown.parse().unwrap();
        assert!(
            peak <= limit && peak == limit.min(60),
            "peak {peak} for --active {active}: {out}"
        );
    }
}
