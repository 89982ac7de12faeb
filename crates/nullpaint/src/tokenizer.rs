//! CLIP BPE tokenizer, identical to transformers' `CLIPTokenizer` (v5, tokenizers-backed).
//!
//! Source: `transformers/models/clip/tokenization_clip.py` (5.24): NFC + whitespace-run
//! collapse + lowercase normalizer; a Split pre-tokenizer on CLIP's regex, then byte-level; BPE
//! with the `</w>` end-of-word suffix. Loads either form a Stable Diffusion `tokenizer/` folder
//! ships: `tokenizer.json`, or `vocab.json` + `merges.txt` (SD 1.5 / 2.1 repositories). The pad
//! token comes from `tokenizer_config.json` / `special_tokens_map.json` (`<|endoftext|>` for SD 1.x,
//! `!` for SD 2.x). Output: start token, BPE ids, end token, padded to 77; longer prompts are
//! truncated (with a warning) the way transformers does it with `truncation=True`.

use std::collections::HashMap;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

/// CLIP's pre-tokenization regex, as in transformers' CLIPTokenizer.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The files of a tokenizer folder, as bytes (so the browser can supply them too).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenizerFiles<'a> {
    pub tokenizer_json: Option<&'a [u8]>,
    pub vocab_json: Option<&'a [u8]>,
    pub merges_txt: Option<&'a [u8]>,
    pub tokenizer_config_json: Option<&'a [u8]>,
    pub special_tokens_map_json: Option<&'a [u8]>,
}

/// Errors of tokenizer loading and encoding.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "tokenizer folder {0}: neither tokenizer.json nor vocab.json + merges.txt found; point the model path at a diffusers folder with a tokenizer/ subfolder"
    )]
    NoFiles(String),
    #[error("cannot read {file}: {error}")]
    Io { file: String, error: std::io::Error },
    #[error("{file} is not valid: {message}")]
    Invalid { file: String, message: String },
    #[error(
        "the {role} token {token:?} is not in the vocabulary; the tokenizer files do not belong together"
    )]
    UnknownSpecial { role: &'static str, token: String },
    #[error("tokenization failed: {0}")]
    Encode(String),
}

/// The ids of one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// `max_length` ids: start, BPE ids, end, then pad ids.
    pub ids: Vec<u32>,
    /// How many BPE tokens were dropped to fit (0 when the prompt fits).
    pub dropped: usize,
}

/// CLIP tokenizer with padding and truncation to the model length.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

struct SpecialTokens {
    bos: String,
    eos: String,
    unk: String,
    pad: String,
    max_length: usize,
}

/// A special token entry is either a string or an `AddedToken` object with `content`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn parse_json(file: &str, bytes: &[u8]) -> Result<Value, TokenizerError> {
    serde_json::from_slice(bytes).map_err(|e| TokenizerError::Invalid {
        file: file.into(),
        message: e.to_string(),
    })
}

fn special_tokens(files: &TokenizerFiles) -> Result<SpecialTokens, TokenizerError> {
    let mut found: HashMap<&str, String> = HashMap::new();
    let mut max_length = 77;
    // tokenizer_config.json wins over special_tokens_map.json, as in transformers.
    let sources = [
        ("special_tokens_map.json", files.special_tokens_map_json),
        ("tokenizer_config.json", files.tokenizer_config_json),
    ];
    for (name, bytes) in sources {
        let Some(bytes) = bytes else { continue };
        let v = parse_json(name, bytes)?;
        for role in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some(t) = v.get(role).and_then(token_content) {
                found.insert(role, t);
            }
        }
        if let Some(n) = v.get("model_max_length").and_then(|n| n.as_f64()) {
            // transformers writes a huge sentinel when unset; CLIP text encoders take 77.
            if (2.0..=4096.0).contains(&n) {
                max_length = n as usize;
            }
        }
    }
    let get = |role: &str, default: &str| {
        found
            .get(role)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    Ok(SpecialTokens {
        bos: get("bos_token", "<|startoftext|>"),
        eos: get("eos_token", "<|endoftext|>"),
        unk: get("unk_token", "<|endoftext|>"),
        pad: get("pad_token", "<|endoftext|>"),
        max_length,
    })
}

fn invalid(file: &str, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Invalid {
        file: file.into(),
        message: e.to_string(),
    }
}

/// Builds the transformers CLIPTokenizer pipeline around a vocab.json + merges.txt pair.
fn from_vocab_and_merges(
    vocab: &[u8],
    merges: &[u8],
    unk: &str,
) -> Result<Tokenizer, TokenizerError> {
    let vocab: HashMap<String, u32> =
        serde_json::from_slice(vocab).map_err(|e| invalid("vocab.json", e))?;
    let merges_text = std::str::from_utf8(merges).map_err(|e| invalid("merges.txt", e))?;
    let mut merge_list = Vec::new();
    for (i, line) in merges_text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let (a, b) = line.split_once(' ').ok_or_else(|| {
            invalid(
                "merges.txt",
                format!("line {} is not a pair: {line:?}", i + 1),
            )
        })?;
        merge_list.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merge_list,
        )
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(unk.to_string())
        .fuse_unk(false)
        .build()
        .map_err(|e| invalid("vocab.json + merges.txt", e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let normalizer = NormSeq::new(vec![
        NormalizerWrapper::NFC(NFC),
        NormalizerWrapper::Replace(
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                " ",
            )
            .map_err(|e| invalid("normalizer", e))?,
        ),
        NormalizerWrapper::Lowercase(Lowercase),
    ]);
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| invalid("pre-tokenizer", e))?;
    let pre = PreSeq::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    tokenizer.with_normalizer(Some(normalizer));
    tokenizer.with_pre_tokenizer(Some(pre));
    Ok(tokenizer)
}

impl ClipTokenizer {
    /// Builds the tokenizer from the files of a `tokenizer/` folder.
    pub fn from_files(files: TokenizerFiles, folder_name: &str) -> Result<Self, TokenizerError> {
        let special = special_tokens(&files)?;
        let mut tokenizer = match (files.tokenizer_json, files.vocab_json, files.merges_txt) {
            (Some(json), _, _) => {
                let mut t =
                    Tokenizer::from_bytes(json).map_err(|e| invalid("tokenizer.json", e))?;
                // Special tokens are added below; the ids are assembled by hand.
                t.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
                t.with_padding(None);
                t.with_truncation(None)
                    .map_err(|e| invalid("tokenizer.json", e))?;
                t
            }
            (None, Some(vocab), Some(merges)) => {
                from_vocab_and_merges(vocab, merges, &special.unk)?
            }
            _ => return Err(TokenizerError::NoFiles(folder_name.to_string())),
        };
        // transformers registers bos/eos/unk/pad as special tokens: they are matched in the raw
        // text before normalization (so `!` is its own token when it is SD 2's pad token).
        let mut tokens: Vec<AddedToken> = Vec::new();
        for t in [&special.bos, &special.eos, &special.unk, &special.pad] {
            if !tokens.iter().any(|a| &a.content == t) {
                tokens.push(AddedToken::from(t.clone(), true));
            }
        }
        tokenizer.add_special_tokens(&tokens);
        let id = |role: &'static str, token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::UnknownSpecial {
                    role,
                    token: token.to_string(),
                })
        };
        Ok(Self {
            bos_id: id("start", &special.bos)?,
            eos_id: id("end", &special.eos)?,
            pad_id: id("pad", &special.pad)?,
            max_length: special.max_length,
            tokenizer,
        })
    }

    /// Reads a `tokenizer/` folder (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_folder(folder: impl AsRef<std::path::Path>) -> Result<Self, TokenizerError> {
        let folder = folder.as_ref();
        let read = |name: &str| -> Result<Option<Vec<u8>>, TokenizerError> {
            let path = folder.join(name);
            match std::fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(TokenizerError::Io {
                    file: path.display().to_string(),
                    error: e,
                }),
            }
        };
        let json = read("tokenizer.json")?;
        // Read vocab/merges only when there is no tokenizer.json.
        let (vocab, merges) = if json.is_none() {
            (read("vocab.json")?, read("merges.txt")?)
        } else {
            (None, None)
        };
        let config = read("tokenizer_config.json")?;
        let map = read("special_tokens_map.json")?;
        Self::from_files(
            TokenizerFiles {
                tokenizer_json: json.as_deref(),
                vocab_json: vocab.as_deref(),
                merges_txt: merges.as_deref(),
                tokenizer_config_json: config.as_deref(),
                special_tokens_map_json: map.as_deref(),
            },
            &folder.display().to_string(),
        )
    }

    /// The sequence length prompts are padded / truncated to (77 for every SD text encoder).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Tokenizes one prompt: `[start, ids.., end, pad..]`, exactly `max_length` long.
    pub fn encode(&self, text: &str) -> Result<TokenizedPrompt, TokenizerError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let body = encoding.get_ids();
        let room = self.max_length.saturating_sub(2);
        let kept = body.len().min(room);
        let dropped = body.len() - kept;
        if dropped > 0 {
            tracing::warn!(
                "prompt is {} tokens long; the text encoder takes {}: the last {dropped} token(s) are ignored",
                body.len() + 2,
                self.max_length
            );
        }
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&body[..kept]);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        Ok(TokenizedPrompt { ids, dropped })
    }
}
