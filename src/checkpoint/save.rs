//! Saving in the transformers `BartForConditionalGeneration` layout.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::names::is_body_name;
use super::parse_err;
use crate::config::ElmerConfig;
use crate::error::{Error, Result};

/// Writes `config.json` and `model.safetensors` in the `BartForConditionalGeneration` layout
/// (`model.` prefix on the body, head tensors at top level) so transformers loads the result.
/// Both files are written atomically. `weights` uses canonical names.
pub fn save_dir(
    dir: impl AsRef<Path>,
    cfg: &ElmerConfig,
    weights: &HashMap<String, Tensor>,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(weights.len());
    for (k, t) in weights {
        let name = if is_body_name(k) {
            format!("model.{k}")
        } else {
            k.clone()
        };
        named.push((name, t.to_device(&Device::Cpu)?.contiguous()?));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let bytes =
        safetensors::tensor::serialize(named.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
            .map_err(|e| parse_err(&dir.join("model.safetensors"), e))?;
    crate::fs::write_atomic(&dir.join("model.safetensors"), &bytes)?;
    cfg.save(dir.join("config.json"))
}
