//! The engine under a browser's limits, natively: a wgpu device that asks for no more than
//! WebGPU's default limits (8 storage buffers per shader stage, 128 MiB per binding, 256 MiB
//! buffers: what every browser grants) runs end-to-end parity cases against the diffusers
//! references. Burn's fusion sizes its fused kernels from the binding count and the VAE tiles
//! from the binding size, so this is where a kernel the page would build but the native
//! adapter never does gets checked, without a browser.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[test]
fn pipeline_matches_the_reference_under_webgpu_default_limits() {
    let Some((device, info)) = common::wgpu_or_skip(nullpaint::device::wgpu_webgpu_limits()) else {
        return;
    };
    eprintln!("wgpu adapter with WebGPU's default limits: {info}");
    // The device got the limits asked for, not the adapter's (lavapipe's: 128 MiB / 2 GiB).
    assert_eq!(info.max_storage_buffer_binding_size, 128 << 20);
    assert_eq!(info.max_buffer_size, 256 << 20);
    // Two models (SD 1 guided, SD 2 v-prediction) and the padded working size.
    let ran = common::check_e2e_cases("wgpu (WebGPU limits)", &device, |name| {
        matches!(
            name,
            "sd1_guided_64x64" | "sd2_vpred_unguided_64x96" | "sd1_padded_40x56"
        )
    });
    assert_eq!(ran, 3);
}
