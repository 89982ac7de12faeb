//! Backend selection: Burn's wgpu backend (Vulkan / Metal / DX12 natively, WebGPU in the
//! browser) or its pure-Rust CPU backend (`flex`).
//!
//! wgpu can be initialised once per process; [`wgpu`] does it on first use and hands out
//! clones of the same device afterwards.

use burn::tensor::{Device, FloatDType};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// wgpu when a hardware adapter exists, else the CPU (with a warning).
    #[default]
    Auto,
    Wgpu,
    Cpu,
}

/// The adapter a wgpu device runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    pub name: String,
    /// Vulkan, Metal, Dx12, BrowserWebGpu, ...
    pub backend: String,
    /// DiscreteGpu, IntegratedGpu, Cpu (software rasterisers such as lavapipe), ...
    pub device_type: String,
    pub driver: String,
    /// Whether the device can run f16 arithmetic in shaders (`shader-f16`).
    pub shader_f16: bool,
    /// The device's limits (CubeCL requests the adapter's own).
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
}

impl std::fmt::Display for AdapterInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Browsers hide the adapter's name and driver (fingerprinting).
        let name = if self.name.is_empty() {
            "unnamed adapter"
        } else {
            &self.name
        };
        write!(f, "{name} ({}, {}", self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", driver {}", self.driver)?;
        }
        f.write_str(")")
    }
}

/// Errors of device selection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "no wgpu adapter: {0}. Install a Vulkan driver (on Debian: `apt-get install mesa-vulkan-drivers` gives the software adapter lavapipe), or use --backend cpu"
    )]
    NoAdapter(String),
    #[error(
        "f16 was asked for, but {0} cannot run f16 shaders (no shader-f16); use --precision f32 or auto"
    )]
    NoF16(String),
    #[error("cannot set the float precision of the device: {0}")]
    Configure(String),
}

/// Float precision of weights and activations on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 on a GPU whose adapter has `shader-f16`, f32 elsewhere (the CPU, software adapters
    /// without it, browsers without it).
    #[default]
    Auto,
    F32,
    F16,
}

/// Sets the float dtype of `device` and returns it (never `Auto`). The device must not hold any tensor yet (Burn fixes a device's
/// defaults at its first tensor). Weights stored in another dtype are converted one tensor at
/// a time while loading, so every module ends up in this one dtype: mixing f16 and f32 tensors
/// in one op gives wrong values in Burn 0.22 without an error. Inside the models, norm
/// statistics (Burn widens them) and attention (see `models::attention`) still run in f32.
///
/// `adapter`: the wgpu adapter behind `device`, `None` for the CPU backend (always f32).
/// `Auto` takes f16 on hardware adapters with `shader-f16`; software adapters (lavapipe,
/// SwiftShader) run f32 faster than f16, so they get f32 unless f16 is asked for.
pub fn configure_precision(
    device: &mut Device,
    adapter: Option<&AdapterInfo>,
    precision: Precision,
) -> Result<Precision, DeviceError> {
    let can = adapter.is_some_and(|a| a.shader_f16);
    let hardware = adapter.is_some_and(|a| a.device_type != "Cpu");
    let dtype = match precision {
        Precision::F32 => FloatDType::F32,
        Precision::F16 if !can => {
            return Err(DeviceError::NoF16(
                adapter.map_or_else(|| "the CPU backend".to_string(), |a| a.to_string()),
            ));
        }
        Precision::F16 => FloatDType::F16,
        Precision::Auto if can && hardware => FloatDType::F16,
        Precision::Auto => FloatDType::F32,
    };
    let chosen = if dtype == FloatDType::F16 {
        Precision::F16
    } else {
        Precision::F32
    };
    if device.settings().float_dtype == dtype {
        return Ok(chosen);
    }
    device
        .configure(dtype)
        .map_err(|e| DeviceError::Configure(format!("{e:?}")))?;
    Ok(chosen)
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

/// The pure-Rust CPU device.
pub fn cpu() -> Device {
    Device::flex()
}

/// What a GPU device's memory pools hold, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBytes {
    /// Held by live tensors (and their padding).
    pub in_use: u64,
    /// Allocated from the driver by the pools: what the device gives up.
    pub reserved: u64,
}

/// The pools' state now, read from the CubeCL client; `None` off CubeCL devices (the CPU
/// backend). Unlike Burn's `Device::memory_pool_usage` this does not drain the fusion queue
/// first: another thread can sample it while work runs without changing what gets fused (it
/// sees what the device has allocated so far, not work still only recorded).
pub fn pool_bytes_now(device: &Device) -> Option<PoolBytes> {
    let burn::backend::DispatchDevice::Cube(cube) = device.as_dispatch() else {
        return None;
    };
    let usage = cube
        .client()
        .memory_report(cubecl::MemoryScope::Device)
        .usage();
    Some(PoolBytes {
        in_use: usage.bytes_in_use,
        reserved: usage.bytes_reserved,
    })
}

#[cfg(not(target_arch = "wasm32"))]
static WGPU: std::sync::OnceLock<Result<(Device, AdapterInfo), DeviceError>> =
    std::sync::OnceLock::new();

/// Where CubeCL keeps what it learns about a GPU between runs (autotune results, throughput
/// measurements): `NULLPAINT_GPU_CACHE`, else `$XDG_CACHE_HOME/nullpaint/gpu`, else
/// `~/.cache/nullpaint/gpu` (`%LOCALAPPDATA%\nullpaint\gpu` on Windows). `None` when no such
/// directory can be named (then tuning results live for one process only).
#[cfg(not(target_arch = "wasm32"))]
pub fn gpu_cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("NULLPAINT_GPU_CACHE") {
        return Some(dir);
    }
    let base = var("XDG_CACHE_HOME")
        .or_else(|| var("LOCALAPPDATA"))
        .or_else(|| var("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("nullpaint").join("gpu"))
}

/// Points CubeCL's persistent cache at [`gpu_cache_dir`] before the first device exists, keeping
/// every other setting of a `cubecl.toml` / `burn.toml` the user has. Without this, CubeCL
/// writes into a `target/` folder next to the outermost `Cargo.toml` above the working directory.
#[cfg(not(target_arch = "wasm32"))]
fn configure_gpu_cache() {
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    let Some(dir) = gpu_cache_dir() else {
        tracing::warn!(
            "no cache directory (set NULLPAINT_GPU_CACHE): GPU autotune results are not kept between runs"
        );
        return;
    };
    // What `CubeClRuntimeConfig::get` would load (files, then `CUBECL_*` variables).
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.environment.path = CacheConfig::Directory(dir);
    // `false` when something read or set the configuration first: that choice stands.
    if !CubeClRuntimeConfig::try_set(config) {
        tracing::debug!("CubeCL's configuration was already set; its cache location stands");
    }
}

/// The process-wide wgpu device and its adapter, initialised on first call (native).
/// `NULLPAINT_WGPU_LIMITS=webgpu` makes it [`wgpu_webgpu_limits`]'s device.
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu() -> Result<(Device, AdapterInfo), DeviceError> {
    if browser_limits_requested() {
        return wgpu_webgpu_limits();
    }
    WGPU.get_or_init(|| {
        configure_gpu_cache();
        // On Linux, ask for Vulkan first: letting wgpu probe every API also initialises EGL,
        // which prints errors on headless machines. Anything else lets wgpu choose.
        #[cfg(target_os = "linux")]
        if let Ok((device, setup)) = Device::wgpu_options()
            .graphics_api(burn::tensor::wgpu::WgpuBackend::Vulkan)
            .init_with_setup()
        {
            return Ok((device, adapter_info(&setup)));
        }
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| DeviceError::NoAdapter(e.to_string()))?;
        Ok((device, adapter_info(&setup)))
    })
    .clone()
}

/// Whether `NULLPAINT_WGPU_LIMITS=webgpu` asks the native wgpu device for the browser's limits.
#[cfg(not(target_arch = "wasm32"))]
fn browser_limits_requested() -> bool {
    match std::env::var("NULLPAINT_WGPU_LIMITS") {
        Ok(v) if v == "webgpu" => true,
        Ok(v) if v.is_empty() || v == "adapter" => false,
        Ok(v) => {
            tracing::warn!(
                "NULLPAINT_WGPU_LIMITS={v:?} is not understood (use `webgpu` or `adapter`); using the adapter's limits"
            );
            false
        }
        Err(_) => false,
    }
}

/// A native wgpu device that asks for no more than WebGPU's default limits (the ones every
/// browser grants: 8 storage buffers per shader stage, 128 MiB per storage binding, 256 MiB
/// buffers, 16 KiB of workgroup memory). Burn and CubeCL size their kernels from the device's
/// limits, so on this device they build what the page builds: kernel fusion, tiling and binding
/// counts can be tested natively (`NULLPAINT_WGPU_LIMITS=webgpu`) instead of in a browser. The
/// features stay the adapter's (CubeCL reads them from the adapter).
///
/// One per process, initialised on first call, separate from [`wgpu`]'s (unless the variable
/// makes them the same).
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu_webgpu_limits() -> Result<(Device, AdapterInfo), DeviceError> {
    static LIMITED: std::sync::OnceLock<Result<(Device, AdapterInfo), DeviceError>> =
        std::sync::OnceLock::new();
    LIMITED
        .get_or_init(|| {
            configure_gpu_cache();
            browser_limited_device()
        })
        .clone()
}

#[cfg(not(target_arch = "wasm32"))]
fn browser_limited_device() -> Result<(Device, AdapterInfo), DeviceError> {
    use burn::tensor::wgpu::{WgpuSetup, wgpu};
    let no_adapter = |e: String| DeviceError::NoAdapter(e);
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // As in `wgpu()`: Vulkan only on Linux, so that EGL is never probed on headless machines.
    if cfg!(target_os = "linux") {
        descriptor.backends = wgpu::Backends::VULKAN;
    }
    let instance = wgpu::Instance::new(descriptor);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| no_adapter(e.to_string()))?;
    // CubeCL decides which types its kernels use from the adapter's features (not the
    // device's), so the device must enable all of them, as CubeCL's own set-up does.
    let features = adapter
        .features()
        .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("nullpaint (WebGPU default limits)"),
        required_features: features,
        required_limits: wgpu::Limits::default(),
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        trace: wgpu::Trace::Off,
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
    }))
    .map_err(|e| no_adapter(format!("the adapter refused WebGPU's default limits: {e}")))?;
    let backend = adapter.get_info().backend;
    let setup = WgpuSetup {
        instance,
        adapter,
        device,
        queue,
        backend,
    };
    let info = adapter_info(&setup);
    tracing::info!("wgpu device with WebGPU's default limits (NULLPAINT_WGPU_LIMITS=webgpu)");
    let device = Device::wgpu_options()
        .setup(setup)
        .init()
        .map_err(|e| no_adapter(e.to_string()))?;
    Ok((device, info))
}

/// Initialises wgpu asynchronously (the browser's only way; also works natively).
pub async fn wgpu_async() -> Result<(Device, AdapterInfo), DeviceError> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map_err(|e| DeviceError::NoAdapter(e.to_string()))?;
    Ok((device, adapter_info(&setup)))
}

fn adapter_info(setup: &burn::tensor::wgpu::WgpuSetup) -> AdapterInfo {
    let info = setup.adapter.get_info();
    let limits = setup.device.limits();
    AdapterInfo {
        shader_f16: setup
            .device
            .features()
            .contains(burn::tensor::wgpu::wgpu::Features::SHADER_F16),
        max_buffer_size: limits.max_buffer_size,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        name: info.name,
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
    }
}

/// A device chosen by [`select`].
#[derive(Debug, Clone)]
pub struct Selected {
    pub device: Device,
    /// For messages: `cpu (flex)`, `wgpu: <adapter>`.
    pub description: String,
    /// The wgpu adapter, `None` on the CPU backend.
    pub adapter: Option<AdapterInfo>,
}

/// Resolves a [`BackendChoice`] natively: `Auto` falls back to the CPU with a warning.
#[cfg(not(target_arch = "wasm32"))]
pub fn select(choice: BackendChoice) -> Result<Selected, DeviceError> {
    let on_cpu = || Selected {
        device: cpu(),
        description: "cpu (flex)".into(),
        adapter: None,
    };
    let on_gpu = |device, info: AdapterInfo| Selected {
        device,
        description: format!("wgpu: {info}"),
        adapter: Some(info),
    };
    match choice {
        BackendChoice::Cpu => Ok(on_cpu()),
        BackendChoice::Wgpu => wgpu().map(|(d, info)| on_gpu(d, info)),
        BackendChoice::Auto => match wgpu() {
            // A software rasteriser (lavapipe, SwiftShader, WARP) is slower than the native CPU
            // backend; `--backend wgpu` still selects it explicitly.
            Ok((_, info)) if info.device_type == "Cpu" => {
                tracing::warn!(
                    "the only wgpu adapter is a software one ({info}); running on the CPU backend instead"
                );
                Ok(on_cpu())
            }
            Ok((d, info)) => Ok(on_gpu(d, info)),
            Err(e) => {
                tracing::warn!("{e}; running on the CPU, which is much slower");
                Ok(on_cpu())
            }
        },
    }
}

/// The GPU failing under a run: out of memory, or the device lost (driver reset, GPU removed,
/// browser GPU process restarted). Burn, CubeCL and wgpu report both by panicking (wgpu's
/// uncaptured-error handler, CubeCL's `DevicePoisoned`); [`catch_gpu_faults`] turns those panics
/// into this error with what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuFault {
    #[error(
        "the GPU ran out of memory ({0}). Try less context around the hole (--context), \
         f16 (--precision f16) on a GPU with shader-f16, or the CPU backend (--backend cpu)"
    )]
    OutOfMemory(String),
    #[error(
        "the GPU device was lost ({0}): its driver reset it or it went away. Run again; if it \
         happens again, try less context around the hole (--context) or the CPU backend \
         (--backend cpu)"
    )]
    Lost(String),
}

impl GpuFault {
    /// Recognises a GPU fault in a panic message of Burn / CubeCL / wgpu; `None` for anything
    /// else (a bug, which stays a panic).
    pub fn from_panic_message(message: &str) -> Option<Self> {
        let m = message.to_ascii_lowercase();
        // The line that names the fault (Burn wraps it in several "Caused by:" lines).
        let detail = |key: &str| {
            message
                .lines()
                .find(|l| l.to_ascii_lowercase().contains(key))
                .unwrap_or(message)
                .trim()
                .to_string()
        };
        let lost = [
            "device lost",
            "devicelost",
            "device was lost",
            "poisoned",
            "lost the device",
            // wgpu when reading back from a device that is gone.
            "could not be mapped",
        ];
        let oom = [
            "out of memory",
            "outofmemory",
            "buffertoobig",
            "exceeds the limit",
            "max_buffer_size",
            "larger than the max",
            "failed to allocate",
            "cannot allocate",
            "can't allocate",
            // CubeCL when a buffer could not be created (over the device's limits or memory).
            "the reservation behind it failed",
        ];
        // Memory first: running out can also make a read-back mapping fail.
        if let Some(k) = oom.iter().find(|k| m.contains(*k)) {
            Some(Self::OutOfMemory(detail(k)))
        } else {
            lost.iter()
                .find(|k| m.contains(*k))
                .map(|k| Self::Lost(detail(k)))
        }
    }
}

/// Runs `f` (work on a device) and returns [`GpuFault`] when the GPU fails under it, instead of
/// the panic Burn raises. The panic message is kept out of the terminal (logged at debug
/// level); panics that are not GPU faults continue as panics. Native only: in the browser a
/// panic aborts the WebAssembly instance, and the page re-creates its engine (www/app.js).
///
/// After a fault the device may be unusable (a lost device stays lost): callers report the
/// error and stop, or select a new device.
#[cfg(not(target_arch = "wasm32"))]
pub fn catch_gpu_faults<T>(f: impl FnOnce() -> T) -> Result<T, GpuFault> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let text = panic_text(info.payload());
        let location = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        tracing::debug!("panic{location}: {text}");
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    match result {
        Ok(value) => Ok(value),
        Err(payload) => {
            let text = panic_text(&*payload);
            match GpuFault::from_panic_message(&text) {
                Some(fault) => Err(fault),
                None => {
                    // Not the GPU: show it as the default hook would have, then go on panicking.
                    eprintln!("panic: {text}");
                    std::panic::resume_unwind(payload)
                }
            }
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
