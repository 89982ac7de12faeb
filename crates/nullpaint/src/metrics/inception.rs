//! The InceptionV3 of FID: pytorch-fid 0.3.0's `InceptionV3(use_fid_inception=True)`, up to the
//! 2048-d final average pool (its block 3), with its input handling.
//!
//! Port of `pytorch_fid/inception.py` (`fid_inception_v3`: torchvision's `Inception3` with the
//! `FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1` and `FIDInceptionE_2` blocks, which pool
//! with `count_include_pad=False`, and max-pool in the last block, as TensorFlow's FID graph
//! does) and of torchvision's `models/inception.py` (`BasicConv2d`, `InceptionB`, `InceptionD`).
//! Field names are the checkpoint's keys (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.
//! running_mean`, ...), so the FID weights (`pt_inception-2015-12-05-6726825d.pth`, converted to
//! safetensors by tests/fixtures/convert_inception.py) load by name.
//!
//! Input handling ([`preprocess`]): 8-bit RGB to `[0, 1]` (torchvision's `ToTensor`), resized to
//! 299 x 299 by bilinear interpolation with `align_corners=False` and no antialiasing (torch's
//! `F.interpolate`, computed here on the CPU the way torch's CPU kernel computes it), then
//! scaled to `[-1, 1]`.

#![allow(non_snake_case)] // the checkpoint's names

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::module::{adaptive_avg_pool2d, avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

use crate::pixels::RgbImage;
use crate::weights::{KeyMap, TensorSource, WeightError, load_module, torch_keys};

/// The side the network runs at.
pub const INPUT_SIZE: usize = 299;
/// Width of the pool features FID compares.
pub const FEATURES: usize = 2048;

/// `nn.BatchNorm2d(eps=0.001)` in inference: the running statistics.
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: Param<Tensor<1>>,
    pub running_var: Param<Tensor<1>>,
}

impl BatchNorm2d {
    fn new(channels: usize, device: &Device) -> Self {
        let p = |v: f32| Param::from_tensor(Tensor::full([channels], v, device));
        Self {
            weight: p(1.0),
            bias: p(0.0),
            running_mean: p(0.0),
            running_var: p(1.0),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, c, h, w]` -> same
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let scale = self.weight.val() / (self.running_var.val() + 1e-3).sqrt();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        let c = scale.dims()[0];
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }
}

/// torchvision's `BasicConv2d`: convolution without bias, batch norm, ReLU.
#[derive(Module, Debug)]
pub struct BasicConv2d {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl BasicConv2d {
    /// `kernel` and `padding` as `[height, width]`.
    fn new(
        i: usize,
        o: usize,
        kernel: [usize; 2],
        stride: usize,
        padding: [usize; 2],
        device: &Device,
    ) -> Self {
        let [ph, pw] = padding;
        Self {
            conv: Conv2dConfig::new([i, o], kernel)
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
                .with_bias(false)
                .init(device),
            bn: BatchNorm2d::new(o, device),
        }
    }

    fn square(i: usize, o: usize, k: usize, stride: usize, pad: usize, device: &Device) -> Self {
        Self::new(i, o, [k, k], stride, [pad, pad], device)
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // the engine's convolution (the CPU fast path on the CPU backend)
        relu(self.bn.forward(crate::models::ops::conv2d(&self.conv, x)))
    }
}

/// 3x3 max pooling, stride 2, no padding (the stem and the reduction blocks).
fn max_pool_3s2(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2]))
}

/// 3x3 average pooling, stride 1, padding 1, the padding not counted (the FID blocks).
fn avg_pool_3s1(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(
        x,
        AvgPoolOptions::new([3, 3])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_count_include_pad(false),
    )
}

/// `FIDInceptionA`.
#[derive(Module, Debug)]
pub struct InceptionA {
    pub branch1x1: BasicConv2d,
    pub branch5x5_1: BasicConv2d,
    pub branch5x5_2: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3: BasicConv2d,
    pub branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(i: usize, pool_features: usize, d: &Device) -> Self {
        Self {
            branch1x1: BasicConv2d::square(i, 64, 1, 1, 0, d),
            branch5x5_1: BasicConv2d::square(i, 48, 1, 1, 0, d),
            branch5x5_2: BasicConv2d::square(48, 64, 5, 1, 2, d),
            branch3x3dbl_1: BasicConv2d::square(i, 64, 1, 1, 0, d),
            branch3x3dbl_2: BasicConv2d::square(64, 96, 3, 1, 1, d),
            branch3x3dbl_3: BasicConv2d::square(96, 96, 3, 1, 1, d),
            branch_pool: BasicConv2d::square(i, pool_features, 1, 1, 0, d),
        }
    }

    /// `[b, i, h, w]` -> `[b, 224 + pool_features, h, w]`
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self
            .branch5x5_2
            .forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        let bp = self.branch_pool.forward(avg_pool_3s1(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// torchvision's `InceptionB` (grid reduction 35 -> 17).
#[derive(Module, Debug)]
pub struct InceptionB {
    pub branch3x3: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(i: usize, d: &Device) -> Self {
        Self {
            branch3x3: BasicConv2d::square(i, 384, 3, 2, 0, d),
            branch3x3dbl_1: BasicConv2d::square(i, 64, 1, 1, 0, d),
            branch3x3dbl_2: BasicConv2d::square(64, 96, 3, 1, 1, d),
            branch3x3dbl_3: BasicConv2d::square(96, 96, 3, 2, 0, d),
        }
    }

    /// `[b, i, h, w]` -> `[b, 480 + i, (h - 3) / 2 + 1, ...]`
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        Tensor::cat(vec![b3, bd, max_pool_3s2(x)], 1)
    }
}

/// `FIDInceptionC` (factorised 7x7).
#[derive(Module, Debug)]
pub struct InceptionC {
    pub branch1x1: BasicConv2d,
    pub branch7x7_1: BasicConv2d,
    pub branch7x7_2: BasicConv2d,
    pub branch7x7_3: BasicConv2d,
    pub branch7x7dbl_1: BasicConv2d,
    pub branch7x7dbl_2: BasicConv2d,
    pub branch7x7dbl_3: BasicConv2d,
    pub branch7x7dbl_4: BasicConv2d,
    pub branch7x7dbl_5: BasicConv2d,
    pub branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(i: usize, c7: usize, d: &Device) -> Self {
        let row = |a, b| BasicConv2d::new(a, b, [1, 7], 1, [0, 3], d);
        let col = |a, b| BasicConv2d::new(a, b, [7, 1], 1, [3, 0], d);
        Self {
            branch1x1: BasicConv2d::square(i, 192, 1, 1, 0, d),
            branch7x7_1: BasicConv2d::square(i, c7, 1, 1, 0, d),
            branch7x7_2: row(c7, c7),
            branch7x7_3: col(c7, 192),
            branch7x7dbl_1: BasicConv2d::square(i, c7, 1, 1, 0, d),
            branch7x7dbl_2: col(c7, c7),
            branch7x7dbl_3: row(c7, c7),
            branch7x7dbl_4: col(c7, c7),
            branch7x7dbl_5: row(c7, 192),
            branch_pool: BasicConv2d::square(i, 192, 1, 1, 0, d),
        }
    }

    /// `[b, 768, h, w]` -> `[b, 768, h, w]`
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let mut b7 = self.branch7x7_1.forward(x.clone());
        b7 = self.branch7x7_3.forward(self.branch7x7_2.forward(b7));
        let mut bd = self.branch7x7dbl_1.forward(x.clone());
        bd = self.branch7x7dbl_2.forward(bd);
        bd = self.branch7x7dbl_3.forward(bd);
        bd = self.branch7x7dbl_4.forward(bd);
        bd = self.branch7x7dbl_5.forward(bd);
        let bp = self.branch_pool.forward(avg_pool_3s1(x));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }
}

/// torchvision's `InceptionD` (grid reduction 17 -> 8).
#[derive(Module, Debug)]
pub struct InceptionD {
    pub branch3x3_1: BasicConv2d,
    pub branch3x3_2: BasicConv2d,
    pub branch7x7x3_1: BasicConv2d,
    pub branch7x7x3_2: BasicConv2d,
    pub branch7x7x3_3: BasicConv2d,
    pub branch7x7x3_4: BasicConv2d,
}

impl InceptionD {
    fn new(i: usize, d: &Device) -> Self {
        Self {
            branch3x3_1: BasicConv2d::square(i, 192, 1, 1, 0, d),
            branch3x3_2: BasicConv2d::square(192, 320, 3, 2, 0, d),
            branch7x7x3_1: BasicConv2d::square(i, 192, 1, 1, 0, d),
            branch7x7x3_2: BasicConv2d::new(192, 192, [1, 7], 1, [0, 3], d),
            branch7x7x3_3: BasicConv2d::new(192, 192, [7, 1], 1, [3, 0], d),
            branch7x7x3_4: BasicConv2d::square(192, 192, 3, 2, 0, d),
        }
    }

    /// `[b, 768, 17, 17]` -> `[b, 1280, 8, 8]`
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self
            .branch3x3_2
            .forward(self.branch3x3_1.forward(x.clone()));
        let mut b7 = self.branch7x7x3_1.forward(x.clone());
        b7 = self.branch7x7x3_2.forward(b7);
        b7 = self.branch7x7x3_3.forward(b7);
        b7 = self.branch7x7x3_4.forward(b7);
        Tensor::cat(vec![b3, b7, max_pool_3s2(x)], 1)
    }
}

/// `FIDInceptionE_1` (average pool, padding not counted) or `FIDInceptionE_2` (max pool).
#[derive(Module, Debug)]
pub struct InceptionE {
    pub branch1x1: BasicConv2d,
    pub branch3x3_1: BasicConv2d,
    pub branch3x3_2a: BasicConv2d,
    pub branch3x3_2b: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3a: BasicConv2d,
    pub branch3x3dbl_3b: BasicConv2d,
    pub branch_pool: BasicConv2d,
    max_pool: bool,
}

impl InceptionE {
    fn new(i: usize, max_pool: bool, d: &Device) -> Self {
        let row = |a, b| BasicConv2d::new(a, b, [1, 3], 1, [0, 1], d);
        let col = |a, b| BasicConv2d::new(a, b, [3, 1], 1, [1, 0], d);
        Self {
            branch1x1: BasicConv2d::square(i, 320, 1, 1, 0, d),
            branch3x3_1: BasicConv2d::square(i, 384, 1, 1, 0, d),
            branch3x3_2a: row(384, 384),
            branch3x3_2b: col(384, 384),
            branch3x3dbl_1: BasicConv2d::square(i, 448, 1, 1, 0, d),
            branch3x3dbl_2: BasicConv2d::square(448, 384, 3, 1, 1, d),
            branch3x3dbl_3a: row(384, 384),
            branch3x3dbl_3b: col(384, 384),
            branch_pool: BasicConv2d::square(i, 192, 1, 1, 0, d),
            max_pool,
        }
    }

    /// `[b, i, 8, 8]` -> `[b, 2048, 8, 8]`
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b3 = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![
                self.branch3x3_2a.forward(b3.clone()),
                self.branch3x3_2b.forward(b3),
            ],
            1,
        );
        let bd = self
            .branch3x3dbl_2
            .forward(self.branch3x3dbl_1.forward(x.clone()));
        let bd = Tensor::cat(
            vec![
                self.branch3x3dbl_3a.forward(bd.clone()),
                self.branch3x3dbl_3b.forward(bd),
            ],
            1,
        );
        let pooled = if self.max_pool {
            max_pool2d(
                x,
                MaxPoolOptions::new([3, 3])
                    .with_stride([1, 1])
                    .with_padding([1, 1]),
            )
        } else {
            avg_pool_3s1(x)
        };
        let bp = self.branch_pool.forward(pooled);
        Tensor::cat(vec![b1, b3, bd, bp], 1)
    }
}

/// pytorch-fid's InceptionV3 up to the 2048-d pool features.
#[derive(Module, Debug)]
pub struct FidInceptionV3 {
    pub Conv2d_1a_3x3: BasicConv2d,
    pub Conv2d_2a_3x3: BasicConv2d,
    pub Conv2d_2b_3x3: BasicConv2d,
    pub Conv2d_3b_1x1: BasicConv2d,
    pub Conv2d_4a_3x3: BasicConv2d,
    pub Mixed_5b: InceptionA,
    pub Mixed_5c: InceptionA,
    pub Mixed_5d: InceptionA,
    pub Mixed_6a: InceptionB,
    pub Mixed_6b: InceptionC,
    pub Mixed_6c: InceptionC,
    pub Mixed_6d: InceptionC,
    pub Mixed_6e: InceptionC,
    pub Mixed_7a: InceptionD,
    pub Mixed_7b: InceptionE,
    pub Mixed_7c: InceptionE,
}

impl FidInceptionV3 {
    /// The structure (weights to be loaded).
    pub fn new(d: &Device) -> Self {
        Self {
            Conv2d_1a_3x3: BasicConv2d::square(3, 32, 3, 2, 0, d),
            Conv2d_2a_3x3: BasicConv2d::square(32, 32, 3, 1, 0, d),
            Conv2d_2b_3x3: BasicConv2d::square(32, 64, 3, 1, 1, d),
            Conv2d_3b_1x1: BasicConv2d::square(64, 80, 1, 1, 0, d),
            Conv2d_4a_3x3: BasicConv2d::square(80, 192, 3, 1, 0, d),
            Mixed_5b: InceptionA::new(192, 32, d),
            Mixed_5c: InceptionA::new(256, 64, d),
            Mixed_5d: InceptionA::new(288, 64, d),
            Mixed_6a: InceptionB::new(288, d),
            Mixed_6b: InceptionC::new(768, 128, d),
            Mixed_6c: InceptionC::new(768, 160, d),
            Mixed_6d: InceptionC::new(768, 160, d),
            Mixed_6e: InceptionC::new(768, 192, d),
            Mixed_7a: InceptionD::new(768, d),
            Mixed_7b: InceptionE::new(1280, false, d),
            Mixed_7c: InceptionE::new(2048, true, d),
        }
    }

    /// Loads the FID weights (`Conv2d_1a_3x3.conv.weight`, ...). The checkpoint's classifier
    /// (`fc.*`) and BatchNorm counters (`*.num_batches_tracked`) are not needed and ignored.
    pub fn load(source: &dyn TensorSource, device: &Device) -> Result<Self, WeightError> {
        let model = Self::new(device);
        let mut ignored = vec!["fc.weight".to_string(), "fc.bias".to_string()];
        for (key, _) in torch_keys(&model) {
            if let Some(prefix) = key.strip_suffix(".bn.weight") {
                ignored.push(format!("{prefix}.bn.num_batches_tracked"));
            }
        }
        let keys = KeyMap {
            prefixes: vec![],
            ignored,
        };
        load_module(model, source, &keys, device)
    }

    /// The 2048-d pool features of pictures already preprocessed ([`preprocess`]).
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 299, 299]` in `[-1, 1]` -> `[batch, 2048]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.Conv2d_1a_3x3.forward(x); // [b, 32, 149, 149]
        let x = self.Conv2d_2a_3x3.forward(x); // [b, 32, 147, 147]
        let x = self.Conv2d_2b_3x3.forward(x); // [b, 64, 147, 147]
        let x = max_pool_3s2(x); // [b, 64, 73, 73]
        let x = self.Conv2d_3b_1x1.forward(x); // [b, 80, 73, 73]
        let x = self.Conv2d_4a_3x3.forward(x); // [b, 192, 71, 71]
        let x = max_pool_3s2(x); // [b, 192, 35, 35]
        let x = self.Mixed_5b.forward(x); // [b, 256, 35, 35]
        let x = self.Mixed_5c.forward(x); // [b, 288, 35, 35]
        let x = self.Mixed_5d.forward(x); // [b, 288, 35, 35]
        let x = self.Mixed_6a.forward(x); // [b, 768, 17, 17]
        let x = self.Mixed_6b.forward(x);
        let x = self.Mixed_6c.forward(x);
        let x = self.Mixed_6d.forward(x);
        let x = self.Mixed_6e.forward(x); // [b, 768, 17, 17]
        let x = self.Mixed_7a.forward(x); // [b, 1280, 8, 8]
        let x = self.Mixed_7b.forward(x); // [b, 2048, 8, 8]
        let x = self.Mixed_7c.forward(x); // [b, 2048, 8, 8]
        let b = x.dims()[0];
        adaptive_avg_pool2d(x, [1, 1]).reshape([b, FEATURES])
    }

    /// The features of one picture: [`preprocess`], then [`Self::forward`].
    pub fn features(&self, image: &RgbImage) -> Tensor<2> {
        let device = self.Conv2d_1a_3x3.conv.weight.device();
        let data = preprocess(image);
        let x = Tensor::<1>::from_data(
            TensorData::new(data, [3 * INPUT_SIZE * INPUT_SIZE]),
            &device,
        )
        .reshape([1, 3, INPUT_SIZE, INPUT_SIZE]);
        self.forward(x)
    }
}

/// torch's CPU `upsample_bilinear2d` (align_corners=False) source index and weights along one
/// axis: for each output index, the first input index, its neighbour's offset (0 at the last
/// row) and the two weights, in f32 as torch computes them.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let real = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let index = (real.floor() as usize).min(input - 1);
            let lambda = (real - index as f32).clamp(0.0, 1.0);
            let offset = usize::from(index < input - 1);
            (index, offset, 1.0 - lambda, lambda)
        })
        .collect()
}

/// 8-bit RGB to the network's input, `[3, 299, 299]` planes in `[-1, 1]` (see the module).
pub fn preprocess(image: &RgbImage) -> Vec<f32> {
    let (w, h) = (image.width, image.height);
    let rows = linear_taps(h, INPUT_SIZE);
    let cols = linear_taps(w, INPUT_SIZE);
    let mut out = vec![0f32; 3 * INPUT_SIZE * INPUT_SIZE];
    for c in 0..3 {
        let px = |y: usize, x: usize| image.data[(y * w + x) * 3 + c] as f32 / 255.0;
        for (oy, &(y0, dy, hy0, hy1)) in rows.iter().enumerate() {
            for (ox, &(x0, dx, wx0, wx1)) in cols.iter().enumerate() {
                let top = wx0 * px(y0, x0) + wx1 * px(y0, x0 + dx);
                let bottom = wx0 * px(y0 + dy, x0) + wx1 * px(y0 + dy, x0 + dx);
                let v = hy0 * top + hy1 * bottom;
                out[(c * INPUT_SIZE + oy) * INPUT_SIZE + ox] = 2.0 * v - 1.0;
            }
        }
    }
    out
}
