//! Named model tensors ([`Weights`]): what a checkpoint loads and what the model is built from.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

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
    /// runs faster than a transposed one, most at few rows (`cargo bench --bench kernels`
    /// measures both layouts). Memory stays the same (each matrix is copied once and the
    /// original dropped). The vocabulary projection keeps its `[vocab, d]` layout (the
    /// off-ramps multiply it from the left).
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
