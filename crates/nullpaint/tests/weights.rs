//! Weight loading: stored dtypes, the sources (mapped file, bytes, tensor map), both text-encoder
//! key forms, and errors that list every problem of a checkpoint at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::borrow::Cow;

use nullpaint::models::clip::{ClipTextConfig, ClipTextModel};
use nullpaint::weights::{
    KeyProblem, RawTensor, SafetensorsBuffer, SafetensorsFile, StoredDType, TensorMap,
    TensorSource, WeightError, load_module,
};

fn config(model: &str) -> ClipTextConfig {
    let p = common::fixtures().join(format!("tiny-{model}/text_encoder/config.json"));
    ClipTextConfig::from_json("config.json", &std::fs::read(p).unwrap()).unwrap()
}

fn weights_path(model: &str) -> std::path::PathBuf {
    common::fixtures().join(format!("tiny-{model}/text_encoder/model.safetensors"))
}

/// Copies every tensor of a source into a map, renaming keys with `rename` (None drops it).
fn to_map(src: &dyn TensorSource, rename: impl Fn(&str) -> Option<String>) -> TensorMap {
    let mut map = TensorMap::new("tensor map");
    for key in src.keys() {
        if let Some(new) = rename(&key) {
            let t = src.tensor(&key).unwrap().unwrap();
            map.insert(
                new,
                RawTensor {
                    dtype: t.dtype,
                    shape: t.shape,
                    data: Cow::Owned(t.data.into_owned()),
                },
            );
        }
    }
    map
}

#[test]
fn weights_stored_dtypes_convert_exactly() {
    let file =
        SafetensorsFile::open(common::fixtures().join("reference/dtypes.safetensors")).unwrap();
    let get = |k: &str| file.tensor(k).unwrap().unwrap();
    assert_eq!(get("f16").dtype, StoredDType::F16);
    assert_eq!(get("bf16").dtype, StoredDType::BF16);
    assert_eq!(
        get("f16").to_f32().unwrap(),
        get("f16_as_f32").to_f32().unwrap()
    );
    assert_eq!(
        get("bf16").to_f32().unwrap(),
        get("bf16_as_f32").to_f32().unwrap()
    );
    assert_ne!(
        get("f32").to_f32().unwrap(),
        get("f16_as_f32").to_f32().unwrap()
    );
    let err = get("i64").to_f32().unwrap_err();
    assert!(err.contains("not a float"), "{err}");
}

#[test]
fn weights_both_text_encoder_key_forms_and_all_sources_give_the_same_model() {
    let device = nullpaint::device::cpu();
    let reference = common::Reference::open("clip.safetensors");
    let want = reference.f32("sd1.last_hidden_state");
    let file = SafetensorsFile::open(weights_path("sd1")).unwrap();
    let bytes = SafetensorsBuffer::new(
        "in-memory bytes",
        std::fs::read(weights_path("sd1")).unwrap(),
    )
    .unwrap();
    // transformers-5 form of the same weights: no prefix, no position_ids.
    let v5 = to_map(&file, |k| {
        (k != "text_model.embeddings.position_ids")
            .then(|| k.trim_start_matches("text_model.").to_string())
    });
    assert!(
        file.keys()
            .iter()
            .any(|k| k == "text_model.embeddings.position_ids")
    );
    let sources: [&dyn TensorSource; 3] = [&file, &bytes, &v5];
    for src in sources {
        let model = load_module(
            config("sd1").init(&device),
            src,
            &ClipTextModel::key_map(),
            &device,
        )
        .unwrap();
        let diff = common::max_abs_diff(
            model.forward(reference.ids("sd1.input_ids", &device)),
            &want,
        );
        assert!(diff <= 1e-4, "{}: {diff}", src.name());
    }
}

#[test]
fn weights_report_every_missing_and_unexpected_key_at_once() {
    let device = nullpaint::device::cpu();
    let file = SafetensorsFile::open(weights_path("sd2")).unwrap();
    let map = to_map(&file, |k| match k {
        "final_layer_norm.weight" | "encoder.layers.1.mlp.fc1.bias" => None,
        "encoder.layers.0.mlp.fc2.weight" => Some("encoder.layers.0.mlp.fc_2.weight".into()),
        other => Some(other.to_string()),
    });
    let err = load_module(
        config("sd2").init(&device),
        &map,
        &ClipTextModel::key_map(),
        &device,
    )
    .unwrap_err();
    let WeightError::Mismatch { problems, .. } = &err else {
        panic!("{err}")
    };
    let missing: Vec<_> = problems
        .iter()
        .filter_map(|p| {
            if let KeyProblem::Missing { key, .. } = p {
                Some(key.as_str())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(missing.len(), 3, "{err}");
    assert!(missing.contains(&"final_layer_norm.weight"));
    assert!(missing.contains(&"encoder.layers.1.mlp.fc1.bias"));
    assert!(missing.contains(&"encoder.layers.0.mlp.fc2.weight"));
    assert!(problems.contains(&KeyProblem::Unexpected {
        key: "encoder.layers.0.mlp.fc_2.weight".into(),
        shape: vec![16, 64]
    }));
    let msg = err.to_string();
    assert!(
        msg.contains("tensor map") && msg.contains("4 problem(s)"),
        "{msg}"
    );
    assert!(
        msg.contains("missing key encoder.layers.0.mlp.fc2.weight (expected shape [16, 64])"),
        "{msg}"
    );
}

#[test]
fn weights_wrong_architecture_names_key_and_both_shapes() {
    let device = nullpaint::device::cpu();
    let file = SafetensorsFile::open(weights_path("sd1")).unwrap();
    let err = load_module(
        config("sd2").init(&device),
        &file,
        &ClipTextModel::key_map(),
        &device,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&weights_path("sd1").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("text_model.embeddings.token_embedding.weight: expected shape [49408, 16], found [49408, 32]"), "{msg}");
    // sd2 has 3 layers, the sd1 checkpoint 2: layer 2 is missing entirely.
    assert!(
        msg.contains("missing key text_model.encoder.layers.2.self_attn.q_proj.weight"),
        "{msg}"
    );
}

#[test]
fn weights_wrong_dtype_and_truncated_file_are_errors() {
    let device = nullpaint::device::cpu();
    let file = SafetensorsFile::open(weights_path("sd2")).unwrap();
    let mut map = to_map(&file, |k| Some(k.to_string()));
    let t = file.tensor("final_layer_norm.bias").unwrap().unwrap();
    map.insert(
        "final_layer_norm.bias",
        RawTensor {
            dtype: StoredDType::Other(safetensors::Dtype::I32),
            shape: t.shape.clone(),
            data: Cow::Owned(t.data.into_owned()),
        },
    );
    let err = load_module(
        config("sd2").init(&device),
        &map,
        &ClipTextModel::key_map(),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("final_layer_norm.bias") && err.contains("not a float"),
        "{err}"
    );

    let mut bytes = std::fs::read(weights_path("sd2")).unwrap();
    bytes.truncate(bytes.len() / 2);
    let half = SafetensorsBuffer::new("half.safetensors", bytes);
    let msg = match half {
        Err(e) => e.to_string(),
        Ok(b) => load_module(
            config("sd2").init(&device),
            &b,
            &ClipTextModel::key_map(),
            &device,
        )
        .unwrap_err()
        .to_string(),
    };
    assert!(msg.contains("half.safetensors"), "{msg}");
}

/// Bytes behind [`ByteRange`], counting reads (the browser's `Blob` stands in here).
struct CountingBytes {
    bytes: Vec<u8>,
    reads: std::cell::Cell<usize>,
    largest: std::cell::Cell<usize>,
}

impl nullpaint::weights::ByteRange for CountingBytes {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        self.reads.set(self.reads.get() + 1);
        self.largest.set(self.largest.get().max(len));
        let start = offset as usize;
        self.bytes
            .get(start..start + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("{len} bytes at {offset} are past the end"))
    }
}

fn counting(bytes: Vec<u8>) -> CountingBytes {
    CountingBytes {
        bytes,
        reads: 0.into(),
        largest: 0.into(),
    }
}

#[test]
fn weights_range_reader_streams_tensor_by_tensor_and_matches_the_mapped_file() {
    use nullpaint::weights::SafetensorsReader;
    for model in ["sd1", "sd2"] {
        let path = weights_path(model);
        let file = SafetensorsFile::open(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let size = bytes.len();
        let reader = SafetensorsReader::new("blob", counting(bytes)).unwrap();
        assert_eq!(file.keys(), reader.keys());
        // Only the header was read so far: its length, then the JSON.
        assert_eq!(reader.get_ref().reads.get(), 2);
        let device = nullpaint::device::cpu();
        let keys = ClipTextModel::key_map();
        let a = load_module(config(model).init(&device), &file, &keys, &device).unwrap();
        let b = load_module(config(model).init(&device), &reader, &keys, &device).unwrap();
        // One read per tensor the model has (position_ids is ignored), none larger than the
        // largest tensor: the file is never read whole.
        let n_params = nullpaint::weights::torch_keys(&b).len();
        assert_eq!(reader.get_ref().reads.get(), 2 + n_params);
        let largest_tensor = file
            .keys()
            .iter()
            .map(|k| file.tensor(k).unwrap().unwrap().data.len())
            .max()
            .unwrap();
        assert_eq!(reader.get_ref().largest.get(), largest_tensor);
        assert!(largest_tensor < size);
        let ids = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(vec![49406i32, 320, 1125, 49407], [1, 4]),
            &device,
        );
        let (ya, yb) = (a.forward(ids.clone()), b.forward(ids));
        ya.into_data().assert_eq(&yb.into_data(), true);
        for key in file.keys() {
            let (x, y) = (
                file.tensor(&key).unwrap().unwrap(),
                reader.tensor(&key).unwrap().unwrap(),
            );
            assert_eq!(x.dtype, y.dtype, "{key}");
            assert_eq!(x.shape, y.shape, "{key}");
            assert_eq!(x.data.as_ref(), y.data.as_ref(), "{key}");
        }
    }
}

#[test]
fn weights_range_reader_rejects_truncated_and_garbage_files() {
    use nullpaint::weights::SafetensorsReader;
    let bytes = std::fs::read(weights_path("sd1")).unwrap();
    let message = |b: Vec<u8>| {
        SafetensorsReader::new("text_encoder/model.safetensors", counting(b))
            .unwrap_err()
            .to_string()
    };
    let truncated = message(bytes[..bytes.len() - 10].to_vec());
    assert!(
        truncated.contains("text_encoder/model.safetensors"),
        "{truncated}"
    );
    assert!(truncated.contains("truncated"), "{truncated}");
    let garbage = message(b"<html>not found</html>".to_vec());
    assert!(garbage.contains("header length"), "{garbage}");
    let tiny = message(vec![1, 2, 3]);
    assert!(tiny.contains("3 bytes"), "{tiny}");
    let mut bad_json = bytes.clone();
    bad_json[8] = b'[';
    assert!(message(bad_json).contains("header"));
    // A crafted shape whose element count overflows (a panic in debug builds before).
    let header = br#"{"w":{"dtype":"F32","shape":[8589934592,8589934592,4],"data_offsets":[0,0]}}"#;
    let mut crafted = (header.len() as u64).to_le_bytes().to_vec();
    crafted.extend_from_slice(header);
    let e = message(crafted.clone());
    assert!(e.to_lowercase().contains("overflow"), "{e}");
    // The in-memory / mapped reader relies on the safetensors crate's validation, and the range
    // reader now on the same (its Metadata): both refuse the same files, e.g. a gap between
    // two tensors, which the range reader's own parsing used to accept.
    assert!(nullpaint::weights::SafetensorsBuffer::new("crafted", crafted).is_err());
    let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    let mut gap = (header.len() as u64).to_le_bytes().to_vec();
    gap.extend_from_slice(header);
    gap.extend_from_slice(&[0u8; 12]);
    let e = message(gap.clone());
    assert!(e.contains("header"), "{e}");
    assert!(nullpaint::weights::SafetensorsBuffer::new("gap", gap).is_err());
}

#[test]
fn weights_uploaded_in_row_blocks_give_the_same_model() {
    use nullpaint::weights::load_module_in_blocks;
    for (name, device) in common::devices() {
        let file = SafetensorsFile::open(weights_path("sd1")).unwrap();
        let keys = ClipTextModel::key_map();
        let whole = load_module(config("sd1").init(&device), &file, &keys, &device).unwrap();
        // 1 KiB blocks: the token embedding (49408 rows) and every matrix go up in pieces.
        let blocked =
            load_module_in_blocks(config("sd1").init(&device), &file, &keys, &device, 1024)
                .unwrap();
        let ids = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(vec![49406i32, 320, 1125, 49407], [1, 4]),
            &device,
        );
        whole
            .forward(ids.clone())
            .into_data()
            .assert_eq(&blocked.forward(ids).into_data(), true);
        let (a, b) = (
            whole.embeddings.token_embedding.weight.val(),
            blocked.embeddings.token_embedding.weight.val(),
        );
        a.into_data().assert_eq(&b.into_data(), true);
        eprintln!("blocked upload on {name}: identical");
    }
}
