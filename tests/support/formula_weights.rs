//! The formula weights of tests/fixtures/generate_metrics.py, repeated bit for bit: the same
//! operations in the same order give the same f32 values, so a metric network built from them in
//! Rust is the one the generator ran in PyTorch. Shared (through `#[path]`) by
//! crates/nullpaint/tests/metrics.rs (parity with pytorch-fid and the lpips package) and
//! crates/nullpaint-cli/tests/eval.rs (weight files for `nullpaint eval`). Needs `serde_json`.
#![allow(dead_code)]

/// splitmix64's output function (wrapping arithmetic), the generator's `splitmix64`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator's `uniform`: element k of `seed` in [-0.5, 0.5), from
/// `splitmix64((seed << 32) + k)` modulo 2^64.
pub fn uniform(seed: u64, count: usize) -> Vec<f64> {
    (0..count as u64)
        .map(|k| (splitmix64(k.wrapping_add(seed << 32)) >> 11) as f64 * 2f64.powi(-53) - 0.5)
        .collect()
}

/// The generator's `fnv1a64` of a key's name: the seed of that key's weights.
pub fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The generator's `formula_weight` (InceptionV3): He-uniform convolutions, batch norms near the
/// identity, everything else 0.2 u.
pub fn inception_weight(key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniform(fnv1a64(key), n);
    if key.ends_with("conv.weight") {
        let a = 2.0 * (6.0 / fan_in(shape) as f64).sqrt();
        u.iter().map(|v| (v * a) as f32).collect()
    } else if key.ends_with("bn.weight") {
        u.iter().map(|v| (1.0 + 0.2 * v) as f32).collect()
    } else if key.ends_with("bn.running_var") {
        u.iter().map(|v| (1.0 + 0.4 * (v + 0.5)) as f32).collect()
    } else {
        u.iter().map(|v| (0.2 * v) as f32).collect()
    }
}

/// The generator's `lpips_formula` (LPIPS, AlexNet v0.1): He-uniform convolutions, non-negative
/// `lin` weights (as trained ones), everything else 0.2 u.
pub fn lpips_weight(key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniform(fnv1a64(&format!("lpips.{key}")), n);
    if key.starts_with("conv") && key.ends_with(".weight") {
        let a = 2.0 * (6.0 / fan_in(shape) as f64).sqrt();
        u.iter().map(|v| (v * a) as f32).collect()
    } else if key.starts_with("lin") {
        u.iter().map(|v| (0.1 * (v + 0.5)) as f32).collect()
    } else {
        u.iter().map(|v| (0.2 * v) as f32).collect()
    }
}

fn fan_in(shape: &[usize]) -> usize {
    shape[1..].iter().product()
}

/// A safetensors file (F32) of `keys`, each tensor's values from `weight(key, shape)`.
pub fn safetensors_file(
    keys: &[(String, Vec<usize>)],
    weight: impl Fn(&str, &[usize]) -> Vec<f32>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (key, shape) in keys {
        let start = data.len();
        data.extend(weight(key, shape).iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            key.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    file
}
