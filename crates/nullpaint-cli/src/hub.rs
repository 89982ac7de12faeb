//! `--model`: a local diffusers folder, or a Hugging Face repo id fetched with `hf-hub` into the
//! standard cache (`HF_HOME`, default `~/.cache/huggingface`), only the files the pipeline
//! needs, f16 weight variants where the repository has them. `HF_HUB_OFFLINE=1` uses the cache
//! alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};
use nullpaint::checkpoint::CheckpointKind;

pub const DEFAULT_MODEL: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

const CONFIGS: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
];
const TOKENIZER_PAIR: &[&str] = &["tokenizer/vocab.json", "tokenizer/merges.txt"];
const TOKENIZER_JSON: &str = "tokenizer/tokenizer.json";
const WEIGHTS: &[(&str, &str)] = &[
    ("text_encoder", "model"),
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
];

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// A local folder or single-file SD checkpoint as it is, or the snapshot folder of a repo in the cache (downloading what is
/// missing unless offline).
pub fn resolve(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.is_file() {
        // Single-file SD 1.x / 2.x checkpoints load as they are; anything else is named.
        if let Ok((_, CheckpointKind::Sd1Single { .. } | CheckpointKind::Sd2Single { .. })) =
            nullpaint::checkpoint::identify_file(path)
        {
            return Ok(path.to_path_buf());
        }
        bail!("{}", single_file_refusal(path));
    }
    let model = match nullpaint::checkpoint::model_alias(model) {
        Some(alias) => {
            eprintln!("model: {} = {} ({})", alias.alias, alias.repo, alias.about);
            alias.repo
        }
        None => model,
    };
    let is_repo_id = model.split('/').count() == 2
        && !model.starts_with('.')
        && !model.starts_with('/')
        && !model.contains('\\');
    if !is_repo_id {
        let names: Vec<&str> = nullpaint::checkpoint::MODEL_ALIASES
            .iter()
            .map(|a| a.alias)
            .collect();
        bail!(
            "--model {model}: no such folder, not a Hugging Face repo id (owner/name), and not a short name ({})",
            names.join(", ")
        );
    }
    if offline() {
        from_cache(model)
    } else {
        download(model)
    }
}

fn from_cache(repo_id: &str) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let repo = cache.model(repo_id.to_string());
    let missing = |f: &str| {
        anyhow::anyhow!(
            "HF_HUB_OFFLINE is set and {f} of {repo_id} is not in the cache {}; run once online, or pass a local folder with --model",
            cache.path().display()
        )
    };
    let index = repo
        .get("model_index.json")
        .ok_or_else(|| missing("model_index.json"))?;
    for f in CONFIGS {
        repo.get(f).ok_or_else(|| missing(f))?;
    }
    if repo.get(TOKENIZER_JSON).is_none() {
        for f in TOKENIZER_PAIR {
            repo.get(f).ok_or_else(|| missing(f))?;
        }
    }
    for (component, stem) in WEIGHTS {
        let fp16 = format!("{component}/{stem}.fp16.safetensors");
        let full = format!("{component}/{stem}.safetensors");
        if repo.get(&fp16).is_some() || repo.get(&full).is_some() {
            continue;
        }
        // Sharded: the index and every shard it names.
        let Some(index) = [&fp16, &full]
            .iter()
            .find_map(|f| repo.get(&format!("{f}.index.json")))
        else {
            return Err(missing(&fp16));
        };
        for shard in shards_of(&index)? {
            let f = format!("{component}/{shard}");
            repo.get(&f).ok_or_else(|| missing(&f))?;
        }
    }
    snapshot_dir(&index)
}

/// Why `--model FILE` is refused: what the file is (from its first bytes and, for safetensors,
/// its header alone) and what to do instead.
fn single_file_refusal(path: &Path) -> String {
    use nullpaint::checkpoint::{CheckpointKind, FileFormat, SUPPORTED, identify_file};
    let shown = path.display();
    let (format, kind) = match identify_file(path) {
        Ok(found) => found,
        Err(e) => return format!("--model {shown}: cannot read it as a model file: {e}"),
    };
    let what = match format {
        FileFormat::Safetensors => kind.describe(),
        FileFormat::TorchZip | FileFormat::Pickle => {
            "a PyTorch pickle (.ckpt / .pt / .bin): pickles can run code when loaded and are never read"
                .into()
        }
        FileFormat::Gguf => "a GGUF file (stable-diffusion.cpp's quantised format)".into(),
        FileFormat::Unknown => "not a model file nullpaint recognises".into(),
    };
    let todo = match kind {
        CheckpointKind::Lora => "; pass the base model it was trained for instead",
        _ if matches!(format, FileFormat::TorchZip | FileFormat::Pickle) => {
            "; use the model's diffusers folder (safetensors) instead"
        }
        _ => "",
    };
    format!("--model {shown} is {what}{todo}. {SUPPORTED}.")
}

/// The shard file names a downloaded `*.safetensors.index.json` lists.
fn shards_of(index: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(index).with_context(|| format!("reading {}", index.display()))?;
    Ok(nullpaint::weights::shard_files(
        &index.display().to_string(),
        &bytes,
    )?)
}

fn snapshot_dir(model_index: &Path) -> Result<PathBuf> {
    model_index
        .parent()
        .map(Path::to_path_buf)
        .context("the cached model_index.json has no parent folder")
}

fn download(repo_id: &str) -> Result<PathBuf> {
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("cannot set up the Hugging Face client")?;
    let repo = api.repo(Repo::model(repo_id.to_string()));
    let info = repo.info().with_context(|| {
        format!("cannot reach the Hugging Face Hub for {repo_id} (offline? set HF_HUB_OFFLINE=1 to use the cache, or pass a local folder with --model)")
    })?;
    let present: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let has = |f: &str| present.contains(&f);
    if !has("model_index.json") || !has("unet/config.json") {
        bail!(
            "{repo_id} is not a diffusers Stable Diffusion repository (no model_index.json / unet/config.json)"
        );
    }
    let mut files: Vec<String> = CONFIGS
        .iter()
        .filter(|f| has(f))
        .map(|f| f.to_string())
        .collect();
    if has(TOKENIZER_JSON) {
        files.push(TOKENIZER_JSON.into());
    } else {
        files.extend(TOKENIZER_PAIR.iter().map(|f| f.to_string()));
    }
    for (component, stem) in WEIGHTS {
        let fp16 = format!("{component}/{stem}.fp16.safetensors");
        let full = format!("{component}/{stem}.safetensors");
        if has(&fp16) {
            files.push(fp16);
        } else if has(&full) {
            files.push(full);
        } else if let Some(index) = [&fp16, &full]
            .into_iter()
            .map(|f| format!("{f}.index.json"))
            .find(|f| has(f))
        {
            // Sharded: the index first, to learn the shards' names.
            let path = repo
                .get(&index)
                .with_context(|| format!("downloading {index} from {repo_id}"))?;
            files.extend(
                shards_of(&path)?
                    .into_iter()
                    .map(|shard| format!("{component}/{shard}")),
            );
        } else {
            bail!(
                "{repo_id} has no safetensors weights for {component} (looked for {fp16} and {full}, and their .index.json)"
            );
        }
    }
    let mut index = None;
    for f in &files {
        let path = repo
            .get(f)
            .with_context(|| format!("downloading {f} from {repo_id}"))?;
        if f == "model_index.json" {
            index = Some(path);
        }
    }
    snapshot_dir(&index.context("model_index.json was not downloaded")?)
}
