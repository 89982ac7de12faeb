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
    match nullpaint::device::wgpu() {
        Ok((device, info)) => {
            eprintln!("wgpu adapter: {info}");
            out.push(("wgpu", device));
        }
        Err(e) => {
            if std::env::var("NULLPAINT_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("NULLPAINT_REQUIRE_WGPU=1 but {e}");
            }
            eprintln!(
                "WARNING: wgpu half of the test skipped: {e} (set NULLPAINT_REQUIRE_WGPU=1 to make this an error)"
            );
        }
    }
    out
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
