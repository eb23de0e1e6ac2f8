//! Fused CPU kernels for the vocabulary-sized parts of training and inference.
//!
//! candle runs elementwise ops on one CPU thread; over `[rows, 50265]` logits a composed
//! log-softmax (max, subtract, exp, sum, log, subtract, gather: seven passes, each allocating)
//! costs far more than the matrix multiply that produced the logits. These kernels make one
//! or two passes per row and spread rows over all cores:
//! - [`cross_entropy_rows`]: per-row NLL `logsumexp(x) - x[label]` with its backward
//!   `softmax(x) - onehot(label)`, pads giving 0.
//!
//! - [`argmax_entropy_cols`]: per-token `argmax(x + b)` and, optionally, the entropy of
//!   `softmax(x + b)` over vocabulary-major logits `[vocab, tokens]`, without materialising
//!   the biased logits (off-ramp decisions at inference: hard-exit entropies, soft-exit
//!   feedback, the final argmax); the vocabulary is split over threads and the partial
//!   maxima and softmax sums merged.
//!
//! On other devices (CUDA) callers fall back to the composed, differentiable candle ops.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

fn threads_for(rows: usize, cols: usize) -> usize {
    let avail = rayon::current_num_threads().max(1);
    // Below ~16K elements per task, handing work to the pool costs more than it saves.
    avail.min((rows * cols / 16_384).max(1)).min(rows.max(1))
}

/// Runs `f(row_index, row_out)` over row chunks in parallel (on rayon's pool: spawning OS
/// threads per call cost about 50 us, comparable to a whole kernel on small inputs).
pub(crate) fn par_rows<T: Send>(
    out: &mut [T],
    row_len: usize,
    cols: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    use rayon::prelude::*;
    let rows = out.len() / row_len.max(1);
    let n = threads_for(rows, cols);
    if n <= 1 {
        for (r, chunk) in out.chunks_mut(row_len.max(1)).enumerate() {
            f(r, chunk);
        }
        return;
    }
    let per = rows.div_ceil(n);
    out.par_chunks_mut(per * row_len)
        .enumerate()
        .for_each(|(ci, block)| {
            for (j, chunk) in block.chunks_mut(row_len).enumerate() {
                f(ci * per + j, chunk);
            }
        });
}

pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: expected f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [u32]> {
    let v = match s {
        CpuStorage::U32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: expected u32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Per-row NLL of integer labels under `logits + bias`; pad rows give 0.
struct CrossEntropy {
    pad: u32,
}

impl CustomOp3 for CrossEntropy {
    fn name(&self) -> &'static str {
        "elmer-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l1.shape().dims2()?;
        let x = f32_slice(s1, l1, "logits")?;
        let y = u32_slice(s2, l2, "labels")?;
        let b = f32_slice(s3, l3, "bias")?;
        if y.len() != rows || b.len() != cols {
            candle_core::bail!(
                "cross entropy: {} labels / {} biases for [{rows}, {cols}] logits",
                y.len(),
                b.len()
            );
        }
        let mut out = vec![0f32; rows];
        par_rows(&mut out, 1, cols, |r, o| {
            let label = y[r];
            if label == self.pad || label as usize >= cols {
                o[0] = 0.0;
                return;
            }
            let row = &x[r * cols..(r + 1) * cols];
            let m = row
                .iter()
                .zip(b)
                .map(|(&v, &c)| v + c)
                .fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = row.iter().zip(b).map(|(&v, &c)| (v + c - m).exp()).sum();
            o[0] = m + s.ln() - (row[label as usize] + b[label as usize]);
        });
        Ok((CpuStorage::F32(out), Shape::from(rows)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3_no_bwd(
            labels,
            &Tensor::cat(&[&grad.contiguous()?, bias], 0)?,
            &CrossEntropyGrad { pad: self.pad },
        )?;
        let gb = g.sum(0)?;
        Ok((Some(g), None, Some(gb)))
    }
}

/// `grad[r] * (softmax(x_r) - onehot(label_r))`, zero rows for pads.
struct CrossEntropyGrad {
    pad: u32,
}

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "elmer-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l1.shape().dims2()?;
        let x = f32_slice(s1, l1, "logits")?;
        let y = u32_slice(s2, l2, "labels")?;
        let gb = f32_slice(s3, l3, "grad and bias")?;
        if gb.len() != rows + cols {
            candle_core::bail!(
                "cross entropy grad: expected {} values, got {}",
                rows + cols,
                gb.len()
            );
        }
        let (g, b) = gb.split_at(rows);
        let mut out = vec![0f32; rows * cols];
        par_rows(&mut out, cols, cols, |r, o| {
            let label = y[r];
            if label == self.pad || label as usize >= cols || g[r] == 0.0 {
                return;
            }
            let row = &x[r * cols..(r + 1) * cols];
            let m = row
                .iter()
                .zip(b)
                .map(|(&v, &c)| v + c)
                .fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0f32;
            for ((o, &v), &c) in o.iter_mut().zip(row).zip(b) {
                let e = (v + c - m).exp();
                *o = e;
                s += e;
            }
            let scale = g[r] / s;
            for o in o.iter_mut() {
                *o *= scale;
            }
            o[label as usize] -= g[r];
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, cols))))
    }
}

/// `exp(x)` for `x <= 0` in f32 (Cephes `expf` range reduction and polynomial, relative
/// error about 2e-7; 0 below -87, where `expf` is subnormal; NaN stays NaN). Branch-free and
/// without saturating float-to-int casts, so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp_nonpositive(x_in: f32) -> f32 {
    // Clamped to [-87, 0] (NaN -> -87 here, restored below): n is then in [-126, 0].
    // Not `clamp`, which passes NaN through (and NaN must not reach the conversion below).
    #[allow(clippy::manual_clamp)]
    let x = x_in.max(-87.0).min(0.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // SAFETY: n is a whole number in [-126, 0] (x was clamped above), so the conversion is
    // exact and in range; the unchecked form vectorises (`as` saturates, which does not).
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let y = y * f32::from_bits(((n + 127) as u32) << 23);
    if x_in < -87.0 {
        0.0
    } else if x_in.is_nan() {
        x_in
    } else {
        y
    }
}

/// Column statistics of `x + b` over vocabulary rows `v0..v1` of `x` `[vocab, cols]`:
/// running max and first argmax per column, then (when `entropy`) `Z = sum exp(z - max)`
/// and `S = sum exp(z - max) (z - max)`.
struct ColStats {
    max: Vec<f32>,
    arg: Vec<u32>,
    z: Vec<f32>,
    s: Vec<f32>,
}

#[inline(always)]
fn col_stats_body(x: &[f32], b: &[f32], cols: usize, v0: usize, entropy: bool) -> ColStats {
    let mut max = vec![f32::NEG_INFINITY; cols];
    let mut arg = vec![v0 as u32; cols];
    for (j, (row, &bv)) in x.chunks_exact(cols).zip(b).enumerate() {
        let v = (v0 + j) as u32;
        for ((m, a), &xv) in max.iter_mut().zip(arg.iter_mut()).zip(row) {
            let z = xv + bv;
            let better = z > *m;
            *m = if better { z } else { *m };
            *a = if better { v } else { *a };
        }
    }
    let mut z = vec![0f32; cols];
    let mut s = vec![0f32; cols];
    if entropy {
        for (row, &bv) in x.chunks_exact(cols).zip(b) {
            for (((zc, sc), &m), &xv) in z.iter_mut().zip(s.iter_mut()).zip(&max).zip(row) {
                let d = xv + bv - m;
                let e = exp_nonpositive(d);
                *zc += e;
                *sc += e * d;
            }
        }
    }
    ColStats { max, arg, z, s }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn col_stats_avx2(x: &[f32], b: &[f32], cols: usize, v0: usize, entropy: bool) -> ColStats {
    col_stats_body(x, b, cols, v0, entropy)
}

/// Whether the CPU has AVX2 and FMA, so the `#[target_feature(enable = "avx2,fma")]`
/// instances of this module's and [`super::fused`]'s / [`super::gemv`]'s loops may run
/// (checked once, then cached by std).
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn col_stats(x: &[f32], b: &[f32], cols: usize, v0: usize, entropy: bool) -> ColStats {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the enabled target features (checked just above).
        return unsafe { col_stats_avx2(x, b, cols, v0, entropy) };
    }
    col_stats_body(x, b, cols, v0, entropy)
}

/// Per-column argmax of `logits_t + bias` (and the entropy of its softmax when `entropy`)
/// for vocabulary-major logits `[vocab, cols]`: the layout `W h^T` produces, which candle's
/// gemm computes fastest for an off-ramp (the `[vocab, d]` table as the left operand).
struct ArgmaxEntropyCols {
    entropy: bool,
}

impl CustomOp2 for ArgmaxEntropyCols {
    fn name(&self) -> &'static str {
        "elmer-argmax-entropy-cols"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (vocab, cols) = l1.shape().dims2()?;
        let x = f32_slice(s1, l1, "logits")?;
        let b = f32_slice(s2, l2, "bias")?;
        if b.len() != vocab {
            candle_core::bail!("argmax: {} biases for {vocab} vocabulary rows", b.len());
        }
        let mut out = vec![0f32; cols * 2];
        if vocab == 0 || cols == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((cols, 2))));
        }
        // Split the vocabulary over threads; merge the partial statistics in order.
        let n = threads_for(vocab, cols).min(vocab);
        let per = vocab.div_ceil(n);
        let entropy = self.entropy;
        let parts: Vec<ColStats> = if n <= 1 {
            vec![col_stats(x, b, cols, 0, entropy)]
        } else {
            use rayon::prelude::*;
            (0..n)
                .into_par_iter()
                .map(|p| {
                    let v0 = p * per;
                    let v1 = ((p + 1) * per).min(vocab);
                    col_stats(&x[v0 * cols..v1 * cols], &b[v0..v1], cols, v0, entropy)
                })
                .collect()
        };
        for c in 0..cols {
            // Ties keep the lowest index (as torch): parts are in vocabulary order.
            let (mut m, mut a) = (f32::NEG_INFINITY, parts[0].arg[c]);
            for p in &parts {
                if p.max[c] > m {
                    m = p.max[c];
                    a = p.arg[c];
                }
            }
            out[c * 2] = a as f32;
            if entropy {
                // Rescale each part's sums from its own max to the global one.
                let (mut z, mut s) = (0f32, 0f32);
                for p in &parts {
                    let shift = p.max[c] - m;
                    let scale = shift.exp();
                    z += p.z[c] * scale;
                    s += scale * (p.s[c] + shift * p.z[c]);
                }
                out[c * 2 + 1] = z.ln() - s / z;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((cols, 2))))
    }
}

/// Per-column `argmax(logits_t + bias)` as `[cols]` u32 ids, and (when `entropy`) the
/// entropy in nats of `softmax(logits_t + bias)` over the vocabulary as `[cols]` f32.
/// `logits_t` is vocabulary-major `[vocab, cols]` f32 on CPU, `bias` `[vocab]`; returns `None`
/// elsewhere (callers use candle ops). Ties pick the lowest index, as torch.
pub fn argmax_entropy_cols(
    logits_t: &Tensor,
    bias: &Tensor,
    entropy: bool,
) -> candle_core::Result<Option<(Tensor, Option<Tensor>)>> {
    if !logits_t.device().is_cpu()
        || logits_t.dtype() != candle_core::DType::F32
        || logits_t.rank() != 2
    {
        return Ok(None);
    }
    let out = logits_t.contiguous()?.apply_op2_no_bwd(
        &bias.to_dtype(candle_core::DType::F32)?.contiguous()?,
        &ArgmaxEntropyCols { entropy },
    )?;
    let ids = out
        .narrow(1, 0, 1)?
        .squeeze(1)?
        .to_dtype(candle_core::DType::U32)?;
    let ent = if entropy {
        Some(out.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?)
    } else {
        None
    };
    Ok(Some((ids, ent)))
}

/// Per-row negative log-likelihood `[rows]` of `labels` `[rows]` (u32) under `logits`
/// `[rows, vocab]` (f32, CPU); rows whose label is `pad` give 0. Differentiable w.r.t.
/// `logits`. Returns `None` when the fused kernel does not apply (non-CPU device or dtype),
/// so the caller can use the composed ops.
pub fn cross_entropy_rows(
    logits: &Tensor,
    labels: &Tensor,
    pad: u32,
) -> candle_core::Result<Option<Tensor>> {
    let v = logits.dim(candle_core::D::Minus1)?;
    let zeros = Tensor::zeros(v, logits.dtype(), logits.device())?;
    cross_entropy_rows_with_bias(logits, labels, &zeros, pad)
}

/// [`cross_entropy_rows`] of `logits + bias` (`bias` `[vocab]`) without materialising the
/// sum; differentiable w.r.t. `logits` and `bias`.
pub fn cross_entropy_rows_with_bias(
    logits: &Tensor,
    labels: &Tensor,
    bias: &Tensor,
    pad: u32,
) -> candle_core::Result<Option<Tensor>> {
    if !logits.device().is_cpu() || logits.dtype() != candle_core::DType::F32 || logits.rank() != 2
    {
        return Ok(None);
    }
    let logits = logits.contiguous()?;
    let labels = labels.to_dtype(candle_core::DType::U32)?.contiguous()?;
    let bias = bias.to_dtype(candle_core::DType::F32)?.contiguous()?;
    Ok(Some(logits.apply_op3(
        &labels,
        &bias,
        CrossEntropy { pad },
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    #[test]
    fn fused_argmax_entropy_matches_composed_ops() {
        let dev = Device::Cpu;
        let data: Vec<f32> = (0..7 * 513)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0)
            .collect();
        let x = Tensor::from_vec(data, (7, 513), &dev).unwrap();
        let b: Vec<f32> = (0..513)
            .map(|i| ((i * 11 % 13) as f32 - 6.0) / 3.0)
            .collect();
        let b = Tensor::from_vec(b, 513, &dev).unwrap();
        let xt = x.t().unwrap().contiguous().unwrap();
        let (ids, ent) = argmax_entropy_cols(&xt, &b, true).unwrap().unwrap();
        let z = x.broadcast_add(&b).unwrap();
        let want_ids: Vec<u32> = z.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        assert_eq!(ids.to_vec1::<u32>().unwrap(), want_ids);
        let want_ent = crate::model::offramp::entropy(&z).unwrap();
        let d = crate::model::max_abs_diff(&ent.unwrap(), &want_ent);
        assert!(d < 1e-4, "entropy differs by {d}");
        let (ids2, none) = argmax_entropy_cols(&xt, &b, false).unwrap().unwrap();
        assert!(none.is_none());
        assert_eq!(ids2.to_vec1::<u32>().unwrap(), want_ids);
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -(i as f32) * 0.0005; // 0 .. -100
            let want = x.exp();
            let got = exp_nonpositive(x);
            if x >= -86.0 {
                worst = worst.max(((got - want) / want).abs());
            } else {
                // 0 below -87 (expf is subnormal there): negligible next to any softmax term.
                assert!((0.0..5e-38).contains(&got), "exp({x}) = {got}");
            }
        }
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(worst < 5e-7, "relative error {worst}");
    }

    #[test]
    fn column_kernel_merges_vocabulary_parts() {
        // Large enough to be split over threads; a tie across the split keeps the lowest id.
        let dev = Device::Cpu;
        let (vocab, cols) = (50_265usize, 6usize);
        let data: Vec<f32> = (0..vocab * cols)
            .map(|i| (((i * 7_919) % 10_007) as f32 - 5_003.0) / 700.0)
            .collect();
        let mut x = Tensor::from_vec(data, (vocab, cols), &dev).unwrap();
        let mut host: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for v in [17usize, 40_000] {
            host[v * cols + 2] = 50.0;
        }
        host[49_000 * cols + 4] = 60.0;
        x = Tensor::from_vec(host, (vocab, cols), &dev).unwrap();
        let b: Vec<f32> = (0..vocab).map(|v| ((v % 5) as f32 - 2.0) / 10.0).collect();
        let b = Tensor::from_vec(b, vocab, &dev).unwrap();
        let (ids, ent) = argmax_entropy_cols(&x, &b, true).unwrap().unwrap();
        let z = x.t().unwrap().broadcast_add(&b).unwrap();
        let want_ids: Vec<u32> = z.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        assert_eq!(ids.to_vec1::<u32>().unwrap(), want_ids);
        assert_eq!(want_ids[4], 49_000);
        let want_ent: Vec<f32> = crate::model::offramp::entropy(&z)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (g, w) in ent.unwrap().to_vec1::<f32>().unwrap().iter().zip(&want_ent) {
            assert!(
                (g - w).abs() < 1e-4 * w.abs().max(1.0),
                "entropy {g} vs {w}"
            );
        }
        // An exact tie across the two halves of the vocabulary.
        let mut host = vec![0f32; vocab * 2];
        host[5 * 2] = 3.0;
        host[45_000 * 2] = 3.0;
        host[30_000 * 2 + 1] = 1.0;
        let x = Tensor::from_vec(host, (vocab, 2), &dev).unwrap();
        let zeros = Tensor::zeros(vocab, candle_core::DType::F32, &dev).unwrap();
        let (ids, _) = argmax_entropy_cols(&x, &zeros, false).unwrap().unwrap();
        assert_eq!(ids.to_vec1::<u32>().unwrap(), vec![5, 30_000]);
    }

    #[test]
    fn fused_cross_entropy_matches_composed_ops() {
        let dev = Device::Cpu;
        let data: Vec<f32> = (0..5 * 300)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(data, (5, 300), &dev).unwrap()).unwrap();
        let labels = Tensor::new(&[3u32, 1, 299, 0, 17], &dev).unwrap();
        let w = Tensor::new(&[1f32, 2.0, 3.0, 4.0, 5.0], &dev).unwrap();
        // Fused: label 1 is the pad id.
        let nll = cross_entropy_rows(x.as_tensor(), &labels, 1)
            .unwrap()
            .unwrap();
        let loss = (nll.clone() * &w).unwrap().sum_all().unwrap();
        let g_fused = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        // Composed.
        let logp = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1).unwrap();
        let picked = logp
            .gather(&labels.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap();
        let keep = labels
            .ne(1u32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let ref_nll = (picked * keep).unwrap();
        let ref_loss = (ref_nll.clone() * &w).unwrap().sum_all().unwrap();
        let g_ref = ref_loss
            .backward()
            .unwrap()
            .get(x.as_tensor())
            .unwrap()
            .clone();
        let d1 = crate::model::max_abs_diff(&nll, &ref_nll);
        let d2 = crate::model::max_abs_diff(&g_fused, &g_ref);
        assert!(d1 < 1e-5, "nll differs by {d1}");
        assert!(d2 < 1e-6, "gradient differs by {d2}");
    }
}
