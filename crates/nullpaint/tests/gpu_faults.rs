//! GPU faults on a real wgpu device (lavapipe in CI): a device created with small limits runs
//! out of memory, a destroyed device is lost. Both must come back from
//! `nullpaint::device::catch_gpu_faults` as a `GpuFault` error with advice (the CLI prints it),
//! never as a panic; other panics (bugs) must stay panics. Also the reading of a device's memory
//! pools that `nullpaint bench` samples (`nullpaint::device::pool_bytes_now`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use burn::tensor::wgpu::{WgpuSetup, wgpu};
use burn::tensor::{Device, Tensor};
use nullpaint::device::{GpuFault, catch_gpu_faults};

/// A new Burn device on the first Vulkan adapter, its buffers capped at `max_buffer` bytes, with
/// the wgpu device behind it; `None` (skipped) without an adapter unless NULLPAINT_REQUIRE_WGPU=1.
fn device_with_limit(max_buffer: Option<u64>) -> Option<(Device, wgpu::Device)> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter =
        match pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        {
            Ok(adapter) => adapter,
            Err(e) => {
                if std::env::var("NULLPAINT_REQUIRE_WGPU").as_deref() == Ok("1") {
                    panic!("NULLPAINT_REQUIRE_WGPU=1 but no Vulkan adapter: {e}");
                }
                eprintln!("WARNING: skipped, no Vulkan adapter: {e}");
                return None;
            }
        };
    let mut limits = adapter.limits();
    if let Some(max) = max_buffer {
        limits.max_buffer_size = max;
        limits.max_storage_buffer_binding_size =
            limits.max_storage_buffer_binding_size.min(max as _);
    }
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("nullpaint gpu_faults test"),
        required_features: adapter.features(),
        required_limits: limits,
        ..Default::default()
    }))
    .expect("a device within the adapter's limits");
    eprintln!("adapter: {:?}", adapter.get_info().name);
    let setup = WgpuSetup {
        instance,
        adapter,
        device: device.clone(),
        queue,
        backend: wgpu::Backend::Vulkan,
    };
    let burn_device = Device::wgpu_options()
        .setup(setup)
        .init()
        .expect("registering the device with Burn");
    Some((burn_device, device))
}

/// `2 * ones(n)` computed on `device`, summed on the host.
fn sum_of_ones(n: usize, device: &Device) -> f32 {
    let t = Tensor::<1>::ones([n], device) * 2.0;
    t.into_data()
        .try_to_vec::<f32>()
        .unwrap_or_else(|e| panic!("reading the result back: {e:?}"))
        .iter()
        .sum()
}

#[test]
fn the_pools_reading_counts_a_live_tensor() {
    assert_eq!(
        nullpaint::device::pool_bytes_now(&nullpaint::device::cpu()),
        None
    );
    let Some((device, _)) = device_with_limit(None) else {
        return;
    };
    let before = nullpaint::device::pool_bytes_now(&device).unwrap();
    let n = 8 << 20; // 32 MiB of f32
    let t = Tensor::<1>::ones([n], &device);
    let _ = (t.clone() * 2.0).sum().into_data();
    let after = nullpaint::device::pool_bytes_now(&device).unwrap();
    assert!(
        after.in_use >= before.in_use + 4 * n as u64,
        "{before:?} -> {after:?}"
    );
    assert!(after.reserved >= after.in_use, "{after:?}");
    drop(t);
}

#[test]
fn a_size_too_large_for_the_device_is_an_out_of_memory_error() {
    let Some((device, _)) = device_with_limit(Some(16 << 20)) else {
        return;
    };
    // Within the limit: runs.
    let small = catch_gpu_faults(|| sum_of_ones(1024, &device));
    assert_eq!(small, Ok(2048.0));
    // 64 MiB of f32 on a device whose buffers stop at 16 MiB.
    let fault = catch_gpu_faults(|| sum_of_ones(16 << 20, &device)).unwrap_err();
    eprintln!("{fault}");
    assert!(matches!(fault, GpuFault::OutOfMemory(_)), "{fault:?}");
    let text = fault.to_string();
    assert!(
        text.contains("--precision f16") && text.contains("--backend cpu"),
        "{text}"
    );
}

#[test]
fn a_lost_device_is_an_error_not_a_panic_or_a_hang() {
    let Some((device, wgpu_device)) = device_with_limit(None) else {
        return;
    };
    assert_eq!(catch_gpu_faults(|| sum_of_ones(16, &device)), Ok(32.0));
    wgpu_device.destroy();
    let fault = catch_gpu_faults(|| sum_of_ones(16, &device)).unwrap_err();
    eprintln!("{fault}");
    assert!(matches!(fault, GpuFault::Lost(_)), "{fault:?}");
}

#[test]
fn other_panics_stay_panics() {
    let result = std::panic::catch_unwind(|| catch_gpu_faults(|| panic!("index out of bounds")));
    assert!(result.is_err(), "a bug must not be reported as a GPU fault");
}

#[test]
fn panic_messages_are_classified() {
    let oom = "wgpu error: Validation Error\n\nCaused by:\n  In Device::create_buffer\n    Not enough memory left.\nOut of Memory";
    assert!(matches!(
        GpuFault::from_panic_message(oom),
        Some(GpuFault::OutOfMemory(_))
    ));
    assert!(matches!(
        GpuFault::from_panic_message("DevicePoisoned: Lost: device destroyed"),
        Some(GpuFault::Lost(_))
    ));
    assert_eq!(
        GpuFault::from_panic_message("attempt to subtract with overflow"),
        None
    );
}
