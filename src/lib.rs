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
//! The API is flat: the model ([`ElmerModel`], [`ElmerConfig`], [`LoadOptions`]), decoding
//! ([`ExitPolicy`], [`DecodeOptions`]), generation from text ([`Generator`],
//! [`GenerationConfig`]), the AR baseline ([`generate_greedy`]), the tokenizer
//! ([`BartTokenizer`]) and the error type. Three modules hold what only some users need:
//! - [`checkpoint`]: loading details and saving in the Hugging Face layout;
//! - [`train`]: LPLM pre-training and exit fine-tuning (losses, AdamW, the trainer);
//! - [`data`]: readers for the paper's datasets;
//! - [`metrics`] (feature `metrics`, on by default): ROUGE, BLEU, METEOR and Distinct,
//!   matched to the reference scorers (the `elmer-metrics` crate).
//!
//! ```no_run
//! use elmer::{BartTokenizer, ElmerModel, ExitPolicy, GenerationConfig, Generator, LoadOptions};
//!
//! let dir = "models/elmer-small-squadqg";
//! let model = ElmerModel::from_dir(dir, &LoadOptions::default())?;
//! let tok = BartTokenizer::from_dir(dir)?;
//! let cfg = GenerationConfig { policy: Some("hard:0.5".parse::<ExitPolicy>()?), ..Default::default() };
//! let mut gen = Generator::new(&model, cfg)?.with_tokenizer(&tok);
//! for g in gen.generate(&["the eiffel tower was completed in 1889 ."])? {
//!     println!("{} (exit layers {:?})", g.text, g.exit_layers);
//! }
//! # Ok::<(), elmer::Error>(())
//! ```
//!
//! On the CPU the dense layers and off-ramps can run in reduced precision, chosen when
//! loading ([`LoadOptions::cpu_precision`]): int8 on AVX512-VNNI or bf16 on AVX512_BF16 / AMX,
//! refused with [`Error::Unsupported`] on a CPU without the instructions:
//!
//! ```no_run
//! use elmer::{ElmerModel, LoadOptions, Precision};
//!
//! let precision = [Precision::Bf16, Precision::Int8, Precision::F32]
//!     .into_iter()
//!     .find(|&p| LoadOptions::cpu_supports(p))
//!     .unwrap_or(Precision::F32);
//! let opts = LoadOptions { cpu_precision: Some(precision), ..Default::default() };
//! let model = ElmerModel::from_dir("models/elmer-small-squadqg", &opts)?;
//! # Ok::<(), elmer::Error>(())
//! ```
//!
//! On the CPU, call [`limit_pool_spinning`] first thing in `main` (the `elmer` binary does):
//! it keeps candle's idle pool threads from spinning on cores the crate's kernels need.
//!
//! `ARCHITECTURE.md` in the repository maps the modules to the paper.

mod batch;
pub mod checkpoint;
mod config;
pub mod data;
mod error;
mod fs;
mod generate;
mod model;
mod model_dir;
mod nn;
mod ops;
mod runtime;
mod special_tokens;
mod tokenizer;
pub mod train;

#[cfg(feature = "metrics")]
pub use elmer_metrics as metrics;

pub use batch::PaddedBatch;
pub use checkpoint::{LoadOptions, LoadReport};
pub use config::{Activation, ElmerConfig, OffRampKind};
pub use error::{Error, Result};
pub use generate::{
    collapse_repeated_words, generate_greedy, generate_greedy_with, ExitStats, Generation,
    GenerationConfig, Generator, GreedyOptions, TargetLength,
};
pub use model::exit::{DecodeOptions, DecoderOutput, ExitPolicy, SoftTeacher};
pub use model::{ElmerModel, EncoderOutput};
pub use model_dir::{ModelDir, TokenizerFiles};
pub use nn::Mode;
pub use ops::packed::Precision;
pub use runtime::{limit_pool_spinning, POOL_SPIN_LIMIT};
pub use special_tokens::SpecialTokens;
pub use tokenizer::{BartTokenizer, EncodedBatch, TokenizerTrainConfig};

/// Internals reachable for the crate's own benchmarks (`benches/`): the CPU kernels and the
/// decoder's layers. Not part of the supported API; may change in any release.
#[doc(hidden)]
pub mod __bench {
    pub use crate::model::attention::KeyValue;
    pub use crate::model::decoder::{Decoder, DecoderLayer};
    pub use crate::ops::argmax_entropy::argmax_entropy_cols;
    pub use crate::ops::fused::{bias_act_, masked_softmax_};
    pub use crate::ops::gemv::linear_few_rows;
    pub use crate::ops::packed::{PackedMatrix, Precision};
}
