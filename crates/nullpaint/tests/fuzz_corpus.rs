//! Replays the fuzzers' corpus (fuzz/corpus/<target>/: the seeds and every input libFuzzer kept
//! for new coverage) and every crash found so far (fuzz/regressions/<target>/, each fixed)
//! through the same harness the fuzz binaries run (fuzz/src/harness.rs). A panic here is a
//! parser that a user's file can crash. Fuzzing itself: fuzz/run.sh (fuzz/README.md).

#[path = "../../../fuzz/src/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every input under `fuzz/<kind>/<target>/` (not the notes, `*.md`), sorted.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = root().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let corpus = inputs("corpus", target);
    assert!(
        corpus.iter().any(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))),
        "fuzz/corpus/{target} has no seed: run fuzz/seeds.py"
    );
    let regressions = inputs("regressions", target);
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Name the input if the harness panics.
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(
            result.is_ok(),
            "{} panicked (replay: fuzz/run.sh {target} {})",
            path.display(),
            path.display()
        );
    }
    println!(
        "fuzz {target}: {} corpus inputs, {} past crashes replayed",
        corpus.len(),
        regressions.len()
    );
}

#[test]
fn safetensors_corpus() {
    replay("safetensors", harness::safetensors);
}

#[test]
fn config_corpus() {
    replay("config", harness::config);
}

#[test]
fn tokenizer_corpus() {
    replay("tokenizer", harness::tokenizer);
}

#[test]
fn image_corpus() {
    replay("image", harness::image);
}

#[test]
fn options_corpus() {
    replay("options", harness::options);
}

#[test]
fn harness_splits_multi_file_inputs() {
    let parts = harness::split(b"a\n--8<--\n\n--8<--\nc");
    assert_eq!(parts, vec![&b"a"[..], b"", b"c"]);
}
