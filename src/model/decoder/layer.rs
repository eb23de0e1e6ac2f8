//! One ELMER decoder layer (paper section 3.1): BART's post-norm decoder layer with
//! *bidirectional* self-attention over the whole target slot, cross-attention over the
//! encoder and a feed-forward block. Queries may be a subset of the states (the tokens that
//! have not exited) while keys and values come from every token.
//!
//! Shapes: queries `[batch, tq, d]`, all states `[batch, T, d]`, result `[batch, tq, d]`.

use candle_core::Tensor;
use candle_nn::kv_cache::KvCache;

use crate::checkpoint::Weights;
use crate::config::ElmerConfig;
use crate::error::Result;
use crate::model::attention::{Attention, KeyValue};
use crate::model::feed_forward::FeedForward;
use crate::nn::{dropout, LayerNorm, Mode};

/// One post-norm decoder layer: self-attention (bidirectional), cross-attention, FFN.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
    dropout: f64,
}

impl DecoderLayer {
    /// Loads `decoder.layers.{i}.*`.
    pub fn load(w: &Weights, prefix: &str, cfg: &ElmerConfig) -> Result<Self> {
        let attn = |name: &str| {
            Attention::load(
                w,
                &format!("{prefix}.{name}"),
                cfg.d_model,
                cfg.decoder_attention_heads,
                cfg.attention_dropout,
            )
        };
        Ok(Self {
            self_attn: attn("self_attn")?,
            self_attn_layer_norm: LayerNorm::load(w, &format!("{prefix}.self_attn_layer_norm"))?,
            encoder_attn: attn("encoder_attn")?,
            encoder_attn_layer_norm: LayerNorm::load(
                w,
                &format!("{prefix}.encoder_attn_layer_norm"),
            )?,
            ffn: FeedForward::load(w, prefix, cfg)?,
            final_layer_norm: LayerNorm::load(w, &format!("{prefix}.final_layer_norm"))?,
            dropout: cfg.dropout,
        })
    }

    /// The self-attention block.
    pub fn self_attn(&self) -> &Attention {
        &self.self_attn
    }

    /// The layer norm after self-attention.
    pub fn self_attn_layer_norm(&self) -> &LayerNorm {
        &self.self_attn_layer_norm
    }

    /// The cross-attention block.
    pub fn encoder_attn(&self) -> &Attention {
        &self.encoder_attn
    }

    /// The layer norm after cross-attention.
    pub fn encoder_attn_layer_norm(&self) -> &LayerNorm {
        &self.encoder_attn_layer_norm
    }

    /// The feed-forward block.
    pub fn ffn(&self) -> &FeedForward {
        &self.ffn
    }

    /// The layer norm after the feed-forward block.
    pub fn final_layer_norm(&self) -> &LayerNorm {
        &self.final_layer_norm
    }

    /// Cross-attention keys/values of the encoder output `[batch, S, d]`.
    pub fn cross_key_value(&self, encoder_hidden: &Tensor) -> candle_core::Result<KeyValue> {
        self.encoder_attn.key_value(encoder_hidden)
    }

    /// Runs the layer for the query rows `x_q` `[batch, tq, d]`, attending over all current
    /// states `x_all` `[batch, T, d]` (self) and the encoder (`cross`). Returns `[batch, tq, d]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x_q: &Tensor,
        x_all: &Tensor,
        self_mask: Option<&Tensor>,
        cross: &KeyValue,
        encoder_mask: Option<&Tensor>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let kv = self.self_attn.key_value(x_all)?;
        let h = self.self_attn.attend(x_q, &kv, self_mask, mode)?;
        let h = dropout(&h, self.dropout, mode)?;
        let x = self.self_attn_layer_norm.forward(&(x_q + h)?, mode)?;
        let h = self.encoder_attn.attend(&x, cross, encoder_mask, mode)?;
        let h = dropout(&h, self.dropout, mode)?;
        let x = self.encoder_attn_layer_norm.forward(&(x + h)?, mode)?;
        let h = self.ffn.forward(&x, mode)?;
        let h = dropout(&h, self.dropout, mode)?;
        self.final_layer_norm.forward(&(x + h)?, mode)
    }

    /// One autoregressive step (the BART baseline): the new positions `x` `[batch, 1, d]`
    /// attend causally over the positions cached so far plus themselves (the cache grows by
    /// one position), then over the encoder. Returns `[batch, 1, d]`. Inference only.
    pub(crate) fn step(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        cross: &KeyValue,
        encoder_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mode = Mode::Eval;
        let new_kv = self.self_attn.key_value_split(x)?;
        let (k, v) = cache.append(&new_kv.k, &new_kv.v)?;
        let h = self
            .self_attn
            .attend(x, &KeyValue::split(k, v), None, mode)?;
        let x = self.self_attn_layer_norm.forward(&(x + h)?, mode)?;
        let h = self.encoder_attn.attend(&x, cross, encoder_mask, mode)?;
        let x = self.encoder_attn_layer_norm.forward(&(x + h)?, mode)?;
        let h = self.ffn.forward(&x, mode)?;
        self.final_layer_norm.forward(&(x + h)?, mode)
    }
}
