//! Shared test helpers: fixture paths, the devices every model test runs on, comparisons.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use nullpaint::pipeline::{MaskImage, RgbImage};
use nullpaint::weights::{SafetensorsFile, TensorSource};

/// `tests/fixtures` at the repository root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The devices model tests run on: the CPU backend always, and wgpu when an adapter exists.
/// With `NULLPAINT_REQUIRE_WGPU=1` (set by the README test command and CI) a missing adapter
/// fails the test instead of skipping the wgpu half.
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut out = vec![("cpu", nullpaint::device::cpu())];
    if let Some((device, info)) = wgpu_or_skip(nullpaint::device::wgpu()) {
        eprintln!("wgpu adapter: {info}");
        out.push(("wgpu", device));
    }
    out
}

/// The wgpu device when there is one. Without an adapter: a panic under
/// `NULLPAINT_REQUIRE_WGPU=1`, else a warning and `None` (the wgpu part of the test is skipped).
pub fn wgpu_or_skip(
    found: Result<(Device, nullpaint::device::AdapterInfo), nullpaint::device::DeviceError>,
) -> Option<(Device, nullpaint::device::AdapterInfo)> {
    match found {
        Ok(found) => Some(found),
        Err(e) => {
            if std::env::var("NULLPAINT_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("NULLPAINT_REQUIRE_WGPU=1 but {e}");
            }
            eprintln!(
                "WARNING: wgpu half of the test skipped: {e} (set NULLPAINT_REQUIRE_WGPU=1 to make this an error)"
            );
            None
        }
    }
}

/// A reference safetensors file from `tests/fixtures/reference`.
pub struct Reference(SafetensorsFile);

impl Reference {
    pub fn open(name: &str) -> Self {
        Self(SafetensorsFile::open(fixtures().join("reference").join(name)).unwrap())
    }

    /// f32 values and shape of a reference tensor.
    pub fn f32(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let raw = self
            .0
            .tensor(key)
            .unwrap()
            .unwrap_or_else(|| panic!("no reference tensor {key}"));
        (raw.to_f32().unwrap(), raw.shape.clone())
    }

    pub fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Tensor<D> {
        let (v, shape) = self.f32(key);
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    /// An int32 reference tensor (token ids) as an Int tensor.
    pub fn ids(&self, key: &str, device: &Device) -> Tensor<2, Int> {
        let raw = self.0.tensor(key).unwrap().unwrap();
        let v: Vec<i32> = raw
            .data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::from_data(TensorData::new(v, raw.shape.clone()), device)
    }
}

/// Values of a tensor on the host.
pub fn values<const D: usize>(t: Tensor<D>) -> (Vec<f32>, Vec<usize>) {
    let shape = t.dims().to_vec();
    let data = t.into_data().convert::<f32>();
    (data.try_to_vec::<f32>().unwrap(), shape)
}

/// Max |a - b| after checking the shapes agree; NaN anywhere counts as infinitely wrong.
pub fn max_abs_diff<const D: usize>(got: Tensor<D>, want: &(Vec<f32>, Vec<usize>)) -> f32 {
    let (g, shape) = values(got);
    assert_eq!(shape, want.1, "shape");
    g.iter()
        .zip(&want.0)
        .map(|(a, b)| {
            if a.is_finite() {
                (a - b).abs()
            } else {
                f32::INFINITY
            }
        })
        .fold(0.0, f32::max)
}

/// diffusers' / transformers' key list of a full-size component (`tests/fixtures/configs/
/// {model}/keys.json`, exported by the generator): sorted `(key, shape)` pairs and the
/// parameter count.
pub fn full_size_keys(model: &str, component: &str) -> (Vec<(String, Vec<usize>)>, u64) {
    let path = fixtures().join("configs").join(model).join("keys.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let entry = &json[component];
    let mut keys: Vec<(String, Vec<usize>)> = entry["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let shape = e[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (e[0].as_str().unwrap().to_string(), shape)
        })
        .collect();
    keys.sort();
    (keys, entry["parameters"].as_u64().unwrap())
}

/// Asserts a module's PyTorch-named keys equal `want` (listing the differences), and returns
/// its parameter count.
pub fn assert_same_keys(
    mut got: Vec<(String, Vec<usize>)>,
    want: &[(String, Vec<usize>)],
    what: &str,
) -> u64 {
    got.sort();
    let missing: Vec<_> = want.iter().filter(|k| !got.contains(k)).collect();
    let extra: Vec<_> = got.iter().filter(|k| !want.contains(k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}\nextra {extra:?}"
    );
    got.iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}

/// An image file as 8-bit RGB.
pub fn load_rgb(path: &std::path::Path) -> RgbImage {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    RgbImage {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.into_raw(),
    }
}

/// A mask file as 8-bit luminance.
pub fn load_mask(path: &std::path::Path) -> MaskImage {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8();
    MaskImage {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.into_raw(),
    }
}

/// The end-to-end parity cases (`tests/fixtures/reference/e2e`: SPEC.md written out in Python
/// on diffusers components) whose name passes `wanted`, on one device: hole pixels within 1
/// level of 255 of the reference, known pixels byte-identical, the padding-leak case far from
/// the leaky output. Returns how many cases ran.
pub fn check_e2e_cases(device_name: &str, device: &Device, wanted: impl Fn(&str) -> bool) -> usize {
    use nullpaint::pipeline::{FolderSource, InpaintOptions, Progress, StableDiffusion};
    use std::ops::ControlFlow;

    let dir = fixtures().join("reference/e2e");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut models = std::collections::HashMap::new();
    let mut ran = 0;
    for (name, case) in cases.as_object().unwrap() {
        if !wanted(name) {
            continue;
        }
        ran += 1;
        let model = case["model"].as_str().unwrap();
        let sd = models.entry(model.to_string()).or_insert_with(|| {
            StableDiffusion::load(&FolderSource::new(fixtures().join(model)).unwrap(), device)
                .unwrap()
        });
        let image = load_rgb(&dir.join(format!("{name}.image.png")));
        let mask = load_mask(&dir.join(format!("{name}.mask.png")));
        let want = load_rgb(&dir.join(format!("{name}.out.png")));
        let options = InpaintOptions {
            paste_back: true,
            preview: true,
            mode: case["mode"].as_str().unwrap().parse().unwrap(),
            ..case_options(case)
        };
        let mut steps_seen = 0;
        let got = sd
            .inpaint(&image, &mask, &options, &mut |p| {
                if let Progress::Step {
                    step,
                    total,
                    preview,
                    ..
                } = p
                {
                    steps_seen = step;
                    assert_eq!(total, options.steps);
                    assert!(preview.is_some());
                }
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(steps_seen, options.steps);
        let (mut max_hole, mut known_diff, mut holes) = (0u8, 0usize, 0usize);
        for i in 0..image.width * image.height {
            for c in 0..3 {
                let d = got.data[i * 3 + c].abs_diff(want.data[i * 3 + c]);
                if mask.is_hole(i) {
                    max_hole = max_hole.max(d);
                    holes += 1;
                } else if got.data[i * 3 + c] != image.data[i * 3 + c] {
                    known_diff += 1;
                }
            }
        }
        eprintln!(
            "e2e {name} on {device_name}: max hole diff {max_hole}/255 over {} pixels",
            holes / 3
        );
        assert!(holes > 0);
        assert!(
            max_hole <= 1,
            "{name} on {device_name}: hole differs by {max_hole} levels"
        );
        assert_eq!(
            known_diff, 0,
            "{name} on {device_name}: known pixels changed"
        );
        // The padding leak case: the old padding (edge pixels counted as known) copied the
        // object under a hole at the edge back into the result; the generator keeps that
        // output to prove the case would show it.
        let leaky = dir.join(format!("{name}.leaky.png"));
        if leaky.exists() {
            let leaky = load_rgb(&leaky);
            let leak = (0..image.width * image.height)
                .filter(|&i| mask.is_hole(i))
                .flat_map(|i| (0..3).map(move |c| i * 3 + c))
                .map(|j| got.data[j].abs_diff(leaky.data[j]))
                .max()
                .unwrap();
            eprintln!("e2e {name}: the leaky padding would differ by {leak}/255");
            assert!(
                leak > 10,
                "{name}: the result is as close to the leaky padding's as to the reference ({leak})"
            );
        }
    }
    ran
}

/// The options every reference case names (prompt, negative prompt, steps, guidance, seed,
/// dilation), the rest at their defaults.
pub fn case_options(case: &serde_json::Value) -> nullpaint::pipeline::InpaintOptions {
    nullpaint::pipeline::InpaintOptions {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance_scale"].as_f64().unwrap() as f32,
        seed: case["seed"].as_u64().unwrap(),
        dilation: case["dilation"].as_u64().unwrap() as usize,
        ..Default::default()
    }
}
