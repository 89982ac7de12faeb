//! nullpaint: zero-shot image inpainting with Stable Diffusion, by DDNM's null-space projection
//! done in latent space (see `shared/SPEC.md`), on Burn's wgpu backend (Vulkan / Metal / DX12 /
//! WebGPU) or its pure-Rust CPU backend.
//!
//! Layout, after diffusers: [`models`] (networks, built from `config.json`), [`weights`]
//! (safetensors loading by diffusers key names), [`tokenizer`] (CLIP BPE), [`device`] (backend
//! selection), [`regions`] (photos larger than the model: crops, scaling, the feathered
//! blend), [`pipeline`] (the method, shared by the CLI and the browser).

pub mod checkpoint;
#[cfg(not(target_arch = "wasm32"))]
pub mod cpu;
#[cfg(feature = "decode")]
pub mod decode;
pub mod device;
pub mod kernel;
pub mod manifest;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod pixels;
pub mod regions;
pub mod rng;
pub mod schedulers;
pub mod single_file;
pub mod tokenizer;
pub mod weights;
