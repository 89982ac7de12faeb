//! Model definitions. Field and config names follow the diffusers / transformers keys so that
//! checkpoints load through [`crate::weights`] with no per-module mapping.

pub mod attention;
pub mod clip;
pub mod embeddings;
pub mod ops;
pub mod resnet;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
pub mod vae_tiling;

/// Errors of model configuration files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: not a valid config ({message})")]
    Parse { file: String, message: String },
    #[error("{file}: unsupported {key} = {value}; {hint}")]
    Unsupported {
        file: String,
        key: String,
        value: String,
        hint: String,
    },
}

/// Parses a `config.json`; `file` names it in errors. Unknown keys (`_class_name`,
/// `architectures`, ...) are accepted, as diffusers / transformers do.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    file: &str,
    bytes: &[u8],
) -> Result<T, ConfigError> {
    serde_json::from_slice(bytes).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })
}
