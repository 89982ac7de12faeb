//! `nullpaint`: inpaint a photo with any Stable Diffusion 1.x / 2.x checkpoint, zero-shot (DDNM's
//! null-space projection in latent space), on the GPU through wgpu or on the CPU.

mod bench;
mod hub;
mod io;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use nullpaint::device::{BackendChoice, Precision};
use nullpaint::models::vae_tiling::VaeTiling;
use nullpaint::pipeline::{
    Extend, FolderSource, InpaintMode, InpaintOptions, MaskImage, Progress, RegionMode,
    StableDiffusion, Stage,
};
use nullpaint::regions::DEFAULT_CONTEXT;
use nullpaint::single_file::{Family, SingleFileOptions, SingleFileSource};

/// Large blocks kept for reuse and backed by huge pages: the CPU backend's per-step buffers
/// otherwise fault in fresh, zeroed pages on every call (see `nullpaint::cpu::alloc`).
#[global_allocator]
static ALLOC: nullpaint::cpu::alloc::BlockCache = nullpaint::cpu::alloc::BlockCache::new();

const EXAMPLE: &str = "Example:
  nullpaint inpaint --image photo.png --mask mask.png --prompt \"a wooden bench in a park\"

The mask has the image's size; white (luminance >= 128) marks what to repaint, black what to keep.
Photos larger than the model's working size (512 px for SD 1.5) are inpainted by regions around
the holes, at full resolution elsewhere; --extend grows the canvas (outpainting).
Without --model, stable-diffusion-v1-5/stable-diffusion-v1-5 is downloaded into the Hugging Face
cache (HF_HOME; set HF_HUB_OFFLINE=1 to use only what is cached).";

#[derive(Parser, Debug)]
#[command(name = "nullpaint", version, about = "Zero-shot image inpainting with Stable Diffusion (DDNM in latent space)", after_help = EXAMPLE)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fill the masked region of an image, guided by a text prompt.
    #[command(after_help = EXAMPLE)]
    Inpaint(InpaintArgs),
    /// Time each stage (text encoder, UNet step, VAE, whole inpaint) and peak memory, optionally
    /// next to PyTorch.
    Bench(bench::BenchArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Backend {
    /// wgpu when a GPU adapter exists, else the CPU (with a warning; a software adapter counts as none)
    Auto,
    /// wgpu: Vulkan, Metal or DX12
    Wgpu,
    /// the pure-Rust CPU backend (slow)
    Cpu,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RegionArg {
    /// the whole photo when it fits the model's working size, else regions around the holes
    Auto,
    /// one pass over the whole photo, whatever its size (slow and repetitive far above it)
    Whole,
    /// regions around the holes, whatever the photo's size
    Crop,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum PredictionArg {
    /// the noise (SD 1.x, SD 2.x base, inpainting models)
    Epsilon,
    /// v = sqrt(a) noise - sqrt(1 - a) x0 (SD 2.x 768 px)
    VPrediction,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ModeArg {
    /// projection on a base model, inpaint-unet on an inpainting model (9-channel UNet)
    Auto,
    /// DDNM's null-space projection in latent space, on a base model (SPEC.md)
    Projection,
    /// an inpainting model as diffusers' StableDiffusionInpaintPipeline runs it
    InpaintUnet,
    /// an inpainting model with the projection on top of it at every step
    Both,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PrecisionArg {
    /// f16 on a hardware GPU with shader-f16, else f32
    Auto,
    F32,
    F16,
}

#[derive(clap::Args, Debug)]
struct InpaintArgs {
    /// The photo (PNG, JPEG, WebP, BMP; alpha is dropped).
    #[arg(long)]
    image: PathBuf,
    /// The mask, same size as the image: white (>= 128) = fill, black = keep. Optional with
    /// --extend (then only the extension is filled).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// What to paint into the hole.
    #[arg(long)]
    prompt: String,
    /// A diffusers folder, a single-file SD 1.x / 2.x .safetensors checkpoint, a Hugging Face
    /// repo id, or a short name: sd15, sd14, sd15-inpainting,
    /// sd2-base, sd2, sd21-base, sd21, sd2-inpainting, sd-turbo, bk-sdm-base, bk-sdm-small,
    /// bk-sdm-tiny, small-sd, tiny-sd (README, "Model families").
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// For a single-file checkpoint: a diffusers folder whose configs and tokenizer to use
    /// instead of the family's bundled ones (like diffusers' `from_single_file(config=...)`).
    #[arg(long, value_name = "DIR")]
    config: Option<PathBuf>,
    /// For a single-file checkpoint: what its UNet predicts. Default as diffusers'
    /// from_single_file: SD 2.x (768 px) v-prediction, everything else epsilon; pass epsilon
    /// for an SD 2.x base (512 px) file.
    #[arg(long, value_enum)]
    prediction_type: Option<PredictionArg>,
    /// What to steer away from.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Denoising steps (DDIM).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale; <= 1 runs the prompt alone.
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    guidance_scale: f32,
    /// Seed of the initial noise (same seed as diffusers, same image); drawn and printed if absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Grow the hole by this many latent pixels (8 image pixels each) to blend the border.
    #[arg(long, default_value_t = 2)]
    dilate: usize,
    /// Output the raw decoded image (of each region) instead of pasting the known pixels back.
    #[arg(long)]
    no_paste_back: bool,
    /// How a photo larger than the model's working size is split.
    #[arg(long, value_enum, default_value_t = RegionArg::Auto)]
    region: RegionArg,
    /// Pixels of surrounding photo each region shows the model around its hole.
    #[arg(long, default_value_t = DEFAULT_CONTEXT, value_name = "PX")]
    context: usize,
    /// Blend the result into this many known pixels around the hole (0: a hard seam, the
    /// known pixels byte-identical); at most --context.
    #[arg(long, default_value_t = 0, value_name = "PX")]
    feather: usize,
    /// Outpainting: grow the canvas by LEFT,TOP,RIGHT,BOTTOM pixels (or one number for all
    /// sides); the new area is filled like a hole.
    #[arg(long, value_name = "L,T,R,B")]
    extend: Option<Extend>,
    /// How the known pixels steer the fill: DDNM's projection (base models), an inpainting
    /// UNet's own conditioning (sd-1.5-inpainting, sd-2-inpainting), or both together.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Float precision of weights and activations: f16 halves GPU memory (norms and attention
    /// still run in f32); auto = f16 on a hardware GPU with shader-f16, f32 elsewhere.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    precision: PrecisionArg,
    /// Output file (format from the extension: png, jpg, webp, bmp). Default: IMAGE.inpainted.png
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NULLPAINT_LOG")
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        // A GPU running out of memory or lost mid-run is an error with advice, not a panic.
        Command::Inpaint(args) => nullpaint::device::catch_gpu_faults(|| inpaint(args))
            .unwrap_or_else(|fault| Err(fault.into())),
        Command::Bench(args) => bench::bench(args),
    };
    if let Err(e) = result {
        // The GPU failing where Burn returns an error instead of panicking (reads): the same
        // advice as for the panics `catch_gpu_faults` turns into errors.
        if e.downcast_ref::<nullpaint::device::GpuFault>().is_none()
            && let Some(fault) = nullpaint::device::GpuFault::from_panic_message(&format!("{e:#}"))
        {
            eprintln!("error: {fault}");
            std::process::exit(1);
        }
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

/// Loads a diffusers folder, or a single-file checkpoint (with `config`, a diffusers folder
/// whose configs and tokenizer to use instead of the bundled ones, and a prediction type
/// override).
pub(crate) fn load_model(
    path: &std::path::Path,
    config: Option<&std::path::Path>,
    prediction_type: Option<PredictionArg>,
    device: &burn::tensor::Device,
) -> Result<StableDiffusion> {
    if !path.is_file() {
        if config.is_some() || prediction_type.is_some() {
            bail!(
                "--config and --prediction-type are for single-file checkpoints; {} is a diffusers folder, whose own configs are used",
                path.display()
            );
        }
        let source = FolderSource::new(path)?;
        return StableDiffusion::load(&source, device)
            .with_context(|| format!("loading the model from {}", path.display()));
    }
    let config_source = config.map(FolderSource::new).transpose()?;
    let file = nullpaint::weights::SafetensorsFile::open(path)?;
    let source = SingleFileSource::new(
        Box::new(file),
        SingleFileOptions {
            config: config_source
                .as_ref()
                .map(|c| c as &dyn nullpaint::pipeline::ModelSource),
            prediction_type: prediction_type.map(|p| match p {
                PredictionArg::Epsilon => nullpaint::schedulers::PredictionType::Epsilon,
                PredictionArg::VPrediction => nullpaint::schedulers::PredictionType::VPrediction,
            }),
        },
    )?;
    let family = match source.family() {
        Family::Sd1 => "SD 1.x",
        Family::Sd2 => "SD 2.x",
    };
    let configs = match config {
        Some(dir) => format!("configs and tokenizer from {}", dir.display()),
        None => "bundled configs and tokenizer".into(),
    };
    eprintln!(
        "model: {} read as a single-file {family} checkpoint ({configs})",
        path.display()
    );
    StableDiffusion::load(&source, device).with_context(|| match config {
        Some(dir) => format!(
            "loading the checkpoint {} with the configs of {}",
            path.display(),
            dir.display()
        ),
        None => format!(
            "loading the checkpoint {} with the bundled {family} configs; a model of another structure (distilled, custom) needs --config DIR, a diffusers folder of its architecture",
            path.display()
        ),
    })
}

fn inpaint(args: InpaintArgs) -> Result<()> {
    let start = Instant::now();
    // 1. everything the user gave, checked before any model work
    let image = io::load_image(&args.image)?;
    let mask = match &args.mask {
        Some(path) => {
            let mask = io::load_mask(path)?;
            if (mask.width, mask.height) != (image.width, image.height) {
                bail!(
                    "the mask {} is {}x{} but the image {} is {}x{}: they must have the same size",
                    path.display(),
                    mask.width,
                    mask.height,
                    args.image.display(),
                    image.width,
                    image.height
                );
            }
            mask
        }
        None if args.extend.is_some_and(|e| !e.is_zero()) => MaskImage {
            width: image.width,
            height: image.height,
            data: vec![0; image.width * image.height],
        },
        None => bail!(
            "give --mask MASK.png (white = fill), or --extend L,T,R,B to outpaint without one"
        ),
    };
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if !args.guidance_scale.is_finite() {
        bail!(
            "--guidance-scale must be a finite number, got {}",
            args.guidance_scale
        );
    }
    let output_path = args
        .output
        .clone()
        .unwrap_or_else(|| io::default_output(&args.image));
    let mut inputs = vec![args.image.as_path()];
    inputs.extend(args.mask.as_deref());
    let output = io::PendingOutput::create(&output_path, &inputs)?;
    if let Some(warning) = output.lossy_warning() {
        eprintln!("warning: {warning}");
    }
    let seed = args.seed.unwrap_or_else(io::random_seed);
    if args.seed.is_none() {
        eprintln!("seed: {seed} (pass --seed {seed} to reproduce)");
    }

    // 2. device and model
    let (selected, dtype) = open_device(args.backend, args.precision)?;
    let device = selected.device;
    eprintln!("device: {} ({dtype})", selected.description);
    let model_path = hub::resolve(&args.model)?;
    let load_start = Instant::now();
    let mut sd = load_model(
        &model_path,
        args.config.as_deref(),
        args.prediction_type,
        &device,
    )?;
    // Tile the VAE only where an activation would pass the adapter's storage binding limit.
    sd.vae_tiling = VaeTiling::for_adapter(selected.adapter.as_ref());
    let load_time = load_start.elapsed();

    // 3. run with a progress bar
    let options = InpaintOptions {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        seed,
        dilation: args.dilate,
        paste_back: !args.no_paste_back,
        preview: false,
        region: match args.region {
            RegionArg::Auto => RegionMode::Auto,
            RegionArg::Whole => RegionMode::Whole,
            RegionArg::Crop => RegionMode::Crop,
        },
        context: args.context,
        feather: args.feather,
        extend: args.extend.unwrap_or_default(),
        mode: match args.mode {
            ModeArg::Auto => InpaintMode::Auto,
            ModeArg::Projection => InpaintMode::Projection,
            ModeArg::InpaintUnet => InpaintMode::InpaintUnet,
            ModeArg::Both => InpaintMode::Both,
        },
    };
    sd.validate(&image, &mask, &options)?;
    let mode = sd.resolve_mode(options.mode)?;
    if options.mode == InpaintMode::Auto {
        let unet = if sd.has_inpainting_unet() {
            "an inpainting UNet"
        } else {
            "a base UNet"
        };
        eprintln!("mode: {mode} ({unet}; --mode to choose)");
    }
    let plan = sd.plan(&mask, &options);
    let sd_canvas = options
        .extend
        .canvas_size(image.width, image.height)
        .unwrap_or((image.width, image.height));
    let steps_run = args.steps * plan.len();
    if plan.is_empty() {
        eprintln!("the mask has no hole (no pixel >= 128): the output is the input");
    }
    let run_start = Instant::now();
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} steps  {elapsed_precise} < {eta_precise}  {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut denoise_time = std::time::Duration::ZERO;
    let mut denoise_start = None;
    let mut region_index = 0;
    let result = sd.inpaint(&image, &mask, &options, &mut |p| {
        match p {
            Progress::Region {
                index,
                count,
                region,
            } => {
                region_index = index;
                bar.set_length((args.steps * count) as u64);
                bar.set_position((args.steps * index) as u64);
                let r = region.rect;
                if count > 1 || region.is_scaled() || (r.width, r.height) != sd_canvas {
                    let scaled = if region.is_scaled() {
                        format!(", runs at {}x{}", region.run_width, region.run_height)
                    } else {
                        String::new()
                    };
                    bar.suspend(|| {
                        eprintln!(
                            "region {}/{count}: {}x{} at ({}, {}){scaled}, seed {}",
                            index + 1,
                            r.width,
                            r.height,
                            r.x,
                            r.y,
                            region.seed
                        )
                    });
                }
            }
            Progress::Stage(Stage::EncodingPrompt) => bar.set_message("prompt"),
            Progress::Stage(Stage::EncodingImage) => bar.set_message("image"),
            Progress::Stage(Stage::Denoising) => {
                bar.set_message("denoising");
                denoise_start = Some(Instant::now());
            }
            Progress::Stage(Stage::Decoding) => {
                if let Some(s) = denoise_start.take() {
                    denoise_time += s.elapsed();
                }
                bar.set_message("decoding");
            }
            Progress::Step { step, .. } => {
                bar.set_position((args.steps * region_index + step) as u64)
            }
        }
        ControlFlow::Continue(())
    });
    bar.finish_and_clear();
    let result = result?;
    let run_time = run_start.elapsed();
    output.commit(&result)?;

    let per_step = if steps_run > 0 {
        denoise_time.as_secs_f64() / steps_run as f64
    } else {
        0.0
    };
    eprintln!(
        "wrote {} ({}x{}) in {:.1} s: load {:.1} s, inpaint {:.1} s ({}{} steps, {:.2} s/step), seed {seed}",
        output_path.display(),
        result.width,
        result.height,
        start.elapsed().as_secs_f64(),
        load_time.as_secs_f64(),
        run_time.as_secs_f64(),
        if plan.len() > 1 {
            format!("{} regions x ", plan.len())
        } else {
            String::new()
        },
        args.steps,
        per_step
    );
    Ok(())
}

/// The device `--backend` and `--precision` ask for, with its float precision set (never
/// `Auto`); shared by `inpaint` and `bench`.
fn open_device(
    backend: Backend,
    precision: PrecisionArg,
) -> Result<(nullpaint::device::Selected, Precision)> {
    let choice = match backend {
        Backend::Auto => BackendChoice::Auto,
        Backend::Wgpu => BackendChoice::Wgpu,
        Backend::Cpu => BackendChoice::Cpu,
    };
    let mut selected = nullpaint::device::select(choice)?;
    let precision = match precision {
        PrecisionArg::Auto => Precision::Auto,
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::F16 => Precision::F16,
    };
    let dtype = nullpaint::device::configure_precision(
        &mut selected.device,
        selected.adapter.as_ref(),
        precision,
    )?;
    Ok((selected, dtype))
}
