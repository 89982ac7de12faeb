//! CLIP text encoder parity with transformers' `CLIPTextModel` (`last_hidden_state`), on every
//! test device: SD 1-style (quick_gelu, transformers-4 keys, f16 storage) and SD 2-style (gelu,
//! transformers-5 keys).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use nullpaint::models::clip::{ClipTextConfig, ClipTextModel};
use nullpaint::weights::{SafetensorsFile, load_module};

const TOLERANCE: f32 = 1e-4;

fn parity(model: &str) {
    let folder = common::fixtures().join(format!("tiny-{model}/text_encoder"));
    let config_path = folder.join("config.json");
    let config = ClipTextConfig::from_json(
        &config_path.display().to_string(),
        &std::fs::read(&config_path).unwrap(),
    )
    .unwrap();
    let weights = SafetensorsFile::open(folder.join("model.safetensors")).unwrap();
    let reference = common::Reference::open("clip.safetensors");
    let want = reference.f32(&format!("{model}.last_hidden_state"));
    for (name, device) in common::devices() {
        let encoder = load_module(
            config.init(&device),
            &weights,
            &ClipTextModel::key_map(),
            &device,
        )
        .unwrap();
        let ids = reference.ids(&format!("{model}.input_ids"), &device);
        let diff = common::max_abs_diff(encoder.forward(ids), &want);
        eprintln!("clip {model} on {name}: max |diff| = {diff:.3e}");
        assert!(
            diff <= TOLERANCE,
            "clip {model} on {name}: max |diff| {diff} > {TOLERANCE}"
        );
    }
}

#[test]
fn clip_sd1_quick_gelu_matches_transformers() {
    parity("sd1");
}

#[test]
fn clip_sd2_gelu_matches_transformers() {
    parity("sd2");
}

#[test]
fn clip_config_rejects_unknown_activation() {
    let json =
        br#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "hidden_act": "relu"}"#;
    let err = ClipTextConfig::from_json("text_encoder/config.json", json)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hidden_act")
            && err.contains("relu")
            && err.contains("text_encoder/config.json"),
        "{err}"
    );
    let json =
        br#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 3}"#;
    let err = ClipTextConfig::from_json("c.json", json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_attention_heads = 3"), "{err}");
    let err = ClipTextConfig::from_json("c.json", b"{}")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c.json") && err.contains("vocab_size"),
        "{err}"
    );
}

#[test]
fn clip_full_size_sd15_structure_matches_transformers_keys() {
    // Lazy parameters: building the full-size structure allocates nothing.
    let device = nullpaint::device::cpu();
    let text =
        std::fs::read_to_string(common::fixtures().join("configs/sd15/text_encoder/config.json"))
            .unwrap();
    let config = ClipTextConfig::from_json("sd15 text_encoder", text.as_bytes()).unwrap();
    assert_eq!(config, ClipTextConfig::sd_v1_5());
    let (want, want_params) = common::full_size_keys("sd15", "text_encoder");
    let n = common::assert_same_keys(
        nullpaint::weights::torch_keys(&config.init(&device)),
        &want,
        "sd15 text encoder",
    );
    assert_eq!(n, want_params);
    assert_eq!(n, 123_060_480);
}
