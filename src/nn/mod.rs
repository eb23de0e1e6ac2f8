//! Building blocks shared by the encoder and the decoder (crate-private): the forward
//! [`Mode`], dropout, softmax, layer norm, linear layers and attention masks, each with an
//! inference path (fused kernels) and a training path (differentiable ops, seeded dropout).
//!
//! candle's fused `softmax_last_dim` and `layer_norm` have no backward pass, so training uses
//! the composed forms; inference keeps the fused ones.

mod dropout;
mod layer_norm;
mod linear;
mod mask;
mod mode;
mod softmax;

pub(crate) use dropout::dropout;
pub(crate) use layer_norm::LayerNorm;
pub(crate) use linear::Linear;
pub(crate) use mask::additive_padding_mask;
pub use mode::Mode;
pub(crate) use softmax::softmax_last;
