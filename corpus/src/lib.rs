//! Test support for the committed fuzz corpora (`<crate>/fuzz/corpus/<target>/`).
//!
//! Each crate with a fuzz target replays its corpus in `cargo test` and
//! keeps the seeds in it in step with the seed generator. This crate holds
//! the parts those tests share: where a corpus lives ([`dir`]), checking or
//! rewriting the generated seeds ([`sync_seeds`], driven by
//! `DPUPROXY_REGEN_CORPUS`), and reading every input back ([`inputs`]).
//! The oracles and depth counts stay in each crate's test.
//!
//! A dev-dependency only: every function panics instead of returning an
//! error, as a test wants.

#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// Set (to anything) to make [`sync_seeds`] rewrite the seed files instead
/// of checking them.
pub const REGEN_VAR: &str = "DPUPROXY_REGEN_CORPUS";

/// The corpus directory of fuzz target `target` of the crate at
/// `manifest_dir`: `<manifest_dir>/fuzz/corpus/<target>`. Pass
/// `env!("CARGO_MANIFEST_DIR")`. Touches no file.
pub fn dir(manifest_dir: &str, target: &str) -> PathBuf {
    Path::new(manifest_dir).join("fuzz/corpus").join(target)
}

/// Keeps the seeds of a corpus in step with their generator. Each seed is
/// a `(name, bytes)` pair whose file is `<dir>/<name>.bin`.
///
/// With [`REGEN_VAR`] set, creates `dir` if needed and writes every seed's
/// file (other files, such as those the fuzzer saved, are left alone).
/// Either way it then checks each seed: panics with
/// "`<path>: <error> (regenerate the corpus)`" if the file cannot be read,
/// and with "`<path> is stale (regenerate)`" if its bytes differ from the
/// seed's.
pub fn sync_seeds<N: AsRef<str>, B: AsRef<[u8]>>(
    dir: &Path,
    seeds: impl IntoIterator<Item = (N, B)>,
) {
    let regen = std::env::var_os(REGEN_VAR).is_some();
    if regen {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    for (name, bytes) in seeds {
        let (name, bytes) = (name.as_ref(), bytes.as_ref());
        let path = dir.join(format!("{name}.bin"));
        if regen {
            fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let on_disk = fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (regenerate the corpus)", path.display()));
        assert_eq!(on_disk, bytes, "{} is stale (regenerate)", path.display());
    }
}

/// Every input of the corpus in `dir`, as `(path, bytes)`, sorted by file
/// name (so replays run in the same order everywhere). Panics, naming the
/// directory, if it is missing or unreadable, and naming the file if one
/// cannot be read (a corpus holds only files).
pub fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "corpus directory {}: {e} (run from the crate, or regenerate the corpus)",
            dir.display()
        )
    });
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()))
                .path()
        })
        .collect();
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    paths
        .into_iter()
        .map(|path| {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_is_under_fuzz_corpus() {
        assert_eq!(
            dir("/x/tls", "records"),
            PathBuf::from("/x/tls/fuzz/corpus/records")
        );
    }

    #[test]
    fn inputs_are_sorted_by_name_and_seeds_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let tmp = tmp.path();
        for (name, bytes) in [("b.bin", &b"2"[..]), ("a.bin", b"1"), ("c", b"")] {
            fs::write(tmp.join(name), bytes).unwrap();
        }
        let got: Vec<(String, Vec<u8>)> = inputs(tmp)
            .into_iter()
            .map(|(p, b)| (p.file_name().unwrap().to_string_lossy().into_owned(), b))
            .collect();
        assert_eq!(
            got,
            [
                ("a.bin".to_string(), b"1".to_vec()),
                ("b.bin".to_string(), b"2".to_vec()),
                ("c".to_string(), vec![]),
            ]
        );
        if std::env::var_os(REGEN_VAR).is_none() {
            sync_seeds(tmp, [("a", b"1"), ("b", b"2")]);
            let stale = std::panic::catch_unwind(|| sync_seeds(tmp, [("a", b"x")]));
            let missing = std::panic::catch_unwind(|| sync_seeds(tmp, [("z", b"")]));
            assert!(stale.is_err() && missing.is_err());
        }
    }

    #[test]
    #[should_panic(expected = "corpus directory")]
    fn a_missing_directory_panics() {
        inputs(Path::new("/nonexistent/dpuproxy-corpus"));
    }
}
