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
