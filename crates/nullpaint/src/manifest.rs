//! Which files of a model the engine reads: one decision for the CLI's hub download, its offline
//! cache check and the page's downloads and imports (through the wasm module), so that the three
//! cannot disagree.
//!
//! A diffusers Stable Diffusion folder (after diffusers' `DiffusionPipeline.download`, restricted
//! to what this pipeline loads): the component configs, the tokenizer in one of its two forms,
//! one weight file per component (the fp16 variant preferred: half the download, upcast on
//! devices without f16) or, in older folders, an index with its shards. A single `.safetensors`
//! file is a single-file checkpoint and is read as it is.

/// Configs without which the folder is not a Stable Diffusion pipeline.
pub const REQUIRED_CONFIGS: [&str; 5] = [
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
];
/// Tokenizer settings: taken when present (the tokenizer's defaults are CLIP's otherwise).
pub const OPTIONAL_CONFIGS: [&str; 2] = [
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
];
/// The tokenizer as transformers' fast tokenizer file ...
pub const TOKENIZER_JSON: &str = "tokenizer/tokenizer.json";
/// ... or as the slow tokenizer's pair.
pub const TOKENIZER_PAIR: [&str; 2] = ["tokenizer/vocab.json", "tokenizer/merges.txt"];
/// Components with weights, and the stem of their weight files.
pub const WEIGHTS: [(&str, &str); 3] = [
    ("text_encoder", "model"),
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
];

/// The stem of a component's weight files (`model` for the text encoder).
pub fn weight_stem(component: &str) -> &'static str {
    WEIGHTS
        .iter()
        .find(|(c, _)| *c == component)
        .map_or("diffusion_pytorch_model", |(_, stem)| stem)
}

/// The weight files a folder may hold for a component, as a loader prefers them: the full
/// precision file, then the fp16 variant (a download stores only the fp16 one when both exist,
/// see [`choose_files`]). Sharded forms are these names plus `.index.json`.
pub fn weight_file_candidates(component: &str) -> [String; 2] {
    let stem = weight_stem(component);
    [
        format!("{component}/{stem}.safetensors"),
        format!("{component}/{stem}.fp16.safetensors"),
    ]
}

/// Why a set of files is not a model the engine reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "{name} is not a diffusers Stable Diffusion model: missing {missing} (expected model_index.json and unet/, vae/, text_encoder/, tokenizer/, scheduler/ with their configs)"
    )]
    NotAPipeline { name: String, missing: String },
    #[error(
        "{name} has no tokenizer (tokenizer/tokenizer.json, or tokenizer/vocab.json + merges.txt)"
    )]
    NoTokenizer { name: String },
    #[error("{name} has no safetensors weights for {component} (looked for {looked}){hint}")]
    NoWeights {
        name: String,
        component: String,
        looked: String,
        hint: String,
    },
}

/// Whether `path` is a shard of `<stem>[.fp16]` as diffusers and transformers name them
/// (`<stem>[.fp16]-00001-of-00002.safetensors`).
fn is_shard(path: &str, component: &str, stem: &str, fp16: bool) -> bool {
    let Some(rest) = path
        .strip_prefix(component)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_prefix(stem))
    else {
        return false;
    };
    let rest = if fp16 {
        match rest.strip_prefix(".fp16") {
            Some(r) => r,
            None => return false,
        }
    } else {
        rest
    };
    let Some(numbers) = rest
        .strip_prefix('-')
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let Some((a, b)) = numbers.split_once("-of-") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    digits(a) && digits(b)
}

/// The files to fetch or store among `available` (paths inside the model), in reading order;
/// `name` names the model in errors.
pub fn choose_files<S: AsRef<str>>(
    available: &[S],
    name: &str,
) -> Result<Vec<String>, ManifestError> {
    let available: std::collections::BTreeSet<&str> = available.iter().map(AsRef::as_ref).collect();
    let has = |p: &str| available.contains(p);
    // A single-file checkpoint.
    if let [only] = available.iter().collect::<Vec<_>>()[..]
        && only.ends_with(".safetensors")
        && !only.contains('/')
    {
        return Ok(vec![only.to_string()]);
    }
    let missing: Vec<&str> = REQUIRED_CONFIGS.into_iter().filter(|p| !has(p)).collect();
    if !missing.is_empty() {
        return Err(ManifestError::NotAPipeline {
            name: name.into(),
            missing: missing.join(", "),
        });
    }
    let mut files: Vec<String> = REQUIRED_CONFIGS
        .iter()
        .chain(&OPTIONAL_CONFIGS)
        .filter(|p| has(p))
        .map(|p| p.to_string())
        .collect();
    if has(TOKENIZER_JSON) {
        files.push(TOKENIZER_JSON.into());
    } else if TOKENIZER_PAIR.iter().all(|p| has(p)) {
        files.extend(TOKENIZER_PAIR.iter().map(|p| p.to_string()));
    } else {
        return Err(ManifestError::NoTokenizer { name: name.into() });
    }
    for (component, stem) in WEIGHTS {
        let [full, fp16] = weight_file_candidates(component);
        if let Some(file) = [&fp16, &full].into_iter().find(|f| has(f)) {
            files.push(file.clone());
            continue;
        }
        // Sharded (older folders): the index and its shards; the loader checks the index's
        // list against what is there.
        let sharded = [(true, &fp16), (false, &full)]
            .into_iter()
            .find_map(|(is_fp16, file)| {
                let index = format!("{file}.index.json");
                let shards: Vec<String> = available
                    .iter()
                    .filter(|p| is_shard(p, component, stem, is_fp16))
                    .map(|p| p.to_string())
                    .collect();
                (has(&index) && !shards.is_empty()).then(|| {
                    let mut v = vec![index];
                    v.extend(shards);
                    v
                })
            });
        if let Some(sharded) = sharded {
            files.extend(sharded);
            continue;
        }
        let bin = available
            .iter()
            .find(|p| p.starts_with(&format!("{component}/")) && p.ends_with(".bin"));
        return Err(ManifestError::NoWeights {
            name: name.into(),
            component: component.into(),
            looked: format!("{fp16}, {full} and their .index.json"),
            hint: bin.map_or(String::new(), |b| {
                format!(
                    "; only {b} is there: pickle files are not loaded, convert it to safetensors"
                )
            }),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: [&str; 9] = [
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ];

    fn with(extra: &[&str]) -> Vec<String> {
        BASE.iter().chain(extra).map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefers_fp16_and_takes_optional_configs_when_present() {
        let files = choose_files(
            &with(&[
                "unet/diffusion_pytorch_model.safetensors",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "tokenizer/tokenizer_config.json",
                "README.md",
                "unet/diffusion_pytorch_model.bin",
            ]),
            "m",
        )
        .unwrap();
        assert!(files.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(!files.contains(&"unet/diffusion_pytorch_model.safetensors".to_string()));
        assert!(files.contains(&"tokenizer/tokenizer_config.json".to_string()));
        assert!(
            !files
                .iter()
                .any(|f| f.ends_with(".bin") || f == "README.md")
        );
        // Without the optional configs the same folder is still complete.
        let files =
            choose_files(&with(&["unet/diffusion_pytorch_model.safetensors"]), "m").unwrap();
        assert_eq!(files.len(), BASE.len() + 1);
    }

    #[test]
    fn sharded_weights_take_the_index_and_shards() {
        let files = choose_files(
            &with(&[
                "unet/diffusion_pytorch_model.safetensors.index.json",
                "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
                "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                "unet/diffusion_pytorch_model-extra.safetensors",
            ]),
            "m",
        )
        .unwrap();
        let unet: Vec<&String> = files.iter().filter(|f| f.starts_with("unet/d")).collect();
        assert_eq!(
            unet,
            [
                "unet/diffusion_pytorch_model.safetensors.index.json",
                "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
            ]
        );
        assert!(is_shard(
            "unet/diffusion_pytorch_model.fp16-00001-of-00003.safetensors",
            "unet",
            "diffusion_pytorch_model",
            true
        ));
    }

    #[test]
    fn single_files_and_errors() {
        assert_eq!(
            choose_files(&["model.safetensors"], "m").unwrap(),
            ["model.safetensors"]
        );
        let e = choose_files(&["unet/config.json"], "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing model_index.json"), "{e}");
        let e = choose_files(&with(&["unet/diffusion_pytorch_model.bin"]), "m")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("weights for unet") && e.contains("pickle"),
            "{e}"
        );
        let no_tok: Vec<String> = with(&["unet/diffusion_pytorch_model.safetensors"])
            .into_iter()
            .filter(|p| !p.starts_with("tokenizer/"))
            .collect();
        let e = choose_files(&no_tok, "m").unwrap_err().to_string();
        assert!(e.contains("no tokenizer"), "{e}");
    }
}
