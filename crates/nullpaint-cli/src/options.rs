//! The options of a run, shared by the three commands that inpaint: `inpaint` (flags), `batch`
//! (flags as defaults, overridden per manifest line) and `serve` (flags as defaults, overridden
//! per request by multipart fields). One parser, [`JobSettings::set`], reads an option by the
//! CLI's name from text, so a manifest line, a form field and a flag mean the same thing.

use anyhow::{Result, bail};
use clap::ValueEnum;
use nullpaint::pipeline::{
    Extend, InpaintMode, InpaintOptions, MaskImage, Progress, RegionMode, RgbImage, Stage,
};
use nullpaint::regions::DEFAULT_CONTEXT;

use crate::hub;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// wgpu when a GPU adapter exists, else the CPU (with a warning; a software adapter counts as none)
    Auto,
    /// wgpu: Vulkan, Metal or DX12
    Wgpu,
    /// the pure-Rust CPU backend (slow)
    Cpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RegionArg {
    /// the whole photo when it fits the model's working size, else regions around the holes
    Auto,
    /// one pass over the whole photo, whatever its size (slow and repetitive far above it)
    Whole,
    /// regions around the holes, whatever the photo's size
    Crop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PredictionArg {
    /// the noise (SD 1.x, SD 2.x base, inpainting models)
    Epsilon,
    /// v = sqrt(a) noise - sqrt(1 - a) x0 (SD 2.x 768 px)
    VPrediction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// projection on a base model, inpaint-unet on an inpainting model (9-channel UNet)
    Auto,
    /// DDNM's null-space projection in latent space, on a base model (SPEC.md)
    Projection,
    /// an inpainting model as diffusers' StableDiffusionInpaintPipeline runs it
    InpaintUnet,
    /// an inpainting model with the projection on top of it at every step
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f16 on a hardware GPU with shader-f16, else f32
    Auto,
    F32,
    F16,
}

/// Which model, on which device: the same flags for `inpaint`, `batch` and `serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A diffusers folder, a single-file SD 1.x / 2.x .safetensors checkpoint, a Hugging Face
    /// repo id, or a short name: sd15, sd14, sd15-inpainting,
    /// sd2-base, sd2, sd21-base, sd21, sd2-inpainting, sd-turbo, bk-sdm-base, bk-sdm-small,
    /// bk-sdm-tiny, small-sd, tiny-sd (README, "Model families").
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    pub model: String,
    /// For a single-file checkpoint: a diffusers folder whose configs and tokenizer to use
    /// instead of the family's bundled ones (like diffusers' `from_single_file(config=...)`).
    #[arg(long, value_name = "DIR")]
    pub config: Option<std::path::PathBuf>,
    /// For a single-file checkpoint: what its UNet predicts. Default as diffusers'
    /// from_single_file: SD 2.x (768 px) v-prediction, everything else epsilon; pass epsilon
    /// for an SD 2.x base (512 px) file.
    #[arg(long, value_enum)]
    pub prediction_type: Option<PredictionArg>,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Float precision of weights and activations: f16 halves GPU memory (norms and attention
    /// still run in f32); auto = f16 on a hardware GPU with shader-f16, f32 elsewhere.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,
}

/// The options of one picture's run, as flags (without the prompt, which `inpaint` requires and
/// `batch` / `serve` take per job).
#[derive(clap::Args, Debug, Clone)]
pub struct JobArgs {
    /// What to steer away from.
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Denoising steps (DDIM).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale; <= 1 runs the prompt alone.
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    pub guidance_scale: f32,
    /// Seed of the initial noise (same seed as diffusers, same image); drawn and printed if absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Grow the hole by this many latent pixels (8 image pixels each) to blend the border.
    #[arg(long, default_value_t = 2)]
    pub dilate: usize,
    /// Output the raw decoded image (of each region) instead of pasting the known pixels back.
    #[arg(long)]
    pub no_paste_back: bool,
    /// How a photo larger than the model's working size is split.
    #[arg(long, value_enum, default_value_t = RegionArg::Auto)]
    pub region: RegionArg,
    /// Pixels of surrounding photo each region shows the model around its hole.
    #[arg(long, default_value_t = DEFAULT_CONTEXT, value_name = "PX")]
    pub context: usize,
    /// Blend the result into this many known pixels around the hole (0: a hard seam, the
    /// known pixels byte-identical); at most --context.
    #[arg(long, default_value_t = 0, value_name = "PX")]
    pub feather: usize,
    /// Outpainting: grow the canvas by LEFT,TOP,RIGHT,BOTTOM pixels (or one number for all
    /// sides); the new area is filled like a hole.
    #[arg(long, value_name = "L,T,R,B")]
    pub extend: Option<Extend>,
    /// How the known pixels steer the fill: DDNM's projection (base models), an inpainting
    /// UNet's own conditioning (sd-1.5-inpainting, sd-2-inpainting), or both together.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
}

/// Everything that decides one picture's result but the photo and the mask: the flags of
/// [`JobArgs`] plus the prompt, overridable by name ([`JobSettings::set`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance_scale: f32,
    /// `None`: drawn at random when the job runs (and reported).
    pub seed: Option<u64>,
    pub dilate: usize,
    pub paste_back: bool,
    pub region: RegionArg,
    pub context: usize,
    pub feather: usize,
    pub extend: Option<Extend>,
    pub mode: ModeArg,
}

impl JobSettings {
    /// The option names [`Self::set`] reads: the CLI's flags without `--` (`snake_case`
    /// spellings are accepted too).
    pub const NAMES: [&'static str; 12] = [
        "prompt",
        "negative-prompt",
        "steps",
        "guidance-scale",
        "seed",
        "dilate",
        "no-paste-back",
        "region",
        "context",
        "feather",
        "extend",
        "mode",
    ];

    pub fn new(prompt: &str, args: &JobArgs) -> Self {
        Self {
            prompt: prompt.to_string(),
            negative_prompt: args.negative_prompt.clone(),
            steps: args.steps,
            guidance_scale: args.guidance_scale,
            seed: args.seed,
            dilate: args.dilate,
            paste_back: !args.no_paste_back,
            region: args.region,
            context: args.context,
            feather: args.feather,
            extend: args.extend,
            mode: args.mode,
        }
    }

    /// Whether `name` is an option of [`Self::set`] (either spelling).
    pub fn is_option(name: &str) -> bool {
        Self::NAMES.contains(&name.replace('_', "-").as_str())
    }

    /// Sets the option `name` (a CLI flag without `--`, or its `snake_case` spelling) from its
    /// text, as the flag would read it. The error names the option and what it takes.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        fn number<T: std::str::FromStr>(name: &str, value: &str, what: &str) -> Result<T, String> {
            value
                .trim()
                .parse()
                .map_err(|_| format!("{name}: {value:?} is not {what}"))
        }
        fn choice<T: ValueEnum>(name: &str, value: &str) -> Result<T, String> {
            T::from_str(value.trim(), false).map_err(|_| {
                let names: Vec<String> = T::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
                    .collect();
                format!("{name}: {value:?} is not one of {}", names.join(", "))
            })
        }
        let key = name.replace('_', "-");
        match key.as_str() {
            "prompt" => self.prompt = value.to_string(),
            "negative-prompt" => self.negative_prompt = value.to_string(),
            "steps" => self.steps = number(&key, value, "a whole number of steps")?,
            "guidance-scale" => self.guidance_scale = number(&key, value, "a number")?,
            "seed" => {
                self.seed = if value.trim().is_empty() {
                    None
                } else {
                    Some(number(&key, value, "a whole number from 0 to 2^64-1")?)
                }
            }
            "dilate" => self.dilate = number(&key, value, "a whole number of latent pixels")?,
            "no-paste-back" => {
                self.paste_back = !match value.trim() {
                    "true" | "1" | "yes" | "on" | "" => true,
                    "false" | "0" | "no" | "off" => false,
                    _ => return Err(format!("{key}: {value:?} is not true or false")),
                }
            }
            "region" => self.region = choice(&key, value)?,
            "context" => self.context = number(&key, value, "a whole number of pixels")?,
            "feather" => self.feather = number(&key, value, "a whole number of pixels")?,
            "extend" => {
                self.extend = if value.trim().is_empty() {
                    None
                } else {
                    Some(value.parse().map_err(|e: String| format!("{key}: {e}"))?)
                }
            }
            "mode" => self.mode = choice(&key, value)?,
            _ => {
                return Err(format!(
                    "unknown option {name:?}: the options are {}",
                    Self::NAMES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Checks what does not need the model (the model checks the rest in `validate`).
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("steps must be at least 1");
        }
        if !self.guidance_scale.is_finite() {
            bail!(
                "guidance-scale must be a finite number, got {}",
                self.guidance_scale
            );
        }
        Ok(())
    }

    /// The pipeline's options, with the seed to run (the job's, or one drawn for it).
    pub fn to_options(&self, seed: u64) -> InpaintOptions {
        InpaintOptions {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            seed,
            dilation: self.dilate,
            paste_back: self.paste_back,
            preview: false,
            region: match self.region {
                RegionArg::Auto => RegionMode::Auto,
                RegionArg::Whole => RegionMode::Whole,
                RegionArg::Crop => RegionMode::Crop,
            },
            context: self.context,
            feather: self.feather,
            extend: self.extend.unwrap_or_default(),
            mode: match self.mode {
                ModeArg::Auto => InpaintMode::Auto,
                ModeArg::Projection => InpaintMode::Projection,
                ModeArg::InpaintUnet => InpaintMode::InpaintUnet,
                ModeArg::Both => InpaintMode::Both,
            },
        }
    }

    /// The settings as a JSON object under the CLI's names (results files, server headers),
    /// with the seed that ran.
    pub fn to_json(&self, seed: u64) -> serde_json::Value {
        let name = |v: &dyn Fn() -> Option<clap::builder::PossibleValue>| {
            v().map(|p| p.get_name().to_string()).unwrap_or_default()
        };
        serde_json::json!({
            "prompt": self.prompt,
            "negative-prompt": self.negative_prompt,
            "steps": self.steps,
            "guidance-scale": self.guidance_scale,
            "seed": seed,
            "dilate": self.dilate,
            "no-paste-back": !self.paste_back,
            "region": name(&|| self.region.to_possible_value()),
            "context": self.context,
            "feather": self.feather,
            "extend": self.extend.map(|e| format!("{},{},{},{}", e.left, e.top, e.right, e.bottom)),
            "mode": name(&|| self.mode.to_possible_value()),
        })
    }
}

/// The mask a job runs with: the given one (same size as the photo), or an empty one when the
/// job outpaints (`extend`) without a mask. `names`: how to call the two inputs in messages.
pub fn job_mask(
    image: &RgbImage,
    mask: Option<MaskImage>,
    extend: Option<Extend>,
    names: (&str, &str),
) -> Result<MaskImage> {
    match mask {
        Some(mask) => {
            if (mask.width, mask.height) != (image.width, image.height) {
                bail!(
                    "the mask {} is {}x{} but the image {} is {}x{}: they must have the same size",
                    names.1,
                    mask.width,
                    mask.height,
                    names.0,
                    image.width,
                    image.height
                );
            }
            Ok(mask)
        }
        None if extend.is_some_and(|e| !e.is_zero()) => Ok(MaskImage {
            width: image.width,
            height: image.height,
            data: vec![0; image.width * image.height],
        }),
        None => {
            bail!("no mask: give a mask (white = fill), or extend L,T,R,B to outpaint without one")
        }
    }
}

/// Follows a run's progress across its regions: steps done out of `steps x regions`.
#[derive(Debug, Clone, Copy)]
pub struct StepCounter {
    steps: usize,
    region: usize,
    regions: usize,
    done: usize,
    stage: Option<Stage>,
}

impl StepCounter {
    pub fn new(steps: usize) -> Self {
        Self {
            steps,
            region: 0,
            regions: 1,
            done: 0,
            stage: None,
        }
    }

    /// Takes one pipeline event in.
    pub fn update(&mut self, p: &Progress) {
        match p {
            Progress::Region { index, count, .. } => {
                self.region = *index;
                self.regions = *count;
                self.done = self.steps * index;
            }
            Progress::Stage(s) => self.stage = Some(*s),
            Progress::Step { step, .. } => self.done = self.steps * self.region + step,
        }
    }

    /// Steps done and to do in all, over every region.
    pub fn done(&self) -> usize {
        self.done
    }
    pub fn total(&self) -> usize {
        self.steps * self.regions
    }
    /// 1-based region and the count.
    pub fn region(&self) -> (usize, usize) {
        (self.region + 1, self.regions)
    }
    pub fn stage(&self) -> Option<Stage> {
        self.stage
    }
}

/// The stage's name in messages and server events.
pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::EncodingPrompt => "prompt",
        Stage::EncodingImage => "image",
        Stage::Denoising => "denoising",
        Stage::Decoding => "decoding",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        job: JobArgs,
    }

    fn defaults() -> JobSettings {
        JobSettings::new("", &Flags::parse_from(["x"]).job)
    }

    #[test]
    fn every_option_reads_as_its_flag() {
        for name in JobSettings::NAMES {
            let (value, flag_args): (&str, Vec<&str>) = match name {
                "prompt" => continue,
                "no-paste-back" => ("true", vec!["--no-paste-back"]),
                "region" => ("crop", vec!["--region", "crop"]),
                "mode" => ("inpaint-unet", vec!["--mode", "inpaint-unet"]),
                "extend" => ("1,2,3,4", vec!["--extend", "1,2,3,4"]),
                "guidance-scale" => ("-1.5", vec!["--guidance-scale", "-1.5"]),
                "negative-prompt" => ("blurry", vec!["--negative-prompt", "blurry"]),
                _ => ("7", vec![]),
            };
            let flag = format!("--{name}");
            let mut argv = vec!["x"];
            if flag_args.is_empty() {
                argv.extend([flag.as_str(), value]);
            } else {
                argv.extend(flag_args);
            }
            let want = JobSettings::new("", &Flags::parse_from(argv).job);
            let mut got = defaults();
            got.set(name, value).unwrap();
            assert_eq!(got, want, "{name}");
            assert_ne!(got, defaults(), "{name} changed nothing");
            let mut snake = defaults();
            snake.set(&name.replace('-', "_"), value).unwrap();
            assert_eq!(snake, want, "{name} (snake_case)");
        }
    }

    #[test]
    fn bad_values_name_the_option() {
        for (name, value, says) in [
            ("steps", "many", "steps"),
            ("steps", "-3", "steps"),
            ("seed", "1.5", "seed"),
            ("region", "everywhere", "auto, whole, crop"),
            ("mode", "paint", "projection"),
            ("extend", "1,2", "extend"),
            ("no-paste-back", "maybe", "true or false"),
            ("sampler", "euler", "unknown option"),
        ] {
            let e = defaults().set(name, value).unwrap_err();
            assert!(e.contains(says), "{name}={value}: {e}");
        }
        let mut s = defaults();
        s.set("steps", "0").unwrap();
        assert!(format!("{}", s.check().unwrap_err()).contains("at least 1"));
        s.set("steps", "2").unwrap();
        s.set("guidance-scale", "NaN").unwrap();
        assert!(format!("{}", s.check().unwrap_err()).contains("finite"));
    }

    #[test]
    fn settings_json_reads_back_to_the_same_settings() {
        let mut s = defaults();
        for (k, v) in [
            ("prompt", "a cat"),
            ("steps", "3"),
            ("region", "whole"),
            ("extend", "0,8,0,8"),
            ("mode", "both"),
            ("no-paste-back", "true"),
        ] {
            s.set(k, v).unwrap();
        }
        let json = s.to_json(99);
        let mut back = defaults();
        for (k, v) in json.as_object().unwrap() {
            let text = match v {
                serde_json::Value::String(t) => t.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            back.set(k, &text).unwrap();
        }
        s.seed = Some(99);
        assert_eq!(back, s);
    }
}
