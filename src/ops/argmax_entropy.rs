//! Off-ramp decisions at inference (paper sections 3.2-3.3): per-token `argmax(x + b)` and,
//! optionally, the entropy of `softmax(x + b)` over vocabulary-major logits `[vocab, tokens]`
//! (the layout `W h^T` produces), without materialising the biased logits: hard-exit
//! entropies, soft-exit feedback and the final argmax. The vocabulary is split over threads
//! and the partial maxima and softmax sums merged.
//!
//! Shapes: logits `[vocab, cols]` f32, bias `[vocab]`; ids `[cols]` u32, entropy `[cols]` f32.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::cpu::{exp_nonpositive, f32_slice, has_avx2_fma, threads_for};

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

/// Lanes of the row reductions (independent partial sums, so the loops vectorise).
const ROW_LANES: usize = 16;

/// `(argmax, entropy)` of `softmax(x + b)` for one token-major row `x` `[vocab]`.
#[inline(always)]
fn row_stats_body(x: &[f32], b: &[f32], entropy: bool) -> (u32, f32) {
    let mut lanes = [f32::NEG_INFINITY; ROW_LANES];
    let mut xc = x.chunks_exact(ROW_LANES);
    let mut bc = b.chunks_exact(ROW_LANES);
    for (xs, bs) in (&mut xc).zip(&mut bc) {
        for ((m, &xv), &bv) in lanes.iter_mut().zip(xs).zip(bs) {
            *m = m.max(xv + bv);
        }
    }
    let mut max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (&xv, &bv) in xc.remainder().iter().zip(bc.remainder()) {
        max = max.max(xv + bv);
    }
    // The first index reaching the maximum (ties: the lowest, as torch); NaN rows give 0.
    let arg = x
        .iter()
        .zip(b)
        .position(|(&xv, &bv)| xv + bv == max)
        .unwrap_or(0) as u32;
    if !entropy {
        return (arg, 0.0);
    }
    let mut z = [0f32; ROW_LANES];
    let mut s = [0f32; ROW_LANES];
    let mut xc = x.chunks_exact(ROW_LANES);
    let mut bc = b.chunks_exact(ROW_LANES);
    for (xs, bs) in (&mut xc).zip(&mut bc) {
        for (((zl, sl), &xv), &bv) in z.iter_mut().zip(s.iter_mut()).zip(xs).zip(bs) {
            let d = xv + bv - max;
            let e = exp_nonpositive(d);
            *zl += e;
            *sl += e * d;
        }
    }
    let (mut zt, mut st) = (z.iter().sum::<f32>(), s.iter().sum::<f32>());
    for (&xv, &bv) in xc.remainder().iter().zip(bc.remainder()) {
        let d = xv + bv - max;
        let e = exp_nonpositive(d);
        zt += e;
        st += e * d;
    }
    (arg, zt.ln() - st / zt)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_stats_avx2(x: &[f32], b: &[f32], entropy: bool) -> (u32, f32) {
    row_stats_body(x, b, entropy)
}

fn row_stats(x: &[f32], b: &[f32], entropy: bool) -> (u32, f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the enabled target features (checked just above).
        return unsafe { row_stats_avx2(x, b, entropy) };
    }
    row_stats_body(x, b, entropy)
}

/// Per-row `argmax(logits + bias)` as `[rows]` u32 ids and (when `entropy`) the entropy in
/// nats of `softmax(logits + bias)` as `[rows]` f32, for token-major logits `[rows, vocab]`
/// row-major (what the packed off-ramp kernel writes) and `bias` `[vocab]`. Rows are split
/// over rayon's pool. Ties pick the lowest index, as torch.
pub(crate) fn argmax_entropy_rows(
    logits: &[f32],
    bias: &[f32],
    rows: usize,
    entropy: bool,
) -> (Vec<u32>, Vec<f32>) {
    use rayon::prelude::*;
    let vocab = bias.len();
    assert_eq!(logits.len(), rows * vocab, "logits are not [rows, vocab]");
    let stats: Vec<(u32, f32)> = if rows >= 2 && rows * vocab >= 1 << 16 {
        logits
            .par_chunks_exact(vocab.max(1))
            .map(|r| row_stats(r, bias, entropy))
            .collect()
    } else {
        logits
            .chunks_exact(vocab.max(1))
            .map(|r| row_stats(r, bias, entropy))
            .collect()
    };
    stats.into_iter().unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

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
        let d = crate::ops::max_abs_diff(&ent.unwrap(), &want_ent);
        assert!(d < 1e-4, "entropy differs by {d}");
        let (ids2, none) = argmax_entropy_cols(&xt, &b, false).unwrap().unwrap();
        assert!(none.is_none());
        assert_eq!(ids2.to_vec1::<u32>().unwrap(), want_ids);
    }

    #[test]
    fn row_kernel_matches_composed_ops() {
        let dev = Device::Cpu;
        for (rows, vocab) in [(1usize, 7usize), (5, 513), (9, 4099)] {
            let data: Vec<f32> = (0..rows * vocab)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0)
                .collect();
            let b: Vec<f32> = (0..vocab)
                .map(|i| ((i * 11 % 13) as f32 - 6.0) / 3.0)
                .collect();
            let x = Tensor::from_vec(data.clone(), (rows, vocab), &dev).unwrap();
            let bt = Tensor::from_vec(b.clone(), vocab, &dev).unwrap();
            let z = x.broadcast_add(&bt).unwrap();
            let want_ids: Vec<u32> = z.argmax(D::Minus1).unwrap().to_vec1().unwrap();
            let want_ent: Vec<f32> = crate::model::offramp::entropy(&z)
                .unwrap()
                .to_vec1()
                .unwrap();
            let (ids, ent) = argmax_entropy_rows(&data, &b, rows, true);
            assert_eq!(ids, want_ids, "[{rows}, {vocab}]");
            for (a, w) in ent.iter().zip(&want_ent) {
                assert!((a - w).abs() < 1e-4, "entropy {a} vs {w}");
            }
            let (ids2, _) = argmax_entropy_rows(&data, &b, rows, false);
            assert_eq!(ids2, want_ids);
        }
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
}
