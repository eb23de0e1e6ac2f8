//! Fused cross-entropy for training (paper section 3.4 losses): per-row NLL
//! `logsumexp(x + b) - (x + b)[label]` over vocabulary-sized logits with its backward
//! `softmax(x + b) - onehot(label)`, pads giving 0, in one or two passes per row spread over
//! all cores (a composed log-softmax makes seven allocating single-threaded passes).
//!
//! Shapes: logits `[rows, vocab]` f32, labels `[rows]` u32, bias `[vocab]`; result `[rows]`.
//! CPU only: on other devices the callers use the composed, differentiable candle ops.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::cpu::{avx2_dispatch, exp_nonpositive, f32_slice, par_rows, u32_slice};

/// Largest value of `x + b`, lane-wise so it vectorises.
#[inline(always)]
fn max_biased(x: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let (mut xc, mut bc) = (x.chunks_exact(16), b.chunks_exact(16));
    for (xs, bs) in (&mut xc).zip(&mut bc) {
        for k in 0..16 {
            let v = xs[k] + bs[k];
            lanes[k] = if v > lanes[k] { v } else { lanes[k] };
        }
    }
    let tail = xc
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&v, &c)| v + c);
    lanes
        .into_iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, f32::max)
}

avx2_dispatch! {
    /// NLL of `label` under one row of `x + b`, with label smoothing `eps`.
    fn nll_row(x: &[f32], b: &[f32], label: usize, eps: f32) -> f32 {
        let m = max_biased(x, b);
        let mut lanes = [0f32; 16];
        let mut sums = [0f32; 16];
        let (mut xc, mut bc) = (x.chunks_exact(16), b.chunks_exact(16));
        for (xs, bs) in (&mut xc).zip(&mut bc) {
            for k in 0..16 {
                let v = xs[k] + bs[k];
                lanes[k] += exp_nonpositive(v - m);
                sums[k] += v;
            }
        }
        let mut s = lanes.iter().sum::<f32>();
        let mut total = sums.iter().sum::<f32>();
        for (&v, &c) in xc.remainder().iter().zip(bc.remainder()) {
            s += exp_nonpositive(v + c - m);
            total += v + c;
        }
        let picked = x[label] + b[label];
        if eps == 0.0 {
            m + s.ln() - picked
        } else {
            m + s.ln() - (1.0 - eps) * picked - eps * total / x.len() as f32
        }
    }
}

avx2_dispatch! {
    /// `g * (softmax(x + b) - (1 - eps) onehot(label) - eps / V)` for one row.
    fn nll_grad_row(x: &[f32], b: &[f32], label: usize, eps: f32, g: f32, o: &mut [f32]) {
        let m = max_biased(x, b);
        let mut lanes = [0f32; 16];
        let (mut oc, mut xc, mut bc) = (o.chunks_exact_mut(16), x.chunks_exact(16), b.chunks_exact(16));
        for ((os, xs), bs) in (&mut oc).zip(&mut xc).zip(&mut bc) {
            for k in 0..16 {
                let e = exp_nonpositive(xs[k] + bs[k] - m);
                os[k] = e;
                lanes[k] += e;
            }
        }
        let mut s = lanes.iter().sum::<f32>();
        for ((o, &v), &c) in oc.into_remainder().iter_mut().zip(xc.remainder()).zip(bc.remainder()) {
            let e = exp_nonpositive(v + c - m);
            *o = e;
            s += e;
        }
        let scale = g / s;
        let uniform = g * eps / x.len() as f32;
        for o in o.iter_mut() {
            *o = *o * scale - uniform;
        }
        o[label] -= g * (1.0 - eps);
    }
}

/// Per-row NLL of integer labels under `logits + bias`; pad rows give 0. With label
/// smoothing `eps`, the target is `(1 - eps) onehot + eps / V`:
/// `lse(z) - (1 - eps) z[label] - eps mean(z)`.
struct CrossEntropy {
    pad: u32,
    eps: f32,
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
            o[0] = nll_row(&x[r * cols..(r + 1) * cols], b, label as usize, self.eps);
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
            &CrossEntropyGrad {
                pad: self.pad,
                eps: self.eps,
            },
        )?;
        let gb = super::training::column_sum(&g)?;
        Ok((Some(g), None, Some(gb)))
    }
}

/// `grad[r] * (softmax(x_r) - (1 - eps) onehot(label_r) - eps / V)`, zero rows for pads.
struct CrossEntropyGrad {
    pad: u32,
    eps: f32,
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
            nll_grad_row(
                &x[r * cols..(r + 1) * cols],
                b,
                label as usize,
                self.eps,
                g[r],
                o,
            );
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, cols))))
    }
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
    cross_entropy_rows_with_bias(logits, labels, &zeros, pad, 0.0)
}

/// [`cross_entropy_rows`] of `logits + bias` (`bias` `[vocab]`) without materialising the
/// sum, with label smoothing `eps` (0: none); differentiable w.r.t. `logits` and `bias`.
pub fn cross_entropy_rows_with_bias(
    logits: &Tensor,
    labels: &Tensor,
    bias: &Tensor,
    pad: u32,
    eps: f32,
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
        CrossEntropy { pad, eps },
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

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
        let d1 = crate::ops::max_abs_diff(&nll, &ref_nll);
        let d2 = crate::ops::max_abs_diff(&g_fused, &g_ref);
        assert!(d1 < 1e-5, "nll differs by {d1}");
        assert!(d2 < 1e-6, "gradient differs by {d2}");
    }

    #[test]
    fn label_smoothing_matches_composed_ops_with_bias() {
        let dev = Device::Cpu;
        let eps = 0.1f32;
        let data: Vec<f32> = (0..4 * 50)
            .map(|i| ((i * 29 % 83) as f32 - 40.0) / 9.0)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(data, (4, 50), &dev).unwrap()).unwrap();
        let bias_data: Vec<f32> = (0..50).map(|i| (i as f32 - 25.0) / 50.0).collect();
        let b = Var::from_tensor(&Tensor::from_vec(bias_data, 50, &dev).unwrap()).unwrap();
        let labels = Tensor::new(&[3u32, 1, 49, 0], &dev).unwrap();
        let nll = cross_entropy_rows_with_bias(x.as_tensor(), &labels, b.as_tensor(), 1, eps)
            .unwrap()
            .unwrap();
        let grads = nll.sum_all().unwrap().backward().unwrap();
        let (gx, gb) = (
            grads.get(x.as_tensor()).unwrap().clone(),
            grads.get(b.as_tensor()).unwrap().clone(),
        );
        // Composed: (1 - eps) * -log p[label] + eps * mean(-log p), pad row zero.
        let z = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        let logp = candle_nn::ops::log_softmax(&z, D::Minus1).unwrap();
        let picked = logp
            .gather(&labels.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap();
        let uniform = logp.mean(D::Minus1).unwrap().neg().unwrap();
        let keep = labels
            .ne(1u32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let ref_nll = ((picked * (1.0 - eps as f64)).unwrap() + (uniform * eps as f64).unwrap())
            .unwrap()
            .mul(&keep)
            .unwrap();
        let rg = ref_nll.sum_all().unwrap().backward().unwrap();
        let d1 = crate::ops::max_abs_diff(&nll, &ref_nll);
        let d2 = crate::ops::max_abs_diff(&gx, rg.get(x.as_tensor()).unwrap());
        let d3 = crate::ops::max_abs_diff(&gb, rg.get(b.as_tensor()).unwrap());
        assert!(d1 < 1e-5, "nll differs by {d1}");
        assert!(d2 < 1e-6, "logit gradient differs by {d2}");
        assert!(d3 < 1e-5, "bias gradient differs by {d3}");
    }
}
