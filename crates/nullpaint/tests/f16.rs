//! f16 on the GPU: the wgpu device configured for f16 before any tensor exists (this test
//! binary is its own process, so the process-wide device can be), f16 weights kept in f16, and
//! the models against the f32 diffusers references with f16 tolerances. Also the two places f16
//! overflows when done naively: attention scores (we widen to f32) and norm statistics (Burn
//! widens them).
//!
//! Needs an adapter with `shader-f16` (lavapipe has it); skipped with a warning otherwise,
//! failed under `NULLPAINT_REQUIRE_WGPU=1` when there is no adapter at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../../tests/support/formula_weights.rs"]
mod formula_weights;

use std::ops::ControlFlow;
use std::sync::OnceLock;

use burn::tensor::{DType, Device, Tensor, TensorData};
use nullpaint::device::Precision;
use nullpaint::models::clip::{ClipTextConfig, ClipTextModel};
use nullpaint::models::unet_2d::UNet2DConditionConfig;
use nullpaint::models::vae::AutoencoderKLConfig;
use nullpaint::pipeline::{FolderSource, InpaintOptions, MaskImage, RgbImage, StableDiffusion};
use nullpaint::weights::{KeyMap, SafetensorsFile, load_module};

/// The wgpu device in f16, or None (with a warning) when it cannot run f16.
fn f16_device() -> Option<Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let (mut device, info) = common::wgpu_or_skip(nullpaint::device::wgpu())?;
            if !info.shader_f16 {
                eprintln!("WARNING: f16 tests skipped: {info} has no shader-f16");
                return None;
            }
            let chosen =
                nullpaint::device::configure_precision(&mut device, Some(&info), Precision::F16)
                    .unwrap();
            assert_eq!(chosen, Precision::F16);
            eprintln!("f16 device: {info}");
            Some(device)
        })
        .clone()
}

/// max |got - want| relative to max |want|.
fn relative<const D: usize>(got: Tensor<D>, want: &(Vec<f32>, Vec<usize>)) -> f32 {
    assert_eq!(got.dtype(), DType::F16, "the model must run in f16");
    let scale = want.0.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    common::max_abs_diff(got, want) / scale
}

#[test]
fn f16_precision_needs_shader_f16_and_cpu_stays_f32() {
    let mut cpu = nullpaint::device::cpu();
    let err = nullpaint::device::configure_precision(&mut cpu, None, Precision::F16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shader-f16") && err.contains("CPU"), "{err}");
    let auto = nullpaint::device::configure_precision(&mut cpu, None, Precision::Auto).unwrap();
    assert_eq!(auto, Precision::F32);
    // A software adapter with shader-f16 still gets f32 by default (it is faster there).
    let lavapipe = nullpaint::device::AdapterInfo {
        name: "llvmpipe".into(),
        backend: "Vulkan".into(),
        device_type: "Cpu".into(),
        driver: String::new(),
        shader_f16: true,
        max_buffer_size: 1 << 31,
        max_storage_buffer_binding_size: 1 << 27,
    };
    let auto =
        nullpaint::device::configure_precision(&mut cpu, Some(&lavapipe), Precision::Auto).unwrap();
    assert_eq!(auto, Precision::F32);
}

#[test]
fn f16_attention_scores_that_overflow_f16_stay_exact() {
    let Some(device) = f16_device() else { return };
    // q.k = 64 * 40 * 40 = 102400 > 65504 (f16 max): naive f16 scores are inf, the softmax NaN.
    let (b, h, n, d) = (1, 2, 8, 64);
    let values: Vec<f32> = (0..b * h * n * d)
        .map(|i| if i % 7 == 0 { 39.0 } else { 40.0 })
        .collect();
    let v: Vec<f32> = (0..b * h * n * d).map(|i| (i % 13) as f32 / 13.0).collect();
    let make = |x: &Vec<f32>, dev: &Device| {
        Tensor::<4>::from_data(TensorData::new(x.clone(), [b, h, n, d]), dev)
    };
    let cpu = nullpaint::device::cpu();
    let want = common::values(nullpaint::models::attention::scaled_dot_product_attention(
        make(&values, &cpu),
        make(&values, &cpu),
        make(&v, &cpu),
    ));
    let got = nullpaint::models::attention::scaled_dot_product_attention(
        make(&values, &device),
        make(&values, &device),
        make(&v, &device),
    );
    let diff = relative(got, &want);
    eprintln!("attention with scores above the f16 range: relative max |diff| {diff:.3e}");
    assert!(diff < 1e-2, "{diff}");
}

#[test]
fn f16_group_norm_statistics_do_not_overflow() {
    let Some(device) = f16_device() else { return };
    // Values around 300 (exact in f16: steps of 0.25): a group's sum (4096 x 300 = 1.2e6) and
    // their squares (9e4) overflow f16 (max 65504) unless the statistics are widened.
    let (c, hw) = (8, 32);
    let x: Vec<f32> = (0..c * hw * hw)
        .map(|i| 300.0 + ((i * 37) % 41) as f32 * 0.25)
        .collect();
    let norm = |dev: &Device| {
        let gn = burn::nn::GroupNormConfig::new(2, c).init(dev);
        gn.forward(Tensor::<4>::from_data(
            TensorData::new(x.clone(), [1, c, hw, hw]),
            dev,
        ))
    };
    let want = common::values(norm(&nullpaint::device::cpu()));
    let diff = relative(norm(&device), &want);
    eprintln!("group norm of values near 300: relative max |diff| {diff:.3e}");
    assert!(diff < 1e-2, "{diff}");
}

/// The first group norm of a 512x512 SD decode's last up block: 256 channels at 512x512 are
/// 128 MiB in f16 (lavapipe's and browsers' largest buffer) and 256 MiB once widened for the
/// statistics. `ops::group_norm` splits such a call into slices of whole groups; it must give
/// the one-call result (the CPU backend's, in f32) to f16 precision, gamma / beta and SiLU
/// included.
#[test]
fn f16_group_norm_wider_than_the_largest_buffer_once_widened() {
    let Some(device) = f16_device() else { return };
    let limit = nullpaint::kernel::max_buffer_bytes(&device).unwrap();
    let (groups, c, h, w) = (32, 256, 512, 512);
    let elements = c * h * w;
    if elements as u64 * 4 <= limit {
        eprintln!(
            "WARNING: this device's buffers ({limit} bytes) hold the widened tensor; nothing to split"
        );
    }
    let x: Vec<f32> = (0..elements)
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0 + (i / (h * w)) as f32 * 0.01)
        .collect();
    let gamma: Vec<f32> = (0..c).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
    let beta: Vec<f32> = (0..c).map(|i| (i % 5) as f32 * 0.2 - 0.4).collect();
    let norm = |dev: &Device| {
        let mut gn = burn::nn::GroupNormConfig::new(groups, c)
            .with_epsilon(1e-6)
            .init(dev);
        let param = |v: &Vec<f32>| {
            Some(burn::module::Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(v.clone(), [c]),
                dev,
            )))
        };
        gn.gamma = param(&gamma);
        gn.beta = param(&beta);
        let x = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, c, h, w]), dev);
        nullpaint::models::ops::group_norm(&gn, x, true)
    };
    let want = common::values(norm(&nullpaint::device::cpu()));
    let diff = relative(norm(&device), &want);
    eprintln!(
        "group norm of [1, {c}, {h}, {w}] f16 (largest buffer {limit} bytes): relative max |diff| {diff:.3e}"
    );
    assert!(diff < 1e-2, "{diff}");
}

#[test]
fn f16_models_match_diffusers_within_f16_precision() {
    let Some(device) = f16_device() else { return };
    let fixtures = common::fixtures();

    // CLIP text encoder (sd1: f16 weights stored, loaded as they are)
    let folder = fixtures.join("tiny-sd1/text_encoder");
    let config = ClipTextConfig::from_json(
        "config.json",
        &std::fs::read(folder.join("config.json")).unwrap(),
    )
    .unwrap();
    let weights = SafetensorsFile::open(folder.join("model.safetensors")).unwrap();
    let clip = load_module(
        config.init(&device),
        &weights,
        &ClipTextModel::key_map(),
        &device,
    )
    .unwrap();
    let reference = common::Reference::open("clip.safetensors");
    let d = relative(
        clip.forward(reference.ids("sd1.input_ids", &device)),
        &reference.f32("sd1.last_hidden_state"),
    );
    eprintln!("f16 clip sd1: relative max |diff| {d:.3e}");
    assert!(d < 2e-2, "clip {d}");

    // UNet (sd2 style: f32 weights stored, converted to f16 while loading; upcast_attention)
    for (name, folder) in [("sd1", "tiny-sd1/unet"), ("sd2", "tiny-sd2/unet")] {
        let folder = fixtures.join(folder);
        let config = UNet2DConditionConfig::from_json(
            "config.json",
            &std::fs::read(folder.join("config.json")).unwrap(),
        )
        .unwrap();
        let weights =
            SafetensorsFile::open(folder.join("diffusion_pytorch_model.safetensors")).unwrap();
        let unet = load_module(
            config.init(&device).unwrap(),
            &weights,
            &KeyMap::default(),
            &device,
        )
        .unwrap();
        let reference = common::Reference::open("unet.safetensors");
        let sample = reference.tensor::<4>(&format!("{name}.sample"), &device);
        let context = reference.tensor::<3>(&format!("{name}.encoder_hidden_states"), &device);
        for t in [1, 999] {
            let d = relative(
                unet.forward(sample.clone(), &[t as f32], context.clone()),
                &reference.f32(&format!("{name}.t{t}")),
            );
            eprintln!("f16 unet {name} t={t}: relative max |diff| {d:.3e}");
            // 1.6e-3 (sd1) / 2.6e-3 (sd2) on lavapipe with convolutions summed in f32; 7.7e-3 to
            // 8.7e-3 when Burn's direct kernel summed them in f16.
            assert!(d < 6e-3, "unet {name} t={t}: {d}");
        }
    }

    // VAE
    let folder = fixtures.join("tiny-sd1/vae");
    let config = AutoencoderKLConfig::from_json(
        "config.json",
        &std::fs::read(folder.join("config.json")).unwrap(),
    )
    .unwrap();
    let weights =
        SafetensorsFile::open(folder.join("diffusion_pytorch_model.safetensors")).unwrap();
    let vae = load_module(
        config.init(&device).unwrap(),
        &weights,
        &KeyMap::default(),
        &device,
    )
    .unwrap();
    let reference = common::Reference::open("vae.safetensors");
    let mean = relative(
        vae.encode(reference.tensor::<4>("sd1.image", &device)).mean,
        &reference.f32("sd1.mean"),
    );
    let decoded = relative(
        vae.decode(reference.tensor::<4>("sd1.latent", &device)),
        &reference.f32("sd1.decoded"),
    );
    eprintln!("f16 vae sd1: relative max |diff| mean {mean:.3e}, decode {decoded:.3e}");
    // 3.0e-3 / 4.1e-3 on lavapipe; 8.2e-3 / 1.1e-2 with convolutions summed in f16.
    assert!(mean < 6e-3 && decoded < 6e-3, "vae {mean} {decoded}");
}

#[test]
fn f16_pipeline_stays_close_to_the_f32_reference() {
    let Some(device) = f16_device() else { return };
    let dir = common::fixtures().join("reference/e2e");
    let name = "sd1_guided_64x64";
    let image = ::image::open(dir.join(format!("{name}.image.png")))
        .unwrap()
        .to_rgb8();
    let mask = ::image::open(dir.join(format!("{name}.mask.png")))
        .unwrap()
        .to_luma8();
    let want = ::image::open(dir.join(format!("{name}.out.png")))
        .unwrap()
        .to_rgb8();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let image = RgbImage {
        width: w,
        height: h,
        data: image.into_raw(),
    };
    let mask = MaskImage {
        width: w,
        height: h,
        data: mask.into_raw(),
    };
    let sd = StableDiffusion::load(
        &FolderSource::new(common::fixtures().join("tiny-sd1")).unwrap(),
        &device,
    )
    .unwrap();
    let options = InpaintOptions {
        prompt: "a red apple on a wooden table".into(),
        negative_prompt: "blurry".into(),
        steps: 4,
        guidance_scale: 7.5,
        seed: 42,
        dilation: 2,
        ..Default::default()
    };
    let out = sd
        .inpaint(&image, &mask, &options, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let (mut max, mut sum, mut holes) = (0u8, 0f64, 0usize);
    for i in 0..w * h {
        for c in 0..3 {
            let (a, b) = (out.data[i * 3 + c], want.as_raw()[i * 3 + c]);
            if mask.is_hole(i) {
                max = max.max(a.abs_diff(b));
                sum += a.abs_diff(b) as f64;
                holes += 1;
            } else {
                assert_eq!(
                    a,
                    image.data[i * 3 + c],
                    "known pixels are pasted back exactly"
                );
            }
        }
    }
    let mean = sum / holes.max(1) as f64;
    eprintln!("f16 pipeline {name}: hole max |diff| {max}/255, mean {mean:.2}/255");
    // 2/255, mean 0.23 on lavapipe; 8/255, mean 1.19 with convolutions summed in f16.
    assert!(mean < 0.6 && max <= 4, "mean {mean}, max {max}");
}

/// Uniform noise in [-1.7, 1.7) (standard deviation ~1) times `scale` from a seed, rounded to
/// f16.
fn f16_noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    formula_weights::uniform(seed, n)
        .into_iter()
        .map(|u| half::f16::from_f64(u * 3.4 * scale as f64).to_f32())
        .collect()
}

/// The convolution from its definition in f64: `x` `[b, c, h, w]` repeated `up` times nearest,
/// zero-padded by `pad = [top, bottom, left, right]`, `weight` `[o, c, kh, kw]` at `stride`.
fn conv_f64(
    x: &[f32],
    [b, c, h, w]: [usize; 4],
    weight: &[f32],
    [o, kh, kw]: [usize; 3],
    bias: &[f32],
    stride: usize,
    [top, bottom, left, right]: [usize; 4],
    up: usize,
) -> (Vec<f32>, Vec<usize>) {
    let (uh, uw) = (h * up, w * up);
    let oh = (uh + top + bottom - kh) / stride + 1;
    let ow = (uw + left + right - kw) / stride + 1;
    let mut out = Vec::with_capacity(b * o * oh * ow);
    for n in 0..b {
        for oc in 0..o {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut sum = bias[oc] as f64;
                    for ic in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * stride + ky) as isize - top as isize;
                                let ix = (xo * stride + kx) as isize - left as isize;
                                if iy < 0 || ix < 0 || iy >= uh as isize || ix >= uw as isize {
                                    continue;
                                }
                                let (iy, ix) = (iy as usize / up, ix as usize / up);
                                sum += x[((n * c + ic) * h + iy) * w + ix] as f64
                                    * weight[((oc * c + ic) * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                    out.push(sum as f32);
                }
            }
        }
    }
    (out, vec![b, o, oh, ow])
}

/// Half-precision convolutions on the GPU sum in f32 (`models::conv_gemm`): within a few units of
/// f16's own rounding of the output, against an f64 loop. Burn 0.22's direct kernel (what runs
/// without tensor cores) sums in f16 and is ~12x over this bound for 4 608 products a sum
/// (0.105 on outputs up to ~4.5, 1 % rms). The cases are every shape the models use: 3x3
/// "same" (bias, time-embedding bias and residual), the VAE's stride-2 downsampler with its
/// (0, 1, 0, 1) padding on an odd size, the upsampler's 2x nearest + 3x3, a resnet's GroupNorm +
/// SiLU + 3x3, and a 1x1 projection; then the gathering in bands of one output row (which also
/// makes the upsampled and the normalised inputs band by band).
#[test]
fn f16_convolution_sums_in_f32() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use nullpaint::models::{conv_gemm, ops};
    let Some(device) = f16_device() else { return };

    let conv = |c: usize, o: usize, k: usize, stride: usize, pad: [usize; 4], seed: u64| {
        let weight = f16_noise(o * c * k * k, seed, 1.0 / ((c * k * k) as f32).sqrt());
        let bias = f16_noise(o, seed + 1, 0.5);
        let mut module: Conv2d = Conv2dConfig::new([c, o], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad[0], pad[2], pad[1], pad[3]))
            .init(&device);
        module.weight = burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(weight.clone(), [o, c, k, k]),
            &device,
        ));
        module.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(bias.clone(), [o]),
            &device,
        )));
        (module, weight, bias)
    };
    let check = |name: &str, got: Tensor<4>, want: &(Vec<f32>, Vec<usize>)| {
        assert_eq!(got.dims().to_vec(), want.1, "{name}");
        let diff = relative(got, want);
        eprintln!("{name}: max |diff| / max |want| = {diff:.2e} (f16 rounding: 4.9e-4)");
        assert!(diff < 2e-3, "{name}: {diff}");
    };

    // 3x3 "same" over 512 channels, with the time-embedding bias and the residual
    let (b, c, h, w, o) = (2, 512, 16, 16, 32);
    let x = f16_noise(b * c * h * w, 1, 1.0);
    let xt = || Tensor::<4>::from_data(TensorData::new(x.clone(), [b, c, h, w]), &device);
    let (module, weight, bias) = conv(c, o, 3, 1, [1; 4], 2);
    let want = conv_f64(&x, [b, c, h, w], &weight, [o, 3, 3], &bias, 1, [1; 4], 1);
    check("3x3 same", ops::conv2d(&module, xt()), &want);
    let temb = f16_noise(b * o, 3, 1.0);
    let residual = f16_noise(b * o * h * w, 4, 1.0);
    let mut fused_want = want.clone();
    for (i, v) in fused_want.0.iter_mut().enumerate() {
        *v += temb[i / (h * w)] + residual[i];
    }
    let fused = ops::conv2d_fused(
        &module,
        xt(),
        Some(Tensor::from_data(TensorData::new(temb, [b, o]), &device)),
        Some(Tensor::from_data(
            TensorData::new(residual, [b, o, h, w]),
            &device,
        )),
    );
    check("3x3 same + bias + residual", fused, &fused_want);
    let bands = conv_gemm::conv2d(
        &xt(),
        module.weight.val(),
        module.bias.as_ref().map(|b| b.val()),
        [1, 1],
        [1; 4],
        1,
    );
    check("3x3 same, one output row a band", bands, &want);

    // the VAE's downsampler: stride 2, padding (0, 1, 0, 1), odd sizes
    let (c, h, w) = (256, 17, 15);
    let x = f16_noise(c * h * w, 5, 1.0);
    let xt = || Tensor::<4>::from_data(TensorData::new(x.clone(), [1, c, h, w]), &device);
    let pad = [0, 1, 0, 1];
    let (module, weight, bias) = conv(c, o, 3, 2, pad, 6);
    let want = conv_f64(&x, [1, c, h, w], &weight, [o, 3, 3], &bias, 2, pad, 1);
    check("3x3 stride 2", ops::conv2d(&module, xt()), &want);
    let bands = conv_gemm::conv2d(
        &xt(),
        module.weight.val(),
        module.bias.as_ref().map(|b| b.val()),
        [2, 2],
        pad,
        1,
    );
    check("3x3 stride 2, one output row a band", bands, &want);

    // the upsampler: 2x nearest, then 3x3 "same"
    let (c, h, w) = (256, 8, 6);
    let x = f16_noise(c * h * w, 7, 1.0);
    let (module, weight, bias) = conv(c, o, 3, 1, [1; 4], 8);
    let want = conv_f64(&x, [1, c, h, w], &weight, [o, 3, 3], &bias, 1, [1; 4], 2);
    let xt = || Tensor::<4>::from_data(TensorData::new(x.clone(), [1, c, h, w]), &device);
    check(
        "2x nearest + 3x3",
        ops::upsample2x_conv2d(&module, xt()),
        &want,
    );
    let bands = conv_gemm::conv2d(
        &ops::Upsampled2x(xt()),
        module.weight.val(),
        module.bias.as_ref().map(|b| b.val()),
        [1, 1],
        [1; 4],
        1,
    );
    check("2x nearest + 3x3, one output row a band", bands, &want);

    // GroupNorm + SiLU + 3x3 "same" (a resnet's stage), the normalised input made band by band
    let (b, c, h, w, groups) = (2, 64, 11, 9, 32);
    let x = f16_noise(b * c * h * w, 11, 2.0);
    let xt = || Tensor::<4>::from_data(TensorData::new(x.clone(), [b, c, h, w]), &device);
    let (module, weight, bias) = conv(c, o, 3, 1, [1; 4], 12);
    let mut norm = burn::nn::GroupNormConfig::new(groups, c).init(&device);
    let (gamma, beta) = (f16_noise(c, 13, 1.0), f16_noise(c, 14, 0.5));
    norm.gamma = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(gamma.clone(), [c]),
        &device,
    )));
    norm.beta = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(beta.clone(), [c]),
        &device,
    )));
    // The definition in f64, its output rounded to f16 as the engine stores it.
    let per_group = c / groups * h * w;
    let mut normed = vec![0f32; x.len()];
    for (g, (xs, ys)) in x
        .chunks(per_group)
        .zip(normed.chunks_mut(per_group))
        .enumerate()
    {
        let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / per_group as f64;
        let var = xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / per_group as f64;
        for (i, (&v, y)) in xs.iter().zip(ys.iter_mut()).enumerate() {
            let ch = (g % groups) * (c / groups) + i / (h * w);
            let a = (v as f64 - mean) / (var + 1e-5).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
            *y = half::f16::from_f64(a / (1.0 + (-a).exp())).to_f32();
        }
    }
    let want = conv_f64(
        &normed,
        [b, c, h, w],
        &weight,
        [o, 3, 3],
        &bias,
        1,
        [1; 4],
        1,
    );
    check(
        "GroupNorm + SiLU + 3x3",
        ops::norm_conv2d(&norm, true, &module, xt(), None, None),
        &want,
    );
    let bands = conv_gemm::conv2d(
        &ops::Normalized::new(&norm, true, xt()),
        module.weight.val(),
        module.bias.as_ref().map(|b| b.val()),
        [1, 1],
        [1; 4],
        1,
    );
    check(
        "GroupNorm + SiLU + 3x3, one output row a band",
        bands,
        &want,
    );

    // a 1x1 projection
    let (c, h, w, o) = (640, 8, 8, 48);
    let x = f16_noise(b * c * h * w, 9, 1.0);
    let (module, weight, bias) = conv(c, o, 1, 1, [0; 4], 10);
    let want = conv_f64(&x, [b, c, h, w], &weight, [o, 1, 1], &bias, 1, [0; 4], 1);
    let got = ops::conv2d(
        &module,
        Tensor::from_data(TensorData::new(x, [b, c, h, w]), &device),
    );
    check("1x1", got, &want);
}

/// Activations held in pieces of rows (`conv_gemm::RowPieces`, the VAE decoder's way through its
/// largest stage): a convolution's output made in pieces is the whole output cut, and a VAE
/// resnet (GroupNorm statistics over all pieces, `conv1` reading across piece borders, the 1x1
/// shortcut piece by piece) gives what it gives on the whole input.
#[test]
fn f16_activations_in_pieces_match_whole_ones() {
    use nullpaint::models::conv_gemm::{self, RowPieces};
    use nullpaint::models::resnet::ResnetBlock2DConfig;
    let Some(device) = f16_device() else { return };
    let (b, c, h, w, o) = (1, 64, 12, 10, 32);
    let x = f16_noise(b * c * h * w, 21, 2.0);
    let xt = || Tensor::<4>::from_data(TensorData::new(x.clone(), [b, c, h, w]), &device);
    let data = |t: Tensor<4>| {
        let dims = t.dims().to_vec();
        let values = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        (values, dims)
    };

    // a 3x3 "same" convolution, its output in pieces of 2 rows (one band a row)
    let weight = Tensor::<4>::from_data(
        TensorData::new(f16_noise(o * c * 9, 22, 0.05), [o, c, 3, 3]),
        &device,
    );
    let bias = Tensor::<1>::from_data(TensorData::new(f16_noise(o, 23, 0.5), [o]), &device);
    let whole = data(conv_gemm::conv2d(
        &xt(),
        weight.clone(),
        Some(bias.clone()),
        [1, 1],
        [1; 4],
        conv_gemm::BAND_BYTES,
    ));
    let row = (b * o * w * 2) as u64;
    let x = xt();
    let pieces = conv_gemm::Conv::new(&x, weight, Some(bias), [1, 1], [1; 4], 1).in_pieces(2 * row);
    assert_eq!(pieces.len(), h / 2);
    let diff = relative(pieces.join(), &whole);
    eprintln!("3x3 in pieces of 2 rows: max |diff| / max |want| = {diff:.2e}");
    assert!(diff < 1e-3, "{diff}");

    // a VAE resnet with a shortcut (64 -> 32 channels) on pieces of 5, 4 and 3 rows
    let resnet = ResnetBlock2DConfig {
        in_channels: c,
        out_channels: o,
        temb_channels: None,
        groups: 32,
        eps: 1e-6,
        output_scale_factor: 1.0,
    }
    .init(&device);
    let whole = data(resnet.forward(xt(), None));
    let cut = RowPieces::new(vec![
        xt().narrow(2, 0, 5),
        xt().narrow(2, 5, 4),
        xt().narrow(2, 9, 3),
    ]);
    let diff = relative(resnet.forward_pieces(cut), &whole);
    eprintln!("resnet on 3 pieces: max |diff| / max |want| = {diff:.2e}");
    assert!(diff < 2e-3, "{diff}");
}
