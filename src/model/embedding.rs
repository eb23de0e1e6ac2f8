//! Input embeddings of the encoder and of the NAR decoder (BART, paper section 3.1):
//! `layernorm_embedding(embed_tokens(ids) * embed_scale + embed_positions(pos + 2))`, then dropout.
//!
//! The token table is the shared embedding `[vocab, d]` (also the off-ramp projection); the
//! learned position table has `max_position_embeddings + 2` rows because BART offsets
//! positions by 2.

use candle_core::{DType, Tensor};

use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::nn::{dropout, LayerNorm, Mode};

/// Token + learned position embeddings with `layernorm_embedding`.
#[derive(Debug, Clone)]
pub struct Embeddings {
    tokens: Tensor,
    positions: Tensor,
    layer_norm: LayerNorm,
    scale: f64,
    dropout: f64,
    /// Longest sequence the position table covers.
    max_len: usize,
}

/// BART's position offset.
pub(crate) const POSITION_OFFSET: usize = 2;

impl Embeddings {
    /// Loads `{prefix}.embed_positions.weight` and `{prefix}.layernorm_embedding`; `tokens` is
    /// the shared table `[vocab, d]`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        tokens: Tensor,
        scale: f64,
        dropout: f64,
    ) -> Result<Self> {
        let positions = w.get(&format!("{prefix}.embed_positions.weight"))?;
        let max_len = positions.dim(0)?.saturating_sub(POSITION_OFFSET);
        Ok(Self {
            tokens,
            positions,
            layer_norm: LayerNorm::load(w, &format!("{prefix}.layernorm_embedding"))?,
            scale,
            dropout,
            max_len,
        })
    }

    /// Longest sequence the position table covers.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Looks up token vectors `[batch, len, d]` for `ids` `[batch, len]` (no scale).
    pub fn lookup(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = self.tokens.dim(1)?;
        let flat = ids.flatten_all()?;
        let flat = if flat.dtype() == DType::U32 || flat.dtype() == DType::I64 {
            flat
        } else {
            flat.to_dtype(DType::U32)?
        };
        self.tokens.index_select(&flat, 0)?.reshape((b, t, d))
    }

    /// Embeds `ids` `[batch, len]` (u32) at positions `0..len` into `[batch, len, d]`.
    pub fn forward(&self, ids: &Tensor, name: &str, mode: Mode) -> Result<Tensor> {
        self.forward_from(ids, 0, name, mode)
    }

    /// Embeds `ids` `[batch, len]` at positions `start..start + len` (an autoregressive step
    /// embeds one token at its position).
    pub fn forward_from(
        &self,
        ids: &Tensor,
        start: usize,
        name: &str,
        mode: Mode,
    ) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        let t = start + len;
        if t > self.max_len {
            return Err(Error::invalid_arg(
                name,
                format!(
                    "sequence length {t} exceeds the position table ({} positions, max_position_embeddings)",
                    self.max_len
                ),
            ));
        }
        let tok = self.lookup(ids)?;
        let tok = if self.scale != 1.0 {
            (tok * self.scale)?
        } else {
            tok
        };
        let pos = self.positions.narrow(0, POSITION_OFFSET + start, len)?;
        let x = tok.broadcast_add(&pos)?;
        let x = self.layer_norm.forward(&x, mode)?;
        Ok(dropout(&x, self.dropout, mode)?)
    }
}
