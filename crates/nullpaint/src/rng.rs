//! `torch.randn` on the CPU generator, reproduced: the same seed gives the same initial latent
//! as diffusers, so users moving from diffusers get the same image for the same seed.
//!
//! Port of PyTorch (2.x) `aten/src/ATen/core/MT19937RNGEngine.h` (mt19937 seeded with the low 32
//! bits of the seed), `CPUGeneratorImpl::random` / `random64`, `core/DistributionsHelper.h`
//! (`uniform_real_distribution`, `normal_distribution` with its cached second sample) and
//! `native/cpu/DistributionTemplates.h` (`normal_fill`: for >= 16 contiguous f32 values, fill
//! with uniforms, then Box-Muller over blocks of 16 pairing `i` with `i + 8`, recomputing the
//! last 16 when the count is not a multiple of 16; fewer values take the scalar path).

/// The mt19937 engine as PyTorch's CPU generator uses it.
#[derive(Debug, Clone)]
pub struct TorchGenerator {
    state: [u32; 624],
    index: usize,
    /// `normal_distribution<double>` caches its second Box-Muller value in the generator.
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed as u32;
        for j in 1..624 {
            state[j] = 1_812_433_253u32
                .wrapping_mul(state[j - 1] ^ (state[j - 1] >> 30))
                .wrapping_add(j as u32);
        }
        Self {
            state,
            index: 624,
            next_double_normal: None,
        }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..624 {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % 624] & LOWER);
            let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= MATRIX_A;
            }
            self.state[i] = v;
        }
        self.index = 0;
    }

    /// `random()`: the next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random64()`: two outputs, the first in the high half.
    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits.
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits.
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `normal_distribution<double>(0, 1)` (the scalar path, with the cached second value).
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(n, generator=self, dtype=torch.float32)` as a flat vector.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        let mut i = 0;
        while i + 16 <= n {
            normal_fill_16(&mut data[i..i + 16]);
            i += 16;
        }
        if !n.is_multiple_of(16) {
            // PyTorch recomputes the last 16 values from fresh uniforms.
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data
    }
}

/// Box-Muller on 16 uniforms: `(data[j], data[j + 8])` for j < 8.
fn normal_fill_16(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0f32 - data[j]; // [0, 1) -> (0, 1] for the log
        let u2 = data[j + 8];
        // f32 arithmetic, as PyTorch's kernel (f64 intermediates differ by up to 1.2e-6).
        let radius = (-2.0f32 * u1.ln()).sqrt();
        let theta = (2.0 * std::f64::consts::PI) as f32 * u2;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}

/// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)`.
pub fn randn(seed: u64, shape: &[usize]) -> Vec<f32> {
    TorchGenerator::new(seed).randn(shape.iter().product())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_reference_outputs() {
        // std::mt19937 with the default seed 5489: the 10000th output is 4123659995 (C++ standard).
        let mut g = TorchGenerator::new(5489);
        let mut last = 0;
        for _ in 0..10000 {
            last = g.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }
}
