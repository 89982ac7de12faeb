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
    let index = repo.get("model_index.json").ok_or_else(|| {
        anyhow::anyhow!(
            "HF_HUB_OFFLINE is set and model_index.json of {repo_id} is not in the cache {}; run once online, or pass a local folder with --model",
            cache.path().display()
        )
    })?;
    let dir = snapshot_dir(&index)?;
    // The same choice as online, over what the cached snapshot holds.
    let present = files_under(&dir, &dir)?;
    nullpaint::manifest::choose_files(&present, repo_id).map_err(|e| {
        anyhow::anyhow!(
            "HF_HUB_OFFLINE is set and the cached {repo_id} is incomplete: {e}; run once online, or pass a local folder with --model"
        )
    })?;
    Ok(dir)
}

/// Paths of the files under `dir`, relative to `root`, with `/` separators.
fn files_under(root: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files_under(root, &path)?);
        } else if path.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(out)
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
    let files = nullpaint::manifest::choose_files(&present, repo_id)?;
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
