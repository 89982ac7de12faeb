//! `nullpaint bench`: the time of each stage of an inpaint and the peak memory, on a model folder
//! or on a full-size model with random weights, optionally next to PyTorch / diffusers doing the
//! same work in the same run (`tests/bench/sd_torch.py`, spawned after ours, never alongside).
//!
//! Stages, in this order (each time includes reading the result back to the host: wgpu is lazy,
//! and the read-back is where the wait happens):
//! 1. model load (`StableDiffusion::load`);
//! 2. tokenizer + text encoder on [negative, prompt]: first call, then steady state;
//! 3. one guided UNet step (batch 2 at the latent size of `--size`): first call (on wgpu it
//!    compiles the shaders and, with autotune, tunes the kernels), then `--iters` calls (median,
//!    min);
//! 4. VAE encode of a `--size` square picture (the posterior mean): first call, then steady state;
//! 5. VAE decode of that latent: first call, then steady state;
//! 6. the whole `StableDiffusion::inpaint` (a centred square hole of half the side, `--steps`
//!    steps, guidance 7.5, one pass over the whole picture).
//!
//! First calls depend on the order: a kernel compiled by one stage is reused by the next ones.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use nullpaint::models::conv_gemm::{self, ConvRoute};
use nullpaint::models::unet_2d::UNet2DConditionConfig;
use nullpaint::models::vae::AutoencoderKLConfig;
use nullpaint::pipeline::{
    FolderSource, InpaintOptions, MaskImage, Progress, RegionMode, RgbImage, StableDiffusion,
};
use serde_json::{Map, Value, json};

use crate::engine::open_device;
use crate::hub;
use crate::options::{Backend, PrecisionArg, stage_name};

const PROMPT: &str = "a red brick wall with a wooden door";
const NEGATIVE_PROMPT: &str = "blurry";
const GUIDANCE_SCALE: f32 = 7.5;
const DILATION: usize = 2;
const SEED: u64 = 0;
const MAX_SIZE: usize = 4096;
/// The stdlib script that writes a random-weight folder, and the PyTorch side.
const MAKE_RANDOM: &str = "tests/browser/make_full_size_model.py";
const TORCH_SCRIPT: &str = "tests/bench/sd_torch.py";

/// The JSON key of each stage's seconds and its label in the tables. The PyTorch side uses the
/// same keys.
const STAGES: &[(&str, &str)] = &[
    ("load_s", "model load"),
    ("text_encoder_first_s", "text encoder, first call"),
    ("text_encoder_s", "text encoder (2 prompts)"),
    ("unet_first_s", "UNet guided step, first call"),
    ("unet_median_s", "UNet guided step, median"),
    ("unet_min_s", "UNet guided step, min"),
    ("vae_encode_first_s", "VAE encode, first call"),
    ("vae_encode_s", "VAE encode"),
    ("vae_decode_first_s", "VAE decode, first call"),
    ("vae_decode_s", "VAE decode"),
    ("inpaint_s", "whole inpaint"),
    ("load_inpaint_s", "load + whole inpaint"),
];

/// Adds `load_inpaint_s` (the model load plus the whole inpaint: what a one-shot command costs)
/// to a side's `seconds`.
fn add_load_inpaint(seconds: &mut Map<String, Value>) {
    let get = |key: &str| seconds.get(key).and_then(Value::as_f64);
    if let (Some(load), Some(inpaint)) = (get("load_s"), get("inpaint_s")) {
        seconds.insert("load_inpaint_s".into(), json!(load + inpaint));
    }
}

const EXAMPLE: &str = "Examples:
  nullpaint bench --model tests/fixtures/tiny-sd1 --size 64 --steps 2
  nullpaint bench --random sd15 --size 256 --steps 2 --backend cpu --torch
  nullpaint bench --random sd15 --backend wgpu --precision f16 --steps 50 --json

--random writes the folder once with python3 (stdlib only) from the repository's
tests/browser/make_full_size_model.py; run the command from the repository.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLE)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["model", "random"])))]
pub struct BenchArgs {
    /// A diffusers folder, or a Hugging Face repo id.
    #[arg(long)]
    model: Option<String>,
    /// A full-size model with random f16 weights from the committed configs
    /// (tests/fixtures/configs), written once into ~/.cache/nullpaint/NAME-random (sd15: 2.1 GB,
    /// sd21: 2.6 GB). Speed and memory are the real model's; the pictures are noise.
    #[arg(long, value_enum)]
    random: Option<RandomModel>,
    /// Side of the square picture in pixels: a multiple of the model's size multiple (64 for
    /// SD 1.x / 2.x).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Denoising steps of the whole inpaint.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Steady-state UNet steps timed after the first call (median and min reported).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Time only the model load and the whole inpaint (stages 2 to 5 skipped): the peak memory
    /// of a whole inpaint, on a device too slow to run every stage.
    #[arg(long)]
    inpaint_only: bool,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Float precision (auto: f16 on a hardware GPU with shader-f16, f32 elsewhere).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    precision: PrecisionArg,
    /// Which convolution GPU devices run (the CPU backend has its own): auto = the engine's
    /// choice (matrix products summing in f32 for f16 activations, Burn's kernel for f32);
    /// gemm = matrix products for every precision; burn = Burn's (autotuned) kernel for every
    /// precision, which sums f16 in f16 on WGSL devices. To time the two side by side.
    #[arg(long, value_enum, default_value_t = ConvArg::Auto)]
    conv: ConvArg,
    /// Then run the same stages in PyTorch / diffusers (tests/bench/sd_torch.py) with this
    /// Python (default: $NULLPAINT_TORCH_PYTHON, else .venv-ref/bin/python in the repository)
    /// and print the ratios nullpaint / PyTorch.
    #[arg(long, value_name = "PYTHON", num_args = 0..=1)]
    torch: Option<Option<PathBuf>>,
    /// Where PyTorch runs: auto = cuda when nullpaint ran on a hardware GPU, else cpu (fp32,
    /// as many threads as nullpaint used).
    #[arg(long, value_enum, default_value_t = TorchDevice::Auto)]
    torch_device: TorchDevice,
    /// Print the figures as one JSON line on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Print a block ready for BENCHMARKS.md (date, machine, command, table rows).
    #[arg(long)]
    markdown: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ConvArg {
    /// f16: matrix products summing in f32; f32: Burn's kernel
    Auto,
    /// Matrix products for every precision
    Gemm,
    /// Burn's kernel for every precision
    Burn,
}

impl From<ConvArg> for ConvRoute {
    fn from(arg: ConvArg) -> Self {
        match arg {
            ConvArg::Auto => ConvRoute::Auto,
            ConvArg::Gemm => ConvRoute::Gemm,
            ConvArg::Burn => ConvRoute::Burn,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RandomModel {
    /// Stable Diffusion 1.5 (UNet 860M, CLIP ViT-L/14, 512 px)
    Sd15,
    /// Stable Diffusion 2.1 (UNet 865M, OpenCLIP ViT-H/14 text, 768 px, v-prediction)
    Sd21,
}

impl RandomModel {
    fn name(self) -> &'static str {
        match self {
            RandomModel::Sd15 => "sd15",
            RandomModel::Sd21 => "sd21",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum TorchDevice {
    Auto,
    Cpu,
    Cuda,
}

/// What one side measured.
struct Run {
    seconds: Map<String, Value>,
    unet_s: Vec<f64>,
    peak_rss_bytes: Option<u64>,
    /// The pools' peak: reserved bytes ([`GpuMemory::peak`]).
    gpu_bytes: Option<u64>,
    /// The largest bytes in use (held by tensors) seen ([`GpuMemory::in_use_peak`]).
    gpu_in_use_bytes: Option<u64>,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    // 1. everything the user gave, checked before any model work
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if args.iters == 0 && !args.inpaint_only {
        bail!("--iters must be at least 1");
    }
    if args.size == 0 || args.size > MAX_SIZE {
        bail!(
            "--size must be between 1 and {MAX_SIZE} pixels, got {}",
            args.size
        );
    }
    let root = repo_root();
    let torch = match &args.torch {
        None => None,
        Some(python) => Some(torch_python(python.as_deref(), root.as_deref())?),
    };
    let (folder, model_label) = match (&args.model, args.random) {
        (_, Some(random)) => {
            let folder = random_model(random, root.as_deref())?;
            let label = format!(
                "{} architecture, random f16 weights ({})",
                random.name(),
                folder.display()
            );
            (folder, label)
        }
        (Some(model), None) => {
            let folder = hub::resolve(model)?;
            if folder.is_file() {
                bail!(
                    "bench takes a diffusers folder; {} is a single-file checkpoint",
                    folder.display()
                );
            }
            (folder, model.clone())
        }
        (None, None) => bail!("give --model DIR|REPO_ID or --random sd15|sd21"),
    };
    let (unet_config, vae_factor, multiple) = read_configs(&folder)?;
    if !args.size.is_multiple_of(multiple) {
        bail!(
            "--size {} is not a multiple of {multiple}, the size multiple of {} (VAE factor x 2^UNet down-samplings)",
            args.size,
            folder.display()
        );
    }

    // 2. nullpaint
    let (selected, dtype) = open_device(args.backend, args.precision)?;
    let conv_route = ConvRoute::from(args.conv);
    if selected.adapter.is_none() && conv_route != ConvRoute::Auto {
        eprintln!(
            "note: --conv {} changes nothing on the CPU backend (it has its own convolutions)",
            conv_route.name()
        );
    }
    conv_gemm::set_route(conv_route);
    let hardware_gpu = selected
        .adapter
        .as_ref()
        .is_some_and(|a| a.device_type != "Cpu");
    let threads = cpu_threads();
    let machine = machine();
    let date = today();
    eprintln!("device: {} ({dtype})", selected.description);
    eprintln!(
        "model: {model_label}; {0}x{0}, {1} steps, {2} timed UNet steps",
        args.size, args.steps, args.iters
    );
    // Both sides load from the page cache: the first reader of a cold file would pay the disk.
    read_through(&folder);
    let started = unix_now();
    let ours = run_nullpaint(
        &args,
        &folder,
        &unet_config,
        vae_factor,
        &selected.device,
        selected.adapter.as_ref(),
    )?;
    let finished = unix_now();

    let mut report = json!({
        "tool": "nullpaint",
        "version": env!("CARGO_PKG_VERSION"),
        "date": date,
        "command": command_line(),
        "machine": machine,
        "model": model_label,
        "size": args.size,
        "steps": args.steps,
        "iters": args.iters,
        "backend": selected.description,
        "precision": dtype.to_string(),
        "conv_route": conv_route.name(),
        "threads": if selected.adapter.is_none() { json!(threads) } else { Value::Null },
        "seconds": ours.seconds,
        "unet_s": ours.unet_s,
        "peak_rss_bytes": ours.peak_rss_bytes,
        "gpu_memory_bytes": ours.gpu_bytes,
        "gpu_in_use_bytes": ours.gpu_in_use_bytes,
        "started_unix": started,
        "finished_unix": finished,
        "torch": Value::Null,
        "ratios": Value::Null,
    });

    // 3. PyTorch, after ours: the same stages on the same folder
    let theirs = match torch {
        None => None,
        Some((python, script)) => {
            let device = match args.torch_device {
                TorchDevice::Cpu => "cpu",
                TorchDevice::Cuda => "cuda",
                TorchDevice::Auto if hardware_gpu => "cuda",
                TorchDevice::Auto => "cpu",
            };
            let result = run_torch(&python, &script, &args, &folder, device, dtype, threads);
            match result {
                Ok(mut v) => {
                    if let Some(seconds) = v["seconds"].as_object_mut() {
                        add_load_inpaint(seconds);
                    }
                    Some(v)
                }
                Err(e) => {
                    // Our figures are worth printing even when the comparison failed.
                    print_report(&args, &report, None)?;
                    return Err(e.context(format!(
                        "the PyTorch side ({} {}) failed; nullpaint's figures are above",
                        python.display(),
                        script.display()
                    )));
                }
            }
        }
    };
    if let Some(theirs) = &theirs {
        report["torch"] = theirs.clone();
        report["ratios"] = ratios(&report, theirs);
    }
    print_report(&args, &report, theirs.as_ref())
}

/// The UNet config (latent channels), the VAE factor and the size multiple, read before the
/// weights so that a bad `--size` fails at once.
fn read_configs(folder: &Path) -> Result<(UNet2DConditionConfig, usize, usize)> {
    let read = |part: &str| -> Result<(String, Vec<u8>)> {
        let path = folder.join(part).join("config.json");
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {} (is this a diffusers folder?)", path.display()))?;
        Ok((path.display().to_string(), bytes))
    };
    let (name, bytes) = read("unet")?;
    let unet = UNet2DConditionConfig::from_json(&name, &bytes)?;
    let (name, bytes) = read("vae")?;
    let vae = AutoencoderKLConfig::from_json(&name, &bytes)?;
    let factor = vae.downscale_factor();
    let multiple = factor << unet.num_downsamplings();
    Ok((unet, factor, multiple))
}

fn run_nullpaint(
    args: &BenchArgs,
    folder: &Path,
    unet_config: &UNet2DConditionConfig,
    vae_factor: usize,
    device: &Device,
    adapter: Option<&nullpaint::device::AdapterInfo>,
) -> Result<Run> {
    let mut rec = Recorder {
        seconds: Map::new(),
        gpu: GpuMemory::start(device),
    };
    let record = |rec: &mut Recorder, key: &str, start: Instant| rec.record(key, start, device);

    // 1. load
    let t = Instant::now();
    let source = FolderSource::new(folder)?;
    let mut sd = StableDiffusion::load(&source, device)
        .with_context(|| format!("loading the model from {}", folder.display()))?;
    // As the inpaint command: VAE tiles only past the adapter's storage binding limit.
    sd.vae_tiling = nullpaint::models::vae_tiling::VaeTiling::for_adapter(adapter);
    record(&mut rec, "load_s", t);

    let unet_s = if args.inpaint_only {
        vec![]
    } else {
        time_stages(args, &sd, unet_config, vae_factor, device, &mut rec)?
    };

    // 6. the whole inpaint
    let options = InpaintOptions {
        prompt: PROMPT.into(),
        negative_prompt: NEGATIVE_PROMPT.into(),
        steps: args.steps,
        guidance_scale: GUIDANCE_SCALE,
        seed: SEED,
        dilation: DILATION,
        region: RegionMode::Whole,
        ..InpaintOptions::default()
    };
    let image = test_image(args.size);
    let mask = test_mask(args.size);
    let t = Instant::now();
    let gpu = &rec.gpu;
    sd.inpaint(&image, &mask, &options, &mut |progress| {
        // Where the inpaint is, as it goes (a software adapter at 512 px takes hours), with the
        // pools sampled at each stage and step rather than only after the whole run.
        let what = match progress {
            Progress::Stage(stage) => format!("{} starts", stage_name(stage)),
            Progress::Step { step, total, .. } => format!("step {step}/{total} done"),
            Progress::Region { .. } => return ControlFlow::Continue(()),
        };
        let pools = gpu.sample(device);
        eprintln!(
            "    inpaint at {:9.3} s: {what}{pools}",
            t.elapsed().as_secs_f64()
        );
        ControlFlow::Continue(())
    })?;
    record(&mut rec, "inpaint_s", t);

    add_load_inpaint(&mut rec.seconds);
    let gpu_bytes = rec.gpu.peak();
    let gpu_in_use_bytes = rec.gpu.in_use_peak();
    drop(sd);
    // Hand the pool's pages back before PyTorch starts on the same GPU.
    device.memory_cleanup();
    Ok(Run {
        seconds: rec.seconds,
        unet_s,
        peak_rss_bytes: peak_rss(),
        gpu_bytes,
        gpu_in_use_bytes,
    })
}

/// Stages 2 to 5: the text encoder, one guided UNet step, VAE encode and decode, each first
/// call then steady state. Returns the steady UNet step times.
fn time_stages(
    args: &BenchArgs,
    sd: &StableDiffusion,
    unet_config: &UNet2DConditionConfig,
    vae_factor: usize,
    device: &Device,
    rec: &mut Recorder,
) -> Result<Vec<f64>> {
    let record = |rec: &mut Recorder, key: &str, start: Instant| rec.record(key, start, device);
    // 2. text encoder: [negative, prompt]
    let mut context = None;
    for key in ["text_encoder_first_s", "text_encoder_s"] {
        let t = Instant::now();
        let ctx = encode_prompts(sd, &[NEGATIVE_PROMPT, PROMPT])?;
        let _ = ctx.clone().into_data();
        record(rec, key, t);
        context = Some(ctx);
    }
    let context = context.context("the text encoder ran")?;

    // 3. one guided UNet step: batch 2 at the latent size
    let latent = args.size / vae_factor;
    let shape = [2, unet_config.in_channels, latent, latent];
    let x = Tensor::<4>::from_data(
        TensorData::new(nullpaint::rng::randn(SEED, &shape), shape),
        device,
    );
    let t = Instant::now();
    let _ = sd
        .unet
        .forward(x.clone(), &[999.0], context.clone())
        .into_data();
    record(rec, "unet_first_s", t);
    let mut unet_s = vec![];
    for _ in 0..args.iters {
        let t = Instant::now();
        let _ = sd
            .unet
            .forward(x.clone(), &[999.0], context.clone())
            .into_data();
        let s = t.elapsed().as_secs_f64();
        eprintln!("  {:<22} {s:9.3} s", "unet_s");
        unet_s.push(s);
        rec.gpu.sample(device);
    }
    drop((x, context));
    rec.seconds
        .insert("unet_median_s".into(), json!(median(&unet_s)));
    rec.seconds.insert(
        "unet_min_s".into(),
        json!(unet_s.iter().copied().fold(f64::INFINITY, f64::min)),
    );

    // 4. VAE encode of the picture, 5. decode of its latent
    let image = test_image(args.size);
    let pixels: Vec<f32> = (0..3)
        .flat_map(|c| {
            let image = &image;
            (0..args.size * args.size).map(move |p| image.data[p * 3 + c] as f32 / 127.5 - 1.0)
        })
        .collect();
    let pixels = Tensor::<4>::from_data(
        TensorData::new(pixels, [1, 3, args.size, args.size]),
        device,
    );
    let mut z = None;
    for key in ["vae_encode_first_s", "vae_encode_s"] {
        let t = Instant::now();
        let mean = sd.vae.encode(pixels.clone()).mean;
        let _ = mean.clone().into_data();
        record(rec, key, t);
        z = Some(mean);
    }
    let z = z.context("the VAE encoder ran")?;
    for key in ["vae_decode_first_s", "vae_decode_s"] {
        let t = Instant::now();
        let _ = sd.vae.decode(z.clone()).into_data();
        record(rec, key, t);
    }
    drop((pixels, z));
    Ok(unet_s)
}

/// Each stage's seconds, and the GPU memory.
struct Recorder {
    seconds: Map<String, Value>,
    gpu: GpuMemory,
}

impl Recorder {
    fn record(&mut self, key: &str, start: Instant, device: &Device) {
        let s = start.elapsed().as_secs_f64();
        let pools = self.gpu.sample(device);
        eprintln!("  {key:<22} {s:9.3} s{pools}");
        self.seconds.insert(key.to_string(), json!(s));
    }
}

/// Tokenizer + text encoder on `prompts` (as the pipeline does): `[prompts, 77, d]`.
fn encode_prompts(sd: &StableDiffusion, prompts: &[&str]) -> Result<Tensor<3>> {
    let mut ids: Vec<i32> = vec![];
    for p in prompts {
        ids.extend(sd.tokenizer.encode(p)?.ids.iter().map(|&i| i as i32));
    }
    let seq = sd.tokenizer.max_length();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [prompts.len(), seq]), sd.device());
    Ok(sd.text_encoder.forward(ids))
}

/// The picture every stage uses, also drawn by `sd_torch.py`: red = x, green = y, blue = x ^ y.
fn test_image(size: usize) -> RgbImage {
    let mut data = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        for x in 0..size {
            data.extend([
                (x * 256 / size) as u8,
                (y * 256 / size) as u8,
                ((x ^ y) & 255) as u8,
            ]);
        }
    }
    RgbImage {
        width: size,
        height: size,
        data,
    }
}

/// A centred square hole of side `size / 2`.
fn test_mask(size: usize) -> MaskImage {
    let (a, b) = (size / 4, size / 4 + size / 2);
    let mut data = vec![0u8; size * size];
    for y in a..b {
        for x in a..b {
            data[y * size + x] = 255;
        }
    }
    MaskImage {
        width: size,
        height: size,
        data,
    }
}

/// GPU memory of the device's pools (CubeCL's `MemoryUsage`; nothing on the CPU backend, whose
/// tensors are host memory, already in the peak RSS). A thread of its own samples them every
/// [`SAMPLE_EVERY`] while the bench runs ([`nullpaint::device::pool_bytes_now`], which leaves the
/// fusion queue alone), so an activation freed inside a stage still counts; each stage's end is
/// sampled too (Burn's `Device::memory_pool_usage`, after the stage's work). The figure is the
/// largest of these: the pools' peak as far as a few milliseconds' sampling sees it (pages are
/// held until their pool empties, so growth lasts long enough to be seen). Not the sum of the
/// sliced pools' page high-water marks (`Device::memory_pool_report`), which the figure took
/// before 2026-11-30: the pools need not peak together (at 512x512 it read 2.76 GiB where the
/// samples peaked at 2.57 GiB), and it leaves out the small-allocation pools. It
/// leaves out what wgpu and the driver allocate outside the pools (`nvidia-smi`, as in
/// tests/bench/gpu.sh, sees all).
struct GpuMemory {
    /// The largest bytes seen, by the sampler and the stage samples; `None` on the CPU backend.
    peaks: Option<Arc<Peaks>>,
    /// Stops the sampling thread when dropped.
    _sampler: Option<PoolSampler>,
}

/// The largest bytes in use and reserved seen so far.
#[derive(Default)]
struct Peaks {
    in_use: AtomicU64,
    reserved: AtomicU64,
}

impl Peaks {
    fn see(&self, in_use: u64, reserved: u64) {
        self.in_use.fetch_max(in_use, Ordering::Relaxed);
        self.reserved.fetch_max(reserved, Ordering::Relaxed);
    }

    /// (in use, reserved)
    fn get(&self) -> (u64, u64) {
        (
            self.in_use.load(Ordering::Relaxed),
            self.reserved.load(Ordering::Relaxed),
        )
    }
}

/// How often [`PoolSampler`] reads the pools.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// A thread reading the pools every [`SAMPLE_EVERY`] into [`Peaks`] until dropped.
struct PoolSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PoolSampler {
    /// `None` when no thread can be made (then only the stage ends are sampled).
    fn start(device: &Device, peaks: Arc<Peaks>) -> Option<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let device = device.clone();
            std::thread::Builder::new()
                .name("gpu-pools".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(now) = nullpaint::device::pool_bytes_now(&device) {
                            peaks.see(now.in_use, now.reserved);
                        }
                        std::thread::sleep(SAMPLE_EVERY);
                    }
                })
        };
        match thread {
            Ok(thread) => Some(Self {
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(
                    "cannot sample the GPU pools as the bench runs ({e}): only after each stage"
                );
                None
            }
        }
    }
}

impl Drop for PoolSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl GpuMemory {
    /// Starts sampling the pools of `device` (nothing on the CPU backend).
    fn start(device: &Device) -> Self {
        if nullpaint::device::pool_bytes_now(device).is_none() {
            return Self {
                peaks: None,
                _sampler: None,
            };
        }
        let peaks = Arc::new(Peaks::default());
        Self {
            _sampler: PoolSampler::start(device, peaks.clone()),
            peaks: Some(peaks),
        }
    }

    /// Takes the pools' state into the peaks; says it (", GPU pools: ... in use, ... reserved",
    /// and the peak so far), or "" on the CPU backend.
    fn sample(&self, device: &Device) -> String {
        let (Some(peaks), Some(usage)) = (&self.peaks, device.memory_pool_usage()) else {
            return String::new();
        };
        peaks.see(usage.bytes_in_use, usage.bytes_reserved);
        let (in_use_max, reserved_max) = peaks.get();
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        format!(
            ", GPU pools: {:.2} GiB in use, {:.2} GiB reserved (peak so far {:.2} GiB in use, {:.2} GiB reserved)",
            gib(usage.bytes_in_use),
            gib(usage.bytes_reserved),
            gib(in_use_max),
            gib(reserved_max.max(in_use_max))
        )
    }

    /// The pools' peak, reserved bytes (at least the bytes in use), as the samples saw it.
    fn peak(&self) -> Option<u64> {
        let (in_use, reserved) = self.peaks.as_ref()?.get();
        Some(in_use.max(reserved))
    }

    /// The largest bytes in use (held by live tensors) seen, by the sampler or after a stage:
    /// what the work needs, next to [`Self::peak`], what the pools held for it (PyTorch's
    /// `max_memory_allocated` against `max_memory_reserved`).
    fn in_use_peak(&self) -> Option<u64> {
        self.peaks.as_ref().map(|p| p.get().0)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), bytes; `None` elsewhere.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The threads of the CPU backend (rayon's pool: `RAYON_NUM_THREADS`, else every core).
fn cpu_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// CPU model, cores, memory and the load average when the run started (Linux; `n/a` elsewhere).
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cpu = read("/proc/cpuinfo").and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let memory = read("/proc/meminfo").and_then(|s| {
        let kb: u64 = s
            .lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    });
    let load =
        read("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    json!({
        "cpu": cpu.unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_bytes": memory,
        "load_average": load,
        "os": std::env::consts::OS,
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Today's date (UTC), `YYYY-MM-DD` (days to civil date, after H. Hinnant's `civil_from_days`).
fn today() -> String {
    let z = (unix_now() / 86_400.0).floor() as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn command_line() -> String {
    let mut words = vec!["nullpaint".to_string()];
    words.extend(std::env::args().skip(1).map(|a| {
        if a.is_empty() || a.contains(char::is_whitespace) {
            format!("\"{a}\"")
        } else {
            a
        }
    }));
    words.join(" ")
}

/// The repository: the current folder or one above it, else the checkout this binary was built
/// from (for the Python scripts and `.venv-ref`).
fn repo_root() -> Option<PathBuf> {
    let built_from = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let cwd = std::env::current_dir().ok();
    cwd.iter()
        .flat_map(|d| d.ancestors())
        .map(Path::to_path_buf)
        .chain(std::iter::once(built_from))
        .find(|d| d.join(TORCH_SCRIPT).is_file() && d.join(MAKE_RANDOM).is_file())
}

fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .context("neither HOME nor USERPROFILE is set: cannot find ~/.cache/nullpaint")?;
    Ok(PathBuf::from(home).join(".cache").join("nullpaint"))
}

/// `~/.cache/nullpaint/NAME-random`, written by the stdlib script when missing
/// (`model_index.json` is its last file, so a folder that has it is complete).
fn random_model(model: RandomModel, root: Option<&Path>) -> Result<PathBuf> {
    let name = model.name();
    let folder = cache_dir()?.join(format!("{name}-random"));
    if folder.join("model_index.json").is_file() {
        return Ok(folder);
    }
    let Some(root) = root else {
        bail!(
            "--random {name}: {} is missing and this is not the nullpaint repository ({MAKE_RANDOM} not found); run from the repository, or make it there with `python3 {MAKE_RANDOM} {} {name}`",
            folder.display(),
            folder.display()
        );
    };
    let script = root.join(MAKE_RANDOM);
    eprintln!(
        "writing a full-size {name} folder with random f16 weights (once) into {} ...",
        folder.display()
    );
    let t = Instant::now();
    let status = Command::new("python3")
        .arg(&script)
        .arg(&folder)
        .arg(name)
        // Its progress goes to our stderr: stdout carries only the figures (--json).
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| {
            format!(
                "running python3 {} (a Python 3 is needed once, to write the random folder)",
                script.display()
            )
        })?;
    if !status.success() || !folder.join("model_index.json").is_file() {
        bail!(
            "python3 {} {} {name} failed ({status}); see its message above",
            script.display(),
            folder.display()
        );
    }
    eprintln!("  done in {:.0} s", t.elapsed().as_secs_f64());
    Ok(folder)
}

/// The Python for `--torch` and the script it runs, checked before any model work.
fn torch_python(given: Option<&Path>, root: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let Some(root) = root else {
        bail!(
            "--torch needs {TORCH_SCRIPT} from the nullpaint repository: run the command from the repository"
        );
    };
    let python = match (given, std::env::var_os("NULLPAINT_TORCH_PYTHON")) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => root.join(".venv-ref/bin/python"),
    };
    // A bare name (`python3`) is looked up on PATH by the spawn; a path must exist.
    if python.components().count() > 1 && !python.exists() {
        bail!(
            "--torch: no Python at {}; give one with torch, diffusers and transformers (`--torch PATH`, or NULLPAINT_TORCH_PYTHON), e.g. after `python3 -m venv .venv-ref && .venv-ref/bin/pip install -r tests/fixtures/requirements.txt`",
            python.display()
        );
    }
    Ok((python, root.join(TORCH_SCRIPT)))
}

fn run_torch(
    python: &Path,
    script: &Path,
    args: &BenchArgs,
    folder: &Path,
    device: &str,
    dtype: nullpaint::device::Precision,
    threads: usize,
) -> Result<Value> {
    let dtype = if device == "cuda" {
        dtype.to_string()
    } else {
        "f32".to_string()
    };
    eprintln!(
        "PyTorch: {} {} on {device} ({dtype}) ...",
        python.display(),
        script.display()
    );
    read_through(folder);
    let output = Command::new(python)
        .arg(script)
        .arg("--model")
        .arg(folder)
        .args([
            "--size",
            &args.size.to_string(),
            "--steps",
            &args.steps.to_string(),
            "--iters",
            &args.iters.to_string(),
            "--threads",
            &threads.to_string(),
            "--device",
            device,
            "--dtype",
            &dtype,
            "--prompt",
            PROMPT,
            "--negative-prompt",
            NEGATIVE_PROMPT,
            "--guidance-scale",
            &GUIDANCE_SCALE.to_string(),
            "--dilate",
            &DILATION.to_string(),
            "--seed",
            &SEED.to_string(),
        ])
        .args(args.inpaint_only.then_some("--inpaint-only"))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", python.display()))?;
    if !output.status.success() {
        bail!("it exited with {}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("it printed no JSON line")?;
    let value: Value = serde_json::from_str(line).context("its JSON line does not parse")?;
    // The stages every run has (--inpaint-only skips the others).
    for key in ["load_s", "inpaint_s"] {
        if value["seconds"][key].as_f64().is_none() {
            bail!("its JSON has no seconds.{key}");
        }
    }
    Ok(value)
}

/// nullpaint / PyTorch for each stage and for memory.
fn ratios(ours: &Value, theirs: &Value) -> Value {
    let mut out = Map::new();
    for (key, _) in STAGES {
        if let (Some(a), Some(b)) = (
            ours["seconds"][key].as_f64(),
            theirs["seconds"][key].as_f64(),
        ) && b > 0.0
        {
            out.insert((*key).to_string(), json!(a / b));
        }
    }
    for (ours_key, theirs_key) in [
        ("peak_rss_bytes", "peak_rss_bytes"),
        ("gpu_memory_bytes", "gpu_peak_bytes"),
        ("gpu_in_use_bytes", "gpu_allocated_bytes"),
    ] {
        if let (Some(a), Some(b)) = (ours[ours_key].as_f64(), theirs[theirs_key].as_f64())
            && b > 0.0
        {
            out.insert(ours_key.to_string(), json!(a / b));
        }
    }
    Value::Object(out)
}

fn gib(v: &Value) -> String {
    v.as_f64().map_or("n/a".into(), |b| {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    })
}

fn secs(v: &Value) -> String {
    v.as_f64().map_or("n/a".into(), |s| format!("{s:.3} s"))
}

/// Seconds with 3 significant digits or so (tiny models run in milliseconds).
fn short_secs(s: f64) -> String {
    match s {
        s if s >= 100.0 => format!("{s:.0} s"),
        s if s >= 10.0 => format!("{s:.1} s"),
        s if s >= 0.1 => format!("{s:.2} s"),
        s => format!("{s:.3} s"),
    }
}

fn ratio(v: &Value) -> String {
    v.as_f64().map_or(String::new(), |r| format!("{r:.2}"))
}

/// `, conv: ROUTE` when the run chose a convolution route (`--conv`), else nothing.
fn conv_note(report: &Value) -> String {
    match report["conv_route"].as_str() {
        Some(route) if route != "auto" => format!(", conv: {route}"),
        _ => String::new(),
    }
}

fn print_report(args: &BenchArgs, report: &Value, theirs: Option<&Value>) -> Result<()> {
    // The human table: stdout, or stderr when stdout carries JSON.
    let mut table = String::new();
    let m = &report["machine"];
    table.push_str(&format!(
        "nullpaint bench, {}: {}\n  {}x{}, {} steps, {} ({}{})\n  machine: {}, {} cores, {}; load average at start {}\n",
        report["date"].as_str().unwrap_or("?"),
        report["model"].as_str().unwrap_or("?"),
        args.size,
        args.size,
        args.steps,
        report["backend"].as_str().unwrap_or("?"),
        report["precision"].as_str().unwrap_or("?"),
        conv_note(report)
            + &report["threads"]
                .as_u64()
                .map_or(String::new(), |t| format!(", {t} threads")),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        gib(&m["memory_bytes"]),
        m["load_average"].as_str().unwrap_or("n/a"),
    ));
    if let Some(t) = theirs {
        table.push_str(&format!(
            "  PyTorch {} (diffusers {}, transformers {}) on {}, {}, attention {}\n",
            t["torch"].as_str().unwrap_or("?"),
            t["diffusers"].as_str().unwrap_or("?"),
            t["transformers"].as_str().unwrap_or("?"),
            t["device"].as_str().unwrap_or("?"),
            t["dtype"].as_str().unwrap_or("?"),
            t["attention"].as_str().unwrap_or("?"),
        ));
    }
    let none = Value::Null;
    let t = theirs.unwrap_or(&none);
    let r = &report["ratios"];
    let mut rows: Vec<[String; 4]> = vec![[
        "stage".into(),
        "nullpaint".into(),
        if theirs.is_some() { "PyTorch" } else { "" }.into(),
        if theirs.is_some() { "ratio" } else { "" }.into(),
    ]];
    for (key, label) in STAGES {
        let label = match *key {
            "unet_median_s" | "unet_min_s" => format!("{label} of {}", args.iters),
            "inpaint_s" => format!("{label}, {} steps", args.steps),
            _ => (*label).to_string(),
        };
        rows.push([
            label,
            secs(&report["seconds"][key]),
            if theirs.is_some() {
                secs(&t["seconds"][key])
            } else {
                String::new()
            },
            ratio(&r[key]),
        ]);
    }
    // (label alone, label next to PyTorch, our key, PyTorch's key)
    for (alone, with_torch, ours_key, theirs_key) in [
        ("peak RSS", "peak RSS", "peak_rss_bytes", "peak_rss_bytes"),
        (
            "GPU memory (Burn pools)",
            "GPU memory (Burn pools; torch reserved)",
            "gpu_memory_bytes",
            "gpu_peak_bytes",
        ),
        (
            "GPU memory in use (tensors)",
            "GPU memory in use (torch allocated)",
            "gpu_in_use_bytes",
            "gpu_allocated_bytes",
        ),
    ] {
        rows.push([
            if theirs.is_some() { with_torch } else { alone }.into(),
            gib(&report[ours_key]),
            if theirs.is_some() {
                gib(&t[theirs_key])
            } else {
                String::new()
            },
            ratio(&r[ours_key]),
        ]);
    }
    for row in &rows {
        let line = format!(
            "  {:<36} {:>12} {:>12} {:>7}",
            row[0], row[1], row[2], row[3]
        );
        table.push_str(line.trim_end());
        table.push('\n');
    }
    if args.json {
        eprint!("{table}");
    } else {
        print!("{table}");
    }

    if args.markdown {
        println!("{}", markdown(args, report, theirs));
    }
    if args.json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(())
}

/// A block for BENCHMARKS.md: one line of context, then the table rows (nullpaint, PyTorch,
/// ratio).
fn markdown(args: &BenchArgs, report: &Value, theirs: Option<&Value>) -> String {
    let m = &report["machine"];
    let mut out = format!(
        "**{}**, {}, {} cores, {}, load average at start {}; {}; {}x{}, {} steps; `{}`\n\n",
        report["date"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        gib(&m["memory_bytes"]),
        m["load_average"].as_str().unwrap_or("n/a"),
        report["model"].as_str().unwrap_or("?"),
        args.size,
        args.size,
        args.steps,
        report["command"].as_str().unwrap_or("?"),
    );
    out.push_str(&format!(
        "| run | load | text enc. | UNet step, first | UNet step, median / min of {} | VAE enc. | VAE dec. | inpaint, {} steps | load + inpaint | peak RSS | GPU memory |\n",
        args.iters, args.steps
    ));
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let s = |v: &Value, k: &str| v["seconds"][k].as_f64().map_or("n/a".into(), short_secs);
    // Reserved, then in use when known: "2.58 GiB (2.11 GiB in use)".
    let gpu = |v: &Value, reserved: &str, in_use: &str| match v[in_use].as_f64() {
        Some(_) => format!("{} ({} in use)", gib(&v[reserved]), gib(&v[in_use])),
        None => gib(&v[reserved]),
    };
    let row = |name: String, v: &Value, gpu_keys: (&str, &str)| {
        format!(
            "| {name} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |\n",
            s(v, "load_s"),
            s(v, "text_encoder_s"),
            s(v, "unet_first_s"),
            s(v, "unet_median_s"),
            s(v, "unet_min_s"),
            s(v, "vae_encode_s"),
            s(v, "vae_decode_s"),
            s(v, "inpaint_s"),
            s(v, "load_inpaint_s"),
            gib(&v["peak_rss_bytes"]),
            gpu(v, gpu_keys.0, gpu_keys.1),
        )
    };
    out.push_str(&row(
        format!(
            "nullpaint, {} {}{}",
            report["backend"].as_str().unwrap_or("?"),
            report["precision"].as_str().unwrap_or("?"),
            conv_note(report)
        ),
        report,
        ("gpu_memory_bytes", "gpu_in_use_bytes"),
    ));
    if let Some(t) = theirs {
        out.push_str(&row(
            format!(
                "PyTorch {}, {} {}",
                t["torch"].as_str().unwrap_or("?"),
                t["device"].as_str().unwrap_or("?"),
                t["dtype"].as_str().unwrap_or("?")
            ),
            t,
            ("gpu_peak_bytes", "gpu_allocated_bytes"),
        ));
        let r = &report["ratios"];
        let f = |k: &str| r[k].as_f64().map_or("n/a".into(), |x| format!("{x:.2}"));
        out.push_str(&format!(
            "| ratio nullpaint / PyTorch | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |\n",
            f("load_s"),
            f("text_encoder_s"),
            f("unet_first_s"),
            f("unet_median_s"),
            f("unet_min_s"),
            f("vae_encode_s"),
            f("vae_decode_s"),
            f("inpaint_s"),
            f("load_inpaint_s"),
            f("peak_rss_bytes"),
            f("gpu_memory_bytes"),
        ));
    }
    out
}

/// Reads every file under `dir` once (into the OS page cache), so that neither side's load time
/// includes reading a cold disk. Unreadable entries are skipped: the loads report them.
fn read_through(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            read_through(&path);
        } else if let Ok(mut file) = std::fs::File::open(&path) {
            let _ = std::io::copy(&mut file, &mut std::io::sink());
        }
    }
}
