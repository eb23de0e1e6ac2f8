//! A dense layer `y = act(x W^T + b)` over the last dimension: the few-row kernel, the
//! packed-weight kernel ([`crate::ops::packed`], when the weights were packed at load time)
//! or candle's matmul, then bias and activation fused in place where possible.
//!
//! Shapes: `x` `[..., in]`, `W` `[out, in]` (either memory layout, see
//! [`Weights::into_inference_layout`]), `b` `[out]`; result `[..., out]`.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::checkpoint::Weights;
use crate::config::Activation;
use crate::error::Result;
use crate::ops::packed::PackedMatrix;

/// A dense layer `y = x W^T + b` over the last dimension.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The weight packed for the CPU kernels (inference only).
    packed: Option<Arc<PackedMatrix>>,
}

impl Linear {
    /// Builds from `{prefix}.weight` and, when `bias`, `{prefix}.bias`. When the weights were
    /// packed for inference ([`Weights::into_inference_layout`]) the layer keeps the packed
    /// matrix only, not the tensor (one copy of the weights in memory).
    pub fn load(w: &Weights, prefix: &str, bias: bool) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let packed = w.packed(&name);
        let weight = match &packed {
            Some(_) => Tensor::zeros(0, DType::F32, &candle_core::Device::Cpu)?,
            None => w.get(&name)?,
        };
        Ok(Self {
            weight,
            bias: if bias {
                Some(w.get(&format!("{prefix}.bias"))?)
            } else {
                None
            },
            packed,
        })
    }

    /// Wraps tensors: `weight` `[out, in]`, `bias` `[out]`.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            packed: None,
        }
    }

    /// With `packed`, the weight packed for the CPU kernels (same `[out, in]` values).
    pub(crate) fn with_packed(mut self, packed: Option<Arc<PackedMatrix>>) -> Self {
        self.packed = packed;
        self
    }

    /// The packed weight, when there is one.
    pub(crate) fn packed(&self) -> Option<&PackedMatrix> {
        self.packed.as_deref()
    }

    /// The weight `[out, in]` (an empty tensor for a layer loaded with a packed matrix: its
    /// weights live in the packed copy only).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Applies the layer and then `act` to `[..., in]`, giving `[..., out]`; bias and
    /// activation are one fused in-place pass on CPU when nothing tracks gradients.
    pub fn forward_act(&self, xs: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
        self.apply(xs, Some(act))
    }

    /// Applies the layer to `[..., in]`, giving `[..., out]`.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(xs, None)
    }

    /// `act(x W^T + b)`: the product from the few-row kernel or candle's matmul, then bias and
    /// activation fused in place where possible, candle ops otherwise.
    fn apply(&self, xs: &Tensor, act: Option<Activation>) -> candle_core::Result<Tensor> {
        if self.packed.is_none() && (xs.track_op() || self.weight.track_op()) {
            if let Some(y) = self.apply_training(xs, act)? {
                return Ok(y);
            }
        }
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim.max(1);
        let mut out_dims = dims.to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = match &self.packed {
            Some(p) => p.out_dim(),
            None => self.weight.dim(0)?,
        };
        let x2 = xs.reshape((rows, in_dim))?;
        if let (Some(p), Some(b), Some(fact)) = (
            self.packed.as_deref(),
            &self.bias,
            crate::ops::fused::FusedAct::of(act),
        ) {
            if xs.device().is_cpu() && !xs.track_op() && xs.dtype() == DType::F32 {
                // Bias and activation in the products' epilogue, block by block.
                return p.matmul_bias_act(&x2, b, fact)?.reshape(out_dims);
            }
        }
        let y = match self.packed.as_deref() {
            // At any row count (at one row it streams the weights as fast as the few-row
            // kernel: `cargo bench --bench kernels -- one_row`).
            Some(p) if xs.device().is_cpu() && !xs.track_op() && xs.dtype() == DType::F32 => {
                p.matmul(&x2)?
            }
            Some(p) => candle_core::bail!(
                "this dense layer holds {} weights packed for CPU inference; it takes f32 CPU \
                 inputs without gradients (train from the checkpoint layout instead)",
                p.precision().name()
            ),
            None => match crate::ops::gemv::linear_few_rows(&x2, &self.weight)? {
                Some(y) => y,
                None => x2.matmul(&self.weight.t()?)?,
            },
        };
        let y = match &self.bias {
            Some(b) if crate::ops::fused::bias_act_(&y, b, act)? => return y.reshape(out_dims),
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let y = match act {
            Some(a) => a.apply(&y)?,
            None => y,
        };
        y.reshape(out_dims)
    }

    /// The training forward on the CPU: the product and bias as one differentiable node
    /// ([`crate::ops::training::linear`]), exact GELU fused with the bias; `None` where those
    /// ops do not apply (then candle's ops run).
    fn apply_training(
        &self,
        xs: &Tensor,
        act: Option<Activation>,
    ) -> candle_core::Result<Option<Tensor>> {
        use crate::ops::training;
        let gelu_bias = match (act, &self.bias) {
            (Some(Activation::Gelu), Some(b)) => Some(b),
            _ => None,
        };
        let bias = if gelu_bias.is_some() {
            None
        } else {
            self.bias.as_ref()
        };
        let Some(y) = training::linear(xs, &self.weight, bias)? else {
            return Ok(None);
        };
        Ok(Some(match (gelu_bias, act) {
            (Some(b), _) => match training::bias_gelu(&y, b)? {
                Some(z) => z,
                None => y.broadcast_add(b)?.gelu_erf()?,
            },
            (None, Some(a)) => a.apply(&y)?,
            (None, None) => y,
        }))
    }
}
