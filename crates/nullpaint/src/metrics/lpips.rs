//! LPIPS (Zhang et al. 2018), version 0.1 with the AlexNet trunk, as the `lpips` package
//! (0.1.4, `lpips.LPIPS(net='alex')`) computes it: both pictures in `[-1, 1]`, its
//! `ScalingLayer`, torchvision's AlexNet `features` read after each of its five ReLUs, each tap
//! normalised to unit length over channels (`x / (|x| + 1e-10)`), squared differences weighted
//! by the package's 1x1 `lin` layers, averaged over space, summed over the taps. Lower is more
//! alike; 0 for identical pictures.
//!
//! Weights (`conv1..conv5.{weight,bias}` = torchvision's `features.{0,3,6,8,10}`,
//! `lin0..lin4.weight` = the package's `lin{k}.model.1.weight`) come from one safetensors file
//! written by tests/fixtures/convert_lpips.py from torchvision's AlexNet checkpoint and the
//! package's `weights/v0.1/alex.pth`.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor, TensorData};

use crate::pixels::RgbImage;
use crate::weights::{KeyMap, TensorSource, WeightError, load_module};

/// The `ScalingLayer`'s shift and scale per channel.
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// AlexNet's channels at the five taps.
pub const CHANNELS: [usize; 5] = [64, 192, 384, 256, 256];

/// LPIPS v0.1 on AlexNet.
#[derive(Module, Debug)]
pub struct Lpips {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Conv2d,
    pub conv4: Conv2d,
    pub conv5: Conv2d,
    pub lin0: Conv2d,
    pub lin1: Conv2d,
    pub lin2: Conv2d,
    pub lin3: Conv2d,
    pub lin4: Conv2d,
}

fn conv(i: usize, o: usize, k: usize, stride: usize, pad: usize, bias: bool, d: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(bias)
        .init(d)
}

fn max_pool_3s2(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2]))
}

/// `x / (sqrt(sum over channels of x²) + 1e-10)`.
fn unit(x: Tensor<4>) -> Tensor<4> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt() + 1e-10;
    x / norm
}

impl Lpips {
    pub fn new(d: &Device) -> Self {
        let [c1, c2, c3, c4, c5] = CHANNELS;
        Self {
            conv1: conv(3, c1, 11, 4, 2, true, d),
            conv2: conv(c1, c2, 5, 1, 2, true, d),
            conv3: conv(c2, c3, 3, 1, 1, true, d),
            conv4: conv(c3, c4, 3, 1, 1, true, d),
            conv5: conv(c4, c5, 3, 1, 1, true, d),
            lin0: conv(c1, 1, 1, 1, 0, false, d),
            lin1: conv(c2, 1, 1, 1, 0, false, d),
            lin2: conv(c3, 1, 1, 1, 0, false, d),
            lin3: conv(c4, 1, 1, 1, 0, false, d),
            lin4: conv(c5, 1, 1, 1, 0, false, d),
        }
    }

    pub fn load(source: &dyn TensorSource, device: &Device) -> Result<Self, WeightError> {
        load_module(Self::new(device), source, &KeyMap::default(), device)
    }

    /// The five ReLU taps of AlexNet's `features`.
    ///
    /// # Shapes
    /// - `x`: `[b, 3, h, w]` (scaled) -> `[b, 64, h1, w1]`, `[b, 192, ..]`, `[b, 384, ..]`,
    ///   `[b, 256, ..]`, `[b, 256, ..]`
    fn taps(&self, x: Tensor<4>) -> [Tensor<4>; 5] {
        let c = |conv: &Conv2d, x| relu(crate::models::ops::conv2d(conv, x));
        let r1 = c(&self.conv1, x);
        let r2 = c(&self.conv2, max_pool_3s2(r1.clone()));
        let r3 = c(&self.conv3, max_pool_3s2(r2.clone()));
        let r4 = c(&self.conv4, r3.clone());
        let r5 = c(&self.conv5, r4.clone());
        [r1, r2, r3, r4, r5]
    }

    /// LPIPS of two batches of pictures in `[-1, 1]`.
    ///
    /// # Shapes
    /// - `a`, `b`: `[batch, 3, h, w]` -> `[batch]`
    pub fn forward(&self, a: Tensor<4>, b: Tensor<4>) -> Tensor<1> {
        let device = a.device();
        let shift = Tensor::<1>::from_data(TensorData::new(SHIFT.to_vec(), [3]), &device)
            .reshape([1, 3, 1, 1]);
        let scale = Tensor::<1>::from_data(TensorData::new(SCALE.to_vec(), [3]), &device)
            .reshape([1, 3, 1, 1]);
        let scaled = |x: Tensor<4>| (x - shift.clone()) / scale.clone();
        let ta = self.taps(scaled(a));
        let tb = self.taps(scaled(b));
        let lins = [&self.lin0, &self.lin1, &self.lin2, &self.lin3, &self.lin4];
        let mut total: Option<Tensor<1>> = None;
        for ((fa, fb), lin) in ta.into_iter().zip(tb).zip(lins) {
            let d = (unit(fa) - unit(fb)).powi_scalar(2);
            let w = crate::models::ops::conv2d(lin, d); // [b, 1, h, w]
            let batch = w.dims()[0];
            let v = w.mean_dim(3).mean_dim(2).reshape([batch]);
            total = Some(match total {
                Some(t) => t + v,
                None => v,
            });
        }
        total.unwrap_or_else(|| Tensor::zeros([0], &device))
    }

    /// LPIPS of two 8-bit pictures of one size.
    pub fn distance(&self, a: &RgbImage, b: &RgbImage) -> Result<f64, String> {
        if (a.width, a.height) != (b.width, b.height) {
            return Err(format!(
                "LPIPS of pictures of different sizes: {}x{} and {}x{}",
                a.width, a.height, b.width, b.height
            ));
        }
        let device = self.conv1.weight.device();
        let planes = |p: &RgbImage| {
            let (w, h) = (p.width, p.height);
            let mut v = vec![0f32; 3 * w * h];
            for (i, px) in p.data.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    v[c * w * h + i] = px[c] as f32 / 255.0 * 2.0 - 1.0;
                }
            }
            Tensor::<1>::from_data(TensorData::new(v, [3 * w * h]), &device).reshape([1, 3, h, w])
        };
        let d = self
            .forward(planes(a), planes(b))
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| format!("reading LPIPS: {e:?}"))?;
        Ok(d[0] as f64)
    }
}
