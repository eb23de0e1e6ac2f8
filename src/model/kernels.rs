//! Fused CPU kernels for the vocabulary-sized parts of training and inference.
//!
//! candle runs elementwise ops on one CPU thread; over `[rows, 50265]` logits a composed
//! log-softmax (max, subtract, exp, sum, log, subtract, gather: seven passes, each allocating)
//! costs far more than the matrix multiply that produced the logits. These kernels make one
//! or two passes per row and spread rows over all cores:
//! - [`cross_entropy_rows`]: per-row NLL `logsumexp(x) - x[label]` with its backward
//!   `softmax(x) - onehot(label)`, pads giving 0.
//!
//! - [`argmax_entropy_rows`]: per-row `argmax(x + b)` and, optionally, the entropy of
//!   `softmax(x + b)`, without materialising the biased logits (off-ramp decisions at
//!   inference: hard-exit entropies, soft-exit feedback, the final argmax).
//!
//! On other devices (CUDA) callers fall back to the composed, differentiable candle ops.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

fn threads_for(rows: usize, cols: usize) -> usize {
    let avail = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Below ~64K elements per thread, spawning costs more than it saves.
    avail.min((rows * cols / 65_536).max(1)).min(rows.max(1))
}

/// Runs `f(row_index, row_out)` over row chunks in parallel.
fn par_rows<T: Send>(
    out: &mut [T],
    row_len: usize,
    cols: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let rows = out.len() / row_len.max(1);
    let n = threads_for(rows, cols);
    if n <= 1 {
        for (r, chunk) in out.chunks_mut(row_len.max(1)).enumerate() {
            f(r, chunk);
        }
        return;
    }
    let per = rows.div_ceil(n);
    std::thread::scope(|s| {
        for (ci, block) in out.chunks_mut(per * row_len).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (j, chunk) in block.chunks_mut(row_len).enumerate() {
                    f(ci * per + j, chunk);
                }
            });
        }
    });
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
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

/// Per-row argmax of `logits + bias` (and the entropy of its softmax when `entropy`).
struct ArgmaxEntropy {
    entropy: bool,
}

impl CustomOp2 for ArgmaxEntropy {
    fn name(&self) -> &'static str {
        "elmer-argmax-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l1.shape().dims2()?;
        let x = f32_slice(s1, l1, "logits")?;
        let b = f32_slice(s2, l2, "bias")?;
        if b.len() != cols {
            candle_core::bail!("argmax: {} biases for {cols} columns", b.len());
        }
        let mut out = vec![0f32; rows * 2];
        let entropy = self.entropy;
        par_rows(&mut out, 2, cols, |r, o| {
            let row = &x[r * cols..(r + 1) * cols];
            let mut best = 0usize;
            let mut m = f32::NEG_INFINITY;
            for (j, (&v, &c)) in row.iter().zip(b).enumerate() {
                let z = v + c;
                if z > m {
                    m = z;
                    best = j;
                }
            }
            o[0] = best as f32;
            if entropy {
                // H = log Z - sum p z' with z' = z - m (shifted for stability).
                let mut zsum = 0f32;
                let mut ez = 0f32;
                for (&v, &c) in row.iter().zip(b) {
                    let d = v + c - m;
                    let e = d.exp();
                    zsum += e;
                    ez += e * d;
                }
                o[1] = zsum.ln() - ez / zsum;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, 2))))
    }
}

/// Per-row `argmax(logits + bias)` as `[rows]` u32 ids, and (when `entropy`) the entropy in
/// nats of `softmax(logits + bias)` as `[rows]` f32. `logits` `[rows, vocab]` f32 on CPU;
/// returns `None` elsewhere (callers use candle ops). Ties pick the lowest index, as torch.
pub fn argmax_entropy_rows(
    logits: &Tensor,
    bias: &Tensor,
    entropy: bool,
) -> candle_core::Result<Option<(Tensor, Option<Tensor>)>> {
    if !logits.device().is_cpu() || logits.dtype() != candle_core::DType::F32 || logits.rank() != 2
    {
        return Ok(None);
    }
    let out = logits.contiguous()?.apply_op2_no_bwd(
        &bias.to_dtype(candle_core::DType::F32)?.contiguous()?,
        &ArgmaxEntropy { entropy },
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
        let (ids, ent) = argmax_entropy_rows(&x, &b, true).unwrap().unwrap();
        let z = x.broadcast_add(&b).unwrap();
        let want_ids: Vec<u32> = z.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        assert_eq!(ids.to_vec1::<u32>().unwrap(), want_ids);
        let want_ent = crate::model::offramp::entropy(&z).unwrap();
        let d = (ent.unwrap() - want_ent)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "entropy differs by {d}");
        let (ids2, none) = argmax_entropy_rows(&x, &b, false).unwrap().unwrap();
        assert!(none.is_none());
        assert_eq!(ids2.to_vec1::<u32>().unwrap(), want_ids);
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
        let d1 = (nll - ref_nll)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d2 = (g_fused - g_ref)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d1 < 1e-5, "nll differs by {d1}");
        assert!(d2 < 1e-6, "gradient differs by {d2}");
    }
}
