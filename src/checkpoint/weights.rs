//! Named model tensors ([`Weights`]): what a checkpoint loads and what the model is built from.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::ops::packed::{PackedMatrix, Precision};

/// Named model tensors, already on the model's device and dtype.
///
/// Loading ([`crate::checkpoint`]) validates names and shapes first, so a missing name here is
/// an internal error.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    map: HashMap<String, Tensor>,
    /// Matrices packed for the CPU kernels of [`crate::ops::packed`], by tensor name.
    packed: HashMap<String, Arc<PackedMatrix>>,
}

/// Whether `name` is the weight of a dense layer `x W^T + b` of the encoder or decoder.
fn is_dense(name: &str) -> bool {
    name.ends_with("_proj.weight")
        || name.ends_with(".fc1.weight")
        || name.ends_with(".fc2.weight")
        || name == "concat_head.weight"
}

/// Whether `name` is the projection of a per-layer off-ramp (`[vocab, d]`).
fn is_offramp(name: &str) -> bool {
    name.starts_with("offramps.") && name.ends_with(".weight")
}

impl Weights {
    /// Wraps a name -> tensor map (canonical names, see [`crate::checkpoint`]).
    pub fn new(map: HashMap<String, Tensor>) -> Self {
        Self {
            map,
            packed: HashMap::new(),
        }
    }

    /// The packed copy of the matrix called `name`, when
    /// [`into_inference_layout`](Self::into_inference_layout) made one.
    pub(crate) fn packed(&self, name: &str) -> Option<Arc<PackedMatrix>> {
        self.packed.get(name).cloned()
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

    /// Whether a tensor called `name` is present (as a tensor or, after
    /// [`into_inference_layout`](Self::into_inference_layout), as a packed matrix).
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name) || self.packed.contains_key(name)
    }

    /// The tensor called `name`, if present (a matrix that was packed for inference is no
    /// longer a tensor: see [`contains`](Self::contains)).
    pub fn get_opt(&self, name: &str) -> Option<Tensor> {
        self.map.get(name).cloned()
    }

    /// The underlying map.
    pub fn map(&self) -> &HashMap<String, Tensor> {
        &self.map
    }

    /// Re-lays out the dense-layer weights for fast CPU inference and returns the result.
    ///
    /// On a CPU with AVX-512F every `*_proj.weight`, `fc1.weight`, `fc2.weight`,
    /// `concat_head.weight` and per-layer off-ramp (`[out, in]`) is also packed for the
    /// kernels of the crate's small-row products (16-output-column panels, built once here);
    /// dense layers then multiply 5 or more rows with them instead of candle's gemm. Elsewhere
    /// (or with `ELMER_CPU_KERNELS=portable`) each is stored as a contiguous `[in, out]`
    /// matrix viewed as `[out, in]`: the same values and shape, but `x W^T` then multiplies by
    /// a row-major matrix, which candle's CPU gemm runs faster than a transposed one
    /// (`cargo bench --bench kernels` measures the layouts and the packed kernels). The
    /// vocabulary projection keeps its `[vocab, d]` layout (the off-ramps multiply it from
    /// the left).
    ///
    /// [`crate::ElmerModel::from_dir`] does this; call it on weights you build yourself
    /// before [`crate::ElmerModel::from_weights`]. Not for training: the copies are no
    /// longer the variables an optimizer updates. A no-op on non-CPU devices.
    pub fn into_inference_layout(self) -> Result<Self> {
        self.into_inference_layout_precision(Precision::F32, true)
    }

    /// [`into_inference_layout`](Self::into_inference_layout) with the dense layers'
    /// weights and the off-ramps' vocabulary projection stored in `dtype`: `F32`, or `BF16`
    /// (CPU mixed precision, what `LoadOptions { dtype: Some(BF16), .. }` gives
    /// [`crate::ElmerModel::from_dir`]: needs AVX512_BF16, see
    /// [`crate::LoadOptions::cpu_supports`]). Weights must be f32. A model built from
    /// the result keeps the packed copies of the dense layers, not their tensors.
    pub fn into_inference_layout_with(self, dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => self.into_inference_layout_precision(Precision::F32, true),
            DType::BF16 => self.into_inference_layout_precision(Precision::Bf16, true),
            other => Err(Error::invalid_arg(
                "dtype",
                format!("inference layout in {other:?}: f32 or bf16"),
            )),
        }
    }

    /// [`into_inference_layout`](Self::into_inference_layout) with the dense layers and the
    /// off-ramps' vocabulary projection packed in `precision`: [`Precision::Int8`] quantizes
    /// them (one scale per output column; activations are quantized per row on every call)
    /// for the AVX512-VNNI kernels, what `LoadOptions { cpu_precision: Some(Int8), .. }`
    /// gives [`crate::ElmerModel::from_dir`]. A CPU without the instructions gets
    /// [`Error::Unsupported`]. Weights must be f32.
    pub fn into_inference_layout_as(self, precision: Precision) -> Result<Self> {
        self.into_inference_layout_precision(precision, true)
    }

    /// With `pack_f32_table` (f32 only; bf16 and int8 always pack it) the off-ramps'
    /// vocabulary table is packed too, next to the row-major copy the embeddings read.
    pub(crate) fn into_inference_layout_precision(
        mut self,
        precision: Precision,
        pack_f32_table: bool,
    ) -> Result<Self> {
        let packable = |t: &Tensor| {
            t.rank() == 2 && t.device().is_cpu() && t.dtype() == DType::F32 && !t.is_variable()
        };
        let reduced = precision != Precision::F32;
        if reduced {
            if !self.map.values().all(|t| t.device().is_cpu()) {
                return Ok(self);
            }
            crate::ops::packed::require(precision)?;
        }
        if reduced || pack_f32_table {
            // The off-ramps' vocabulary projection (the tied table stays f32 for the
            // embeddings; an untied head is packed too). In f32 this is a second copy of
            // the table (154 MB at BART's vocabulary) for 1.4-1.5x faster off-ramps than
            // candle's `W h^T` (`cargo bench --bench kernels -- offramp_32rows`).
            for table in ["shared.weight", "lm_head.weight"] {
                if let Some(t) = self.map.get(table) {
                    if packable(t) {
                        if let Some(p) = PackedMatrix::pack(t, precision)? {
                            self.packed.insert(table.to_string(), Arc::new(p));
                        }
                    }
                }
            }
        }
        let names: Vec<String> = self.map.keys().cloned().collect();
        for name in names {
            let Some(t) = self.map.get(&name) else {
                continue;
            };
            // Per-layer off-ramps are packed in reduced precision only.
            let dense = is_dense(&name);
            let offramp = reduced && is_offramp(&name);
            if !(dense || offramp) || !packable(t) {
                continue;
            }
            match PackedMatrix::pack(t, precision)? {
                Some(p) => {
                    // The model keeps the packed copy only; drop the tensor now, so loading
                    // never holds both copies of every layer.
                    self.map.remove(&name);
                    self.packed.insert(name, Arc::new(p));
                }
                None if dense && t.is_contiguous() => {
                    let relaid = t.t()?.contiguous()?.t()?;
                    self.map.insert(name, relaid);
                }
                None => {}
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
