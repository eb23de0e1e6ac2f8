//! Loading and saving checkpoints in the Hugging Face BART/ELMER layout.
//!
//! A checkpoint directory holds `config.json` and the weights as `model.safetensors`, sharded
//! safetensors (`model.safetensors.index.json` + shards), `pytorch_model.bin` (a zip-format
//! torch pickle) or sharded `pytorch_model.bin.index.json`. Two name layouts are accepted:
//! - `BartForConditionalGeneration` (ELMER checkpoints): `model.` prefix on the BART body,
//!   top-level `final_logits_bias` `[1, vocab]` and optional `lm_head.weight` (tied);
//! - bare `BartModel`: no prefix, no head (`final_logits_bias` is then zero).
//!
//! Canonical names used inside the crate drop the `model.` prefix (`shared.weight`,
//! `encoder.layers.0.fc1.weight`, ...); head tensors keep theirs (`final_logits_bias`,
//! `lm_head.weight`, `concat_head.weight` `[d, 2d]`, `offramps.{i}.{weight,bias}`).
//!
//! Every expected tensor is checked for presence and shape before the model is built; extra
//! tensors are listed in the [`LoadReport`] (or refused with [`LoadOptions::strict`]).

mod files;
#[cfg(feature = "hub")]
mod hub;
mod load;
mod names;
mod pickle;
mod resolve;
mod safetensors_file;
mod save;
mod weights;

use std::path::Path;

use crate::error::Error;

pub use load::{load_dir, LoadOptions, LoadReport, NameLayout, WeightFormat};
pub use names::{expected_tensors, is_body_name, TensorKind, TensorSpec};
pub use resolve::resolve_model_dir;
pub use save::save_dir;
pub use weights::Weights;

/// Writes a file atomically (temporary file, fsync, rename, fsync of the directory), as every
/// checkpoint file is written.
pub use crate::fs::write_atomic;

fn parse_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
