//! Single-file checkpoints in the original layout (tests/fixtures/single-file, written by the
//! generator and loaded by diffusers' own `from_single_file` to exactly the tiny folders'
//! weights): the whole pipeline on the file gives the folder's picture on every test device;
//! the full-size SD 1.5 / 2.1 original key lists convert to diffusers' key lists and shapes
//! with the bundled configs; the bundled tokenizer is CLIP's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::ControlFlow;

use nullpaint::pipeline::{FolderSource, InpaintOptions, ModelSource, StableDiffusion};
use nullpaint::single_file::{Family, SingleFileOptions, SingleFileSource};
use nullpaint::weights::{RawTensor, SafetensorsFile, StoredDType, TensorSource, WeightError};

fn single(name: &str) -> SafetensorsFile {
    SafetensorsFile::open(
        common::fixtures()
            .join("single-file")
            .join(format!("{name}.safetensors")),
    )
    .unwrap()
}

/// The file form of tiny-sd1 / tiny-sd2 (configs from the folder, as diffusers'
/// `from_single_file(config=)`) inpaints exactly as the folder form: the e2e references.
#[test]
fn single_file_gives_the_folders_picture() {
    let dir = common::fixtures().join("reference/e2e");
    let cases = [
        (
            "tiny-sd1",
            Family::Sd1,
            "sd1_guided_64x64",
            7.5,
            "blurry",
            42,
            4,
            2,
        ),
        (
            "tiny-sd2",
            Family::Sd2,
            "sd2_vpred_unguided_64x96",
            1.0,
            "",
            1234,
            3,
            0,
        ),
    ];
    for (device_name, device) in common::devices() {
        for (model, family, case, guidance, negative, seed, steps, dilation) in cases {
            let folder = FolderSource::new(common::fixtures().join(model)).unwrap();
            let source = SingleFileSource::new(
                Box::new(single(model)),
                SingleFileOptions {
                    config: Some(&folder),
                    prediction_type: None,
                },
            )
            .unwrap();
            assert_eq!(source.family(), family);
            let sd = StableDiffusion::load(&source, &device).unwrap();
            let cases: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap())
                    .unwrap();
            let prompt = cases[case]["prompt"].as_str().unwrap();
            let image = common::load_rgb(&dir.join(format!("{case}.image.png")));
            let mask = common::load_mask(&dir.join(format!("{case}.mask.png")));
            let want = common::load_rgb(&dir.join(format!("{case}.out.png")));
            let options = InpaintOptions {
                prompt: prompt.into(),
                negative_prompt: negative.into(),
                steps,
                guidance_scale: guidance,
                seed,
                dilation,
                ..Default::default()
            };
            let got = sd
                .inpaint(&image, &mask, &options, &mut |_| ControlFlow::Continue(()))
                .unwrap();
            let max = got
                .data
                .iter()
                .zip(&want.data)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            eprintln!("single-file {model} on {device_name}: max diff {max}/255 against {case}");
            assert!(max <= 1, "{model} on {device_name}: {max} levels off");
        }
    }
}

/// A checkpoint that has only names and shapes (the full-size key lists): enough to build the
/// tables and look at every converted name and shape.
struct Shapes {
    shapes: BTreeMap<String, Vec<usize>>,
}

impl TensorSource for Shapes {
    fn name(&self) -> &str {
        "shapes"
    }
    fn keys(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }
    fn tensor(&self, key: &str) -> Result<Option<RawTensor<'_>>, WeightError> {
        Ok(self.shapes.get(key).map(|s| RawTensor {
            dtype: StoredDType::F16,
            shape: s.clone(),
            data: Cow::Borrowed(&[]),
        }))
    }
}

/// With the bundled configs, the original SD 1.5 / 2.1 key lists (the generator writes them with
/// the layout diffusers' from_single_file reads) become exactly diffusers' key lists and shapes.
#[test]
fn full_size_original_keys_convert_to_diffusers_keys() {
    for (model, family) in [("sd15", Family::Sd1), ("sd21", Family::Sd2)] {
        let path = common::fixtures()
            .join("configs")
            .join(model)
            .join("single_file_keys.json");
        let listing: Vec<(String, Vec<usize>)> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let source = SingleFileSource::new(
            Box::new(Shapes {
                shapes: listing.into_iter().collect(),
            }),
            SingleFileOptions::default(),
        )
        .unwrap();
        assert_eq!(source.family(), family);
        for component in ["unet", "vae", "text_encoder"] {
            // The bundled config is the repository's.
            let bundled: serde_json::Value = serde_json::from_slice(
                &source
                    .read(&format!("{component}/config.json"))
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            let fixture: serde_json::Value = serde_json::from_slice(
                &std::fs::read(
                    common::fixtures()
                        .join("configs")
                        .join(model)
                        .join(component)
                        .join("config.json"),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(bundled, fixture, "{model} {component} config");
            // Every diffusers key, with its shape, and nothing else.
            let (want, _) = common::full_size_keys(model, component);
            let strip = |k: &str| k.strip_prefix("text_model.").unwrap_or(k).to_string();
            let want: BTreeMap<String, Vec<usize>> =
                want.into_iter().map(|(k, s)| (strip(&k), s)).collect();
            let view = source.weights(component).unwrap();
            let got: BTreeMap<String, Vec<usize>> = view
                .keys()
                .into_iter()
                .filter(|k| !k.ends_with("position_ids"))
                .map(|k| {
                    let shape = view.tensor(&k).unwrap().unwrap().shape;
                    (strip(&k), shape)
                })
                .collect();
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
            let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{model} {component}: missing {:?}, extra {:?}",
                &missing[..missing.len().min(5)],
                &extra[..extra.len().min(5)]
            );
            for (k, s) in &want {
                assert_eq!(&got[k], s, "{model} {component} {k}");
            }
            eprintln!("{model} {component}: {} keys convert", want.len());
        }
    }
}

/// SD 2.x files are v-prediction at 768 px unless told epsilon (2.x base: 512 px).
#[test]
fn sd2_prediction_type_and_size_follow_diffusers() {
    let scheduler = |source: &SingleFileSource| -> serde_json::Value {
        serde_json::from_slice(
            &source
                .read("scheduler/scheduler_config.json")
                .unwrap()
                .unwrap(),
        )
        .unwrap()
    };
    let unet = |source: &SingleFileSource| -> serde_json::Value {
        serde_json::from_slice(&source.read("unet/config.json").unwrap().unwrap()).unwrap()
    };
    let path = common::fixtures().join("configs/sd21/single_file_keys.json");
    let shapes = || Shapes {
        shapes: serde_json::from_str::<Vec<(String, Vec<usize>)>>(
            &std::fs::read_to_string(&path).unwrap(),
        )
        .unwrap()
        .into_iter()
        .collect(),
    };
    let v = SingleFileSource::new(Box::new(shapes()), SingleFileOptions::default()).unwrap();
    assert_eq!(scheduler(&v)["prediction_type"], "v_prediction");
    assert_eq!(unet(&v)["sample_size"], 96);
    let eps = SingleFileSource::new(
        Box::new(shapes()),
        SingleFileOptions {
            config: None,
            prediction_type: Some(nullpaint::schedulers::PredictionType::Epsilon),
        },
    )
    .unwrap();
    assert_eq!(scheduler(&eps)["prediction_type"], "epsilon");
    assert_eq!(unet(&eps)["sample_size"], 64);
}

/// The bundled tokenizer: the vocabulary derived from the bundled merges is CLIP's (the fixture's
/// vocab.json, built by the generator from open_clip's BPE file), and it tokenizes as tiny-sd1's.
#[test]
fn bundled_tokenizer_is_clips() {
    let shapes: Vec<(String, Vec<usize>)> = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("configs/sd15/single_file_keys.json"))
            .unwrap(),
    )
    .unwrap();
    let source = SingleFileSource::new(
        Box::new(Shapes {
            shapes: shapes.into_iter().collect(),
        }),
        SingleFileOptions::default(),
    )
    .unwrap();
    let got: serde_json::Value =
        serde_json::from_slice(&source.read("tokenizer/vocab.json").unwrap().unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::fixtures().join("tiny-sd1/tokenizer/vocab.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(got.as_object().unwrap().len(), 49408);
    assert_eq!(got, want);
}

/// Without `config`, the tiny file meets the full-size SD 1.5 structure: a clear mismatch.
#[test]
fn a_file_that_does_not_fit_the_bundled_config_says_so() {
    let source =
        SingleFileSource::new(Box::new(single("tiny-sd1")), SingleFileOptions::default()).unwrap();
    let err = StableDiffusion::load(&source, &nullpaint::device::cpu())
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("tiny-sd1.safetensors"), "{err}");
}
