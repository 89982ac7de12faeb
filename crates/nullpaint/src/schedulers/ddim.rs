//! DDIM (eta = 0), equal to diffusers' `DDIMScheduler`.
//!
//! Port of diffusers (0.42) `schedulers/scheduling_ddim.py`: `__init__` (betas, alphas_cumprod),
//! `set_timesteps` (leading / trailing / linspace spacing) and `step` with `eta = 0`. Reads any
//! `scheduler/scheduler_config.json`: SD 1.5 folders ship a PNDMScheduler config, whose betas,
//! offset and prediction type are taken as they are (missing keys get DDIMScheduler's defaults,
//! as `DDIMScheduler.from_pretrained` does). Arithmetic follows PyTorch's dtypes: betas and
//! alphas in f32, `cumprod` accumulated in f64 and stored in f32.

use burn::tensor::Tensor;
use serde::Deserialize;
use serde_json::Value;

use super::{Scheduler, SchedulerError, StepCoefficients};
use crate::models::ConfigError;

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise (SD 1.x, SD 2.x base).
    Epsilon,
    /// `v = sqrt(a) eps - sqrt(1 - a) x0` (SD 2.x 768).
    VPrediction,
}

/// The keys of a `scheduler_config.json` that define DDIM sampling.
#[derive(Debug, Clone, Deserialize)]
pub struct DdimSchedulerConfig {
    #[serde(default = "d::train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "d::beta_start")]
    pub beta_start: f64,
    #[serde(default = "d::beta_end")]
    pub beta_end: f64,
    #[serde(default = "d::beta_schedule")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "d::yes")]
    pub clip_sample: bool,
    #[serde(default = "d::one")]
    pub clip_sample_range: f64,
    #[serde(default = "d::yes")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "d::epsilon")]
    pub prediction_type: String,
    #[serde(default = "d::leading")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

mod d {
    pub fn train_steps() -> usize {
        1000
    }
    pub fn beta_start() -> f64 {
        0.0001
    }
    pub fn beta_end() -> f64 {
        0.02
    }
    pub fn beta_schedule() -> String {
        "linear".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn epsilon() -> String {
        "epsilon".into()
    }
    pub fn leading() -> String {
        "leading".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// DDIM with a schedule set for a number of inference steps.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: DdimSchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction: PredictionType,
    spacing: Spacing,
    timesteps: Vec<usize>,
    num_inference_steps: usize,
}

/// `torch.linspace(start, end, steps, dtype=float32)` (the scalar formula of ATen's CPU kernel).
fn linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

impl DdimScheduler {
    /// Parses a `scheduler_config.json` (of any scheduler class) for DDIM sampling.
    pub fn from_json(file: &str, bytes: &[u8]) -> Result<Self, SchedulerError> {
        let config: DdimSchedulerConfig = crate::models::parse_config(file, bytes)?;
        Self::new(config, file)
    }

    /// SD 1.5's scheduler settings (its `scheduler_config.json`, a PNDM config, run as DDIM).
    pub fn sd_v1_5() -> Self {
        let json = br#"{"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "clip_sample": false, "num_train_timesteps": 1000, "set_alpha_to_one": false, "steps_offset": 1}"#;
        Self::from_json("sd-v1-5 scheduler", json)
            .unwrap_or_else(|e| unreachable!("built-in config: {e}"))
    }

    pub fn new(config: DdimSchedulerConfig, file: &str) -> Result<Self, SchedulerError> {
        let err = |key: &str, value: String, hint: &str| {
            SchedulerError::from(ConfigError::Unsupported {
                file: file.into(),
                key: key.into(),
                value,
                hint: hint.into(),
            })
        };
        let n = config.num_train_timesteps;
        if n == 0 {
            return Err(err("num_train_timesteps", "0".into(), "must be positive"));
        }
        crate::models::check_at_most(
            file,
            "num_train_timesteps",
            n,
            crate::models::limits::TRAIN_TIMESTEPS,
        )?;
        let betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule.as_str()) {
            (Some(b), _) if b.len() != n => {
                return Err(err(
                    "trained_betas",
                    format!("{} values", b.len()),
                    &format!("needs num_train_timesteps = {n}"),
                ));
            }
            (Some(b), _) => b.iter().map(|&v| v as f32).collect(),
            (None, "linear") => linspace_f32(config.beta_start, config.beta_end, n),
            (None, "scaled_linear") => {
                linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            (None, "squaredcos_cap_v2") => {
                let alpha_bar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
            (None, other) => {
                return Err(err(
                    "beta_schedule",
                    other.into(),
                    "supported: linear, scaled_linear, squaredcos_cap_v2",
                ));
            }
        };
        if config.rescale_betas_zero_snr {
            return Err(err(
                "rescale_betas_zero_snr",
                "true".into(),
                "not supported by this engine",
            ));
        }
        if config.thresholding {
            return Err(err(
                "thresholding",
                "true".into(),
                "dynamic thresholding is for pixel-space models; not supported",
            ));
        }
        let prediction = match config.prediction_type.as_str() {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            other => {
                return Err(err(
                    "prediction_type",
                    other.into(),
                    "supported: epsilon, v_prediction",
                ));
            }
        };
        let spacing = match config.timestep_spacing.as_str() {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            other => {
                return Err(err(
                    "timestep_spacing",
                    other.into(),
                    "supported: leading, trailing, linspace",
                ));
            }
        };
        let mut acc = 1.0f64;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            prediction,
            spacing,
            timesteps: vec![],
            num_inference_steps: 0,
        })
    }

    /// `alphas_cumprod` over the training timesteps.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    pub fn config(&self) -> &DdimSchedulerConfig {
        &self.config
    }

    /// `set_timesteps(num_inference_steps)`.
    pub fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        let n = self.config.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(SchedulerError::Steps { steps, max: n });
        }
        let to_index = |t: f64| t.round_ties_even().max(0.0) as usize;
        let ts: Vec<usize> = match self.spacing {
            // np.linspace(0, n - 1, steps).round()[::-1]; numpy: i * step, the last value exact
            Spacing::Linspace => {
                let step = if steps > 1 {
                    (n - 1) as f64 / (steps - 1) as f64
                } else {
                    0.0
                };
                (0..steps)
                    .map(|i| {
                        if i + 1 == steps && steps > 1 {
                            (n - 1) as f64
                        } else {
                            i as f64 * step
                        }
                    })
                    .map(to_index)
                    .rev()
                    .collect()
            }
            // (np.arange(0, steps) * (n // steps)).round()[::-1] + steps_offset
            Spacing::Leading => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| i * ratio + self.config.steps_offset)
                    .collect()
            }
            // np.round(np.arange(n, 0, -n / steps)) - 1; numpy: start + i * delta
            Spacing::Trailing => {
                let delta = -(n as f64 / steps as f64);
                let len = ((0.0 - n as f64) / delta).ceil() as usize;
                (0..len.min(steps))
                    .map(|i| to_index(n as f64 + i as f64 * delta).saturating_sub(1))
                    .collect()
            }
        };
        // diffusers lets `steps_offset` push the first timestep past the training range (and
        // then fails indexing alphas_cumprod); say so instead.
        if let Some(&t) = ts.iter().find(|&&t| t >= n) {
            return Err(SchedulerError::Steps {
                steps,
                max: n - (t + 1 - n),
            });
        }
        self.timesteps = ts;
        self.num_inference_steps = steps;
        Ok(())
    }

    /// `prev_timestep = t - num_train_timesteps // num_inference_steps`, as diffusers computes it.
    fn prev_alpha(&self, t: usize) -> f32 {
        let step = self.config.num_train_timesteps / self.num_inference_steps.max(1);
        match t.checked_sub(step) {
            Some(p) => self.alphas_cumprod[p],
            None => self.final_alpha_cumprod,
        }
    }

    /// One DDIM step (eta = 0) with plain tensor ops: `(prev_sample, pred_original_sample)`.
    /// The pipeline fuses this with the projection in [`crate::kernel`]; this is the reference.
    ///
    /// # Shapes
    /// - `model_output`, `sample`: `[batch, c, h, w]` -> both outputs the same
    pub fn step(
        &self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let c = self.coefficients(index);
        let (a_t, a_p) = (c.alpha_prod_t, c.alpha_prod_t_prev);
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (x0, eps) = match self.prediction {
            PredictionType::Epsilon => ((sample - model_output.clone() * sb) / sa, model_output),
            PredictionType::VPrediction => (
                sample.clone() * sa - model_output.clone() * sb,
                model_output * sa + sample * sb,
            ),
        };
        let x0 = match self.clip_sample() {
            Some(r) => x0.clamp(-r, r),
            None => x0,
        };
        let prev = x0.clone() * a_p.sqrt() + eps * (1.0 - a_p).sqrt();
        (prev, x0)
    }
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn coefficients(&self, index: usize) -> StepCoefficients {
        let t = self.timesteps[index];
        StepCoefficients {
            timestep: t,
            alpha_prod_t: self.alphas_cumprod[t],
            alpha_prod_t_prev: self.prev_alpha(t),
        }
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    fn clip_sample(&self) -> Option<f32> {
        self.config
            .clip_sample
            .then_some(self.config.clip_sample_range as f32)
    }
}
