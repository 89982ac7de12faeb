//! CLIP tokenizer parity with transformers' `CLIPTokenizer` on the fixture corpus, for both
//! file forms (vocab.json + merges.txt, tokenizer.json) and both pad tokens (SD 1.x, SD 2.x).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use nullpaint::tokenizer::{ClipTokenizer, TokenizerError};
use serde_json::Value;

fn corpus(model: &str) -> Vec<(String, Vec<u32>, usize)> {
    let text =
        std::fs::read_to_string(common::fixtures().join("reference/tokenizer_ids.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v[model]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let ids = e["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            (
                e["text"].as_str().unwrap().to_string(),
                ids,
                e["untruncated_len"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

fn check(tok: &ClipTokenizer, model: &str) {
    let corpus = corpus(model);
    assert!(corpus.len() >= 40, "corpus has {} prompts", corpus.len());
    let mut truncated = 0;
    for (text, want, full_len) in &corpus {
        let got = tok.encode(text).unwrap();
        assert_eq!(&got.ids, want, "ids differ for {text:?}");
        assert_eq!(
            got.dropped,
            full_len.saturating_sub(77),
            "dropped count for {text:?}"
        );
        truncated += usize::from(got.dropped > 0);
    }
    assert!(truncated >= 1, "the corpus must exercise truncation");
}

#[test]
fn tokenizer_sd1_vocab_and_merges_matches_transformers() {
    let tok = ClipTokenizer::from_folder(common::fixtures().join("tiny-sd1/tokenizer")).unwrap();
    assert_eq!(tok.pad_id(), 49407);
    assert_eq!(tok.max_length(), 77);
    check(&tok, "sd1");
}

#[test]
fn tokenizer_sd2_tokenizer_json_matches_transformers() {
    let tok = ClipTokenizer::from_folder(common::fixtures().join("tiny-sd2/tokenizer")).unwrap();
    assert_eq!(tok.pad_id(), 0, "SD 2.x pads with '!'");
    check(&tok, "sd2");
}

/// SD 2.x repositories ship vocab.json + merges.txt with pad token "!": same ids as transformers.
#[test]
fn tokenizer_vocab_and_merges_with_sd2_pad_token() {
    let dir = tempdir("vocab-sd2");
    let fx = common::fixtures();
    for (from, name) in [
        ("tiny-sd1/tokenizer", "vocab.json"),
        ("tiny-sd1/tokenizer", "merges.txt"),
        ("tiny-sd2/tokenizer", "tokenizer_config.json"),
        ("tiny-sd2/tokenizer", "special_tokens_map.json"),
    ] {
        std::fs::copy(fx.join(from).join(name), dir.join(name)).unwrap();
    }
    let tok = ClipTokenizer::from_folder(&dir).unwrap();
    assert_eq!(tok.pad_id(), 0);
    check(&tok, "sd2");
}

#[test]
fn tokenizer_missing_files_are_a_clear_error() {
    let dir = tempdir("empty");
    let err = ClipTokenizer::from_folder(&dir).unwrap_err();
    assert!(matches!(err, TokenizerError::NoFiles(_)), "{err}");
    assert!(err.to_string().contains("vocab.json"), "{err}");

    std::fs::write(dir.join("vocab.json"), b"{not json").unwrap();
    std::fs::write(dir.join("merges.txt"), b"#version: 0.2\na b\n").unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err();
    assert!(err.to_string().contains("vocab.json"), "{err}");
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nullpaint-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
