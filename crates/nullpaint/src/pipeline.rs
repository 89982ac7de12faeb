//! The inpainting pipeline: DDNM's null-space projection in latent space (SPEC.md), shared by
//! the CLI and the browser build. It owns no I/O: models come from a [`ModelSource`] (a folder
//! natively, IndexedDB in the browser), images are pixel buffers, progress goes to a callback.
//!
//! After diffusers' `pipelines/stable_diffusion/`: the pipeline composes models, tokenizer and
//! scheduler and owns nothing else.

use std::ops::ControlFlow;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::kernel::{self, StepParams};
#[cfg(not(target_arch = "wasm32"))]
use crate::manifest::weight_file_candidates;
use crate::models::ConfigError;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::unet_2d::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::models::vae_tiling::VaeTiling;
use crate::regions::{self, Filter, Rect};
use crate::schedulers::{DdimScheduler, Scheduler, SchedulerError};
use crate::tokenizer::{ClipTokenizer, TokenizerError, TokenizerFiles};
use crate::weights::{KeyMap, TensorSource, WeightError, load_module};

pub use crate::pixels::{MaskImage, RgbImage};
pub use crate::regions::{Extend, Region, RegionMode};

/// What the user chooses for one run (defaults as in SPEC.md).
#[derive(Debug, Clone, PartialEq)]
pub struct InpaintOptions {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance_scale: f32,
    pub seed: u64,
    /// Dilation radius of the latent hole, in latent pixels.
    pub dilation: usize,
    /// Copy the known pixels of the input into the output (on by default).
    pub paste_back: bool,
    /// Send a cheap latent preview with each step's progress.
    pub preview: bool,
    /// Whole canvas or regions around the holes (SPEC.md, "Photos larger than the model").
    pub region: RegionMode,
    /// Context margin around each hole when regions are used, in pixels.
    pub context: usize,
    /// Width of the band of known pixels blended with the result, in pixels (0: none).
    pub feather: usize,
    /// Outpainting: pixels added on each side; they are filled like a hole.
    pub extend: Extend,
    /// How the known pixels steer the result: the projection, an inpainting UNet, or both.
    pub mode: InpaintMode,
}

/// How the known region steers the denoising ([`InpaintOptions::mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InpaintMode {
    /// `projection` for a base UNet (4 input channels), `inpaint-unet` for an inpainting UNet
    /// (9 input channels: latent, mask, masked-image latent).
    #[default]
    Auto,
    /// DDNM's null-space projection in latent space (SPEC.md) on a base UNet.
    Projection,
    /// diffusers' `StableDiffusionInpaintPipeline` on an inpainting UNet: the hole mask and the
    /// masked image's latent (a posterior sample, drawn from the seed's generator after the
    /// initial noise) are concatenated to the UNet's input; plain DDIM steps.
    InpaintUnet,
    /// `inpaint-unet`'s UNet inputs and, at every step, the projection of SPEC.md on its
    /// clean-latent estimate (`z_y` the posterior mean, the hole dilated by `dilation`).
    Both,
}

impl InpaintMode {
    /// The names the CLI and the page use, in order.
    pub const NAMES: [&'static str; 4] = ["auto", "projection", "inpaint-unet", "both"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    fn projects(self) -> bool {
        matches!(self, Self::Projection | Self::Both)
    }

    fn conditions_unet(self) -> bool {
        matches!(self, Self::InpaintUnet | Self::Both)
    }
}

impl std::fmt::Display for InpaintMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for InpaintMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALL: [InpaintMode; 4] = [
            InpaintMode::Auto,
            InpaintMode::Projection,
            InpaintMode::InpaintUnet,
            InpaintMode::Both,
        ];
        ALL.into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode {s:?}: use one of {}", Self::NAMES.join(", ")))
    }
}

impl Default for InpaintOptions {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 50,
            guidance_scale: 7.5,
            seed: 0,
            dilation: 2,
            paste_back: true,
            preview: false,
            region: RegionMode::Auto,
            context: regions::DEFAULT_CONTEXT,
            feather: 0,
            extend: Extend::default(),
            mode: InpaintMode::Auto,
        }
    }
}

/// Largest dilation radius accepted (latent pixels; 64 covers a 512-pixel-wide band).
pub const MAX_DILATION: usize = 64;

/// Stages of a run, reported before each starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    EncodingPrompt,
    EncodingImage,
    Denoising,
    Decoding,
}

/// Progress reported to the caller; returning `ControlFlow::Break` cancels the run.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A region starts (before its stages and steps); whole mode has one region.
    Region {
        /// 0-based.
        index: usize,
        count: usize,
        region: Region,
    },
    Stage(Stage),
    Step {
        /// 1-based.
        step: usize,
        total: usize,
        timestep: usize,
        /// The current clean-latent estimate mapped to RGB at latent resolution, when asked for.
        preview: Option<RgbImage>,
    },
}

/// Errors of loading and running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("the model's parts do not fit together: {0}")]
    Incompatible(String),
    #[error("invalid {what}: {message}")]
    InvalidInput { what: &'static str, message: String },
    #[error("the device failed: {0}")]
    Device(String),
    #[error("cancelled")]
    Cancelled,
}

/// Where a model's files come from: a diffusers folder layout (`unet/config.json`, ...).
pub trait ModelSource {
    /// A name for messages (the folder path, the repo id).
    fn describe(&self) -> String;
    /// A small file (config, tokenizer), `Ok(None)` when absent.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, PipelineError>;
    /// The weights of one component (`unet`, `vae`, `text_encoder`).
    fn weights(&self, component: &str) -> Result<Box<dyn TensorSource + '_>, PipelineError>;
}

/// A diffusers model folder on disk (native).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone)]
pub struct FolderSource {
    root: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl FolderSource {
    /// Checks that `root` looks like a diffusers pipeline folder.
    pub fn new(root: impl Into<std::path::PathBuf>) -> Result<Self, PipelineError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(PipelineError::Source(format!(
                "model folder {} does not exist",
                root.display()
            )));
        }
        // Another model family: say which, before looking for SD's parts.
        if let Ok(index) = std::fs::read(root.join("model_index.json"))
            && let Some(what) = crate::checkpoint::unsupported_pipeline(&index)
        {
            return Err(PipelineError::Source(format!(
                "{} is {what}; {}",
                root.display(),
                crate::checkpoint::SUPPORTED
            )));
        }
        for part in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
            if !root.join(part).is_dir() {
                return Err(PipelineError::Source(format!(
                    "{} is not a diffusers Stable Diffusion folder: it has no {part}/ subfolder (expected model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
                    root.display()
                )));
            }
        }
        Ok(Self { root })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl FolderSource {
    /// The shards a `*.safetensors.index.json` names, mapped and joined.
    fn sharded(
        &self,
        index: &std::path::Path,
    ) -> Result<Box<dyn TensorSource + '_>, PipelineError> {
        let name = index.display().to_string();
        let bytes = std::fs::read(index)
            .map_err(|e| PipelineError::Source(format!("cannot read {name}: {e}")))?;
        let files = crate::weights::shard_files(&name, &bytes)?;
        let dir = index.parent().unwrap_or(&self.root);
        let mut parts: Vec<Box<dyn TensorSource>> = vec![];
        for file in &files {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(PipelineError::Source(format!(
                    "{name} names the shard {file}, which is not in {}: download the whole folder again",
                    dir.display()
                )));
            }
            parts.push(Box::new(crate::weights::SafetensorsFile::open(path)?));
        }
        Ok(Box::new(crate::weights::ShardedSource::new(name, parts)?))
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ModelSource for FolderSource {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, PipelineError> {
        let full = self.root.join(path);
        match std::fs::read(&full) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PipelineError::Source(format!(
                "cannot read {}: {e}",
                full.display()
            ))),
        }
    }

    fn weights(&self, component: &str) -> Result<Box<dyn TensorSource + '_>, PipelineError> {
        let candidates = weight_file_candidates(component);
        for c in &candidates {
            let path = self.root.join(c);
            if path.is_file() {
                return Ok(Box::new(crate::weights::SafetensorsFile::open(path)?));
            }
        }
        // Sharded: `<name>.safetensors.index.json` and the shards it names, next to it.
        for c in &candidates {
            let index = self.root.join(format!("{c}.index.json"));
            if index.is_file() {
                return self.sharded(&index);
            }
        }
        let bin = self
            .root
            .join(component)
            .join(if component == "text_encoder" {
                "pytorch_model.bin"
            } else {
                "diffusion_pytorch_model.bin"
            });
        let hint = if bin.is_file() {
            format!(
                "; only {} is there: convert it to safetensors (pickle files are not loaded)",
                bin.display()
            )
        } else {
            String::new()
        };
        Err(PipelineError::Source(format!(
            "no weights for {component} in {}: looked for {}{hint}",
            self.root.display(),
            candidates.join(", ")
        )))
    }
}

/// A loaded Stable Diffusion model: tokenizer, text encoder, UNet, VAE, scheduler settings.
#[derive(Debug)]
pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub scheduler: DdimScheduler,
    /// Pixel sides must be multiples of this (VAE factor x 2^UNet down-samplings).
    pub size_multiple: usize,
    /// The size the model was trained at (`unet sample_size x VAE factor`: 512 for SD 1.x);
    /// larger photos are inpainted by regions of at most this size.
    pub working_size: usize,
    /// When the VAE encode / decode run in tiles (`models::vae_tiling`). Default:
    /// [`VaeTiling::default_for`] the device; set `VaeTiling::for_adapter(..)` when the adapter's
    /// storage binding limit is known.
    pub vae_tiling: VaeTiling,
    vae_factor: usize,
    latent_channels: usize,
    /// The UNet takes the mask and the masked image's latent besides the noisy latent
    /// (`in_channels = 2 * latent_channels + 1`: sd-1.5-inpainting, sd-2-inpainting).
    inpainting_unet: bool,
    device: Device,
}

/// Loads one component's weights into its structure; mismatches name the component.
fn load_component<M: burn::module::Module>(
    source: &dyn ModelSource,
    component: &str,
    module: M,
    keys: &KeyMap,
    device: &Device,
) -> Result<M, PipelineError> {
    let mut tensors = source.weights(component)?;
    if component == "vae" {
        let renames = AutoencoderKL::legacy_key_renames(&tensors.keys());
        if !renames.is_empty() {
            tracing::info!(
                "{}: {} VAE attention weights under their pre-0.14 diffusers names (query / key / value / proj_attn), read as to_q / to_k / to_v / to_out.0",
                tensors.name(),
                renames.len()
            );
            tensors = Box::new(crate::weights::MappedSource::renamed(tensors, renames));
        }
    }
    load_module(module, &*tensors, keys, device).map_err(|e| match e {
        WeightError::Mismatch {
            source_name,
            problems,
            ..
        } => PipelineError::Weights(WeightError::Mismatch {
            source_name,
            model: Some(component.to_string()),
            problems,
        }),
        other => PipelineError::Weights(other),
    })
}

/// The scheduler of a model folder, with the corrections diffusers' `StableDiffusionPipeline`
/// makes to outdated configs (its `__init__`, with a deprecation warning each): `steps_offset`
/// other than 1 (or absent: DDIM's default is 0) becomes 1, and `clip_sample` true (or absent:
/// DDIM's default is true) becomes false. Without them an old SD 1.x folder would start one
/// timestep early and clamp every predicted latent to +-1, washing the picture out.
pub fn scheduler_from_json(file: &str, bytes: &[u8]) -> Result<DdimScheduler, PipelineError> {
    let mut config: crate::schedulers::ddim::DdimSchedulerConfig =
        crate::models::parse_config(file, bytes)?;
    for warning in legacy_scheduler_fixes(&mut config) {
        tracing::warn!("{file}: {warning}");
    }
    Ok(DdimScheduler::new(config, file)?)
}

/// Applies diffusers' pipeline corrections to `config`; returns a warning for each.
pub fn legacy_scheduler_fixes(
    config: &mut crate::schedulers::ddim::DdimSchedulerConfig,
) -> Vec<String> {
    let mut warnings = vec![];
    if config.steps_offset != 1 {
        warnings.push(format!(
            "this scheduler config is outdated: `steps_offset` should be 1 instead of {}; using 1, as diffusers' StableDiffusionPipeline does (update the file to silence this)",
            config.steps_offset
        ));
        config.steps_offset = 1;
    }
    if config.clip_sample {
        warnings.push(
            "this scheduler config has `clip_sample` true (or unset, which means true); Stable Diffusion latents must not be clipped, so using false, as diffusers' StableDiffusionPipeline does (update the file to silence this)".into(),
        );
        config.clip_sample = false;
    }
    warnings
}

fn config_bytes(source: &dyn ModelSource, path: &str) -> Result<Vec<u8>, PipelineError> {
    source
        .read(path)?
        .ok_or_else(|| PipelineError::Source(format!("{}: missing {path}", source.describe())))
}

impl StableDiffusion {
    /// Loads every component of a diffusers Stable Diffusion 1.x / 2.x folder onto `device`,
    /// one tensor at a time.
    pub fn load(source: &dyn ModelSource, device: &Device) -> Result<Self, PipelineError> {
        // The weights are written once and kept: no huge pages for them (`cpu::alloc`).
        #[cfg(not(target_arch = "wasm32"))]
        let _weights = crate::cpu::alloc::LongLived::enter();
        let name = source.describe();
        let file = |p: &str| format!("{name}/{p}");

        // 1. tokenizer
        let tok_files: Vec<Option<Vec<u8>>> = [
            "tokenizer/tokenizer.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer/tokenizer_config.json",
            "tokenizer/special_tokens_map.json",
        ]
        .iter()
        .map(|p| source.read(p))
        .collect::<Result<_, _>>()?;
        let tokenizer = ClipTokenizer::from_files(
            TokenizerFiles {
                tokenizer_json: tok_files[0].as_deref(),
                vocab_json: tok_files[1].as_deref(),
                merges_txt: tok_files[2].as_deref(),
                tokenizer_config_json: tok_files[3].as_deref(),
                special_tokens_map_json: tok_files[4].as_deref(),
            },
            &file("tokenizer"),
        )?;

        // 2. configs
        let te_config = ClipTextConfig::from_json(
            &file("text_encoder/config.json"),
            &config_bytes(source, "text_encoder/config.json")?,
        )?;
        let unet_config = UNet2DConditionConfig::from_json(
            &file("unet/config.json"),
            &config_bytes(source, "unet/config.json")?,
        )?;
        let vae_config = AutoencoderKLConfig::from_json(
            &file("vae/config.json"),
            &config_bytes(source, "vae/config.json")?,
        )?;
        let scheduler = scheduler_from_json(
            &file("scheduler/scheduler_config.json"),
            &config_bytes(source, "scheduler/scheduler_config.json")?,
        )?;
        Self::check_compatible(&te_config, &unet_config, &vae_config)?;
        if tokenizer.max_length() > te_config.max_position_embeddings {
            return Err(PipelineError::Incompatible(format!(
                "the tokenizer pads prompts to {} tokens (model_max_length in {}) but the text encoder has {} positions (max_position_embeddings); fix tokenizer_config.json",
                tokenizer.max_length(),
                file("tokenizer/tokenizer_config.json"),
                te_config.max_position_embeddings
            )));
        }

        // 3. weights
        let text_encoder = load_component(
            source,
            "text_encoder",
            te_config.init(device),
            &ClipTextModel::key_map(),
            device,
        )?;
        let unet = load_component(
            source,
            "unet",
            unet_config.init(device)?,
            &KeyMap::default(),
            device,
        )?;
        let vae = load_component(
            source,
            "vae",
            vae_config.init(device)?,
            &KeyMap::default(),
            device,
        )?;

        // The upload blocks' pages (the weights are in the persistent pool: `weights`).
        device.memory_cleanup();

        let vae_factor = vae_config.downscale_factor();
        // `sample_size` may be one side or [height, width]: the smaller bounds the region.
        let sample_size = unet_config
            .sample_size
            .as_ref()
            .and_then(|s| s.values().into_iter().min())
            .unwrap_or(64);
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler,
            size_multiple: vae_factor << unet_config.num_downsamplings(),
            working_size: sample_size * vae_factor,
            vae_tiling: VaeTiling::default_for(device),
            vae_factor,
            latent_channels: vae_config.latent_channels,
            inpainting_unet: unet_config.in_channels == 2 * vae_config.latent_channels + 1,
            device: device.clone(),
        })
    }

    fn check_compatible(
        te: &ClipTextConfig,
        unet: &UNet2DConditionConfig,
        vae: &AutoencoderKLConfig,
    ) -> Result<(), PipelineError> {
        if unet
            .cross_attention_dim
            .values()
            .iter()
            .any(|c| *c != te.hidden_size)
        {
            return Err(PipelineError::Incompatible(format!(
                "the text encoder's hidden_size is {} but the UNet's cross_attention_dim is {:?}",
                te.hidden_size, unet.cross_attention_dim
            )));
        }
        let c = vae.latent_channels;
        if unet.in_channels != c && unet.in_channels != 2 * c + 1 {
            return Err(PipelineError::Incompatible(format!(
                "the UNet takes {} input channels but the VAE makes {c} latent channels (a base UNet takes {c}, an inpainting UNet {})",
                unet.in_channels,
                2 * c + 1
            )));
        }
        if unet.out_channels != vae.latent_channels {
            return Err(PipelineError::Incompatible(format!(
                "the UNet predicts {} channels but the VAE has {} latent channels",
                unet.out_channels, vae.latent_channels
            )));
        }
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the UNet is an inpainting UNet (mask and masked-image latent as extra inputs).
    pub fn has_inpainting_unet(&self) -> bool {
        self.inpainting_unet
    }

    /// The mode a run with `mode` uses on this model (`auto` resolved), or why it cannot run.
    pub fn resolve_mode(&self, mode: InpaintMode) -> Result<InpaintMode, PipelineError> {
        let invalid = |message: String| {
            Err(PipelineError::InvalidInput {
                what: "mode",
                message,
            })
        };
        match (mode, self.inpainting_unet) {
            (InpaintMode::Auto, false) => Ok(InpaintMode::Projection),
            (InpaintMode::Auto, true) => Ok(InpaintMode::InpaintUnet),
            (InpaintMode::Projection, true) => invalid(
                "`projection` runs on a base UNet, and this model's UNet is an inpainting UNet (9 input channels): use `inpaint-unet`, `both` (the projection on top of it) or `auto`".into(),
            ),
            (InpaintMode::InpaintUnet | InpaintMode::Both, false) => invalid(format!(
                "`{mode}` needs an inpainting UNet (9 input channels, e.g. stable-diffusion-inpainting), and this model's UNet is a base UNet: use `projection` or `auto`"
            )),
            (m, _) => Ok(m),
        }
    }

    /// Checks the options and the image / mask pair without running anything.
    pub fn validate(
        &self,
        image: &RgbImage,
        mask: &MaskImage,
        options: &InpaintOptions,
    ) -> Result<(), PipelineError> {
        self.checked_scheduler(image, mask, options).map(drop)
    }

    /// [`Self::validate`]'s checks; returns the scheduler set up for `options.steps`.
    fn checked_scheduler(
        &self,
        image: &RgbImage,
        mask: &MaskImage,
        options: &InpaintOptions,
    ) -> Result<DdimScheduler, PipelineError> {
        let invalid = |what, message: String| Err(PipelineError::InvalidInput { what, message });
        if image.width == 0
            || image.height == 0
            || image.data.len() != image.width * image.height * 3
        {
            return invalid(
                "image",
                format!(
                    "{}x{} with {} bytes of RGB data",
                    image.width,
                    image.height,
                    image.data.len()
                ),
            );
        }
        if (mask.width, mask.height) != (image.width, image.height) {
            return invalid(
                "mask",
                format!(
                    "the mask is {}x{} but the image is {}x{}; they must have the same size",
                    mask.width, mask.height, image.width, image.height
                ),
            );
        }
        if mask.data.len() != mask.width * mask.height {
            return invalid(
                "mask",
                format!(
                    "{} bytes for {}x{} pixels",
                    mask.data.len(),
                    mask.width,
                    mask.height
                ),
            );
        }
        if !options.guidance_scale.is_finite() {
            return invalid(
                "guidance scale",
                format!("{} is not a finite number", options.guidance_scale),
            );
        }
        if options.dilation > MAX_DILATION {
            return invalid(
                "dilation",
                format!(
                    "{} latent pixels (at most {MAX_DILATION})",
                    options.dilation
                ),
            );
        }
        let e = options.extend;
        if [e.left, e.top, e.right, e.bottom]
            .iter()
            .any(|&v| v > regions::MAX_EXTEND)
        {
            return invalid(
                "extend",
                format!("{e} pixels: at most {} per side", regions::MAX_EXTEND),
            );
        }
        let (cw, ch) = e
            .canvas_size(image.width, image.height)
            .unwrap_or((usize::MAX, usize::MAX));
        if cw.saturating_mul(ch) > regions::MAX_CANVAS_PIXELS {
            return invalid(
                "extend",
                format!(
                    "the canvas would be {cw}x{ch} pixels, more than the {} megapixels allowed",
                    regions::MAX_CANVAS_PIXELS >> 20
                ),
            );
        }
        for (what, value, max) in [
            ("context", options.context, regions::MAX_CONTEXT),
            ("feather", options.feather, regions::MAX_FEATHER),
        ] {
            if value > max {
                return invalid(what, format!("{value} pixels (at most {max})"));
            }
        }
        if options.feather > options.context
            && regions::uses_regions(options.region, cw, ch, self.working_size)
        {
            return invalid(
                "feather",
                format!(
                    "{} pixels is wider than the context margin ({} pixels): the band would be cut at the region's edge; raise the context or lower the feather",
                    options.feather, options.context
                ),
            );
        }
        self.resolve_mode(options.mode)?;
        // The scheduler owns the range of valid step counts.
        let mut scheduler = self.scheduler.clone();
        scheduler.set_timesteps(options.steps)?;
        Ok(scheduler)
    }

    /// The regions a run of `options` would inpaint (SPEC.md, "Photos larger than the
    /// model"), in the canvas after `options.extend`; empty when there is no hole.
    pub fn plan(&self, mask: &MaskImage, options: &InpaintOptions) -> Vec<Region> {
        let plan = |m: &MaskImage| {
            regions::plan(
                m,
                self.working_size,
                options.context,
                options.region,
                options.seed,
            )
        };
        if options.extend.is_zero() {
            plan(mask)
        } else {
            let blank = RgbImage {
                width: mask.width,
                height: mask.height,
                data: vec![0; mask.width * mask.height * 3],
            };
            plan(&regions::extend_canvas(&blank, mask, options.extend).1)
        }
    }

    /// Inpaints the hole of `mask` (luminance >= 128) in `image`, by regions when the photo
    /// is larger than the working size. An empty hole returns the image unchanged without
    /// running the model. Blocks until done (native); the browser awaits
    /// [`Self::inpaint_async`], the same loop.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn inpaint(
        &self,
        image: &RgbImage,
        mask: &MaskImage,
        options: &InpaintOptions,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<RgbImage, PipelineError> {
        pollster::block_on(self.inpaint_async(image, mask, options, progress))
    }

    /// Runs one whole 1-step inpaint of a grey `working_size` square with a square hole, so
    /// that every shader of a run at that size (text encoder, VAE encode and decode, guided
    /// UNet, the DDNM kernels) is compiled, and on autotuning builds tuned, before the user's
    /// first run: otherwise the first step of the first run pays for it. Blocks (native); the
    /// browser awaits [`Self::warm_up_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn warm_up(&self) -> Result<(), PipelineError> {
        pollster::block_on(self.warm_up_async())
    }

    /// [`Self::warm_up`] as a future.
    pub async fn warm_up_async(&self) -> Result<(), PipelineError> {
        let size = self.working_size;
        let image = RgbImage {
            width: size,
            height: size,
            data: vec![128; size * size * 3],
        };
        let (lo, hi) = (size / 4, size - size / 4);
        let mask = MaskImage {
            width: size,
            height: size,
            data: (0..size * size)
                .map(|i| {
                    let (y, x) = (i / size, i % size);
                    if (lo..hi).contains(&y) && (lo..hi).contains(&x) {
                        255
                    } else {
                        0
                    }
                })
                .collect(),
        };
        let options = InpaintOptions {
            steps: 1,
            region: RegionMode::Whole,
            ..InpaintOptions::default()
        };
        self.inpaint_async(&image, &mask, &options, &mut |_| ControlFlow::Continue(()))
            .await
            .map(drop)
    }

    /// [`Self::inpaint`] as a future: every read-back from the device is awaited, and each
    /// step waits for the device before reporting progress, so a browser event loop stays
    /// live (cancel messages, previews) and the queue never runs ahead of the loop.
    pub async fn inpaint_async(
        &self,
        image: &RgbImage,
        mask: &MaskImage,
        options: &InpaintOptions,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<RgbImage, PipelineError> {
        let scheduler = self.checked_scheduler(image, mask, options)?;
        // 0. the canvas: the photo, grown for outpainting (new pixels are hole)
        let extended;
        let (canvas_in, mask) = if options.extend.is_zero() {
            (image, mask)
        } else {
            extended = regions::extend_canvas(image, mask, options.extend);
            (&extended.0, &extended.1)
        };
        let plan = regions::plan(
            mask,
            self.working_size,
            options.context,
            options.region,
            options.seed,
        );
        let mut canvas = canvas_in.clone();
        let count = plan.len();
        for (index, region) in plan.into_iter().enumerate() {
            report(
                Progress::Region {
                    index,
                    count,
                    region,
                },
                progress,
            )?;
            // 1. the region's pixels, seeing earlier regions' results; scaled to fit the model
            let rect = region.rect;
            let whole = rect
                == Rect {
                    x: 0,
                    y: 0,
                    width: canvas.width,
                    height: canvas.height,
                };
            // The whole canvas is passed as it is (no copy of a photo-sized buffer).
            let cropped;
            let (crop, crop_mask) = if whole {
                (&canvas, mask)
            } else {
                cropped = (
                    regions::crop_image(&canvas, rect),
                    regions::crop_mask(mask, rect),
                );
                (&cropped.0, &cropped.1)
            };
            let scaled;
            let (run_image, run_mask) = if region.is_scaled() {
                scaled = (
                    regions::resize(crop, region.run_width, region.run_height, Filter::Area)
                        .map_err(|e| PipelineError::Device(e.to_string()))?,
                    regions::downscale_mask(crop_mask, region.run_width, region.run_height),
                );
                (&scaled.0, &scaled.1)
            } else {
                (crop, crop_mask)
            };
            // 2. the method on it; then its pages go back (also after an error or a cancel), so
            //    that between pictures the device holds the weights alone
            let raw = self
                .run_pass(
                    run_image,
                    run_mask,
                    options,
                    region.seed,
                    &scheduler,
                    progress,
                )
                .await;
            let released = release_pages(&self.device).await;
            let raw = raw?;
            released?;
            // 3. back to the region's size, blended into the canvas
            let result = if region.is_scaled() {
                regions::resize(&raw, rect.width, rect.height, Filter::Lanczos3)
                    .map_err(|e| PipelineError::Device(e.to_string()))?
            } else {
                raw
            };
            regions::blend(
                &mut canvas,
                rect,
                &result,
                mask,
                options.feather,
                options.paste_back,
            );
        }
        Ok(canvas)
    }

    /// One pass of the method (SPEC.md) over `image`: the raw decoded image (no paste-back)
    /// at the image's size.
    async fn run_pass(
        &self,
        image: &RgbImage,
        mask: &MaskImage,
        options: &InpaintOptions,
        seed: u64,
        scheduler: &DdimScheduler,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<RgbImage, PipelineError> {
        let (w, h) = (image.width, image.height);
        let device = &self.device;

        // 0. working size: pad right / bottom to the model's multiple by edge replication of
        //    the image and the mask together (a hole at the edge continues into the padding)
        let m = self.size_multiple;
        let (wp, hp) = (w.div_ceil(m) * m, h.div_ceil(m) * m);
        let mut x = vec![0f32; 3 * hp * wp]; // y = M_p * x, [3, hp, wp]
        let mut known = vec![0f32; hp * wp]; // M_p
        for yy in 0..hp {
            for xx in 0..wp {
                let src = yy.min(h - 1) * w + xx.min(w - 1);
                let is_known = !mask.is_hole(src);
                known[yy * wp + xx] = if is_known { 1.0 } else { 0.0 };
                for c in 0..3 {
                    let v = image.data[src * 3 + c] as f32 / 127.5 - 1.0;
                    x[(c * hp + yy) * wp + xx] = if is_known { v } else { 0.0 };
                }
            }
        }

        // 1. prompt embeddings: [uncond, cond] with guidance, else cond alone
        report(Progress::Stage(Stage::EncodingPrompt), progress)?;
        let guided = options.guidance_scale > 1.0;
        let mut ids: Vec<i32> = vec![];
        let prompts: Vec<&str> = if guided {
            vec![&options.negative_prompt, &options.prompt]
        } else {
            vec![&options.prompt]
        };
        for p in &prompts {
            ids.extend(self.tokenizer.encode(p)?.ids.iter().map(|&i| i as i32));
        }
        let seq = self.tokenizer.max_length();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [prompts.len(), seq]), device);
        let context = self.text_encoder.forward(ids); // [b, 77, d]

        // 2. observation: z_y = scaling * mean(E(y)); latent mask
        report(Progress::Stage(Stage::EncodingImage), progress)?;
        let mode = self.resolve_mode(options.mode)?;
        let sf = self.vae.scaling_factor() as f32;
        let y = Tensor::<4>::from_data(TensorData::new(x, [1, 3, hp, wp]), device);
        let posterior = self.vae.encode_with(y, self.vae_tiling); // [1, c, hp/f, wp/f] each
        let z_y = posterior.mean.clone() * sf;
        let pixel_mask = Tensor::<2>::from_data(TensorData::new(known, [hp, wp]), device);
        let (lh, lw) = (hp / self.vae_factor, wp / self.vae_factor);
        let m_l = if mode.projects() {
            kernel::latent_mask(pixel_mask.clone(), self.vae_factor, options.dilation) // [lh, lw]
        } else {
            // No projection: M_l = 0 makes z0_hat = z0, a plain DDIM step.
            Tensor::<2>::zeros([lh, lw], device)
        };
        // The encode's pages go back: each stage's activations get pages sized to themselves,
        // not to the largest stage before them (GPU memory: BENCHMARKS.md).
        release_pages(device).await?;

        // 3. DDIM (with the projection at every step in projection / both modes); the
        //    initial noise is the generator's first draw, as in diffusers
        report(Progress::Stage(Stage::Denoising), progress)?;
        let shape = [1, self.latent_channels, lh, lw];
        let n: usize = shape.iter().product();
        let mut generator = crate::rng::TorchGenerator::new(seed);
        let mut z = Tensor::<4>::from_data(TensorData::new(generator.randn(n), shape), device);
        // Inpainting UNet inputs, as diffusers' StableDiffusionInpaintPipeline makes them: the
        // hole mask nearest-downsampled (1 = hole) and a sample of the masked image's
        // posterior (`mean + std * noise`, the generator's second draw), scaled.
        let unet_extra = if mode.conditions_unet() {
            let noise = Tensor::<4>::from_data(TensorData::new(generator.randn(n), shape), device);
            let std = (posterior.logvar * 0.5).exp();
            let masked_latents = (posterior.mean + std * noise) * sf; // [1, c, lh, lw]
            let hole = kernel::latent_mask(pixel_mask, self.vae_factor, 0)
                .neg()
                .add_scalar(1.0)
                .reshape([1, 1, lh, lw]);
            Some(Tensor::cat(vec![hole, masked_latents], 1)) // [1, 1 + c, lh, lw]
        } else {
            None
        };
        let total = scheduler.timesteps().len();
        for i in 0..total {
            let coefficients = scheduler.coefficients(i);
            let single = match &unet_extra {
                Some(extra) => Tensor::cat(vec![z.clone(), extra.clone()], 1), // [1, 2c + 1, lh, lw]
                None => z.clone(),
            };
            let input = if guided {
                Tensor::cat(vec![single.clone(), single], 0)
            } else {
                single
            };
            let out = self
                .unet
                .forward(input, &[coefficients.timestep as f32], context.clone());
            let params = StepParams::new(
                coefficients,
                scheduler.prediction_type(),
                guided.then_some(options.guidance_scale),
                scheduler.clip_sample(),
            );
            let (z_prev, z0_hat) = kernel::ddnm_step(z, out, z_y.clone(), m_l.clone(), &params);
            z = z_prev;
            // Wait for the step: read the preview, or one value of the new latent.
            let preview = if options.preview {
                Some(latent_preview(z0_hat).await?)
            } else {
                read_f32(z.clone().slice([0..1, 0..1, 0..1, 0..1]), "the latent").await?;
                None
            };
            report(
                Progress::Step {
                    step: i + 1,
                    total,
                    timestep: coefficients.timestep,
                    preview,
                },
                progress,
            )?;
        }

        // 4. decode (the denoising's pages given back first), to bytes, crop
        report(Progress::Stage(Stage::Decoding), progress)?;
        release_pages(device).await?;
        let decoded = self
            .vae
            .decode_with(z / sf, self.vae_tiling)
            .clamp(-1.0, 1.0); // [1, 3, hp, wp]
        let values = read_f32(decoded, "the decoded image").await?;
        let mut out = vec![0u8; w * h * 3];
        for yy in 0..h {
            for xx in 0..w {
                for c in 0..3 {
                    let v = values[(c * hp + yy) * wp + xx];
                    out[(yy * w + xx) * 3 + c] = ((v + 1.0) / 2.0 * 255.0)
                        .round_ties_even()
                        .clamp(0.0, 255.0) as u8;
                }
            }
        }
        Ok(RgbImage {
            width: w,
            height: h,
            data: out,
        })
    }
}

/// Passes one progress event to the caller; `Break` becomes [`PipelineError::Cancelled`].
fn report(
    p: Progress,
    progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<(), PipelineError> {
    match progress(p) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(PipelineError::Cancelled),
    }
}

/// Reads a tensor back from its device as f32 values.
/// Gives a GPU device's free pool pages back to the driver (CubeCL's explicit cleanup) once
/// everything recorded so far has run, tensors dropped included: a read orders after them (the
/// fusion queue drains in order). CubeCL's pools otherwise keep every page a stage carved, sized to
/// the largest allocation so far, until the process ends. Nothing to do on the CPU backend.
async fn release_pages(device: &Device) -> Result<(), PipelineError> {
    if kernel::is_cube(device) {
        read_f32(Tensor::<1>::zeros([1], device), "a sync point").await?;
        device.memory_cleanup();
    }
    Ok(())
}

async fn read_f32<const D: usize>(
    tensor: Tensor<D>,
    what: &str,
) -> Result<Vec<f32>, PipelineError> {
    tensor
        .into_data_async()
        .await
        .map_err(|e| PipelineError::Device(format!("reading {what} back: {e:?}")))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| PipelineError::Device(format!("reading {what} back: {e:?}")))
}

/// Cheap RGB preview of a latent at latent resolution: a fixed linear map from the 4 SD latent
/// channels to RGB (the usual approximation of the SD 1.x / 2.x VAE), no decoder run.
pub async fn latent_preview(latent: Tensor<4>) -> Result<RgbImage, PipelineError> {
    let [_, c, h, w] = latent.dims();
    let values = read_f32(latent, "the preview").await?;
    Ok(latent_to_rgb(&values, c, h, w))
}

/// [`latent_preview`] on values already read back (`[c, h, w]`, batch 0).
pub fn latent_to_rgb(values: &[f32], c: usize, h: usize, w: usize) -> RgbImage {
    const FACTORS: [[f32; 3]; 4] = [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ];
    let mut data = vec![0u8; h * w * 3];
    if values.len() < c * h * w {
        return RgbImage {
            width: w,
            height: h,
            data,
        };
    }
    for p in 0..h * w {
        for (k, d) in data[p * 3..p * 3 + 3].iter_mut().enumerate() {
            let v: f32 = (0..c.min(4))
                .map(|ch| values[ch * h * w + p] * FACTORS[ch][k])
                .sum();
            *d = ((v + 1.0) / 2.0 * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}
