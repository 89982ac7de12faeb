//! `nullpaint`: inpaint a photo with any Stable Diffusion 1.x / 2.x checkpoint, zero-shot (DDNM's
//! null-space projection in latent space), on the GPU through wgpu or on the CPU.

mod batch;
mod bench;
mod engine;
mod eval;
mod hub;
mod io;
mod options;
mod serve;
mod signals;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use nullpaint::pipeline::{InpaintMode, Progress, Stage};

use engine::{Engine, RunError};
use options::{JobArgs, JobSettings, ModelArgs, StepCounter, job_mask, stage_name};

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
    /// Inpaint many photos with the model loaded once: a JSONL manifest or folders of images
    /// and masks; resumable, shardable over several machines (--shard I/N).
    #[command(after_help = batch::HELP)]
    Batch(batch::BatchArgs),
    /// Serve inpainting over HTTP (POST /inpaint, progress as server-sent events, GET /health),
    /// one model loaded, on 127.0.0.1 unless told otherwise.
    #[command(after_help = serve::HELP)]
    Serve(serve::ServeArgs),
    /// The paper's evaluation (Table 1): centred holes on a folder of photos, inpainted and
    /// scored by FID (pytorch-fid's InceptionV3), PSNR and SSIM; resumable.
    #[command(after_help = eval::HELP)]
    Eval(eval::EvalArgs),
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
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    job: JobArgs,
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
        Command::Batch(args) => batch::batch(args),
        Command::Serve(args) => serve::serve(args),
        Command::Eval(args) => nullpaint::device::catch_gpu_faults(|| eval::eval(args))
            .unwrap_or_else(|fault| Err(fault.into())),
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

fn inpaint(args: InpaintArgs) -> Result<()> {
    let start = Instant::now();
    // 1. everything the user gave, checked before any model work
    let settings = JobSettings::new(&args.prompt, &args.job);
    let image = io::load_image(&args.image)?;
    let mask = args.mask.as_deref().map(io::load_mask).transpose()?;
    let mask = job_mask(
        &image,
        mask,
        settings.extend,
        (
            &args.image.display().to_string(),
            &args
                .mask
                .as_deref()
                .map(|m| m.display().to_string())
                .unwrap_or_default(),
        ),
    )
    .map_err(|e| {
        if args.mask.is_none() {
            anyhow::anyhow!(
                "give --mask MASK.png (white = fill), or --extend L,T,R,B to outpaint without one"
            )
        } else {
            e
        }
    })?;
    settings.check().map_err(|e| anyhow::anyhow!("--{e}"))?;
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
    let seed = settings.seed.unwrap_or_else(io::random_seed);
    if settings.seed.is_none() {
        eprintln!("seed: {seed} (pass --seed {seed} to reproduce)");
    }

    // 2. device and model
    let engine = Engine::open(&args.model)?;
    let sd = &engine.sd;

    // 3. run with a progress bar
    let options = settings.to_options(seed);
    let steps = options.steps;
    engine.validate(&image, &mask, &options)?;
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
    let steps_run = steps * plan.len();
    if plan.is_empty() {
        eprintln!("the mask has no hole (no pixel >= 128): the output is the input");
    }
    let run_start = Instant::now();
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} steps  {elapsed_precise} < {eta_precise}  {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut denoise_time = std::time::Duration::ZERO;
    let mut denoise_start = None;
    let mut counter = StepCounter::new(steps);
    let result = engine.run(&image, &mask, &options, &mut |p| {
        counter.update(&p);
        match &p {
            Progress::Region {
                index,
                count,
                region,
            } => {
                let r = region.rect;
                if *count > 1 || region.is_scaled() || (r.width, r.height) != sd_canvas {
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
            Progress::Stage(stage) => {
                if *stage == Stage::Denoising {
                    denoise_start = Some(Instant::now());
                } else if let Some(s) = denoise_start.take() {
                    denoise_time += s.elapsed();
                }
                bar.set_message(stage_name(*stage));
            }
            Progress::Step { .. } => {}
        }
        bar.set_length(counter.total() as u64);
        bar.set_position(counter.done() as u64);
        ControlFlow::Continue(())
    });
    bar.finish_and_clear();
    let result = result.map_err(|e| match e {
        RunError::Gpu(fault) => anyhow::Error::new(fault),
        other => anyhow::anyhow!("{other}"),
    })?;
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
        engine.load_seconds,
        run_time.as_secs_f64(),
        if plan.len() > 1 {
            format!("{} regions x ", plan.len())
        } else {
            String::new()
        },
        steps,
        per_step
    );
    Ok(())
}
