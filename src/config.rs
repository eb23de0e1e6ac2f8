//! Model configuration: a Hugging Face BART `config.json` plus the ELMER options.
//!
//! [`ElmerConfig`] parses a BART `config.json` as transformers writes it (ELMER checkpoints are
//! plain `BartForConditionalGeneration` checkpoints, paper section 4.1). Missing fields take
//! transformers' `BartConfig` defaults. Fields this crate does not use are kept verbatim in
//! [`ElmerConfig::extra`] so a load/save round trip loses nothing.
//!
//! The ELMER-specific options are stored in the same JSON object under `elmer_*` keys:
//! - `elmer_offramps`: `"shared"` (default; the tied output projection after every layer, as in
//!   pre-training) or `"per_layer"` (one projection + bias per decoder layer);
//! - `elmer_detach_copied_states`: when a token exits at layer l, its state is copied to the
//!   layers above; `true` (default, as the authors' code) stops gradients through those copies;
//! - `elmer_mask_token_id`: the `<mask>` id filling the decoder slot (default `vocab_size - 1`,
//!   which is BART's 50264);
//! - `elmer_exit_policy`: the exit policy the model was fine-tuned for (`"last"`, `"soft"` or
//!   `"hard:<threshold>"` with the threshold chosen on validation data), used by generation
//!   when the caller names none;
//! - `elmer_max_len`: the output slot length (tokens) the model was fine-tuned with, the
//!   default slot of `elmer generate`;
//! - `elmer_length_offset`: for a model with a length head, tokens added to every predicted
//!   length when generating (chosen on validation data by `elmer finetune`; default 0);
//! - `elmer_length_candidates`: for a model with a length head, how many of its most likely
//!   lengths generation decodes per source, keeping the most probable output (a length beam;
//!   default 1);
//! - `elmer_drop_orphan_pieces`: whether generated text drops word-continuation pieces that
//!   the parallel decoder glued onto an unrelated word (chosen on validation data; default
//!   off).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Feed-forward activation functions, named as in transformers' `ACT2FN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact GELU, `x * Phi(x)` (transformers `"gelu"`).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh-approximated GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `max(x, 0)`.
    #[serde(rename = "relu")]
    Relu,
    /// `x * sigmoid(x)` (`"silu"`, `"swish"`).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// `tanh(x)`.
    #[serde(rename = "tanh")]
    Tanh,
}

impl Activation {
    /// Names accepted in `activation_function`.
    pub const NAMES: &'static [&'static str] = &[
        "gelu",
        "gelu_new",
        "gelu_pytorch_tanh",
        "gelu_fast",
        "relu",
        "silu",
        "swish",
        "tanh",
    ];

    /// Parses a transformers activation name.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => {
                return Err(Error::config(
                    "activation_function",
                    format!(
                        "unknown activation {other:?}; supported: {}",
                        Activation::NAMES.join(", ")
                    ),
                ))
            }
        })
    }

    /// Applies the activation elementwise.
    pub fn apply(&self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
            Activation::Tanh => xs.tanh(),
        }
    }
}

/// Where the off-ramps' vocabulary projections come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffRampKind {
    /// One off-ramp shared by every layer: the tied output projection (shared embedding) plus
    /// `final_logits_bias`. ELMER pre-training uses this.
    #[default]
    Shared,
    /// A separate projection (`offramps.{i}.weight` `[vocab, d_model]`, `offramps.{i}.bias`
    /// `[vocab]`) after each decoder layer `i` (0-based in tensor names).
    PerLayer,
}

fn d_vocab() -> usize {
    50265
}
fn d_max_pos() -> usize {
    1024
}
fn d_layers() -> usize {
    12
}
fn d_ffn() -> usize {
    4096
}
fn d_heads() -> usize {
    16
}
fn d_model() -> usize {
    1024
}
fn d_act() -> String {
    "gelu".to_string()
}
fn d_dropout() -> f64 {
    0.1
}
fn d_init_std() -> f64 {
    0.02
}
fn d_pad() -> u32 {
    1
}
fn d_bos() -> u32 {
    0
}
fn d_eos() -> u32 {
    2
}
fn d_true() -> bool {
    true
}
fn d_model_type() -> String {
    "bart".to_string()
}

/// A BART/ELMER configuration, field names and defaults as transformers' `BartConfig`.
///
/// ```
/// let cfg: elmer::ElmerConfig = serde_json::from_str(r#"{"d_model": 64,
///     "encoder_attention_heads": 4, "decoder_attention_heads": 4}"#).unwrap();
/// cfg.validate().unwrap();
/// assert_eq!(cfg.vocab_size, 50265);
/// assert_eq!(cfg.mask_token_id(), 50264);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElmerConfig {
    /// Vocabulary size V (rows of the shared embedding).
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Longest sequence the learned position table covers (it has `max_position_embeddings + 2`
    /// rows: BART offsets positions by 2).
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    /// Hidden size d.
    #[serde(default = "d_model")]
    pub d_model: usize,
    /// Number of encoder layers.
    #[serde(default = "d_layers")]
    pub encoder_layers: usize,
    /// Number of decoder layers L (= number of off-ramps / exit layers).
    #[serde(default = "d_layers")]
    pub decoder_layers: usize,
    /// Encoder FFN inner size.
    #[serde(default = "d_ffn")]
    pub encoder_ffn_dim: usize,
    /// Decoder FFN inner size.
    #[serde(default = "d_ffn")]
    pub decoder_ffn_dim: usize,
    /// Encoder attention heads; must divide `d_model`.
    #[serde(default = "d_heads")]
    pub encoder_attention_heads: usize,
    /// Decoder attention heads; must divide `d_model`.
    #[serde(default = "d_heads")]
    pub decoder_attention_heads: usize,
    /// FFN activation name (see [`Activation::NAMES`]).
    #[serde(default = "d_act")]
    pub activation_function: String,
    /// Dropout on embeddings, attention outputs and FFN outputs (training only).
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout after the FFN activation (training only).
    #[serde(default)]
    pub activation_dropout: f64,
    /// Standard deviation of the normal weight initialisation.
    #[serde(default = "d_init_std")]
    pub init_std: f64,
    /// Multiply token embeddings by `sqrt(d_model)`.
    #[serde(default)]
    pub scale_embedding: bool,
    /// `<pad>` id.
    #[serde(default = "d_pad")]
    pub pad_token_id: u32,
    /// `<s>` id (first decoder input of the NAR slot).
    #[serde(default = "d_bos")]
    pub bos_token_id: u32,
    /// `</s>` id (generation stops at the first one).
    #[serde(default = "d_eos")]
    pub eos_token_id: u32,
    /// Decoder start id used by autoregressive BART.
    #[serde(default = "d_eos")]
    pub decoder_start_token_id: u32,
    /// Whether the output projection is tied to the shared embedding (transformers default).
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// Pre-norm layers (mBART style). Not supported: BART and ELMER are post-norm.
    #[serde(default)]
    pub normalize_before: bool,
    /// Extra layer norm after the last layer (mBART). Not supported.
    #[serde(default)]
    pub add_final_layer_norm: bool,
    /// fairseq flag for `layernorm_embedding`; transformers always applies it, so `false` is refused.
    #[serde(default = "d_true")]
    pub normalize_embedding: bool,
    /// Always `"bart"` for checkpoints this crate loads.
    #[serde(default = "d_model_type")]
    pub model_type: String,

    /// ELMER: shared or per-layer off-ramps.
    #[serde(default)]
    pub elmer_offramps: OffRampKind,
    /// ELMER: detach the states copied upward from a token's exit layer (training only).
    #[serde(default = "d_true")]
    pub elmer_detach_copied_states: bool,
    /// ELMER: `<mask>` id used to fill the decoder slot; `None` means `vocab_size - 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elmer_mask_token_id: Option<u32>,
    /// ELMER: the exit policy the model was fine-tuned for, in [`crate::ExitPolicy`]'s text
    /// form (`"last"`, `"soft"`, `"hard:0.4"`); `None`: not recorded (generation then uses
    /// the last layer). Read with [`crate::ElmerModel::recorded_policy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elmer_exit_policy: Option<String>,
    /// ELMER: the output slot length in tokens the model was fine-tuned with (generation's
    /// default `max_len` in `elmer generate`); at most `max_position_embeddings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elmer_max_len: Option<usize>,
    /// ELMER: tokens added to every predicted target length when the model's length head sets
    /// the slot (chosen on validation data; `None`: 0). Within +-`max_position_embeddings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elmer_length_offset: Option<i64>,
    /// ELMER: length candidates per source when the length head sets the slot (a length beam
    /// chosen on validation data; `None`: 1). In `1..=max_position_embeddings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elmer_length_candidates: Option<usize>,
    /// ELMER: whether generated text drops orphan subword pieces (a multi-piece word that is
    /// not a word of the source keeps only its first piece; chosen on validation data; `None`:
    /// off). See [`crate::GenerationConfig::drop_orphan_pieces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elmer_drop_orphan_pieces: Option<bool>,

    /// Every other field of the JSON file, kept for a lossless round trip.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for ElmerConfig {
    fn default() -> Self {
        // An empty JSON object takes every default.
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl ElmerConfig {
    /// The BART-base / ELMER-base shape: d 768, 6+6 layers, 12 heads, FFN 3072, vocab 50265.
    pub fn base() -> Self {
        ElmerConfig {
            d_model: 768,
            encoder_layers: 6,
            decoder_layers: 6,
            encoder_ffn_dim: 3072,
            decoder_ffn_dim: 3072,
            encoder_attention_heads: 12,
            decoder_attention_heads: 12,
            ..Default::default()
        }
    }

    /// Parses a config from a JSON string (not validated; call [`validate`](Self::validate)).
    pub fn from_json_str(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| Error::Parse {
            path: "<string>".into(),
            message: e.to_string(),
        })
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: ElmerConfig = serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|e| match e {
            Error::Config { field, message } => Error::Config {
                field,
                message: format!("{message} (in {})", path.display()),
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Serialises to pretty JSON (all fields, extras included).
    pub fn to_json_string(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Parse {
            path: "<config>".into(),
            message: e.to_string(),
        })
    }

    /// Writes `config.json` atomically (temporary file + rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::fs::write_atomic(path.as_ref(), self.to_json_string()?.as_bytes())
    }

    /// The special-token ids of the config (`unk` is not part of a BART config: `None`).
    pub fn special_tokens(&self) -> crate::SpecialTokens {
        crate::SpecialTokens {
            bos: self.bos_token_id,
            pad: self.pad_token_id,
            eos: self.eos_token_id,
            unk: None,
            mask: self.mask_token_id(),
        }
    }

    /// The `<mask>` id filling the decoder slot: `elmer_mask_token_id`, else `vocab_size - 1`.
    pub fn mask_token_id(&self) -> u32 {
        self.elmer_mask_token_id
            .unwrap_or(self.vocab_size.saturating_sub(1) as u32)
    }

    /// The parsed FFN activation.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_name(&self.activation_function)
    }

    /// Per-head size of the encoder attention.
    pub fn encoder_head_dim(&self) -> usize {
        self.d_model / self.encoder_attention_heads.max(1)
    }

    /// Per-head size of the decoder attention.
    pub fn decoder_head_dim(&self) -> usize {
        self.d_model / self.decoder_attention_heads.max(1)
    }

    /// Multiplier applied to token embeddings (`sqrt(d_model)` or 1).
    pub fn embed_scale(&self) -> f64 {
        if self.scale_embedding {
            (self.d_model as f64).sqrt()
        } else {
            1.0
        }
    }

    /// Largest accepted `d_model` (the FFN widths may be 4x this).
    pub const MAX_WIDTH: usize = 65_536;
    /// Largest accepted number of encoder or decoder layers.
    pub const MAX_LAYERS: usize = 256;
    /// Largest accepted number of attention heads.
    pub const MAX_HEADS: usize = 1024;
    /// Largest accepted `max_position_embeddings`.
    pub const MAX_POSITIONS: usize = 1 << 20;
    /// Largest accepted `vocab_size`.
    pub const MAX_VOCAB: usize = 1 << 24;

    /// Checks every field this crate relies on, including sanity bounds on sizes
    /// ([`MAX_LAYERS`](Self::MAX_LAYERS) and the other `MAX_*` constants) that reject absurd
    /// values before any allocation; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.model_type != "bart" {
            return Err(Error::config(
                "model_type",
                format!("{:?} is not supported; expected \"bart\"", self.model_type),
            ));
        }
        for (field, v) in [
            ("d_model", self.d_model),
            ("encoder_layers", self.encoder_layers),
            ("decoder_layers", self.decoder_layers),
            ("encoder_ffn_dim", self.encoder_ffn_dim),
            ("decoder_ffn_dim", self.decoder_ffn_dim),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        // Sanity bounds, checked before anything is allocated from these numbers (a hostile
        // config.json must not make the loader reserve gigabytes or overflow an offset).
        for (field, v, max) in [
            ("d_model", self.d_model, Self::MAX_WIDTH),
            ("encoder_ffn_dim", self.encoder_ffn_dim, 4 * Self::MAX_WIDTH),
            ("decoder_ffn_dim", self.decoder_ffn_dim, 4 * Self::MAX_WIDTH),
            ("encoder_layers", self.encoder_layers, Self::MAX_LAYERS),
            ("decoder_layers", self.decoder_layers, Self::MAX_LAYERS),
            (
                "encoder_attention_heads",
                self.encoder_attention_heads,
                Self::MAX_HEADS,
            ),
            (
                "decoder_attention_heads",
                self.decoder_attention_heads,
                Self::MAX_HEADS,
            ),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                Self::MAX_POSITIONS,
            ),
            ("vocab_size", self.vocab_size, Self::MAX_VOCAB),
        ] {
            if v > max {
                return Err(Error::config(
                    field,
                    format!("{v} exceeds the sanity bound {max}"),
                ));
            }
        }
        for (field, heads) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if !self.d_model.is_multiple_of(heads) {
                return Err(Error::config(
                    field,
                    format!("d_model {} is not divisible by {heads} heads", self.d_model),
                ));
            }
        }
        self.activation()?;
        for (field, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("activation_dropout", self.activation_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::config(field, format!("{p} is not in [0, 1)")));
            }
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(Error::config("init_std", "must be finite and >= 0"));
        }
        for (field, id) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
            ("elmer_mask_token_id", self.mask_token_id()),
        ] {
            if id as usize >= self.vocab_size {
                return Err(Error::config(
                    "vocab_size",
                    format!("{} is too small for {field} = {id}", self.vocab_size),
                ));
            }
        }
        if let Some(t) = self.elmer_max_len {
            if t == 0 || t > self.max_position_embeddings {
                return Err(Error::config(
                    "elmer_max_len",
                    format!(
                        "{t} is not in 1..={} (max_position_embeddings)",
                        self.max_position_embeddings
                    ),
                ));
            }
        }
        if let Some(o) = self.elmer_length_offset {
            if o.unsigned_abs() as usize > self.max_position_embeddings {
                return Err(Error::config(
                    "elmer_length_offset",
                    format!(
                        "{o} is beyond +-{} (max_position_embeddings)",
                        self.max_position_embeddings
                    ),
                ));
            }
        }
        if let Some(k) = self.elmer_length_candidates {
            if k == 0 || k > self.max_position_embeddings {
                return Err(Error::config(
                    "elmer_length_candidates",
                    format!(
                        "{k} is not in 1..={} (max_position_embeddings)",
                        self.max_position_embeddings
                    ),
                ));
            }
        }
        if self.normalize_before {
            return Err(Error::config(
                "normalize_before",
                "pre-norm layers are not supported (BART/ELMER are post-norm)",
            ));
        }
        if self.add_final_layer_norm {
            return Err(Error::config(
                "add_final_layer_norm",
                "a final layer norm (mBART) is not supported",
            ));
        }
        if !self.normalize_embedding {
            return Err(Error::config(
                "normalize_embedding",
                "false is not supported: BART always applies layernorm_embedding",
            ));
        }
        Ok(())
    }
}
