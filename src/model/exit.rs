//! Exit policies (paper sections 3.2-3.3) and the decoder's output.
//!
//! Every policy runs in one parallel decoder pass over the whole target slot:
//! - [`ExitPolicy::LastLayer`]: plain NAR, every token exits at layer L;
//! - [`ExitPolicy::Fixed`]: a given exit layer per token (the LPLM assignment);
//! - [`ExitPolicy::Hard`]: a token exits at the first layer whose off-ramp entropy is below the
//!   threshold; layer L takes the rest;
//! - [`ExitPolicy::Soft`]: every layer's off-ramp argmax is embedded and fed back through
//!   `concat_head`; every token exits at L.
//!
//! A token exiting at layer l keeps its state `h^l` in all higher layers, where it is still
//! read as key/value but never updated; its prediction is the off-ramp of `h^l`. Layers are
//! counted from 1 as in the paper.

use std::str::FromStr;

use candle_core::Tensor;

use crate::error::{Error, Result};

/// How tokens leave the decoder.
#[derive(Debug, Clone)]
pub enum ExitPolicy {
    /// Every token exits at the last layer L.
    LastLayer,
    /// Exit layer per token, `[batch, target_len]` u32 with values in `1..=L`.
    Fixed(Tensor),
    /// Exit at the first layer whose off-ramp entropy (nats) is below `threshold`
    /// (the paper uses 0.5); the last layer takes the rest.
    Hard {
        /// Entropy threshold delta in nats; a token exits when `H < threshold`.
        threshold: f64,
    },
    /// Soft early exit: off-ramp predictions fed back through `concat_head`.
    Soft,
}

impl ExitPolicy {
    /// Short name: `last`, `fixed`, `hard:<t>` or `soft`.
    pub fn name(&self) -> String {
        match self {
            ExitPolicy::LastLayer => "last".into(),
            ExitPolicy::Fixed(_) => "fixed".into(),
            ExitPolicy::Hard { threshold } => format!("hard:{threshold}"),
            ExitPolicy::Soft => "soft".into(),
        }
    }

    /// Checks the policy's own parameters: a hard-exit threshold must be finite and `>= 0`.
    /// (Whether a model supports the policy, e.g. soft exit needs a `concat_head`, is checked
    /// where the model is known.)
    pub fn validate(&self) -> Result<()> {
        match self {
            ExitPolicy::Hard { threshold } if !threshold.is_finite() || *threshold < 0.0 => {
                Err(Error::invalid_arg(
                    "policy",
                    format!("hard-exit entropy threshold must be finite and >= 0, got {threshold}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

impl FromStr for ExitPolicy {
    type Err = Error;

    /// Parses `last`, `soft` or `hard:<entropy threshold in nats>` (e.g. `hard:0.5`), the
    /// names [`ExitPolicy::name`] prints. [`ExitPolicy::Fixed`] has no text form.
    fn from_str(s: &str) -> Result<Self> {
        let policy = match s.trim() {
            "last" => ExitPolicy::LastLayer,
            "soft" => ExitPolicy::Soft,
            other => {
                let t = other.strip_prefix("hard:").ok_or_else(|| {
                    Error::invalid_arg(
                        "policy",
                        format!("{s:?} is not last, soft or hard:<threshold>"),
                    )
                })?;
                let threshold: f64 = t.trim().parse().map_err(|_| {
                    Error::invalid_arg(
                        "policy",
                        format!("hard-exit threshold {t:?} is not a number"),
                    )
                })?;
                ExitPolicy::Hard { threshold }
            }
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// Soft-exit teacher forcing for fine-tuning (paper section 3.3): where `use_gold` is 1, the
/// gold label's embedding replaces the off-ramp prediction fed to the next layer.
#[derive(Debug, Clone)]
pub struct SoftTeacher {
    /// Gold label ids `[batch, target_len]` u32 (the token each position should predict).
    pub gold: Tensor,
    /// `[batch, target_len]` u8: 1 to feed the gold label, 0 to feed the prediction.
    pub use_gold: Tensor,
}

/// What a decoder call computes and returns.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// The exit policy.
    pub policy: ExitPolicy,
    /// Return each token's logits at its exit layer, `[batch, target_len, vocab]`.
    pub output_logits: bool,
    /// Return every off-ramp's logits (one `[batch, target_len, vocab]` per layer 1..=L).
    /// For [`ExitPolicy::Soft`] these are the logits whose argmax was fed back (layers
    /// 1..L-1) followed by the final ones. Not available with [`ExitPolicy::Hard`].
    pub output_offramp_logits: bool,
    /// Soft-exit teacher forcing (training only; ignored by other policies).
    pub soft_teacher: Option<SoftTeacher>,
    /// Return the decoder states after every layer (`LastLayer` and `Soft` only) instead of
    /// computing any logits: training losses apply the off-ramps themselves, to non-pad rows
    /// only. `ids` are then the argmax of the last layer's off-ramp.
    pub output_layer_hidden: bool,
}

impl DecodeOptions {
    /// Options for `policy`, returning ids and exit layers only.
    pub fn new(policy: ExitPolicy) -> Self {
        Self {
            policy,
            output_logits: false,
            output_offramp_logits: false,
            soft_teacher: None,
            output_layer_hidden: false,
        }
    }

    /// Also return the exit-layer logits.
    pub fn with_logits(mut self) -> Self {
        self.output_logits = true;
        self
    }

    /// Also return every off-ramp's logits.
    pub fn with_offramp_logits(mut self) -> Self {
        self.output_offramp_logits = true;
        self
    }
}

/// Result of one NAR decoder pass.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// Predicted ids `[batch, target_len]` u32: argmax of each token's exit-layer off-ramp.
    pub ids: Tensor,
    /// Exit layer of each token `[batch, target_len]` u32, in `1..=L`.
    pub exit_layers: Tensor,
    /// Exit-layer logits `[batch, target_len, vocab]` when requested.
    pub logits: Option<Tensor>,
    /// Per-layer off-ramp logits (L tensors `[batch, target_len, vocab]`) when requested.
    pub offramp_logits: Option<Vec<Tensor>>,
    /// Decoder states after each layer 1..=L (`[batch, target_len, d]` each) when requested
    /// with `output_layer_hidden`.
    pub layer_hidden: Option<Vec<Tensor>>,
}
