//! CPU kernels the model runs on (crate-private).
//!
//! candle's CPU backend runs elementwise ops on one thread and allocates a tensor per op;
//! around a fast matrix multiply, that is where CPU time goes. These kernels fuse the
//! vocabulary-sized and elementwise parts of a forward (and a training) pass into one or two
//! multi-threaded passes:
//! - [`argmax_entropy`]: off-ramp argmax and entropy over `[vocab, tokens]` logits;
//! - [`cross_entropy`]: the training NLL and its gradient over `[rows, vocab]` logits;
//! - [`fused`]: in-place bias + activation and scaled, masked attention softmax;
//! - [`packed`]: dense layers against weights packed at load time (AVX-512 register tiles),
//!   with [`amx`] tiles for bf16 on Intel CPUs that have AMX-BF16 and [`int8`] quantized
//!   products on AVX512-VNNI;
//! - [`gemv`]: dense layers for one to four rows (AR steps, the last active tokens);
//! - [`attention`]: the multi-head attention core with its backward pass (training);
//! - [`training`]: layer norm, bias + GELU and attention softmax with their backward passes;
//! - [`cpu`]: the shared plumbing (row-parallel loops, storage views, CPU feature checks).
//!
//! Every kernel is chosen at run time: it applies only to contiguous f32 CPU tensors (and, for
//! the in-place ones, tensors that do not track gradients) and returns `None` / `false`
//! otherwise, so callers fall back to candle ops on other devices and dtypes. Vectorised loops
//! are compiled for AVX2/FMA and selected by [`cpu::has_avx2_fma`]; nothing is compiled for one
//! micro-architecture only.

pub(crate) mod amx;
pub(crate) mod argmax_entropy;
pub(crate) mod attention;
pub(crate) mod cpu;
pub(crate) mod cross_entropy;
pub(crate) mod fused;
pub(crate) mod gemv;
pub(crate) mod int8;
pub(crate) mod packed;
pub(crate) mod training;

/// Largest absolute elementwise difference of two same-shaped tensors (unit tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of the same shape")
}

/// Deterministic test values in about `[-50 / scale, 50 / scale]` (unit tests).
#[cfg(test)]
pub(crate) fn test_data(n: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / scale)
        .collect()
}
