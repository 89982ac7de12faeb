//! Backend selection: Burn's wgpu backend (Vulkan / Metal / DX12 natively, WebGPU in the
//! browser) or its pure-Rust CPU backend (`flex`).
//!
//! wgpu can be initialised once per process; [`wgpu`] does it on first use and hands out
//! clones of the same device afterwards.

use burn::tensor::Device;

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
        write!(
            f,
            "{} ({}, {}, driver {})",
            self.name, self.backend, self.device_type, self.driver
        )
    }
}

/// Errors of device selection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "no wgpu adapter: {0}. Install a Vulkan driver (on Debian: `apt-get install mesa-vulkan-drivers` gives the software adapter lavapipe), or use --backend cpu"
    )]
    NoAdapter(String),
}

/// The pure-Rust CPU device.
pub fn cpu() -> Device {
    Device::flex()
}

#[cfg(not(target_arch = "wasm32"))]
static WGPU: std::sync::OnceLock<Result<(Device, AdapterInfo), DeviceError>> =
    std::sync::OnceLock::new();

/// The process-wide wgpu device and its adapter, initialised on first call (native).
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu() -> Result<(Device, AdapterInfo), DeviceError> {
    WGPU.get_or_init(|| {
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

/// Resolves a [`BackendChoice`] natively: `Auto` falls back to the CPU with a warning.
#[cfg(not(target_arch = "wasm32"))]
pub fn select(choice: BackendChoice) -> Result<(Device, String), DeviceError> {
    match choice {
        BackendChoice::Cpu => Ok((cpu(), "cpu (flex)".into())),
        BackendChoice::Wgpu => wgpu().map(|(d, info)| (d, format!("wgpu: {info}"))),
        BackendChoice::Auto => match wgpu() {
            // A software rasteriser (lavapipe, SwiftShader, WARP) is slower than the native CPU
            // backend; `--backend wgpu` still selects it explicitly.
            Ok((_, info)) if info.device_type == "Cpu" => {
                tracing::warn!(
                    "the only wgpu adapter is a software one ({info}); running on the CPU backend instead"
                );
                Ok((cpu(), "cpu (flex)".into()))
            }
            Ok((d, info)) => Ok((d, format!("wgpu: {info}"))),
            Err(e) => {
                tracing::warn!("{e}; running on the CPU, which is much slower");
                Ok((cpu(), "cpu (flex)".into()))
            }
        },
    }
}
