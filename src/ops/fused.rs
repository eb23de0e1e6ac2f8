//! Fused, in-place CPU kernels for the elementwise parts of an inference forward pass.
//!
//! candle runs elementwise ops on one thread and allocates a new tensor for each; around a
//! fast matrix multiply that is where CPU time goes (at source 512, exact GELU over
//! `[512, 3072]` took 4.8 ms per layer and the attention softmax over `[12, 512, 512]` 3.0
//! ms, against 5.3 ms for the `fc1` product itself). These kernels overwrite the freshly
//! computed matrix-multiply output in place, in one pass, split over rows and threads:
//! - [`bias_act_`]: `y <- act(y + b)` (dense-layer bias, then GELU / ReLU / none);
//! - [`masked_softmax_`]: `s <- softmax(scale * s + mask)` over the last dimension
//!   (attention scores `[batch, heads, tq, tk]`, additive padding mask `[batch, 1, 1, tk]`).
//!
//! They apply only on CPU, to contiguous f32 tensors that do not track gradients (in-place
//! ops have no backward pass); each returns `false` otherwise and the caller uses candle ops.
//! `exp` and `erf` are branch-free polynomial approximations (relative error about 2e-7
//! and absolute 1.5e-7), compiled for AVX2/FMA when the CPU has it.

use candle_core::{CpuStorage, DType, InplaceOp1, InplaceOp2, Layout, Tensor};

use super::cpu::{erf_approx, exp_nonpositive, f32_slice, has_avx2_fma, has_avx512f, par_rows};
use crate::config::Activation;

fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v.as_mut_slice(),
        _ => candle_core::bail!("{what}: expected f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Whether `t` can be overwritten by an in-place CPU kernel.
fn inplace_ok(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() && !t.track_op()
}

/// Activation applied by [`bias_act_`] (and by the packed products' epilogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FusedAct {
    None,
    Gelu,
    Relu,
}

#[inline(always)]
fn bias_act_body(rows: &mut [f32], b: &[f32], act: FusedAct) {
    for row in rows.chunks_exact_mut(b.len()) {
        match act {
            FusedAct::None => row.iter_mut().zip(b).for_each(|(y, &c)| *y += c),
            FusedAct::Relu => row
                .iter_mut()
                .zip(b)
                .for_each(|(y, &c)| *y = (*y + c).max(0.0)),
            FusedAct::Gelu => row.iter_mut().zip(b).for_each(|(y, &c)| {
                let z = *y + c;
                *y = 0.5 * z * (1.0 + erf_approx(z * std::f32::consts::FRAC_1_SQRT_2));
            }),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_act_avx2(rows: &mut [f32], b: &[f32], act: FusedAct) {
    bias_act_body(rows, b, act)
}

impl FusedAct {
    /// The fused form of `act` (`None`: bias only); `None` for activations without one.
    pub(crate) fn of(act: Option<Activation>) -> Option<Self> {
        match act {
            None => Some(FusedAct::None),
            Some(Activation::Gelu) => Some(FusedAct::Gelu),
            Some(Activation::Relu) => Some(FusedAct::Relu),
            Some(_) => None,
        }
    }
}

/// In place `rows <- act(rows + b)` for rows of `b.len()` values, on the calling thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn bias_act_avx512(rows: &mut [f32], b: &[f32], act: FusedAct) {
    bias_act_body(rows, b, act)
}

pub(crate) fn bias_act_rows(rows: &mut [f32], b: &[f32], act: FusedAct) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() {
        // SAFETY: the CPU supports the enabled target features (checked just above).
        return unsafe { bias_act_avx512(rows, b, act) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the enabled target features (checked just above).
        return unsafe { bias_act_avx2(rows, b, act) };
    }
    bias_act_body(rows, b, act)
}

struct BiasAct {
    act: FusedAct,
}

impl InplaceOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "elmer-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let b = f32_slice(s2, l2, "bias")?;
        let y = f32_slice_mut(s1, l1, "activations")?;
        let cols = b.len();
        if cols == 0 || !y.len().is_multiple_of(cols) {
            candle_core::bail!("bias of {cols} values for {} activations", y.len());
        }
        // Blocks of rows per task keep the per-row dispatch cheap for narrow layers.
        let block = (4096 / cols).max(1) * cols;
        let act = self.act;
        par_rows(y, block, block, |_, rows| bias_act_rows(rows, b, act));
        Ok(())
    }
}

/// In place `y <- act(y + bias)` over the last dimension of `y` `[.., n]` with `bias` `[n]`,
/// where `act` is `None` (bias only), GELU (exact, erf form) or ReLU. Returns `false`, leaving
/// `y` untouched, when the kernel does not apply (not CPU / f32 / contiguous, gradients
/// tracked, or another activation): the caller then uses candle ops.
pub fn bias_act_(y: &Tensor, bias: &Tensor, act: Option<Activation>) -> candle_core::Result<bool> {
    let Some(act) = FusedAct::of(act) else {
        return Ok(false);
    };
    if !inplace_ok(y) || bias.track_op() || bias.dtype() != DType::F32 || !bias.is_contiguous() {
        return Ok(false);
    }
    if y.dim(candle_core::D::Minus1)? != bias.elem_count() {
        candle_core::bail!(
            "bias of {} values for activations of shape {:?}",
            bias.elem_count(),
            y.dims()
        );
    }
    y.inplace_op2(bias, &BiasAct { act })?;
    Ok(true)
}

/// Lanes of the explicit vector accumulators below: float reductions are only vectorised
/// when written lane-wise (the compiler may not reorder a sequential sum or max).
const LANES: usize = 16;

#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let m = acc
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    chunks
        .remainder()
        .iter()
        .fold(m, |a, &b| if b > a { b } else { a })
}

#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn softmax_body(rows: &mut [f32], tk: usize, scale: f32, mask: Option<&[f32]>) {
    for row in rows.chunks_exact_mut(tk) {
        match mask {
            Some(mk) => row
                .iter_mut()
                .zip(mk)
                .for_each(|(x, &a)| *x = *x * scale + a),
            None => row.iter_mut().for_each(|x| *x *= scale),
        }
        let m = max_lanes(row);
        row.iter_mut().for_each(|x| *x = exp_nonpositive(*x - m));
        let inv = 1.0 / sum_lanes(row);
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(rows: &mut [f32], tk: usize, scale: f32, mask: Option<&[f32]>) {
    softmax_body(rows, tk, scale, mask)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_avx512(rows: &mut [f32], tk: usize, scale: f32, mask: Option<&[f32]>) {
    softmax_body(rows, tk, scale, mask)
}

pub(crate) fn softmax_rows(rows: &mut [f32], tk: usize, scale: f32, mask: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() {
        // SAFETY: the CPU supports the enabled target features (checked just above).
        return unsafe { softmax_avx512(rows, tk, scale, mask) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the enabled target features (checked just above).
        return unsafe { softmax_avx2(rows, tk, scale, mask) };
    }
    softmax_body(rows, tk, scale, mask)
}

/// Rows per (batch) mask: `heads * tq` rows of scores share one mask row.
pub(crate) struct MaskedSoftmax {
    pub(crate) scale: f32,
    pub(crate) rows_per_mask: usize,
}

impl MaskedSoftmax {
    pub(crate) fn run(
        &self,
        s: &mut [f32],
        tk: usize,
        mask: Option<&[f32]>,
    ) -> candle_core::Result<()> {
        if tk == 0 || !s.len().is_multiple_of(tk) {
            candle_core::bail!("softmax over {tk} columns of {} scores", s.len());
        }
        if let Some(mk) = mask {
            if mk.len() * self.rows_per_mask != s.len() {
                candle_core::bail!("mask of {} values for {} scores", mk.len(), s.len());
            }
        }
        // One task per (batch) block of rows sharing a mask row; blocks are split further
        // over threads by `par_rows` when there is a single batch element.
        let rows_per_task = (65_536 / tk).clamp(1, self.rows_per_mask);
        let rows_per_task = {
            // A divisor of rows_per_mask so that no task straddles two mask rows.
            let mut r = rows_per_task;
            while !self.rows_per_mask.is_multiple_of(r) {
                r -= 1;
            }
            r
        };
        let scale = self.scale;
        let rpm = self.rows_per_mask;
        par_rows(s, rows_per_task * tk, rows_per_task * tk, |task, rows| {
            let first_row = task * rows_per_task;
            let m = mask.map(|mk| {
                let b = first_row / rpm;
                &mk[b * tk..(b + 1) * tk]
            });
            softmax_rows(rows, tk, scale, m);
        });
        Ok(())
    }
}

struct MaskedSoftmaxNoMask(MaskedSoftmax);

impl InplaceOp1 for MaskedSoftmaxNoMask {
    fn name(&self) -> &'static str {
        "elmer-softmax"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let tk = l.shape().dims().last().copied().unwrap_or(0);
        self.0.run(f32_slice_mut(s, l, "scores")?, tk, None)
    }
}

impl InplaceOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "elmer-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let tk = l1.shape().dims().last().copied().unwrap_or(0);
        let mask = f32_slice(s2, l2, "mask")?;
        self.run(f32_slice_mut(s1, l1, "scores")?, tk, Some(mask))
    }
}

/// In place `scores <- softmax(scale * scores + mask)` over the last dimension, for attention
/// scores `[batch, heads, tq, tk]` and an optional additive mask `[batch, 1, 1, tk]`.
/// Returns `false`, leaving `scores` untouched, when the kernel does not apply (see the module
/// docs, or a mask of another shape): the caller then uses candle ops.
pub fn masked_softmax_(
    scores: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> candle_core::Result<bool> {
    if !inplace_ok(scores) || scores.rank() != 4 {
        return Ok(false);
    }
    let (b, h, tq, tk) = scores.dims4()?;
    let op = MaskedSoftmax {
        scale: scale as f32,
        rows_per_mask: h * tq,
    };
    match mask {
        None => scores.inplace_op1(&MaskedSoftmaxNoMask(op))?,
        Some(m) => {
            if m.dims() != [b, 1, 1, tk]
                || m.dtype() != DType::F32
                || !m.is_contiguous()
                || m.track_op()
            {
                return Ok(false);
            }
            scores.inplace_op2(m, &op)?
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn erf_is_accurate() {
        // Against a float64 series / continued fraction is overkill: the exact GELU of candle
        // (libm erf) is the reference.
        let xs: Vec<f32> = (-6000..=6000).map(|i| i as f32 / 1000.0).collect();
        let x = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let want = x.gelu_erf().unwrap();
        let got = x.copy().unwrap();
        let zeros = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let got = got.reshape((xs.len(), 1)).unwrap();
        assert!(bias_act_(&got, &zeros, Some(Activation::Gelu)).unwrap());
        let d = crate::ops::max_abs_diff(&got.flatten_all().unwrap(), &want);
        assert!(d < 1e-6, "gelu differs by {d}");
    }

    #[test]
    fn bias_act_matches_candle_ops() {
        let dev = Device::Cpu;
        // Large enough to be split over threads.
        let y = Tensor::randn(0f32, 2.0, (300, 3072), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 3072, &dev).unwrap();
        for act in [None, Some(Activation::Gelu), Some(Activation::Relu)] {
            let got = y.copy().unwrap();
            assert!(bias_act_(&got, &b, act).unwrap());
            let z = y.broadcast_add(&b).unwrap();
            let want = match act {
                Some(a) => a.apply(&z).unwrap(),
                None => z,
            };
            let d = crate::ops::max_abs_diff(&got, &want);
            assert!(d < 2e-6, "{act:?}: differs by {d}");
        }
        // Not applicable: silu, or a tensor tracking gradients.
        assert!(!bias_act_(&y.copy().unwrap(), &b, Some(Activation::Silu)).unwrap());
        let v = candle_core::Var::from_tensor(&y).unwrap();
        assert!(!bias_act_(v.as_tensor(), &b, None).unwrap());
        // A wrong bias length is an error, not a silent broadcast.
        let short = Tensor::zeros(7, DType::F32, &dev).unwrap();
        assert!(bias_act_(&y.copy().unwrap(), &short, None).is_err());
    }

    #[test]
    fn masked_softmax_matches_candle_ops() {
        let dev = Device::Cpu;
        let (b, h, tq, tk) = (3, 12, 40, 75);
        let s = Tensor::randn(0f32, 3.0, (b, h, tq, tk), &dev).unwrap();
        let m: Vec<f32> = (0..b * tk)
            .map(|i| {
                if i % tk >= tk - 3 * (i / tk) {
                    f32::MIN
                } else {
                    0.0
                }
            })
            .collect();
        let m = Tensor::from_vec(m, (b, 1, 1, tk), &dev).unwrap();
        for mask in [None, Some(&m)] {
            let got = s.copy().unwrap();
            assert!(masked_softmax_(&got, 0.125, mask).unwrap());
            let z = (&s * 0.125).unwrap();
            let z = match mask {
                Some(m) => z.broadcast_add(m).unwrap(),
                None => z,
            };
            let want = candle_nn::ops::softmax(&z, D::Minus1).unwrap();
            let d = crate::ops::max_abs_diff(&got, &want);
            assert!(d < 1e-6, "softmax differs by {d}");
        }
        // Masked keys get exactly zero weight.
        let got = s.copy().unwrap();
        masked_softmax_(&got, 1.0, Some(&m)).unwrap();
        let last = got.narrow(0, 2, 1).unwrap().narrow(3, tk - 6, 6).unwrap();
        assert_eq!(last.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
