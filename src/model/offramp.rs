//! Off-ramps (paper section 3.2): after every decoder layer l an off-ramp predicts
//! `p(y_t | h_t^l) = softmax(W_c h_t^l + final_logits_bias)`.
//!
//! With [`OffRampKind::Shared`] (pre-training, the default) every layer uses the tied output
//! projection (the shared embedding `[vocab, d]`) and `final_logits_bias` `[vocab]`; with
//! [`OffRampKind::PerLayer`] each layer has its own projection and bias. The same definition is
//! used everywhere: entropies, argmaxes and the soft-exit feedback all include the bias.
//!
//! Shapes: hidden `[.., d]` -> logits `[.., vocab]`.

use candle_core::{DType, Tensor, D};

use crate::checkpoint::Weights;
use crate::config::{ElmerConfig, OffRampKind};
use crate::error::{Error, Result};
use crate::nn::Linear;

/// The decoder's off-ramps, one per layer (possibly all the same projection).
#[derive(Debug, Clone)]
pub struct OffRamps {
    kind: OffRampKind,
    shared: Linear,
    per_layer: Vec<Linear>,
    num_layers: usize,
}

impl OffRamps {
    /// Builds the off-ramps. `shared` is the output projection `[vocab, d]` (the tied embedding
    /// or `lm_head.weight`); `final_logits_bias` `[1, vocab]` is read when present (zeros
    /// otherwise, as a bare `BartModel` has none).
    pub fn load(w: &Weights, cfg: &ElmerConfig, shared: Tensor) -> Result<Self> {
        let vocab = cfg.vocab_size;
        let bias = match w.get_opt("final_logits_bias") {
            Some(b) => b.reshape(vocab)?,
            None => Tensor::zeros(vocab, shared.dtype(), shared.device())?,
        };
        let per_layer = match cfg.elmer_offramps {
            OffRampKind::Shared => Vec::new(),
            OffRampKind::PerLayer => (0..cfg.decoder_layers)
                .map(|i| Linear::load(w, &format!("offramps.{i}"), true))
                .collect::<Result<Vec<_>>>()?,
        };
        // The packed vocabulary projection (bf16 inference), under the name it was read from.
        let table = if !cfg.tie_word_embeddings && w.get_opt("lm_head.weight").is_some() {
            "lm_head.weight"
        } else {
            "shared.weight"
        };
        Ok(Self {
            kind: cfg.elmer_offramps,
            shared: Linear::from_tensors(shared, Some(bias)).with_packed(w.packed(table)),
            per_layer,
            num_layers: cfg.decoder_layers,
        })
    }

    /// Shared or per layer.
    pub fn kind(&self) -> OffRampKind {
        self.kind
    }

    /// The off-ramp after `layer` (1-based, 1..=L).
    fn ramp(&self, layer: usize) -> Result<&Linear> {
        if layer == 0 || layer > self.num_layers {
            return Err(Error::invalid_arg(
                "layer",
                format!("off-ramp layer {layer} is outside 1..={}", self.num_layers),
            ));
        }
        Ok(match self.kind {
            OffRampKind::Shared => &self.shared,
            OffRampKind::PerLayer => &self.per_layer[layer - 1],
        })
    }

    /// The projection `[vocab, d]` and bias `[vocab]` of the off-ramp after `layer` (1-based).
    pub fn projection(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        let ramp = self.ramp(layer)?;
        let bias = ramp
            .bias()
            .ok_or_else(|| Error::Unsupported("off-ramp without bias".into()))?;
        Ok((ramp.weight(), bias))
    }

    /// Logits `[.., vocab]` of the off-ramp after layer `layer` (1-based, 1..=L) for `h` `[.., d]`.
    pub fn logits(&self, layer: usize, h: &Tensor) -> Result<Tensor> {
        Ok(self.ramp(layer)?.forward(h)?)
    }
}

/// Most token rows one off-ramp decision pass holds logits for (`[vocab, rows]` f32: 206 MB
/// at BART's vocabulary); larger inputs are processed in chunks of this many rows.
pub(crate) const MAX_DECISION_ROWS: usize = 1024;

/// Argmax ids (and entropies when `with_entropy`) of the off-ramp after `layer` for rows `h`
/// `[rows, d]`: `[rows]` u32 and `[rows]` f32. On CPU the biased logits are never
/// materialised (fused kernel); elsewhere candle ops are used.
pub fn offramp_decisions(
    ramps: &OffRamps,
    layer: usize,
    h: &Tensor,
    with_entropy: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (w, b) = ramps.projection(layer)?;
    let rows = h.dim(0)?;
    if let Some(p) = ramps.ramp(layer)?.packed() {
        if h.device().is_cpu() && h.dtype() == DType::F32 && rows > 0 && !h.track_op() {
            // Token-major `h W^T` `[rows, vocab]` from the packed table, then the row
            // statistics (bounded: at most MAX_DECISION_ROWS rows, see below).
            if rows <= MAX_DECISION_ROWS {
                let logits = p.matmul_vec(h)?;
                let b = b.to_dtype(DType::F32)?.contiguous()?;
                let (bs, bl) = b.storage_and_layout();
                let candle_core::Storage::Cpu(bc) = &*bs else {
                    return Err(Error::Unsupported("off-ramp bias off the CPU".into()));
                };
                let bias = crate::ops::cpu::f32_slice(bc, bl, "off-ramp bias")?;
                let (ids, ent) = crate::ops::argmax_entropy::argmax_entropy_rows(
                    &logits,
                    bias,
                    rows,
                    with_entropy,
                );
                let dev = h.device();
                let ent = if with_entropy {
                    Some(Tensor::from_vec(ent, rows, dev)?)
                } else {
                    None
                };
                return Ok((Tensor::from_vec(ids, rows, dev)?, ent));
            }
        }
    }
    if rows > MAX_DECISION_ROWS {
        // Bounded working set: `[vocab, rows]` logits for at most MAX_DECISION_ROWS tokens at
        // a time (every row's result is independent of the others).
        let mut ids = Vec::new();
        let mut ents = Vec::new();
        for start in (0..rows).step_by(MAX_DECISION_ROWS) {
            let part = h.narrow(0, start, MAX_DECISION_ROWS.min(rows - start))?;
            let (i, e) = offramp_decisions(ramps, layer, &part, with_entropy)?;
            ids.push(i);
            ents.extend(e);
        }
        let ent = if with_entropy {
            Some(Tensor::cat(&ents, 0)?)
        } else {
            None
        };
        return Ok((Tensor::cat(&ids, 0)?, ent));
    }
    if h.device().is_cpu() && h.dtype() == DType::F32 && h.dim(0)? > 0 {
        // `W h^T` `[vocab, rows]`: with the `[vocab, d]` table as the left operand candle's
        // gemm runs near its peak even for a few rows (`h W^T` packs the transposed table
        // on every call: 1.5-2x slower at 32-64 rows).
        let raw_t = match crate::ops::gemv::matmul_t_output_major(h, w)? {
            Some(t) => t, // a few rows: streaming matrix-vector kernel
            None => w.matmul(&h.t()?)?,
        };
        if let Some((ids, ent)) =
            crate::ops::argmax_entropy::argmax_entropy_cols(&raw_t, b, with_entropy)?
        {
            return Ok((ids, ent));
        }
    }
    let logits = h.matmul(&w.t()?)?.broadcast_add(b)?;
    let ids = logits.argmax(D::Minus1)?;
    let ent = if with_entropy {
        Some(entropy(&logits)?)
    } else {
        None
    };
    Ok((ids, ent))
}

/// Entropy `H = -sum_v p_v ln p_v` (nats) of `softmax(logits)` over the last dimension,
/// computed in f32 as `logsumexp(x) - sum_v p_v x_v`. `[.., vocab] -> [..]`.
pub fn entropy(logits: &Tensor) -> candle_core::Result<Tensor> {
    let x = logits.to_dtype(DType::F32)?;
    let m = x.max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&m)?;
    let e = shifted.exp()?;
    let z = e.sum_keepdim(D::Minus1)?;
    let ex = (e * &shifted)?.sum_keepdim(D::Minus1)?;
    let h = (z.log()? - ex.broadcast_div(&z)?)?;
    h.squeeze(D::Minus1)
}
