//! # elmer
//!
//! ELMER (Li et al., EMNLP 2022): early-exit non-autoregressive text generation with a
//! BART-shaped encoder-decoder, on [candle](https://github.com/huggingface/candle).
//!
//! The decoder fills every position of a target slot in one parallel pass; an off-ramp after
//! each decoder layer can emit a token early ([`ExitPolicy::Hard`]), feed its prediction to
//! the next layer ([`ExitPolicy::Soft`]), follow a given exit layer per token
//! ([`ExitPolicy::Fixed`], used by LPLM pre-training) or leave everything to the last layer
//! ([`ExitPolicy::LastLayer`]).
//!
//! Modules:
//! - [`config`] - the BART `config.json` plus ELMER options;
//! - [`model`] - encoder, NAR decoder, off-ramps, exit policies;
//! - [`checkpoint`] - loading (safetensors, sharded, `pytorch_model.bin`; both name layouts)
//!   and saving in the Hugging Face layout; `hub` downloads (feature `hub`);
//! - [`tokenizer`] - the BART byte-level BPE tokenizer;
//! - [`generate`] - batched generation from text or ids, exit statistics;
//! - [`metrics`] - ROUGE, BLEU, METEOR and Distinct, matched to the reference scorers.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod generate;
#[cfg(feature = "hub")]
pub mod hub;
#[cfg(feature = "metrics")]
pub use elmer_metrics as metrics;
pub mod model;
pub mod tokenizer;
pub mod train;
pub mod util;

/// Checkpoint directory used when a command is given no `--model`: the small ELMER model
/// that ships with the crate (relative to the working directory).
pub const DEFAULT_MODEL_DIR: &str = "models/elmer-small-squadqg";

pub use checkpoint::{LoadOptions, LoadReport};
pub use config::{Activation, ElmerConfig, OffRampKind};
pub use error::{Error, Result};
pub use model::exit::{DecodeOptions, DecoderOutput, ExitPolicy, SoftTeacher};
pub use model::nn::Mode;
pub use model::{ElmerModel, EncoderOutput};
pub use tokenizer::BartTokenizer;
