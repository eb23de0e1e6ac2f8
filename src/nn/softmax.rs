//! Softmax over the last dimension: candle's fused kernel at inference, the composed
//! (differentiable) form in training, since the fused one has no backward pass.

use candle_core::{Tensor, D};

use super::Mode;

/// Softmax over the last dimension: fused in eval, differentiable in training.
pub fn softmax_last(xs: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
    if mode.is_train() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}
