//! Building blocks shared by the encoder and decoder: the forward [`Mode`], layer norm,
//! dropout and linear layers, each with an inference path (fused kernels) and a training
//! path (differentiable ops, seeded dropout).
//!
//! candle's fused `softmax_last_dim` and `layer_norm` have no backward pass, so training uses
//! the composed forms; inference keeps the fused ones.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, D};
use rand::rngs::StdRng;
use rand::Rng;

use crate::config::Activation;
use crate::error::{Error, Result};

/// Whether a forward pass is for inference or training.
///
/// Training enables dropout (masks drawn from the given seeded RNG, so runs are reproducible)
/// and switches to differentiable kernels.
#[derive(Clone, Copy, Default)]
pub enum Mode<'a> {
    /// Inference: no dropout, fused kernels.
    #[default]
    Eval,
    /// Training: dropout from `rng`, differentiable kernels.
    Train {
        /// Source of dropout masks.
        rng: &'a RefCell<StdRng>,
    },
}

impl std::fmt::Debug for Mode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Eval => write!(f, "Eval"),
            Mode::Train { .. } => write!(f, "Train"),
        }
    }
}

impl Mode<'_> {
    /// `true` in [`Mode::Train`].
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train { .. })
    }
}

/// Inverted dropout with probability `p`; identity in [`Mode::Eval`] or when `p == 0`.
pub fn dropout(xs: &Tensor, p: f64, mode: Mode) -> candle_core::Result<Tensor> {
    let rng = match mode {
        Mode::Train { rng } if p > 0.0 => rng,
        _ => return Ok(xs.clone()),
    };
    let n = xs.elem_count();
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = {
        let mut rng = rng.borrow_mut();
        (0..n)
            .map(|_| if rng.random::<f64>() < p { 0.0 } else { scale })
            .collect()
    };
    let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
    xs * mask
}

/// Softmax over the last dimension: fused in eval, differentiable in training.
pub fn softmax_last(xs: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
    if mode.is_train() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

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
            candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, self.eps as f32)
        } else {
            self.fused.forward(&xs.contiguous()?)
        }
    }
}

/// A dense layer `y = x W^T + b` over the last dimension.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Builds from `{prefix}.weight` and, when `bias`, `{prefix}.bias`.
    pub fn load(w: &Weights, prefix: &str, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"))?,
            bias: if bias {
                Some(w.get(&format!("{prefix}.bias"))?)
            } else {
                None
            },
        })
    }

    /// Wraps tensors: `weight` `[out, in]`, `bias` `[out]`.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight `[out, in]`.
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
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim.max(1);
        let mut out_dims = dims.to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = self.weight.dim(0)?;
        let x2 = xs.reshape((rows, in_dim))?;
        let y = match super::gemv::linear_few_rows(&x2, &self.weight)? {
            Some(y) => y,
            None => x2.matmul(&self.weight.t()?)?,
        };
        let y = match &self.bias {
            Some(b) if super::fused::bias_act_(&y, b, act)? => return y.reshape(out_dims),
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let y = match act {
            Some(a) => a.apply(&y)?,
            None => y,
        };
        y.reshape(out_dims)
    }
}

/// Named model tensors, already on the model's device and dtype.
///
/// Loading ([`crate::checkpoint`]) validates names and shapes first, so a missing name here is
/// an internal error.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    map: HashMap<String, Tensor>,
}

impl Weights {
    /// Wraps a name -> tensor map (canonical names, see [`crate::checkpoint`]).
    pub fn new(map: HashMap<String, Tensor>) -> Self {
        Self { map }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.map
            .get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                hint: None,
            })
    }

    /// The tensor called `name`, if present.
    pub fn get_opt(&self, name: &str) -> Option<Tensor> {
        self.map.get(name).cloned()
    }

    /// The underlying map.
    pub fn map(&self) -> &HashMap<String, Tensor> {
        &self.map
    }

    /// Re-lays out the dense-layer weights for fast CPU inference and returns the result.
    ///
    /// Every `*_proj.weight`, `fc1.weight`, `fc2.weight` and `concat_head.weight` (`[out, in]`)
    /// is stored as a contiguous `[in, out]` matrix viewed as `[out, in]`: the same values
    /// and shape, but `x W^T` then multiplies by a row-major matrix, which candle's CPU gemm
    /// runs 1.07-5x faster than a transposed one, most at few rows (`cargo bench --bench
    /// kernels`: `[64, 3072] x [3072, 768]` 1.06 vs 5.5 ms, `[512, 768] x [768, 3072]` 5.3 vs
    /// 5.7 ms). Memory stays the same (each matrix is copied once and
    /// the original dropped). The vocabulary projection keeps its `[vocab, d]` layout (the
    /// off-ramps multiply it from the left, see [`crate::model::offramp`]).
    ///
    /// [`crate::ElmerModel::from_dir`] does this; call it on weights you build yourself
    /// before [`crate::ElmerModel::from_weights`]. Not for training: the copies are no
    /// longer the variables an optimizer updates. A no-op on non-CPU devices.
    pub fn into_inference_layout(mut self) -> Result<Self> {
        for (name, t) in self.map.iter_mut() {
            let dense = name.ends_with("_proj.weight")
                || name.ends_with(".fc1.weight")
                || name.ends_with(".fc2.weight")
                || name == "concat_head.weight";
            if dense && t.rank() == 2 && t.device().is_cpu() && t.is_contiguous() {
                *t = t.t()?.contiguous()?.t()?;
            }
        }
        Ok(self)
    }

    /// Device of the tensors (CPU when empty).
    pub fn device(&self) -> Device {
        self.map
            .values()
            .next()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu)
    }

    /// Dtype of the tensors (F32 when empty).
    pub fn dtype(&self) -> DType {
        self.map
            .values()
            .next()
            .map(|t| t.dtype())
            .unwrap_or(DType::F32)
    }
}

/// Additive attention mask `[batch, 1, 1, len]` from a 0/1 padding mask `[batch, len]`:
/// 0 where the key is kept, the dtype's most negative finite value where it is padding
/// (as transformers does). Returns `None` when nothing is masked.
pub fn additive_padding_mask(mask: &Tensor, dtype: DType) -> candle_core::Result<Option<Tensor>> {
    let (b, s) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    let min_val = m.min_all()?.to_scalar::<f32>()?;
    if min_val >= 1.0 {
        return Ok(None);
    }
    let neg = match dtype {
        DType::F16 => f32::from(half::f16::MIN),
        DType::BF16 => f32::from(half::bf16::MIN),
        _ => f32::MIN,
    };
    // (1 - m) * neg, computed without overflow: where(m > 0, 0, neg).
    let zeros = Tensor::zeros((b, s), DType::F32, m.device())?;
    let negs = Tensor::full(neg, (b, s), m.device())?;
    let add = m.gt(0.0)?.where_cond(&zeros, &negs)?;
    Ok(Some(add.to_dtype(dtype)?.reshape((b, 1, 1, s))?))
}
