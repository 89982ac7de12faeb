//! Model definitions. Field and config names follow the diffusers / transformers keys so that
//! checkpoints load through [`crate::weights`] with no per-module mapping.

pub mod attention;
pub mod clip;
pub mod conv_gemm;
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

/// Upper bounds on what a config can ask for: far above every released model (SD 1.x / 2.x: 4
/// blocks, 2 layers per block, 1 transformer layer, 1280 channels; SDXL: 10 transformer layers;
/// CLIP ViT-bigG: 32 layers of width 1280, 49408 tokens) and low enough that building the
/// structure of a crafted config cannot exhaust memory or time (fuzzing found both:
/// fuzz/regressions/config).
pub mod limits {
    /// UNet / VAE blocks (`block_out_channels` entries).
    pub const BLOCKS: usize = 8;
    /// Resnet layers per block.
    pub const LAYERS_PER_BLOCK: usize = 16;
    /// Transformer layers per attention block.
    pub const TRANSFORMER_LAYERS: usize = 64;
    /// Text encoder layers.
    pub const TEXT_LAYERS: usize = 128;
    /// Channels, widths, context dimensions, positions.
    pub const WIDTH: usize = 1 << 16;
    /// Vocabulary entries.
    pub const VOCAB: usize = 1 << 20;
    /// Training timesteps of a scheduler (SD: 1000).
    pub const TRAIN_TIMESTEPS: usize = 100_000;
}

/// `Err` naming `key` in `file` when `value` is above `max` (see [`limits`]).
pub(crate) fn check_at_most(
    file: &str,
    key: &str,
    value: usize,
    max: usize,
) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::Unsupported {
            file: file.into(),
            key: key.into(),
            value: value.to_string(),
            hint: format!(
                "at most {max} (released models use far less; a damaged or crafted config?)"
            ),
        });
    }
    Ok(())
}

/// Checks a UNet's or VAE's `block_out_channels` (1 to [`limits::BLOCKS`] positive entries of at
/// most [`limits::WIDTH`]) and returns how many blocks it gives.
pub(crate) fn check_block_out_channels(
    file: &str,
    channels: &[usize],
) -> Result<usize, ConfigError> {
    let n = channels.len();
    if n == 0 || channels.contains(&0) {
        return Err(ConfigError::Unsupported {
            file: file.into(),
            key: "block_out_channels".into(),
            value: format!("{channels:?}"),
            hint: "needs positive channel counts".into(),
        });
    }
    check_at_most(file, "block_out_channels (entries)", n, limits::BLOCKS)?;
    for &c in channels {
        check_at_most(file, "block_out_channels", c, limits::WIDTH)?;
    }
    Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_out_channels_are_checked() {
        let key = |r: Result<usize, ConfigError>| match r {
            Err(ConfigError::Unsupported { key, .. }) => key,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            check_block_out_channels("c.json", &[320, 640, 1280]).ok(),
            Some(3)
        );
        assert_eq!(
            key(check_block_out_channels("c.json", &[])),
            "block_out_channels"
        );
        assert_eq!(
            key(check_block_out_channels("c.json", &[320, 0])),
            "block_out_channels"
        );
        assert_eq!(
            key(check_block_out_channels("c.json", &[1; limits::BLOCKS + 1])),
            "block_out_channels (entries)"
        );
        assert_eq!(
            key(check_block_out_channels("c.json", &[limits::WIDTH + 1])),
            "block_out_channels"
        );
    }
}
