//! The ELMER non-autoregressive decoder (paper section 3): BART decoder layers with
//! bidirectional self-attention, cross-attention over the encoder output, an off-ramp after
//! every layer and the exit policies of [`super::exit`].
//!
//! Code: [`layer`] (one layer), `dense` (every layer on every token: last-layer, soft and
//! training fixed exit), `sparse` (active tokens only: hard exit, fixed exit at inference).
//!
//! Shapes: decoder input ids `[batch, T]` (`[<s>, <mask>, ..., <mask>]` for generation),
//! hidden states `[batch, T, d]`, encoder states `[batch, S, d]`, logits `[batch, T, vocab]`.
//!
//! Two execution paths:
//! - dense (last layer, soft exit, fixed exit in training): every layer runs on every token;
//!   a fixed exit keeps an exited token's state with `where` so gradients flow through the
//!   exit-layer prediction (the copies are detached when configured);
//! - sparse (hard exit, fixed exit at inference): each layer computes queries, cross-attention
//!   and the FFN only for the tokens still active (keys/values still come from every token),
//!   and each token's off-ramp is evaluated only while it is active (hard) or only at its exit
//!   layer (fixed). Exit decisions need the entropies on the host: one small read-back per layer.

use candle_core::{DType, Device, Tensor};
use candle_nn::kv_cache::KvCache;

use super::attention::KeyValue;
use super::embedding::Embeddings;
use super::exit::{DecodeOptions, DecoderOutput, ExitPolicy};
use super::offramp::OffRamps;
use crate::checkpoint::Weights;
use crate::config::ElmerConfig;
use crate::error::{Error, Result};
use crate::nn::{Linear, Mode};

mod dense;
mod layer;
mod sparse;

pub use layer::DecoderLayer;
use sparse::ExitRule;

/// Everything the decoder reads from the encoder side.
pub(crate) struct EncoderSide<'a> {
    /// Additive mask `[batch, 1, 1, S]` or `None` when no source position is padding.
    pub mask: Option<&'a Tensor>,
    /// Cross-attention keys/values per decoder layer.
    pub cross: &'a [KeyValue],
}

/// The NAR decoder with off-ramps.
#[derive(Debug, Clone)]
pub struct Decoder {
    embeddings: Embeddings,
    layers: Vec<DecoderLayer>,
    offramps: OffRamps,
    concat_head: Option<Linear>,
    detach_copied: bool,
    vocab_size: usize,
}

impl Decoder {
    /// Loads `decoder.*`, the off-ramps and (when present) `concat_head.weight`.
    pub fn load(w: &Weights, cfg: &ElmerConfig, shared: Tensor, output: Tensor) -> Result<Self> {
        let embeddings = Embeddings::load(w, "decoder", shared, cfg.embed_scale(), cfg.dropout)?;
        let layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::load(w, &format!("decoder.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let concat_head = if w.contains("concat_head.weight") {
            Some(Linear::load(w, "concat_head", false)?)
        } else {
            None
        };
        Ok(Self {
            embeddings,
            layers,
            offramps: OffRamps::load(w, cfg, output)?,
            concat_head,
            detach_copied: cfg.elmer_detach_copied_states,
            vocab_size: cfg.vocab_size,
        })
    }

    /// Number of decoder layers L.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Longest target slot the position table covers.
    pub fn max_len(&self) -> usize {
        self.embeddings.max_len()
    }

    /// The token + position embeddings of the decoder input.
    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }

    /// The off-ramps.
    pub fn offramps(&self) -> &OffRamps {
        &self.offramps
    }

    /// Whether a soft-exit `concat_head` is loaded.
    pub fn has_concat_head(&self) -> bool {
        self.concat_head.is_some()
    }

    /// The soft-exit `concat_head` (`[d, 2d]`, no bias), when loaded.
    pub fn concat_head(&self) -> Option<&Linear> {
        self.concat_head.as_ref()
    }

    /// The decoder layers.
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// Decoder input embeddings `[batch, T, d]` of `ids`.
    pub(crate) fn embed(&self, ids: &Tensor, mode: Mode) -> Result<Tensor> {
        self.embeddings.forward(ids, "decoder_input_ids", mode)
    }

    /// Runs one NAR decoder pass with the policy in `opts`.
    pub(crate) fn forward(
        &self,
        enc: &EncoderSide,
        decoder_input_ids: &Tensor,
        self_mask: Option<&Tensor>,
        opts: &DecodeOptions,
        mode: Mode,
    ) -> Result<DecoderOutput> {
        let h0 = self
            .embeddings
            .forward(decoder_input_ids, "decoder_input_ids", mode)?;
        match &opts.policy {
            ExitPolicy::LastLayer => self.forward_last(h0, enc, self_mask, opts, mode),
            ExitPolicy::Soft => self.forward_soft(h0, enc, self_mask, opts, mode),
            ExitPolicy::Fixed(exits) => {
                let sched = self.check_schedule(exits, &h0)?;
                if mode.is_train() || opts.output_offramp_logits {
                    self.forward_fixed_dense(h0, exits, enc, self_mask, opts, mode)
                } else {
                    self.forward_sparse(h0, enc, self_mask, ExitRule::Schedule(sched), opts)
                }
            }
            ExitPolicy::Hard { threshold } => {
                opts.policy.validate()?;
                if mode.is_train() {
                    return Err(Error::Unsupported(
                        "hard exit in training mode; train hard exit with deep supervision \
                         (LastLayer + output_offramp_logits) and pick the threshold at inference"
                            .into(),
                    ));
                }
                if opts.output_offramp_logits {
                    return Err(Error::Unsupported(
                        "per-layer off-ramp logits with hard exit (exited tokens' off-ramps are \
                         not computed); use LastLayer with output_offramp_logits"
                            .into(),
                    ));
                }
                self.forward_sparse(h0, enc, self_mask, ExitRule::Entropy(*threshold), opts)
            }
        }
    }

    fn check_schedule(&self, exits: &Tensor, h0: &Tensor) -> Result<Vec<u32>> {
        let (b, t, _) = h0.dims3()?;
        if exits.dims() != [b, t] {
            return Err(Error::invalid_arg(
                "exit_layers",
                format!(
                    "fixed exit layers have shape {:?}, expected [{b}, {t}] (batch, target_len)",
                    exits.dims()
                ),
            ));
        }
        let flat: Vec<u32> = exits.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let l = self.num_layers() as u32;
        if let Some(bad) = flat.iter().find(|&&e| e == 0 || e > l) {
            return Err(Error::invalid_arg(
                "exit_layers",
                format!("exit layer {bad} is outside 1..={l}"),
            ));
        }
        Ok(flat)
    }

    fn layer(
        &self,
        i: usize,
        x_q: &Tensor,
        x_all: &Tensor,
        self_mask: Option<&Tensor>,
        enc: &EncoderSide,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        self.layers[i].forward(x_q, x_all, self_mask, &enc.cross[i], enc.mask, mode)
    }

    fn full_layers(b: usize, t: usize, l: usize, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::full(l as u32, (b, t), dev)?)
    }
}

impl Decoder {
    /// One autoregressive step of the BART baseline over all layers: embeds `ids` `[batch, 1]`
    /// at position `pos`, runs every layer's causal [`DecoderLayer::step`] with its cache, and
    /// returns the last off-ramp's logits `[batch, vocab]` (the tied output projection plus
    /// `final_logits_bias`, as `BartForConditionalGeneration`).
    pub(crate) fn ar_step(
        &self,
        ids: &Tensor,
        pos: usize,
        cache: &mut [KvCache],
        enc: &EncoderSide,
    ) -> Result<Tensor> {
        let mut x = self
            .embeddings
            .forward_from(ids, pos, "max_new_tokens", Mode::Eval)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.step(&x, &mut cache[i], &enc.cross[i], enc.mask)?;
        }
        Ok(self.offramps.logits(self.num_layers(), &x)?.squeeze(1)?)
    }
}
