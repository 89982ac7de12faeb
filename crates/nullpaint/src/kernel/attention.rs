//! Attention on CubeCL devices through the flash kernels of `cubek-attention` (the kernels Burn's
//! own attention op reaches only through autotune), chosen explicitly so that precision and memory
//! do not depend on what a tuner measured:
//!
//! - `Accelerated`: tensor-core (cooperative-matrix) tiles, for f16 on devices that report f16
//!   matrix instructions (Vulkan through SPIR-V, Metal, CUDA). The head dim must be a multiple of
//!   the instruction's 16, so SD 1.5's 40/80/160 are zero-padded to 48/96/160 with the query
//!   pre-scaled by `sqrt(padded / head_dim)` (the kernel scales by `1/sqrt(padded)`) and the
//!   output sliced back: zero columns add nothing to `q k^T` and give zero output columns.
//! - `Unit`: the same online-softmax algorithm on plain units, for every other wgpu device.
//!
//! Both accumulate the softmax and the weighted sum in f32 (`AccumulatorPrecision::Strict(F32)`),
//! so f16 activations need no widening, and neither materialises the `q_len x kv_len` score
//! matrix: no query chunking. Should a kernel refuse a shape at launch (an `InvalidConfig`), the
//! call falls back to Burn's score-matrix attention in query chunks of at most
//! [`crate::models::attention::SCORE_BUDGET_BYTES`], widened to f32, with one warning.
//!
//! Native and browser builds alike (the browser since 2026-11-29: the end-to-end test in headless
//! Chromium gives the native picture with it, and `tests/webgpu_limits.rs` runs it under
//! WebGPU's default limits natively). Turned off with
//! `NULLPAINT_FLASH_ATTENTION=0` (then the chunked path of
//! [`crate::models::attention::scaled_dot_product_attention`] runs everywhere).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::attention::attention_fallback;
use burn::backend::ops::{AttentionModuleOptions, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DispatchDevice, backend_extension};
use burn::tensor::{DType, Device, FloatDType, Slice, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::attention::flash_attention as cube_flash_attention;
use burn_cubecl::tensor::CubeTensor;
use cubek::attention::forward::launch::{BlueprintStrategy, Strategy};
use cubek::attention::forward::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;

use crate::models::attention::SCORE_BUDGET_BYTES;

/// Which flash kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashKind {
    /// Tensor-core tiles (f16 with f16 matrix instructions).
    Accelerated,
    /// Plain units.
    Unit,
}

/// Head dims of the accelerated kernel are multiples of this (the `k` of f16 MMA instructions).
const ACCELERATED_HEAD_ALIGN: usize = 16;

/// Planes (warps) per cube of the accelerated kernel: 4 x 32 threads, the middle of the 2/4/8
/// Burn's autotune tries.
const ACCELERATED_PLANES: u8 = 4;

/// Widest head the flash kernels take (SD's are 40-160; the VAE's 512 is not).
pub const MAX_FLASH_HEAD_DIM: usize = 160;

/// The flash kernel for activations of `dtype` with heads of `head_dim` on `device`; `None` off CubeCL devices or when
/// `NULLPAINT_FLASH_ATTENTION=0`.
pub fn flash_kind(device: &Device, dtype: DType, head_dim: usize) -> Option<FlashKind> {
    // The kernels unroll over the head dim: the VAE's single 512-wide head compiles for minutes
    // on a software adapter and runs no faster; it keeps the chunked score-matrix path.
    if head_dim > MAX_FLASH_HEAD_DIM {
        return None;
    }
    if std::env::var("NULLPAINT_FLASH_ATTENTION").is_ok_and(|v| v == "0") {
        return None;
    }
    let DispatchDevice::Cube(cube) = device.as_dispatch() else {
        return None;
    };
    let client = cube.client();
    let f16 = dtype_to_storage_type(DType::F16);
    let f32 = dtype_to_storage_type(DType::F32);
    let mma_f16 = client
        .properties()
        .features
        .matmul
        .cmma
        .iter()
        .any(|m| m.a_type == f16 && m.b_type == f16 && m.cd_type == f32);
    if dtype == DType::F16 && mma_f16 {
        Some(FlashKind::Accelerated)
    } else if client.properties().hardware.plane_size_max >= 2 {
        Some(FlashKind::Unit)
    } else {
        None
    }
}

/// `softmax(q k^T / sqrt(head_dim)) v` with a flash kernel.
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`, `k` / `v`: `[batch, heads, kv_len, head_dim]`
/// - output: `[batch, heads, q_len, head_dim]`
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, kind: FlashKind) -> Tensor<4> {
    let align = match kind {
        FlashKind::Accelerated => ACCELERATED_HEAD_ALIGN,
        FlashKind::Unit => 1,
    };
    flash_attention_aligned(q, k, v, kind, align)
}

/// [`flash_attention`] with the head dim zero-padded to a multiple of `align` (tests run the
/// padding on kernels that do not need it).
pub fn flash_attention_aligned(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    kind: FlashKind,
    align: usize,
) -> Tensor<4> {
    let [b, h, q_len, dh] = q.dims();
    let padded = dh.next_multiple_of(align.max(1));
    let (q, k, v) = if padded != dh {
        let pad = |t: Tensor<4>| {
            let [b, h, s, _] = t.dims();
            let zeros = Tensor::<4>::zeros([b, h, s, padded - dh], &t.device())
                .cast(FloatDType::from(t.dtype()));
            Tensor::cat(vec![t, zeros], 3)
        };
        // The kernel scales by 1/sqrt(padded); this makes it 1/sqrt(dh).
        let q = q.mul_scalar((padded as f64 / dh as f64).sqrt());
        (pad(q), pad(k), pad(v))
    } else {
        (q, k, v)
    };
    let out = Tensor::from_dispatch(
        <burn::backend::Dispatch as FlashAttentionBackend>::flash_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            kind == FlashKind::Accelerated,
        ),
    );
    if padded != dh {
        out.slice([0..b, 0..h, 0..q_len, 0..dh])
    } else {
        out
    }
}

/// Flash attention as a Burn backend extension (lazy under fusion, like the DDNM kernels).
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"))]
pub trait FlashAttentionBackend: Backend {
    /// `[b, h, q_len, d]` x `[b, h, kv_len, d]` x `[b, h, kv_len, d]` -> `[b, h, q_len, d]`.
    #[fusion(dtype = query, shape = query)]
    fn flash_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        accelerated: bool,
    ) -> FloatTensor<Self>;
}

static WARNED: AtomicBool = AtomicBool::new(false);
static FALLBACKS: AtomicUsize = AtomicUsize::new(0);

/// How many attention calls of this process fell back from a flash kernel to the chunked
/// score-matrix path (tests check that the flash kernels really ran).
pub fn fallback_count() -> usize {
    FALLBACKS.load(Ordering::Relaxed)
}

impl FlashAttentionBackend for CubeBackend {
    fn flash_attention(
        query: CubeTensor,
        key: CubeTensor,
        value: CubeTensor,
        accelerated: bool,
    ) -> CubeTensor {
        let strategy = if accelerated {
            Strategy::BlackboxAccelerated(BlueprintStrategy::Inferred(
                BlackboxAcceleratedStrategy {
                    num_planes: ACCELERATED_PLANES,
                    seq_q: 1,
                    seq_kv: 1,
                },
            ))
        } else {
            Strategy::Unit(BlueprintStrategy::Inferred(()))
        };
        match cube_flash_attention(
            query.clone(),
            key.clone(),
            value.clone(),
            None,
            None,
            options(),
            strategy,
        ) {
            Ok(out) => out,
            Err(err) => {
                FALLBACKS.fetch_add(1, Ordering::Relaxed);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "flash attention refused a [b, h, s, d] = {:?} problem ({err:?}); using chunked score-matrix attention",
                        query.meta.shape()
                    );
                }
                chunked_fallback(query, key, value)
            }
        }
    }
}

fn options() -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    }
}

/// Burn's score-matrix attention over query chunks, in f32.
fn chunked_fallback(query: CubeTensor, key: CubeTensor, value: CubeTensor) -> CubeTensor {
    let dtype = query.dtype;
    let narrow = dtype != DType::F32;
    let widen = |t: CubeTensor| {
        if narrow {
            CubeBackend::float_cast(t, FloatDType::F32)
        } else {
            t
        }
    };
    let (query, key, value) = (widen(query), widen(key), widen(value));
    let [b, h, q_len, _] = query.meta.shape().dims();
    let kv_len = key.meta.shape()[2];
    let per_query = (b * h * kv_len * 4).max(1);
    let chunk = (SCORE_BUDGET_BYTES / per_query).clamp(1, q_len.max(1));
    let out = if chunk >= q_len {
        attention_fallback::<CubeBackend>(query, key, value, None, None, options())
    } else {
        let parts = (0..q_len)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(q_len);
                let qc = CubeBackend::float_slice(
                    query.clone(),
                    &[
                        Slice::from(0..b),
                        Slice::from(0..h),
                        Slice::from(start..end),
                        Slice::full(),
                    ],
                );
                attention_fallback::<CubeBackend>(
                    qc,
                    key.clone(),
                    value.clone(),
                    None,
                    None,
                    options(),
                )
            })
            .collect();
        CubeBackend::float_cat(parts, 2)
    };
    if narrow {
        CubeBackend::float_cast(out, float_dtype(dtype))
    } else {
        out
    }
}

fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}
