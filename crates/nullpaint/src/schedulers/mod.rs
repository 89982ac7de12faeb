//! Samplers. The pipeline needs, per denoising step, the timestep and the two cumulative alphas
//! of the DDIM update; [`Scheduler`] is that contract, one file per scheduler.

pub mod ddim;

pub use ddim::{DdimScheduler, DdimSchedulerConfig, PredictionType};

/// The coefficients of one denoising step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCoefficients {
    /// The timestep given to the UNet.
    pub timestep: usize,
    /// `alphas_cumprod[t]`.
    pub alpha_prod_t: f32,
    /// `alphas_cumprod[t_prev]`, or the final alpha after the last step.
    pub alpha_prod_t_prev: f32,
}

/// A deterministic sampler with a DDIM-form update.
pub trait Scheduler {
    /// Timesteps of the current schedule, from noisiest to cleanest.
    fn timesteps(&self) -> &[usize];
    /// Coefficients of step `index` (0-based position in [`Scheduler::timesteps`]).
    fn coefficients(&self, index: usize) -> StepCoefficients;
    /// What the UNet predicts.
    fn prediction_type(&self) -> PredictionType;
    /// `Some(r)` when the predicted clean sample is clamped to `[-r, r]` (diffusers'
    /// `clip_sample`).
    fn clip_sample(&self) -> Option<f32>;
}

/// Errors of scheduler configuration.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Config(#[from] crate::models::ConfigError),
    #[error(
        "steps = {steps} is out of range for this model's scheduler: choose between 1 and {max}"
    )]
    Steps { steps: usize, max: usize },
}
