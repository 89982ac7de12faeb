//! One loaded model on one device, as `inpaint`, `batch` and `serve` use it: the device chosen
//! from the flags, the model resolved (folder, single file, repo id, short name) and loaded once,
//! and runs whose GPU faults come back as errors ([`RunError`]) instead of panics.

use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nullpaint::device::{BackendChoice, GpuFault, Precision};
use nullpaint::models::vae_tiling::VaeTiling;
use nullpaint::pipeline::{
    FolderSource, InpaintOptions, MaskImage, PipelineError, Progress, RgbImage, StableDiffusion,
};
use nullpaint::single_file::{Family, SingleFileOptions, SingleFileSource};

use crate::hub;
use crate::options::{Backend, ModelArgs, PrecisionArg, PredictionArg};

/// The device `--backend` and `--precision` ask for, with its float precision set (never
/// `Auto`); shared by every command.
pub fn open_device(
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

/// Loads a diffusers folder, or a single-file checkpoint (with `config`, a diffusers folder
/// whose configs and tokenizer to use instead of the bundled ones, and a prediction type
/// override).
pub fn load_model(
    path: &Path,
    config: Option<&Path>,
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

/// A model loaded on its device.
pub struct Engine {
    pub sd: StableDiffusion,
    /// `cpu (flex)`, `wgpu: <adapter>`.
    pub device: String,
    pub precision: Precision,
    /// Seconds the load took.
    pub load_seconds: f64,
}

/// Why a run produced no picture.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The progress callback asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// What the user gave does not fit the model (options, sizes): this job only.
    #[error("{0}")]
    Input(String),
    /// The GPU failed; after [`GpuFault::Lost`] the engine cannot run anything more.
    #[error("{0}")]
    Gpu(GpuFault),
    #[error("{0}")]
    Failed(String),
}

impl RunError {
    fn from_pipeline(e: PipelineError) -> Self {
        match e {
            PipelineError::Cancelled => Self::Cancelled,
            PipelineError::InvalidInput { .. } | PipelineError::Scheduler(_) => {
                Self::Input(e.to_string())
            }
            other => {
                let text = other.to_string();
                match GpuFault::from_panic_message(&text) {
                    Some(fault) => Self::Gpu(fault),
                    None => Self::Failed(text),
                }
            }
        }
    }

    /// After this error the engine cannot be used again (a lost device).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Gpu(GpuFault::Lost(_)))
    }
}

impl Engine {
    /// Opens the device and loads the model the flags name, telling the user on stderr.
    pub fn open(args: &ModelArgs) -> Result<Self> {
        let (selected, precision) = open_device(args.backend, args.precision)?;
        eprintln!("device: {} ({precision})", selected.description);
        let model_path = hub::resolve(&args.model)?;
        let start = std::time::Instant::now();
        let mut sd = load_model(
            &model_path,
            args.config.as_deref(),
            args.prediction_type,
            &selected.device,
        )?;
        // Tile the VAE only where an activation would pass the adapter's storage binding limit.
        sd.vae_tiling = VaeTiling::for_adapter(selected.adapter.as_ref());
        Ok(Self {
            sd,
            device: selected.description,
            precision,
            load_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Checks a job against the model without running it.
    pub fn validate(
        &self,
        image: &RgbImage,
        mask: &MaskImage,
        options: &InpaintOptions,
    ) -> Result<(), RunError> {
        self.sd
            .validate(image, mask, options)
            .and_then(|()| self.sd.resolve_mode(options.mode).map(|_| ()))
            .map_err(|e| RunError::Input(e.to_string()))
    }

    /// Runs one job; a GPU fault (panic or error) comes back as [`RunError::Gpu`].
    pub fn run(
        &self,
        image: &RgbImage,
        mask: &MaskImage,
        options: &InpaintOptions,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<RgbImage, RunError> {
        self.validate(image, mask, options)?;
        match nullpaint::device::catch_gpu_faults(|| {
            self.sd.inpaint(image, mask, options, progress)
        }) {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(RunError::from_pipeline(e)),
            Err(fault) => Err(RunError::Gpu(fault)),
        }
    }
}
