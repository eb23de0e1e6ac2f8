//! Additive attention masks from 0/1 padding masks.

use candle_core::{DType, Tensor};

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
