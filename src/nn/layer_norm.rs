//! Layer norm with weight and bias over the last dimension (BART's eps 1e-5): candle's fused
//! kernel at inference; in training the fused differentiable CPU op of [`crate::ops::training`]
//! (`layer_norm_slow`, composed candle ops, on other devices and dtypes).

use candle_core::{Module, Tensor};

use super::Mode;
use crate::checkpoint::Weights;
use crate::error::Result;

/// Layer norm with weight and bias (eps 1e-5 as BART).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    fused: candle_nn::LayerNorm,
}

impl LayerNorm {
    /// BART's layer-norm epsilon.
    pub const EPS: f64 = 1e-5;

    /// Builds from `{prefix}.weight` and `{prefix}.bias`.
    pub fn load(w: &Weights, prefix: &str) -> Result<Self> {
        let weight = w.get(&format!("{prefix}.weight"))?;
        let bias = w.get(&format!("{prefix}.bias"))?;
        Ok(Self {
            fused: candle_nn::LayerNorm::new(weight.clone(), bias.clone(), Self::EPS),
            weight,
            bias,
            eps: Self::EPS,
        })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, xs: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        if mode.is_train() {
            if let Some(y) =
                crate::ops::training::layer_norm(xs, &self.weight, &self.bias, self.eps)?
            {
                return Ok(y);
            }
            candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, self.eps as f32)
        } else {
            self.fused.forward(&xs.contiguous()?)
        }
    }
}
