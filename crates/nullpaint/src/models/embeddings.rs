//! Timestep embeddings: `Timesteps` (sinusoidal, computed on the host) and `TimestepEmbedding`.
//!
//! Port of diffusers (0.42) `models/embeddings.py` (`get_timestep_embedding`, `Timesteps`,
//! `TimestepEmbedding` with `act_fn="silu"`). The sinusoid is evaluated in f32 step by step, as
//! PyTorch does, so that `t * freq` rounds the same way (at t = 999 an argument error of one f32
//! ulp is ~6e-5).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

/// `get_timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift)` with
/// `scale = 1`, `max_period = 10000`: `[len(timesteps), dim]` values, row-major.
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
) -> Vec<f32> {
    let half = dim / 2;
    let neg_log_period = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((i as f32 * neg_log_period) / (half as f32 - downscale_freq_shift)).exp())
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            out.extend(cos.chain(sin));
        } else {
            out.extend(sin.chain(cos));
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

/// `TimestepEmbedding`: `linear_1`, silu, `linear_2`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(in_channels: usize, time_embed_dim: usize, device: &Device) -> Self {
        Self {
            linear_1: LinearConfig::new(in_channels, time_embed_dim).init(device),
            linear_2: LinearConfig::new(time_embed_dim, time_embed_dim).init(device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, in_channels]` -> `[batch, time_embed_dim]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// The sinusoidal projection of `timesteps` as a tensor `[batch, dim]`.
pub fn timesteps_tensor(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f32,
    device: &Device,
) -> Tensor<2> {
    let values = timestep_embedding(timesteps, dim, flip_sin_to_cos, shift);
    Tensor::from_data(TensorData::new(values, [timesteps.len(), dim]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_layout() {
        // t = 0: sin = 0, cos = 1; flip puts cos first.
        assert_eq!(
            timestep_embedding(&[0.0], 4, false, 1.0),
            vec![0.0, 0.0, 1.0, 1.0]
        );
        assert_eq!(
            timestep_embedding(&[0.0], 4, true, 0.0),
            vec![1.0, 1.0, 0.0, 0.0]
        );
        // First frequency is 1: sin(t).
        let e = timestep_embedding(&[2.0], 6, false, 0.0);
        assert!((e[0] - 2f32.sin()).abs() < 1e-7);
        assert_eq!(timestep_embedding(&[1.0, 2.0], 5, false, 0.0).len(), 10);
    }
}
