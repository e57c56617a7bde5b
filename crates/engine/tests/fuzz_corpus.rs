//! The fuzz corpora of the engine's targets, replayed through the fuzz targets' own checks
//! (`fuzz_checks`): CI cannot run libFuzzer, but every kept input runs on every test run.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod fuzz_checks;

use std::path::PathBuf;

/// The files of `fuzz/corpus/<target>`, which must not be empty.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

#[test]
fn working_memory_corpus_passes_the_fuzz_checks() {
    for path in corpus("working_memory") {
        eprintln!("replaying {}", path.display());
        fuzz_checks::working_memory(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn cassette_corpus_passes_the_fuzz_checks() {
    let scratch = tempfile::tempdir().unwrap();
    for path in corpus("cassette") {
        eprintln!("replaying {}", path.display());
        fuzz_checks::cassette(&path, scratch.path());
    }
}
