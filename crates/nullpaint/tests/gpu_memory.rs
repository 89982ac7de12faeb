//! What the GPU's memory pools hold around a picture (CubeCL's own report, `device::pool_bytes_now`):
//! the weights in exact-fit persistent slices, so that loading reserves what the weights hold, and
//! every stage's pages given back when a picture is done, so that an idle engine (the server, a
//! batch between jobs) holds its weights alone. Its own test binary: the process-wide device
//! sees no other test's tensors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ops::ControlFlow;

use nullpaint::device::{PoolBytes, pool_bytes_now};
use nullpaint::pipeline::{FolderSource, InpaintOptions, MaskImage, RgbImage, StableDiffusion};

#[test]
fn weights_reserve_what_they_hold_and_a_picture_gives_its_pages_back() {
    let Some((device, _)) = common::wgpu_or_skip(nullpaint::device::wgpu()) else {
        return;
    };
    let before = pool_bytes_now(&device).unwrap();
    let source = FolderSource::new(common::fixtures().join("tiny-sd1")).unwrap();
    let sd = StableDiffusion::load(&source, &device).unwrap();
    let loaded = pool_bytes_now(&device).unwrap();
    let weights = loaded.in_use - before.in_use;
    eprintln!("before load {before:?}; loaded {loaded:?}: weights {weights} bytes");
    // Exact-fit slices: alignment padding at most (a few hundred bytes a tensor), no page slack.
    let slack = |p: PoolBytes| p.reserved - p.in_use;
    assert!(
        slack(loaded) <= slack(before) + weights / 50,
        "the weights reserve {} bytes beyond what they hold ({weights})",
        slack(loaded) - slack(before)
    );

    let (w, h) = (64, 64);
    let image = RgbImage {
        width: w,
        height: h,
        data: (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect(),
    };
    let mask = MaskImage {
        width: w,
        height: h,
        data: (0..w * h)
            .map(|i| {
                if (16..48).contains(&(i % w)) && (16..48).contains(&(i / w)) {
                    255
                } else {
                    0
                }
            })
            .collect(),
    };
    let options = InpaintOptions {
        prompt: "a red apple".into(),
        steps: 2,
        seed: 1,
        ..Default::default()
    };
    let mut during = loaded;
    for round in 0..2 {
        sd.inpaint(&image, &mask, &options, &mut |_| {
            let now = pool_bytes_now(&device).unwrap();
            during.in_use = during.in_use.max(now.in_use);
            during.reserved = during.reserved.max(now.reserved);
            ControlFlow::Continue(())
        })
        .unwrap();
        let after = pool_bytes_now(&device).unwrap();
        eprintln!("after picture {round}: {after:?} (largest seen during it: {during:?})");
        assert!(
            during.reserved > loaded.reserved,
            "the picture allocated nothing?"
        );
        assert_eq!(
            after.in_use, loaded.in_use,
            "tensors left behind by a picture"
        );
        assert!(
            after.reserved <= loaded.reserved + (during.reserved - loaded.reserved) / 10,
            "pages kept after a picture: {} bytes reserved beyond the weights' {}",
            after.reserved - loaded.reserved,
            loaded.reserved
        );
    }
}
