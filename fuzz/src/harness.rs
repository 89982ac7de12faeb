//! The fuzz targets' bodies: one function per parser family, taking the fuzzer's bytes. Shared
//! by the libFuzzer binaries (fuzz/fuzz_targets/) and by the test that replays the committed
//! corpus and every past crash in CI (crates/nullpaint/tests/fuzz_corpus.rs), so what CI replays
//! is exactly what was fuzzed. The contract under test: any bytes give `Ok` or `Err`, never a
//! panic, an abort, a hang, or an allocation out of proportion to the input.

use nullpaint::checkpoint;
use nullpaint::models::clip::ClipTextConfig;
use nullpaint::models::unet_2d::UNet2DConditionConfig;
use nullpaint::models::vae::AutoencoderKLConfig;
use nullpaint::schedulers::ddim::DdimScheduler;
use nullpaint::tokenizer::{ClipTokenizer, TokenizerFiles};
use nullpaint::weights::{ByteRange, SafetensorsBuffer, SafetensorsReader, TensorSource};

/// Separates the files of a multi-file input (tokenizer folders, file lists).
pub const SEPARATOR: &[u8] = b"\n--8<--\n";

/// Splits `data` at [`SEPARATOR`].
pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = vec![];
    let mut rest = data;
    while let Some(i) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..i]);
        rest = &rest[i + SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// Tensors larger than this are not converted (the parser's checks are what is fuzzed, not
/// the conversion loop's speed).
const CONVERT_LIMIT: usize = 1 << 16;

struct InMemory<'a>(&'a [u8]);

impl ByteRange for InMemory<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let start = usize::try_from(offset).map_err(|e| e.to_string())?;
        let end = start.checked_add(len).ok_or("range overflows")?;
        self.0
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("{start}..{end} outside {} bytes", self.0.len()))
    }
}

fn read_all(source: &dyn TensorSource) {
    for key in source.keys() {
        if let Ok(Some(t)) = source.tensor(&key)
            && t.numel() <= CONVERT_LIMIT
        {
            let _ = t.to_f32();
        }
    }
}

/// A safetensors file: both readers (the in-memory / memory-mapped one and the range reader
/// the browser streams through), every tensor read and converted; the checkpoint
/// identification that reads the first bytes and the header; a sharded-weights index.
pub fn safetensors(data: &[u8]) {
    if let Ok(buffer) = SafetensorsBuffer::new("fuzz.safetensors", data) {
        read_all(&buffer);
    }
    if let Ok(reader) = SafetensorsReader::new("fuzz.safetensors", InMemory(data)) {
        read_all(&reader);
        let _ = checkpoint::identify(&reader.shapes()).describe();
    }
    let _ = checkpoint::FileFormat::sniff(data);
    let _ = nullpaint::weights::shard_files(
        "unet/diffusion_pytorch_model.safetensors.index.json",
        data,
    );
}

/// One `config.json` (the first byte picks which component reads it) and, when it parses, the
/// model or scheduler it describes built (Burn allocates parameters lazily, so this is cheap
/// for any config that validation lets through, unless validation lets a bomb through).
pub fn config(data: &[u8]) {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    let device = nullpaint::device::cpu();
    match which % 6 {
        0 => {
            if let Ok(c) = UNet2DConditionConfig::from_json("unet/config.json", json) {
                let _ = c.init(&device);
            }
        }
        1 => {
            if let Ok(c) = AutoencoderKLConfig::from_json("vae/config.json", json) {
                let _ = c.init(&device);
            }
        }
        2 => {
            if let Ok(c) = ClipTextConfig::from_json("text_encoder/config.json", json) {
                let _ = c.init(&device);
            }
        }
        3 => {
            if let Ok(mut s) =
                nullpaint::pipeline::scheduler_from_json("scheduler/scheduler_config.json", json)
            {
                for steps in [1, 4, 50, 1000, 1001] {
                    let _ = s.set_timesteps(steps);
                }
            }
            if let Ok(mut s) = DdimScheduler::from_json("scheduler/scheduler_config.json", json) {
                let _ = s.set_timesteps(50);
            }
        }
        4 => {
            let _ = checkpoint::unsupported_pipeline(json);
        }
        _ => {
            // A repository's file list, one path per line.
            let text = String::from_utf8_lossy(json);
            let files: Vec<&str> = text.lines().collect();
            let _ = nullpaint::manifest::choose_files(&files, "someone/model");
        }
    }
}

/// A tokenizer folder: `tokenizer.json` alone (first part empty) or `vocab.json`, `merges.txt`,
/// `tokenizer_config.json`, `special_tokens_map.json`, then a prompt, separated by
/// [`SEPARATOR`].
pub fn tokenizer(data: &[u8]) {
    let parts = split(data);
    let part = |i: usize| parts.get(i).copied().filter(|p| !p.is_empty());
    let files = if part(0).is_none() {
        TokenizerFiles {
            tokenizer_json: part(1),
            tokenizer_config_json: part(2),
            special_tokens_map_json: part(3),
            ..TokenizerFiles::default()
        }
    } else {
        TokenizerFiles {
            vocab_json: part(0),
            merges_txt: part(1),
            tokenizer_config_json: part(2),
            special_tokens_map_json: part(3),
            ..TokenizerFiles::default()
        }
    };
    if let Ok(t) = ClipTokenizer::from_files(files, "tokenizer") {
        let prompt = String::from_utf8_lossy(part(4).unwrap_or(b"a red apple"));
        if let Ok(p) = t.encode(&prompt) {
            assert_eq!(
                p.ids.len(),
                t.max_length(),
                "ids padded to the model length"
            );
        }
    }
}

/// Decoders cap their allocations at this in the fuzzer (the CLI allows 4 GiB, which
/// libFuzzer's default 2 GB memory limit would report as a leak-sized allocation).
pub const FUZZ_DECODER_ALLOC: u64 = 64 << 20;

/// An image or mask file, every format the CLI reads, converted both ways.
pub fn image(data: &[u8]) {
    if let Ok(img) = nullpaint::decode::decode_upright_with_limit(data, FUZZ_DECODER_ALLOC) {
        let rgb = nullpaint::decode::to_rgb_image(&img);
        assert_eq!(rgb.data.len(), rgb.width * rgb.height * 3);
        let mask = nullpaint::decode::to_mask_image(&img);
        assert_eq!(mask.data.len(), mask.width * mask.height);
    }
}

/// The options a user types: modes, region settings, model names.
pub fn options(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let _ = line.parse::<nullpaint::pipeline::InpaintMode>();
        let _ = line.parse::<nullpaint::regions::RegionMode>();
        let _ = line.parse::<nullpaint::regions::Extend>();
        let _ = checkpoint::model_alias(line);
    }
}
