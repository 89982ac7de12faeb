//! `nullpaint eval`: the paper's Table 1 protocol on a folder of photos, scored by the engine
//! itself (FID with pytorch-fid's InceptionV3 built in Burn, PSNR and SSIM over the hole).
//!
//! Protocol (docs/evaluation.md says why each choice is made):
//! 1. every photo upright as 8-bit RGB, resized so that its short side is `--short-side` (512)
//!    with Pillow's LANCZOS filter, the long side `round(long * 512 / short)`, not cropped;
//!    written to `OUT/ground_truth/NAME.png`;
//! 2. for each `--mask-sizes` S (168, 136): a centred S x S hole (left/top at
//!    `(width - S) / 2`, `(height - S) / 2`, rounded down), `OUT/S/masks/NAME.png`;
//! 3. the whole photo inpainted in one pass (no regions, as the paper ran it), the prompt empty,
//!    `--prompt`, or the photo's caption from `--captions`, the seed the photo's own
//!    (`fnv1a64(file name) xor --seed`, low 32 bits: adding photos changes no other photo's);
//!    `OUT/S/inpainted/NAME.png`;
//! 4. FID between the ground truth set and each inpainted set, PSNR / SSIM over the hole
//!    averaged over the photos; `OUT/results.json` and the same table in `OUT/results.md`.
//!
//! Every output is written atomically and reused by a rerun when it exists and decodes
//! (resume, or rescoring with other metrics).

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use nullpaint::metrics::frechet::{Statistics, frechet_distance};
use nullpaint::metrics::inception::{FEATURES, FidInceptionV3};
use nullpaint::metrics::lpips::Lpips;
use nullpaint::metrics::quality::{psnr_in_hole, ssim_in_hole};
use nullpaint::pipeline::{MaskImage, RgbImage};
use nullpaint::regions::{self, Filter};
use nullpaint::weights::SafetensorsFile;

use crate::engine::{Engine, RunError};
use crate::io;
use crate::options::{JobArgs, JobSettings, ModelArgs, RegionArg};

pub const HELP: &str = "Examples:
  nullpaint eval --images bsds500/test --out eval-bsds --inception inception-fid.safetensors --model sd15
  nullpaint eval --images imagenet-val.txt --out eval-in --inception inception-fid.safetensors \\
      --captions blip-captions.csv --model sd15          # the \"Ours+BLIP\" row

--inception takes pytorch-fid's weights converted to safetensors (tests/fixtures/convert_inception.py).
docs/evaluation.md gives the datasets, the commands of the paper's Table 1 and every choice.";

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The photos: a folder (PNG, JPEG, WebP, BMP, in file-name order) or a text file with one
    /// path per line.
    #[arg(long, value_name = "DIR|LIST")]
    images: PathBuf,
    /// The output folder (ground_truth/, one folder per mask size, results.json, results.md).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// pytorch-fid's InceptionV3 weights as safetensors (tests/fixtures/convert_inception.py).
    #[arg(long, value_name = "FILE")]
    inception: PathBuf,
    /// LPIPS (v0.1, AlexNet) weights as safetensors (tests/fixtures/convert_lpips.py): adds the
    /// mean LPIPS between each photo and its inpainting to the table.
    #[arg(long, value_name = "FILE")]
    lpips: Option<PathBuf>,
    /// Sides of the centred square holes, in pixels.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "168,136",
        value_name = "S,S"
    )]
    mask_sizes: Vec<usize>,
    /// Captions as prompts ("Ours+BLIP"): CSV (file,caption) or JSONL ({"file": ..., "caption": ...}),
    /// matched by file name (with or without extension).
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    captions: Option<PathBuf>,
    /// One prompt for every photo (default: empty, as the paper's "Ours" row).
    #[arg(long)]
    prompt: Option<String>,
    /// The short side every photo is resized to.
    #[arg(long, default_value_t = 512, value_name = "PX")]
    short_side: usize,
    /// Only the first N photos (in order).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    job: JobArgs,
}

fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The photos in order: a folder's image files, or a list file's paths (relative to it).
fn list_photos(images: &Path) -> Result<Vec<PathBuf>> {
    if images.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(images)
            .with_context(|| format!("cannot read the folder {}", images.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        ["png", "jpg", "jpeg", "webp", "bmp"]
                            .contains(&e.to_ascii_lowercase().as_str())
                    })
            })
            .collect();
        files.sort();
        return Ok(files);
    }
    let text = std::fs::read_to_string(images)
        .with_context(|| format!("cannot read the list {}", images.display()))?;
    let base = images.parent().unwrap_or(Path::new(""));
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| base.join(l))
        .collect())
}

/// Captions by file stem, from CSV (`file,caption`, quotes allowed, a header line skipped when
/// its first field is `file`) or JSONL.
fn read_captions(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the captions {}", path.display()))?;
    let stem = |f: &str| {
        Path::new(f)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (file, caption) = if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not valid JSON", path.display(), n + 1))?;
            match (v["file"].as_str(), v["caption"].as_str()) {
                (Some(f), Some(c)) => (f.to_string(), c.to_string()),
                _ => bail!(
                    "{} line {}: give {{\"file\": ..., \"caption\": ...}}",
                    path.display(),
                    n + 1
                ),
            }
        } else {
            let fields = csv_fields(line);
            if fields.len() < 2 {
                bail!(
                    "{} line {}: give file,caption (quote a caption with commas)",
                    path.display(),
                    n + 1
                );
            }
            if n == 0 && fields[0].eq_ignore_ascii_case("file") {
                continue;
            }
            (fields[0].clone(), fields[1..].join(","))
        };
        out.insert(stem(&file), caption);
    }
    Ok(out)
}

/// The fields of one CSV line (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = fields.last_mut() {
                    f.push('"');
                }
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

/// `(width, height)` with the short side `short` and the long side scaled, rounded.
fn target_size(width: usize, height: usize, short: usize) -> (usize, usize) {
    let scale = |long: usize, s: usize| (long * short * 2 + s) / (2 * s);
    if width <= height {
        (short, scale(height, width))
    } else {
        (scale(width, height), short)
    }
}

/// The centred square hole of side `s`.
fn centre_mask(width: usize, height: usize, s: usize) -> MaskImage {
    let (x0, y0) = ((width - s) / 2, (height - s) / 2);
    let mut data = vec![0u8; width * height];
    for y in y0..y0 + s {
        data[y * width + x0..y * width + x0 + s].fill(255);
    }
    MaskImage {
        width,
        height,
        data,
    }
}

fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    rgb: Option<&[u8]>,
    gray: Option<&[u8]>,
) -> Result<()> {
    let picture = match (rgb, gray) {
        (Some(data), _) => RgbImage {
            width,
            height,
            data: data.to_vec(),
        },
        (None, Some(g)) => RgbImage {
            width,
            height,
            data: g.iter().flat_map(|&v| [v, v, v]).collect(),
        },
        _ => bail!("nothing to write"),
    };
    io::PendingOutput::create(path, &[])?.commit(&picture)
}

/// A picture already written by an earlier run, when it decodes and has the expected size.
fn reuse(path: &Path, size: (usize, usize)) -> Option<RgbImage> {
    io::load_image(path)
        .ok()
        .filter(|p| (p.width, p.height) == size)
}

fn features(inception: &FidInceptionV3, picture: &RgbImage) -> Result<Vec<f32>> {
    let v = inception
        .features(picture)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading the Inception features: {e:?}"))?;
    Ok(v)
}

/// Scores of one mask size.
#[derive(Debug, Clone, serde::Serialize)]
struct Scores {
    fid: f64,
    psnr: f64,
    ssim: f64,
    /// Mean LPIPS over the photos (whole pictures), when `--lpips` is given.
    lpips: Option<f64>,
    n: usize,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let start = Instant::now();
    if args.mask_sizes.is_empty() || args.mask_sizes.contains(&0) {
        bail!("--mask-sizes: give sides of at least 1 pixel, e.g. 168,136");
    }
    if args.short_side < 16 {
        bail!("--short-side must be at least 16 pixels");
    }
    for &s in &args.mask_sizes {
        if s > args.short_side {
            bail!(
                "--mask-sizes: a {s}-pixel hole does not fit photos whose short side is {}",
                args.short_side
            );
        }
    }
    let mut photos = list_photos(&args.images)?;
    if let Some(limit) = args.limit {
        photos.truncate(limit);
    }
    if photos.len() < 2 {
        bail!(
            "{} has {} photo(s); FID needs at least 2 (the paper uses 200 and 1000)",
            args.images.display(),
            photos.len()
        );
    }
    let names: Vec<String> = photos
        .iter()
        .map(|p| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let mut seen = HashMap::new();
    for (name, photo) in names.iter().zip(&photos) {
        if let Some(other) = seen.insert(name.clone(), photo.clone()) {
            bail!(
                "{} and {} would have the same output name {name}.png",
                other.display(),
                photo.display()
            );
        }
    }
    let captions = args.captions.as_deref().map(read_captions).transpose()?;
    if let Some(c) = &captions {
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !c.contains_key(*n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} has no caption for {} photo(s): {}{}",
                args.captions.as_deref().unwrap_or(Path::new("")).display(),
                missing.len(),
                missing[..missing.len().min(5)].join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            );
        }
    }
    let mut base = JobSettings::new(args.prompt.as_deref().unwrap_or(""), &args.job);
    base.region = RegionArg::Whole;
    base.check().map_err(|e| anyhow::anyhow!("--{e}"))?;
    let base_seed = base.seed.unwrap_or(0);

    // 1. ground truth
    let gt_dir = args.out.join("ground_truth");
    std::fs::create_dir_all(&gt_dir)
        .with_context(|| format!("cannot create {}", gt_dir.display()))?;
    let mut truth = Vec::with_capacity(photos.len());
    for (photo, name) in photos.iter().zip(&names) {
        let original = io::load_image(photo)?;
        let size = target_size(original.width, original.height, args.short_side);
        let path = gt_dir.join(format!("{name}.png"));
        let picture = match reuse(&path, size) {
            Some(p) => p,
            None => {
                let p = if size == (original.width, original.height) {
                    original
                } else {
                    regions::resize(&original, size.0, size.1, Filter::Lanczos3)?
                };
                write_png(&path, p.width, p.height, Some(&p.data), None)?;
                p
            }
        };
        truth.push(picture);
    }
    eprintln!(
        "{} photos, short side {} px: {}",
        photos.len(),
        args.short_side,
        gt_dir.display()
    );

    // 2-3. inpainting, by mask size; the model loaded only when something is left to do
    let mut engine: Option<Engine> = None;
    let mut inpainted: Vec<Vec<RgbImage>> = Vec::new();
    let mut masks: Vec<Vec<MaskImage>> = Vec::new();
    for &s in &args.mask_sizes {
        let dir = args.out.join(s.to_string());
        for sub in ["inpainted", "masks"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let (mut outs, mut ms) = (Vec::new(), Vec::new());
        let mut reused = 0;
        for (k, (picture, name)) in truth.iter().zip(&names).enumerate() {
            let mask = centre_mask(picture.width, picture.height, s);
            let mask_path = dir.join("masks").join(format!("{name}.png"));
            if reuse(&mask_path, (picture.width, picture.height)).is_none() {
                write_png(&mask_path, mask.width, mask.height, None, Some(&mask.data))?;
            }
            let path = dir.join("inpainted").join(format!("{name}.png"));
            if let Some(done) = reuse(&path, (picture.width, picture.height)) {
                reused += 1;
                outs.push(done);
                ms.push(mask);
                continue;
            }
            if engine.is_none() {
                engine = Some(Engine::open(&args.model)?);
            }
            let Some(engine) = engine.as_ref() else {
                unreachable!()
            };
            let mut settings = base.clone();
            if let Some(c) = &captions {
                settings.prompt = c.get(name).cloned().unwrap_or_default();
            }
            let seed = (fnv1a64(&format!("{name}.png")) ^ base_seed) & 0xffff_ffff;
            let options = settings.to_options(seed);
            let t = Instant::now();
            let result = engine
                .run(picture, &mask, &options, &mut |_| ControlFlow::Continue(()))
                .map_err(|e| match e {
                    RunError::Gpu(fault) => anyhow::Error::new(fault),
                    other => anyhow::anyhow!("{other}"),
                })
                .with_context(|| format!("inpainting {name} with a {s}-pixel hole"))?;
            write_png(&path, result.width, result.height, Some(&result.data), None)?;
            eprintln!(
                "[{s} px {}/{}] {name}: {:.1} s (seed {seed})",
                k + 1,
                truth.len(),
                t.elapsed().as_secs_f64()
            );
            outs.push(result);
            ms.push(mask);
        }
        if reused > 0 {
            eprintln!(
                "[{s} px] {reused} of {} results reused from {}",
                truth.len(),
                dir.display()
            );
        }
        inpainted.push(outs);
        masks.push(ms);
    }

    // 4. scores
    if engine
        .as_ref()
        .is_some_and(|e| e.precision == nullpaint::device::Precision::F16)
    {
        eprintln!(
            "warning: the Inception network runs in f16 on this device; published FIDs use f32 (--precision f32)"
        );
    }
    let device: Device = match &engine {
        Some(e) => e.sd.device().clone(),
        None => {
            crate::engine::open_device(args.model.backend, args.model.precision)?
                .0
                .device
        }
    };
    let weights = SafetensorsFile::open(&args.inception).with_context(|| {
        format!(
            "cannot read the Inception weights {}",
            args.inception.display()
        )
    })?;
    let inception = FidInceptionV3::load(&weights, &device).with_context(|| {
        format!(
            "{} is not pytorch-fid's InceptionV3 (convert pt_inception-2015-12-05-6726825d.pth with tests/fixtures/convert_inception.py)",
            args.inception.display()
        )
    })?;
    let lpips = match &args.lpips {
        Some(path) => {
            let weights = SafetensorsFile::open(path)
                .with_context(|| format!("cannot read the LPIPS weights {}", path.display()))?;
            Some(Lpips::load(&weights, &device).with_context(|| {
                format!(
                    "{} is not LPIPS v0.1 AlexNet weights (write them with tests/fixtures/convert_lpips.py)",
                    path.display()
                )
            })?)
        }
        None => None,
    };
    let stats = |set: &[RgbImage], what: &'static str| -> Result<Statistics> {
        let mut all = Vec::with_capacity(set.len() * FEATURES);
        for p in set {
            all.extend(features(&inception, p)?);
        }
        Ok(Statistics::from_features(&all, set.len(), FEATURES, what)?)
    };
    let t = Instant::now();
    let truth_stats = stats(&truth, "ground truth")?;
    let mut table = Vec::new();
    for ((&s, outs), ms) in args.mask_sizes.iter().zip(&inpainted).zip(&masks) {
        let fid = frechet_distance(&truth_stats, &stats(outs, "inpainted")?)?;
        let (mut psnr, mut ssim) = (0.0, 0.0);
        for ((gt, out), m) in truth.iter().zip(outs).zip(ms) {
            psnr += psnr_in_hole(gt, out, m)?;
            ssim += ssim_in_hole(gt, out, m)?;
        }
        let n = outs.len();
        let lpips = match &lpips {
            Some(model) => {
                let mut sum = 0.0;
                for (gt, out) in truth.iter().zip(outs) {
                    sum += model.distance(gt, out).map_err(|e| anyhow::anyhow!(e))?;
                }
                Some(sum / n as f64)
            }
            None => None,
        };
        table.push((
            s,
            Scores {
                fid,
                psnr: psnr / n as f64,
                ssim: ssim / n as f64,
                lpips,
                n,
            },
        ));
    }
    eprintln!("scored in {:.1} s", t.elapsed().as_secs_f64());

    let mut sizes = serde_json::Map::new();
    for (s, scores) in &table {
        sizes.insert(s.to_string(), serde_json::to_value(scores)?);
    }
    let prompt = match (&args.captions, &args.prompt) {
        (Some(c), _) => format!("captions from {}", c.display()),
        (None, Some(p)) => format!("{p:?}"),
        (None, None) => "empty".to_string(),
    };
    let json = serde_json::json!({
        "images": args.images.display().to_string(),
        "n": truth.len(),
        "model": args.model.model,
        "prompt": prompt,
        "settings": base.to_json(base_seed),
        "seeds": "fnv1a64(file name) xor seed, low 32 bits",
        "preprocessing": format!("upright RGB, short side {} px (Pillow LANCZOS), not cropped; centred square holes", args.short_side),
        "fid": "pytorch-fid InceptionV3 pool3 (2048), bilinear resize to 299 (align_corners=False), Fréchet distance in f64",
        "psnr_ssim": "over the hole; SSIM: skimage defaults (7x7 uniform window), mean of the map over the hole",
        "lpips": "lpips 0.1 (AlexNet), whole pictures, mean over the photos; null without --lpips",
        "sizes": sizes,
    });
    let mut md = if lpips.is_some() {
        "| hole | FID | PSNR (dB, hole) | SSIM (hole) | LPIPS | n |\n|---|---:|---:|---:|---:|---:|\n"
    } else {
        "| hole | FID | PSNR (dB, hole) | SSIM (hole) | n |\n|---|---:|---:|---:|---:|\n"
    }
    .to_string();
    for (s, sc) in &table {
        let lp = sc.lpips.map(|v| format!(" {v:.4} |")).unwrap_or_default();
        md.push_str(&format!(
            "| {s}x{s} | {:.2} | {:.2} | {:.4} |{lp} {} |\n",
            sc.fid, sc.psnr, sc.ssim, sc.n
        ));
    }
    let md = format!(
        "Images: {} ({} photos), model {}, prompt {prompt}, {} steps, guidance {}, dilation {}.\n\n{md}",
        args.images.display(),
        truth.len(),
        args.model.model,
        base.steps,
        base.guidance_scale,
        base.dilate
    );
    for (name, text) in [
        (
            "results.json",
            format!("{}\n", serde_json::to_string_pretty(&json)?),
        ),
        ("results.md", md.clone()),
    ] {
        let path = args.out.join(name);
        let tmp = args.out.join(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{md}");
    eprintln!(
        "results in {} and results.md ({:.1} s in all)",
        args.out.join("results.json").display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_masks_and_captions() {
        assert_eq!(target_size(481, 321, 512), (767, 512));
        assert_eq!(target_size(321, 481, 512), (512, 767));
        assert_eq!(target_size(500, 375, 512), (683, 512));
        assert_eq!(target_size(512, 512, 512), (512, 512));
        let m = centre_mask(10, 8, 4);
        let holes: Vec<(usize, usize)> = (0..80)
            .filter(|&p| m.data[p] == 255)
            .map(|p| (p % 10, p / 10))
            .collect();
        assert_eq!(holes.first(), Some(&(3, 2)));
        assert_eq!(holes.last(), Some(&(6, 5)));
        assert_eq!(holes.len(), 16);
        assert_eq!(
            csv_fields(r#"a.jpg,"a cat, on a ""mat""",x"#),
            vec!["a.jpg", "a cat, on a \"mat\"", "x"]
        );
    }
}
