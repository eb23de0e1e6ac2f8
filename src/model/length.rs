//! The target-length predictor: an optional head that reads the encoder and predicts how many
//! decoder positions the output needs, so the decoder can be given a slot of exactly that
//! length (its self-attention masked past it).
//!
//! Not part of ELMER (the paper decodes a fixed slot and cuts the output at the first
//! `</s>`, section 3.1); it is the length predictor of the one-pass NAR models the paper
//! compares against (NAT, Gu et al. 2018; CMLM, Ghazvininejad et al. 2019): a linear
//! classifier over the mean of the encoder states. With it, every position knows where the
//! sentence ends, so the last word (a question's `?`) and `</s>` land where they belong
//! instead of each position guessing the length on its own.
//!
//! Classes are target lengths `T` in tokens, counting the `</s>` position (the slot length
//! of [`crate::train::Batch`]): class `T` for `T` in `0..=max_target_len`, class 0 unused.
//!
//! Shapes: encoder states `[batch, S, d]`, keep mask `[batch, S]` (1 real, 0 pad), pooled
//! `[batch, d]`, `length_head.weight` `[max_target_len + 1, d]`, `length_head.bias`
//! `[max_target_len + 1]`, logits `[batch, max_target_len + 1]`.

use candle_core::{DType, Tensor, D};

use crate::checkpoint::Weights;
use crate::error::{Error, Result};

/// Canonical name of the length head's weight.
pub(crate) const WEIGHT: &str = "length_head.weight";
/// Canonical name of the length head's bias.
pub(crate) const BIAS: &str = "length_head.bias";

/// Linear length classifier over the masked mean of the encoder states.
#[derive(Debug, Clone)]
pub(crate) struct LengthHead {
    weight: Tensor,
    bias: Tensor,
}

impl LengthHead {
    /// Loads `length_head.{weight,bias}` when both are present; `None` when neither is.
    pub(crate) fn load(w: &Weights) -> Result<Option<Self>> {
        match (w.get_opt(WEIGHT), w.get_opt(BIAS)) {
            (Some(weight), Some(bias)) => Ok(Some(Self { weight, bias })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(Error::MissingTensor {
                name: BIAS.into(),
                hint: Some(format!("{WEIGHT} is present")),
            }),
            (None, Some(_)) => Err(Error::MissingTensor {
                name: WEIGHT.into(),
                hint: Some(format!("{BIAS} is present")),
            }),
        }
    }

    /// Largest length class (`max_target_len`).
    pub(crate) fn max_len(&self) -> usize {
        self.weight.dims()[0].saturating_sub(1)
    }

    /// Length logits `[batch, max_len + 1]` from encoder states `hidden` `[batch, S, d]` and
    /// the additive source mask `[batch, 1, 1, S]` of [`super::EncoderOutput`] (`None`: no
    /// padding). Differentiable (plain ops only).
    pub(crate) fn logits(&self, hidden: &Tensor, additive_mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, _) = hidden.dims3()?;
        let pooled = match additive_mask {
            None => hidden.mean(1)?,
            Some(m) => {
                // 0 for kept positions, a large negative number for pads.
                let keep = m
                    .reshape((b, s))?
                    .to_dtype(DType::F32)?
                    .ge(-1.0)?
                    .to_dtype(hidden.dtype())?;
                let count = keep.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?; // [b, 1]
                let summed = keep.unsqueeze(1)?.matmul(hidden)?.squeeze(1)?; // [b, d]
                summed.broadcast_div(&count)?
            }
        };
        let w = self.weight.to_dtype(hidden.dtype())?;
        let bias = self.bias.to_dtype(hidden.dtype())?;
        Ok(pooled.matmul(&w.t()?)?.broadcast_add(&bias)?)
    }

    /// The most likely length of each row in `min..=max` (classes outside are ignored).
    pub(crate) fn predict(
        &self,
        hidden: &Tensor,
        additive_mask: Option<&Tensor>,
        min: usize,
        max: usize,
    ) -> Result<Vec<usize>> {
        let max = max.min(self.max_len());
        if min == 0 || min > max {
            return Err(Error::invalid_arg(
                "max_len",
                format!("length range {min}..={max} is empty"),
            ));
        }
        let logits = self
            .logits(hidden, additive_mask)?
            .narrow(D::Minus1, min, max - min + 1)?
            .to_dtype(DType::F32)?;
        let best: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        Ok(best.into_iter().map(|i| i as usize + min).collect())
    }

    /// The `k` most likely lengths of each row in `min..=max`, most likely first (fewer when
    /// the range holds fewer than `k`); ties go to the shorter length.
    pub(crate) fn top_k(
        &self,
        hidden: &Tensor,
        additive_mask: Option<&Tensor>,
        min: usize,
        max: usize,
        k: usize,
    ) -> Result<Vec<Vec<usize>>> {
        let max = max.min(self.max_len());
        if min == 0 || min > max {
            return Err(Error::invalid_arg(
                "max_len",
                format!("length range {min}..={max} is empty"),
            ));
        }
        let rows: Vec<Vec<f32>> = self
            .logits(hidden, additive_mask)?
            .narrow(D::Minus1, min, max - min + 1)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut idx: Vec<usize> = (0..row.len()).collect();
                // NaN logits sort last, so a broken head still yields lengths in range.
                idx.sort_by(|&a, &b| {
                    let (x, y) = (row[a], row[b]);
                    y.partial_cmp(&x)
                        .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
                        .then(a.cmp(&b))
                });
                idx.into_iter().take(k).map(|i| i + min).collect()
            })
            .collect())
    }
}
