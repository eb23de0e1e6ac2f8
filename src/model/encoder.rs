//! The BART encoder (paper section 3.1): embeddings, then post-norm layers of bidirectional
//! self-attention and a feed-forward block, with a source padding mask.
//!
//! Shapes: `input_ids` `[batch, src_len]` (u32), attention mask `[batch, src_len]` (1 keep,
//! 0 pad), output hidden states `[batch, src_len, d]`.

use candle_core::Tensor;

use super::attention::Attention;
use super::embedding::Embeddings;
use super::feed_forward::FeedForward;
use crate::checkpoint::Weights;
use crate::config::ElmerConfig;
use crate::error::Result;
use crate::nn::{dropout, LayerNorm, Mode};

/// One post-norm encoder layer.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
    dropout: f64,
}

impl EncoderLayer {
    /// Loads `encoder.layers.{i}.*`.
    pub fn load(w: &Weights, prefix: &str, cfg: &ElmerConfig) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::load(
                w,
                &format!("{prefix}.self_attn"),
                cfg.d_model,
                cfg.encoder_attention_heads,
                cfg.attention_dropout,
            )?,
            self_attn_layer_norm: LayerNorm::load(w, &format!("{prefix}.self_attn_layer_norm"))?,
            ffn: FeedForward::load(w, prefix, cfg)?,
            final_layer_norm: LayerNorm::load(w, &format!("{prefix}.final_layer_norm"))?,
            dropout: cfg.dropout,
        })
    }

    /// `[batch, len, d] -> [batch, len, d]`; `mask` is additive `[batch, 1, 1, len]`.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let h = self.self_attn.forward(x, x, mask, mode)?;
        let h = dropout(&h, self.dropout, mode)?;
        let x = self.self_attn_layer_norm.forward(&(x + h)?, mode)?;
        let h = self.ffn.forward(&x, mode)?;
        let h = dropout(&h, self.dropout, mode)?;
        self.final_layer_norm.forward(&(x + h)?, mode)
    }
}

/// The BART encoder.
#[derive(Debug, Clone)]
pub struct Encoder {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Loads `encoder.*`; `shared` is the token table `[vocab, d]`.
    pub fn load(w: &Weights, cfg: &ElmerConfig, shared: Tensor) -> Result<Self> {
        let embeddings = Embeddings::load(w, "encoder", shared, cfg.embed_scale(), cfg.dropout)?;
        let layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::load(w, &format!("encoder.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, layers })
    }

    /// Longest source the position table covers.
    pub fn max_len(&self) -> usize {
        self.embeddings.max_len()
    }

    /// Encodes `input_ids` `[batch, src_len]` with an additive mask `[batch, 1, 1, src_len]`;
    /// returns `[batch, src_len, d]`.
    pub fn forward(&self, input_ids: &Tensor, mask: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let mut x = self.embeddings.forward(input_ids, "input_ids", mode)?;
        for layer in &self.layers {
            x = layer.forward(&x, mask, mode)?;
        }
        Ok(x)
    }
}
