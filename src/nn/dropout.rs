//! Inverted dropout with masks drawn from the training [`Mode`]'s seeded RNG (candle's CPU
//! RNG cannot be seeded through the device, so masks are drawn on the host).

use candle_core::Tensor;
use rand::Rng;

use super::Mode;

/// Inverted dropout with probability `p`; identity in [`Mode::Eval`] or when `p == 0`.
pub fn dropout(xs: &Tensor, p: f64, mode: Mode) -> candle_core::Result<Tensor> {
    let rng = match mode {
        Mode::Train { rng } if p > 0.0 => rng,
        _ => return Ok(xs.clone()),
    };
    let n = xs.elem_count();
    let scale = 1.0 / (1.0 - p);
    // Each element takes 16 bits of a 64-bit draw: dropped when they fall below p * 2^16.
    let threshold = (p * 65_536.0).round() as u32;
    let keep: Vec<bool> = {
        let mut rng = rng.borrow_mut();
        let mut keep = Vec::with_capacity(n + 3);
        while keep.len() < n {
            let bits: u64 = rng.random();
            for j in 0..4 {
                keep.push(((bits >> (16 * j)) & 0xffff) as u32 >= threshold);
            }
        }
        keep.truncate(n);
        keep
    };
    if crate::ops::training::applies(xs) {
        return crate::ops::training::dropout(xs, keep, scale as f32);
    }
    let mask: Vec<f32> = keep
        .iter()
        .map(|&k| if k { scale as f32 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
    xs * mask
}
