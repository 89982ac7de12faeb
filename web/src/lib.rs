//! nullpaint in the browser: a wasm-bindgen face on the library's pipeline (the same
//! `StableDiffusion::load` and `inpaint_async` the CLI runs; no second copy of the loop).
//!
//! Runs inside a Web Worker (`www/worker.js`): WebGPU device creation is async, model files
//! are `Blob`s from IndexedDB read synchronously with `FileReaderSync`, and the denoising loop
//! awaits the device after every step so the worker still hears "cancel".
//!
//! After candle's `candle-wasm-examples` (a thin bindgen layer over the library) and the
//! wgpu/WebGPU set-up of Burn's `examples/image-classification-web`.

mod console_log;
mod source;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::rc::Rc;

use burn::tensor::Device;
use nullpaint::device::{AdapterInfo, Precision};
use nullpaint::pipeline::{
    Extend, InpaintOptions, MaskImage, Progress, RgbImage, StableDiffusion, Stage,
};
use nullpaint::single_file::{SingleFileOptions, SingleFileSource};
use serde::Deserialize;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use source::{BlobSource, js_error};

/// Runs once when the module is instantiated: panics go to the console and to the page
/// (`self.nullpaintPanic(message, fault)` when the worker defines it), since a panic ends the
/// instance. `fault`: "out-of-memory" or "lost" when the panic is the GPU failing (Burn, CubeCL
/// and wgpu report both by panicking; the library's `GpuFault` recognises them), else "". The
/// page then starts a new engine; the stored models stay in IndexedDB.
///
/// It also sends Rust's diagnostics to the console ([`console_log`]) at the level of the
/// global `nullpaintLogLevel` (default "warn").
#[wasm_bindgen(start)]
pub fn start() {
    let level = js_sys::Reflect::get(&js_sys::global(), &"nullpaintLogLevel".into())
        .ok()
        .and_then(|v| v.as_string())
        .and_then(|name| console_log::parse_level(&name))
        .unwrap_or(tracing::Level::WARN);
    console_log::install(level);
    std::panic::set_hook(Box::new(|info| {
        let text = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let fault = match nullpaint::device::GpuFault::from_panic_message(&text) {
            Some(nullpaint::device::GpuFault::OutOfMemory(_)) => "out-of-memory",
            Some(nullpaint::device::GpuFault::Lost(_)) => "lost",
            None => "",
        };
        let message = format!("nullpaint crashed: {info}");
        web_sys::console::error_1(&message.clone().into());
        let global = js_sys::global();
        if let Ok(f) = js_sys::Reflect::get(&global, &"nullpaintPanic".into())
            && let Some(f) = f.dyn_ref::<js_sys::Function>()
        {
            let _ = f.call2(&JsValue::NULL, &message.into(), &fault.into());
        }
    }));
}

/// The files of a model to download or store among `paths` (its paths inside the model): the
/// library's manifest, the same choice the CLI makes online and offline. Throws why the files
/// are not a model the engine reads.
#[wasm_bindgen(js_name = chooseFiles)]
pub fn choose_files(paths: Vec<String>, name: String) -> Result<Vec<String>, JsError> {
    nullpaint::manifest::choose_files(&paths, &name).map_err(|e| JsError::new(&e.to_string()))
}

/// "out-of-memory" or "lost" when an error message of the engine is the GPU failing (the same
/// recognition as the panic hook's), else "". The worker restarts the engine for those: a lost
/// device stays lost, and errors on it are returned (not panics) where reads are asynchronous.
#[wasm_bindgen(js_name = gpuFaultKind)]
pub fn gpu_fault_kind(message: &str) -> String {
    match nullpaint::device::GpuFault::from_panic_message(message) {
        Some(nullpaint::device::GpuFault::OutOfMemory(_)) => "out-of-memory".into(),
        Some(nullpaint::device::GpuFault::Lost(_)) => "lost".into(),
        None => String::new(),
    }
}

/// Bytes of wasm linear memory. It only grows, so after a load this is the heap's peak.
#[wasm_bindgen(js_name = heapBytes)]
pub fn heap_bytes() -> f64 {
    wasm_bindgen::memory()
        .dyn_into::<js_sys::WebAssembly::Memory>()
        .ok()
        .and_then(|m| m.buffer().dyn_into::<js_sys::ArrayBuffer>().ok())
        .map_or(0.0, |b| b.byte_length() as f64)
}

/// The inpainting engine on one WebGPU device.
#[wasm_bindgen]
pub struct Engine {
    device: Device,
    adapter: AdapterInfo,
    model: Option<Rc<StableDiffusion>>,
}

/// Options as the page sends them (camelCase); absent fields take the library's defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsOptions {
    prompt: String,
    #[serde(default)]
    negative_prompt: String,
    steps: Option<usize>,
    guidance_scale: Option<f32>,
    /// A number or a decimal string (seeds above 2^53 do not fit a JS number).
    seed: Option<serde_json::Value>,
    dilation: Option<usize>,
    paste_back: Option<bool>,
    preview: Option<bool>,
    /// "auto" | "whole" | "crop".
    region: Option<String>,
    context: Option<usize>,
    feather: Option<usize>,
    /// [left, top, right, bottom] pixels.
    extend: Option<[usize; 4]>,
    /// "auto" | "projection" | "inpaint-unet" | "both".
    mode: Option<String>,
}

impl JsOptions {
    fn into_options(self) -> Result<InpaintOptions, String> {
        let defaults = InpaintOptions::default();
        let seed = match self.seed {
            None => defaults.seed,
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| format!("seed {n} is not a whole number from 0 to 2^64-1"))?,
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| format!("seed {s:?} is not a whole number from 0 to 2^64-1"))?,
            Some(other) => return Err(format!("seed {other} is not a number")),
        };
        Ok(InpaintOptions {
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            steps: self.steps.unwrap_or(defaults.steps),
            guidance_scale: self.guidance_scale.unwrap_or(defaults.guidance_scale),
            seed,
            dilation: self.dilation.unwrap_or(defaults.dilation),
            paste_back: self.paste_back.unwrap_or(defaults.paste_back),
            preview: self.preview.unwrap_or(defaults.preview),
            region: match self.region {
                Some(r) => r.parse()?,
                None => defaults.region,
            },
            context: self.context.unwrap_or(defaults.context),
            feather: self.feather.unwrap_or(defaults.feather),
            extend: self
                .extend
                .map(|[left, top, right, bottom]| Extend {
                    left,
                    top,
                    right,
                    bottom,
                })
                .unwrap_or(defaults.extend),
            mode: match self.mode {
                Some(m) => m.parse()?,
                None => defaults.mode,
            },
        })
    }
}

fn to_js<T: serde::Serialize>(value: &T) -> Result<JsValue, JsError> {
    let text = serde_json::to_string(value).map_err(|e| JsError::new(&e.to_string()))?;
    js_sys::JSON::parse(&text).map_err(|e| JsError::new(&js_error(&e)))
}

fn set(object: &js_sys::Object, key: &str, value: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = js_sys::Reflect::set(object, &key.into(), &value.into());
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::EncodingPrompt => "encoding-prompt",
        Stage::EncodingImage => "encoding-image",
        Stage::Denoising => "denoising",
        Stage::Decoding => "decoding",
    }
}

fn dtype_name(dtype: burn::tensor::FloatDType) -> &'static str {
    match dtype {
        burn::tensor::FloatDType::F16 => "f16",
        burn::tensor::FloatDType::F32 => "f32",
        _ => "other",
    }
}

fn rgba(image: &RgbImage) -> Vec<u8> {
    image
        .data
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect()
}

/// Incremental SHA-256 for the model store (WebCrypto only hashes whole buffers).
#[wasm_bindgen]
pub struct Sha256(sha2::Sha256);

#[wasm_bindgen]
impl Sha256 {
    #[wasm_bindgen(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Sha256 {
        Sha256(sha2::Digest::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    /// The digest as lowercase hex; the hasher is consumed.
    pub fn finish(self) -> String {
        sha2::Digest::finalize(self.0)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[wasm_bindgen]
impl Engine {
    /// Opens the WebGPU adapter and device (with the adapter's own limits and features) and
    /// chooses the float precision of everything on it: `"auto"` (default: f16 when a
    /// hardware adapter has `shader-f16`, f32 otherwise: f16 weights are then upcast tensor by
    /// tensor while loading), `"f32"` or `"f16"`. Fails with a message when the browser has no WebGPU.
    pub async fn create(precision: Option<String>) -> Result<Engine, JsError> {
        let precision = match precision.as_deref().unwrap_or("auto") {
            "auto" => Precision::Auto,
            "f32" => Precision::F32,
            "f16" => Precision::F16,
            other => {
                return Err(JsError::new(&format!(
                    "precision {other:?}: use \"auto\", \"f32\" or \"f16\""
                )));
            }
        };
        let (mut device, adapter) = nullpaint::device::wgpu_async().await.map_err(|e| {
            let detail = match e {
                nullpaint::device::DeviceError::NoAdapter(detail) => detail,
                other => other.to_string(),
            };
            JsError::new(&format!(
                "This browser gave no WebGPU adapter (details: {detail})."
            ))
        })?;
        // Before any tensor exists on the device: Burn fixes its dtype at the first one.
        let chosen = nullpaint::device::configure_precision(&mut device, Some(&adapter), precision)
            .map_err(|e| JsError::new(&e.to_string()))?;
        tracing::info!("WebGPU device: {adapter}, precision {chosen:?}");
        Ok(Engine {
            device,
            adapter,
            model: None,
        })
    }

    /// The adapter: `{ name, backend, deviceType, driver, shaderF16, maxBufferSize,
    /// maxStorageBufferBindingSize, dtype, attention }` (`dtype`: the precision chosen at
    /// creation; `attention`: the UNet's attention kernel on this device, `"flash"`,
    /// `"flash (tensor cores)"` or `"chunked"`, the score matrix in query chunks).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> Result<JsValue, JsError> {
        let a = &self.adapter;
        let object = js_sys::Object::new();
        set(&object, "name", a.name.as_str());
        set(&object, "backend", a.backend.as_str());
        set(&object, "deviceType", a.device_type.as_str());
        set(&object, "driver", a.driver.as_str());
        set(&object, "shaderF16", a.shader_f16);
        set(&object, "maxBufferSize", a.max_buffer_size as f64);
        set(
            &object,
            "maxStorageBufferBindingSize",
            a.max_storage_buffer_binding_size as f64,
        );
        let float_dtype = self.device.settings().float_dtype;
        set(&object, "dtype", dtype_name(float_dtype));
        // SD's head sizes are 40-160; 64 stands for them.
        use nullpaint::kernel::attention::{FlashKind, flash_kind};
        let attention = match flash_kind(&self.device, float_dtype.into(), 64) {
            Some(FlashKind::Accelerated) => "flash (tensor cores)",
            Some(FlashKind::Unit) => "flash",
            None => "chunked",
        };
        set(&object, "attention", attention);
        Ok(object.into())
    }

    /// Loads a diffusers Stable Diffusion model from its files (`Map<path, Blob>`), streaming
    /// the weights tensor by tensor to the GPU. `onProgress(bytesRead, totalBytes, path)`.
    /// Returns `{ name, sizeMultiple, workingSize, inpaintingUnet, seconds, heapBytes,
    /// weightsDType }` (`workingSize`: the model's trained size in pixels; larger photos run by
    /// regions; `inpaintingUnet`: the modes `inpaint-unet` and `both` are available).
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(
        &mut self,
        name: String,
        files: js_sys::Map,
        on_progress: js_sys::Function,
    ) -> Result<JsValue, JsError> {
        let mut blobs = BTreeMap::new();
        for entry in files.entries() {
            let pair: js_sys::Array = entry.map_err(|e| JsError::new(&js_error(&e)))?.into();
            let path = pair.get(0).as_string().ok_or_else(|| {
                JsError::new("model files: every key must be a path inside the model folder")
            })?;
            let blob = pair
                .get(1)
                .dyn_into::<web_sys::Blob>()
                .map_err(|_| JsError::new(&format!("model file {path}: not a Blob")))?;
            blobs.insert(path, blob);
        }
        // Free the previous model's GPU memory before loading the next.
        self.model = None;
        let started = js_sys::Date::now();
        let source =
            BlobSource::new(name.clone(), blobs, on_progress).map_err(|e| JsError::new(&e))?;
        // A single-file checkpoint (original CompVis / A1111 layout) is read with the bundled
        // configs and tokenizer of its family; a diffusers folder as it is.
        let loaded = match source.single_file() {
            Some(path) => {
                let path = path.to_string();
                let tensors = source
                    .tensors(&path)
                    .map_err(|e| JsError::new(&e.to_string()))?;
                let single = SingleFileSource::new(tensors, SingleFileOptions::default())
                    .map_err(|e| JsError::new(&e.to_string()))?;
                StableDiffusion::load(&single, &self.device).map_err(|e| {
                    format!(
                        "{e} (a single file is read with the bundled configs of its family, full-size SD 1.5 or 2.1; a model of another structure needs its diffusers folder)"
                    )
                })
            }
            None => StableDiffusion::load(&source, &self.device).map_err(|e| e.to_string()),
        };
        let mut model = loaded.map_err(|e| JsError::new(&e))?;
        // Tile the VAE only where an activation would pass this adapter's binding limit.
        model.vae_tiling =
            nullpaint::models::vae_tiling::VaeTiling::for_adapter(Some(&self.adapter));
        let info = serde_json::json!({
            "name": name,
            "sizeMultiple": model.size_multiple,
            "workingSize": model.working_size,
            "inpaintingUnet": model.has_inpainting_unet(),
            "seconds": (js_sys::Date::now() - started) / 1000.0,
            "heapBytes": heap_bytes(),
            "weightsDType": dtype_name(self.device.settings().float_dtype),
        });
        self.model = Some(Rc::new(model));
        to_js(&info)
    }

    /// Runs one 1-step inpaint at the model's working size so that the shaders of a run are
    /// compiled now rather than during the user's first step. Resolves to `{ seconds }`.
    #[wasm_bindgen(js_name = warmUp)]
    pub fn warm_up(&self) -> Result<js_sys::Promise, JsError> {
        let model = self.model()?;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let started = js_sys::Date::now();
            model
                .warm_up_async()
                .await
                .map_err(|e| JsValue::from(js_sys::Error::new(&format!("warm-up: {e}"))))?;
            let result = js_sys::Object::new();
            set(&result, "seconds", (js_sys::Date::now() - started) / 1000.0);
            Ok(result.into())
        }))
    }

    /// Drops the loaded model and its GPU memory.
    #[wasm_bindgen(js_name = unloadModel)]
    pub fn unload_model(&mut self) {
        self.model = None;
    }

    /// How a prompt tokenizes: `{ tokens, maxLength, dropped }` (tokens past the text
    /// encoder's length are ignored; the page warns).
    #[wasm_bindgen(js_name = promptTokens)]
    pub fn prompt_tokens(&self, prompt: &str) -> Result<JsValue, JsError> {
        let model = self.model()?;
        let encoded = model
            .tokenizer
            .encode(prompt)
            .map_err(|e| JsError::new(&e.to_string()))?;
        let max = model.tokenizer.max_length();
        to_js(&serde_json::json!({
            "tokens": (max - 2).min(encoded.ids.len()) + encoded.dropped,
            "maxLength": max,
            "dropped": encoded.dropped,
        }))
    }

    fn model(&self) -> Result<Rc<StableDiffusion>, JsError> {
        self.model
            .clone()
            .ok_or_else(|| JsError::new("no model is loaded: load one in the model manager first"))
    }

    /// Inpaints: `rgba` is the photo (4 bytes per pixel, as `ImageData.data`), `mask` one byte
    /// per pixel (>= 128 = fill), at the photo's full resolution: photos larger than the
    /// model's working size run by regions (options `region`, `context`, `feather`; `extend`
    /// grows the canvas). `onProgress(event)` gets `{ region, regions, x, y, width, height,
    /// runWidth, runHeight }` before each region (1-based), `{ stage }`, or `{ step, total,
    /// timestep, preview?: { width, height, rgba } }`; returning `false` cancels. Resolves to
    /// `{ width, height, rgba }`: the result, with the extension when one was asked for.
    pub fn inpaint(
        &self,
        rgba_in: &[u8],
        width: u32,
        height: u32,
        mask: &[u8],
        options: JsValue,
        on_progress: js_sys::Function,
    ) -> Result<js_sys::Promise, JsError> {
        let model = self.model()?;
        let (w, h) = (width as usize, height as usize);
        if rgba_in.len() != w * h * 4 {
            return Err(JsError::new(&format!(
                "image: {} bytes for {w}x{h} RGBA pixels",
                rgba_in.len()
            )));
        }
        let image = RgbImage {
            width: w,
            height: h,
            data: rgba_in
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        };
        let mask = MaskImage {
            width: w,
            height: h,
            data: mask.to_vec(),
        };
        let text = js_sys::JSON::stringify(&options)
            .map_err(|e| JsError::new(&js_error(&e)))?
            .as_string()
            .unwrap_or_default();
        let options = serde_json::from_str::<JsOptions>(&text)
            .map_err(|e| JsError::new(&format!("options: {e}")))?
            .into_options()
            .map_err(|e| JsError::new(&format!("options: {e}")))?;
        model
            .validate(&image, &mask, &options)
            .map_err(|e| JsError::new(&e.to_string()))?;

        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let mut report = |p: Progress| {
                let event = js_sys::Object::new();
                match p {
                    Progress::Region {
                        index,
                        count,
                        region,
                    } => {
                        set(&event, "region", index as u32 + 1);
                        set(&event, "regions", count as u32);
                        set(&event, "x", region.rect.x as u32);
                        set(&event, "y", region.rect.y as u32);
                        set(&event, "width", region.rect.width as u32);
                        set(&event, "height", region.rect.height as u32);
                        set(&event, "runWidth", region.run_width as u32);
                        set(&event, "runHeight", region.run_height as u32);
                    }
                    Progress::Stage(stage) => set(&event, "stage", stage_name(stage)),
                    Progress::Step {
                        step,
                        total,
                        timestep,
                        preview,
                    } => {
                        set(&event, "step", step as u32);
                        set(&event, "total", total as u32);
                        set(&event, "timestep", timestep as u32);
                        if let Some(p) = preview {
                            let object = js_sys::Object::new();
                            set(&object, "width", p.width as u32);
                            set(&object, "height", p.height as u32);
                            set(
                                &object,
                                "rgba",
                                js_sys::Uint8ClampedArray::from(rgba(&p).as_slice()),
                            );
                            set(&event, "preview", object);
                        }
                    }
                }
                match on_progress.call1(&JsValue::NULL, &event) {
                    Ok(v) if v == JsValue::FALSE => ControlFlow::Break(()),
                    _ => ControlFlow::Continue(()),
                }
            };
            let out = model
                .inpaint_async(&image, &mask, &options, &mut report)
                .await
                .map_err(|e| JsValue::from(js_sys::Error::new(&e.to_string())))?;
            let result = js_sys::Object::new();
            set(&result, "width", out.width as u32);
            set(&result, "height", out.height as u32);
            set(
                &result,
                "rgba",
                js_sys::Uint8Array::from(rgba(&out).as_slice()),
            );
            Ok(result.into())
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::JsOptions;

    fn parse(json: &str) -> Result<nullpaint::pipeline::InpaintOptions, String> {
        serde_json::from_str::<JsOptions>(json)
            .map_err(|e| e.to_string())?
            .into_options()
    }

    #[test]
    fn options_take_defaults_numbers_and_decimal_seeds() {
        let o = parse(r#"{"prompt":"a cat"}"#).unwrap();
        let d = nullpaint::pipeline::InpaintOptions::default();
        assert_eq!((o.steps, o.dilation, o.seed), (d.steps, d.dilation, d.seed));
        let o = parse(r#"{"prompt":"a","steps":4,"guidanceScale":5.5,"seed":42,"dilation":1,"negativePrompt":"b","preview":true}"#).unwrap();
        assert_eq!(
            (o.steps, o.guidance_scale, o.seed, o.dilation),
            (4, 5.5, 42, 1)
        );
        assert_eq!(o.negative_prompt, "b");
        assert!(o.preview);
        assert_eq!(
            (o.region, o.context, o.feather, o.extend),
            (d.region, d.context, d.feather, d.extend)
        );
        let o =
            parse(r#"{"prompt":"a","region":"crop","context":64,"feather":8,"extend":[1,2,3,4]}"#)
                .unwrap();
        assert_eq!(o.region, nullpaint::regions::RegionMode::Crop);
        assert_eq!((o.context, o.feather), (64, 8));
        assert_eq!(
            o.extend,
            nullpaint::regions::Extend {
                left: 1,
                top: 2,
                right: 3,
                bottom: 4
            }
        );
        // Above 2^53 a JS number loses digits: the page sends seeds as strings.
        let o = parse(r#"{"prompt":"a","seed":"18446744073709551615"}"#).unwrap();
        assert_eq!(o.seed, u64::MAX);
        let o = parse(r#"{"prompt":"a","mode":"inpaint-unet"}"#).unwrap();
        assert_eq!(o.mode, nullpaint::pipeline::InpaintMode::InpaintUnet);
        assert_eq!(d.mode, nullpaint::pipeline::InpaintMode::Auto);
    }

    #[test]
    fn options_reject_bad_seeds_and_unknown_fields() {
        for (json, needle) in [
            (r#"{"prompt":"a","seed":-1}"#, "seed -1"),
            (r#"{"prompt":"a","seed":1.5}"#, "seed 1.5"),
            (r#"{"prompt":"a","seed":"12x"}"#, "seed \"12x\""),
            (r#"{"prompt":"a","seed":"18446744073709551616"}"#, "2^64-1"),
            (r#"{"prompt":"a","seed":true}"#, "not a number"),
            (r#"{"prompt":"a","guidance":7}"#, "unknown field `guidance`"),
            (
                r#"{"prompt":"a","region":"tiles"}"#,
                "region mode \"tiles\"",
            ),
            (r#"{"prompt":"a","extend":[1,2,3]}"#, "invalid length 3"),
            (r#"{"prompt":"a","mode":"blend"}"#, "unknown mode \"blend\""),
            (r#"{"prompt":"a","feather":-1}"#, "integer `-1`"),
            (r#"{"steps":4}"#, "missing field `prompt`"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
