//! Fused CPU ops with backward passes, for training (paper section 3.4: LPLM pre-training and
//! exit fine-tuning run the same encoder and NAR decoder as inference, with gradients).
//!
//! candle differentiates through its elementwise ops one op at a time: a layer norm written
//! with them is about ten allocating, mostly single-threaded passes forward and twenty
//! backward, exact GELU goes through scalar `erf` twice, and the attention softmax through
//! five ops each way. Each op here is one custom op (`candle_core::CustomOpN`) whose forward
//! and backward are single multi-threaded passes over rows:
//! - [`layer_norm`]: `(x - mean) / sqrt(var + eps) * w + b` over the last dimension
//!   (`x` `[..., d]`, `w`, `b` `[d]`), gradients for `x`, `w` and `b`;
//! - [`bias_gelu`]: exact GELU of `y + b` (`y` `[..., n]`, `b` `[n]`), gradients for `y`, `b`;
//! - [`masked_softmax`]: `softmax(scale * s + mask)` over the last dimension (scores
//!   `[batch, heads, tq, tk]`, additive mask `[batch, 1, 1, tk]`), gradient for `s`;
//! - [`dropout`]: inverted dropout with a given keep mask, gradient for the input;
//! - [`linear`]: `x W^T (+ b)` for `x` `[..., in]`, `W` `[out, in]`, `b` `[out]`: one graph
//!   node instead of five (two reshapes, a transpose, the product, the bias), each of which
//!   costs candle's backward a zero-filled gradient buffer and an addition.
//!
//! Each returns `None` where it does not apply (another device or dtype, other shapes), and the
//! caller uses candle's differentiable ops; the unit tests check values and gradients against
//! those.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use super::cpu::{avx2_dispatch, erf_approx, exp_nonpositive, f32_slice, par_rows, threads_for};
use super::fused::MaskedSoftmax;

/// Whether the fused ops apply to `t`: an f32 tensor on the CPU.
pub(crate) fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f(row_index, row_out, acc)` over rows of `out` (`row_len` values each, about `cols`
/// values of work) in parallel and returns the sum over threads of their `acc_len`-value
/// accumulators.
fn par_rows_sum(
    out: &mut [f32],
    row_len: usize,
    cols: usize,
    acc_len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let rows = out.len() / row_len.max(1);
    let n = threads_for(rows, cols);
    let per = rows.div_ceil(n.max(1)).max(1);
    let partial: Vec<Vec<f32>> = out
        .par_chunks_mut(per * row_len.max(1))
        .enumerate()
        .map(|(ci, block)| {
            let mut acc = vec![0f32; acc_len];
            for (j, row) in block.chunks_mut(row_len.max(1)).enumerate() {
                f(ci * per + j, row, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0f32; acc_len];
    for p in partial {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}

/// `rows * n + acc_len` values: the rows `f(r, row_out, acc)` writes, then the sum of the
/// accumulators (the layout of the gradient ops that also return column sums, split by
/// `narrow` afterwards).
fn rows_then_sums(
    rows: usize,
    n: usize,
    acc_len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * n + acc_len];
    let (body, tail) = out.split_at_mut(rows * n);
    let sums = par_rows_sum(body, n, n, acc_len, f);
    tail.copy_from_slice(&sums);
    out
}

// ---------------------------------------------------------------------------------------------
// Layer norm

/// Mean and `1 / sqrt(var + eps)` of one row (two passes, as candle's composed form).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

avx2_dispatch! {
    /// One row of the layer norm forward.
    fn layer_norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
        let (mean, rstd) = row_stats(x, eps);
        for (((y, &v), &wi), &bi) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (v - mean) * rstd * wi + bi;
        }
    }
}

avx2_dispatch! {
    /// One row of the layer norm backward: `dx`, and `g * xhat` / `g` added to `acc`
    /// (`[dw | db]`, `2 d` values).
    fn layer_norm_grad_row(x: &[f32], w: &[f32], g: &[f32], eps: f32, dx: &mut [f32], acc: &mut [f32]) {
        let d = x.len();
        let (mean, rstd) = row_stats(x, eps);
        let (dw, db) = acc.split_at_mut(d);
        let mut a = 0f32;
        let mut c = 0f32;
        for i in 0..d {
            let xhat = (x[i] - mean) * rstd;
            let gw = g[i] * w[i];
            a += gw;
            c += gw * xhat;
            dw[i] += g[i] * xhat;
            db[i] += g[i];
        }
        a /= d as f32;
        c /= d as f32;
        for i in 0..d {
            let xhat = (x[i] - mean) * rstd;
            dx[i] = rstd * (g[i] * w[i] - a - xhat * c);
        }
    }
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "elmer-layer-norm"
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
        let x = f32_slice(s1, l1, "layer norm input")?;
        let w = f32_slice(s2, l2, "layer norm weight")?;
        let b = f32_slice(s3, l3, "layer norm bias")?;
        let d = w.len();
        if d == 0 || b.len() != d || !x.len().is_multiple_of(d) {
            candle_core::bail!(
                "layer norm: weight {} / bias {} values for input {:?}",
                w.len(),
                b.len(),
                l1.dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, d, d, |r, y| {
            layer_norm_row(&x[r * d..(r + 1) * d], w, b, self.eps, y)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let rows = x.elem_count() / d;
        let all = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(d)?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `[rows + 2, d]`: the input gradient, then the weight and bias gradients.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "elmer-layer-norm-grad"
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
        let x = f32_slice(s1, l1, "layer norm input")?;
        let w = f32_slice(s2, l2, "layer norm weight")?;
        let g = f32_slice(s3, l3, "layer norm gradient")?;
        let d = w.len();
        if d == 0 || g.len() != x.len() || !x.len().is_multiple_of(d) {
            candle_core::bail!(
                "layer norm grad: {} inputs, {} grads, d {d}",
                x.len(),
                g.len()
            );
        }
        let rows = x.len() / d;
        let out = rows_then_sums(rows, d, 2 * d, |r, dxr, acc| {
            let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            layer_norm_grad_row(xr, w, gr, self.eps, dxr, acc)
        });
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

/// Layer norm of `x` `[..., d]` over its last dimension with weight and bias `[d]`,
/// differentiable in all three; `None` where the fused op does not apply (not f32 on the CPU).
pub(crate) fn layer_norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    if !applies(x) || !applies(w) || !applies(b) {
        return Ok(None);
    }
    let d = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [d] || b.dims() != [d] {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )?))
}

// ---------------------------------------------------------------------------------------------
// Bias + exact GELU

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn gelu(z: f32) -> f32 {
    0.5 * z * (1.0 + erf_approx(z * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d gelu(z) / dz = Phi(z) + z phi(z)`.
#[inline(always)]
fn gelu_grad(z: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_approx(z * std::f32::consts::FRAC_1_SQRT_2));
    cdf + z * FRAC_1_SQRT_2PI * exp_nonpositive(-0.5 * z * z)
}

avx2_dispatch! {
    /// One row of `gelu(y + b)`.
    fn bias_gelu_row(y: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, &v), &c) in out.iter_mut().zip(y).zip(b) {
            *o = gelu(v + c);
        }
    }
}

avx2_dispatch! {
    /// One row of `g * gelu'(y + b)`, also added to `acc` (the bias gradient).
    fn bias_gelu_grad_row(y: &[f32], b: &[f32], g: &[f32], out: &mut [f32], acc: &mut [f32]) {
        for i in 0..y.len() {
            let v = g[i] * gelu_grad(y[i] + b[i]);
            out[i] = v;
            acc[i] += v;
        }
    }
}

struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "elmer-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "pre-activation")?;
        let b = f32_slice(s2, l2, "bias")?;
        let n = b.len();
        if n == 0 || !y.len().is_multiple_of(n) {
            candle_core::bail!("bias of {n} values for activations {:?}", l1.dims());
        }
        let mut out = vec![0f32; y.len()];
        par_rows(&mut out, n, n, |r, o| {
            bias_gelu_row(&y[r * n..(r + 1) * n], b, o)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        let rows = y.elem_count() / n;
        let all = y.apply_op3_no_bwd(b, &grad.contiguous()?, &BiasGeluGrad)?;
        let dy = all.narrow(0, 0, rows)?.reshape(y.shape())?;
        let db = all.narrow(0, rows, 1)?.reshape(n)?;
        Ok((Some(dy), Some(db)))
    }
}

/// `[rows + 1, n]`: `grad * gelu'(y + b)`, then its column sums (the bias gradient).
struct BiasGeluGrad;

impl CustomOp3 for BiasGeluGrad {
    fn name(&self) -> &'static str {
        "elmer-bias-gelu-grad"
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
        let y = f32_slice(s1, l1, "pre-activation")?;
        let b = f32_slice(s2, l2, "bias")?;
        let g = f32_slice(s3, l3, "gradient")?;
        let n = b.len();
        if n == 0 || g.len() != y.len() || !y.len().is_multiple_of(n) {
            candle_core::bail!(
                "bias-gelu grad: {} values, {} grads, n {n}",
                y.len(),
                g.len()
            );
        }
        let rows = y.len() / n;
        let out = rows_then_sums(rows, n, n, |r, o, acc| {
            bias_gelu_grad_row(&y[r * n..(r + 1) * n], b, &g[r * n..(r + 1) * n], o, acc)
        });
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, n))))
    }
}

/// Exact GELU of `y + b` (`y` `[..., n]`, `b` `[n]`), differentiable in both; `None` where the
/// fused op does not apply (not f32 on the CPU).
pub(crate) fn bias_gelu(y: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !applies(y) || !applies(b) || b.dims() != [y.dim(candle_core::D::Minus1)?] {
        return Ok(None);
    }
    Ok(Some(y.contiguous()?.apply_op2(&b.contiguous()?, BiasGelu)?))
}

// ---------------------------------------------------------------------------------------------
// Masked softmax

struct SoftmaxOp {
    scale: f32,
    rows_per_mask: usize,
}

impl SoftmaxOp {
    fn kernel(&self) -> MaskedSoftmax {
        MaskedSoftmax {
            scale: self.scale,
            rows_per_mask: self.rows_per_mask,
        }
    }

    fn grad(&self, p: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        p.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })
    }
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "elmer-softmax-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let tk = l.dims().last().copied().unwrap_or(0);
        let mut out = f32_slice(s, l, "scores")?.to_vec();
        self.kernel().run(&mut out, tk, None)?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _s: &Tensor, p: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.grad(p, grad)?))
    }
}

impl CustomOp2 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "elmer-masked-softmax-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let tk = l1.dims().last().copied().unwrap_or(0);
        let mut out = f32_slice(s1, l1, "scores")?.to_vec();
        self.kernel()
            .run(&mut out, tk, Some(f32_slice(s2, l2, "mask")?))?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _s: &Tensor,
        _mask: &Tensor,
        p: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.grad(p, grad)?), None))
    }
}

avx2_dispatch! {
    /// One row of `scale * p * (g - sum(g * p))`.
    pub(crate) fn softmax_grad_row(p: &[f32], g: &[f32], scale: f32, out: &mut [f32]) {
        let mut lanes = [0f32; 16];
        let mut pc = p.chunks_exact(16);
        let mut gc = g.chunks_exact(16);
        for (a, b) in (&mut pc).zip(&mut gc) {
            for k in 0..16 {
                lanes[k] += a[k] * b[k];
            }
        }
        let tail: f32 = pc.remainder().iter().zip(gc.remainder()).map(|(&a, &b)| a * b).sum();
        let dot = lanes.iter().sum::<f32>() + tail;
        for ((o, &pv), &gv) in out.iter_mut().zip(p).zip(g) {
            *o = scale * pv * (gv - dot);
        }
    }
}

/// `scale * p * (g - sum(g * p))` row by row: the gradient of `softmax(scale * s + mask)`.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "elmer-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let tk = l1.dims().last().copied().unwrap_or(0);
        let p = f32_slice(s1, l1, "softmax output")?;
        let g = f32_slice(s2, l2, "softmax gradient")?;
        if tk == 0 || p.len() != g.len() {
            candle_core::bail!("softmax grad: {} outputs, {} grads", p.len(), g.len());
        }
        let mut out = vec![0f32; p.len()];
        par_rows(&mut out, tk, tk, |r, o| {
            let (pr, gr) = (&p[r * tk..(r + 1) * tk], &g[r * tk..(r + 1) * tk]);
            softmax_grad_row(pr, gr, self.scale, o)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `softmax(scale * scores + mask)` over the last dimension of attention scores
/// `[batch, heads, tq, tk]` with an optional additive mask `[batch, 1, 1, tk]`,
/// differentiable in `scores`; `None` where the fused op does not apply (not f32 on the CPU,
/// other shapes, a mask that tracks gradients).
pub(crate) fn masked_softmax(
    scores: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !applies(scores) || scores.rank() != 4 {
        return Ok(None);
    }
    let (b, h, tq, tk) = scores.dims4()?;
    let op = SoftmaxOp {
        scale: scale as f32,
        rows_per_mask: h * tq,
    };
    let s = scores.contiguous()?;
    Ok(Some(match mask {
        None => s.apply_op1(op)?,
        Some(m) if applies(m) && m.dims() == [b, 1, 1, tk] && !m.track_op() => {
            s.apply_op2(&m.contiguous()?, op)?
        }
        Some(_) => return Ok(None),
    }))
}

// ---------------------------------------------------------------------------------------------
// Dropout

/// `x * keep * scale`, one graph node; the backward applies the same mask to the gradient.
struct DropoutOp {
    keep: std::sync::Arc<Vec<bool>>,
    scale: f32,
}

impl DropoutOp {
    fn apply(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        if x.len() != self.keep.len() {
            candle_core::bail!(
                "dropout: mask of {} for {} values",
                self.keep.len(),
                x.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        let keep = self.keep.as_slice();
        const CHUNK: usize = 4096;
        par_rows(&mut out, CHUNK.min(x.len().max(1)), CHUNK, |c, o| {
            let start = c * CHUNK;
            let (xs, ks) = (&x[start..start + o.len()], &keep[start..start + o.len()]);
            for ((o, &v), &k) in o.iter_mut().zip(xs).zip(ks) {
                *o = if k { v * self.scale } else { 0.0 };
            }
        });
        Ok(out)
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "elmer-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = self.apply(f32_slice(s, l, "dropout input")?)?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = DropoutOp {
            keep: self.keep.clone(),
            scale: self.scale,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// Inverted dropout of `x` with the mask `keep` (one flag per element, row-major) and scale
/// `1 / (1 - p)`, differentiable in `x`, for tensors the fused ops apply to ([`applies`]);
/// errors on a mask of another length.
pub(crate) fn dropout(x: &Tensor, keep: Vec<bool>, scale: f32) -> candle_core::Result<Tensor> {
    if keep.len() != x.elem_count() {
        candle_core::bail!(
            "dropout: mask of {} for {} values",
            keep.len(),
            x.elem_count()
        );
    }
    let op = DropoutOp {
        keep: std::sync::Arc::new(keep),
        scale,
    };
    x.contiguous()?.apply_op1(op)
}

// ---------------------------------------------------------------------------------------------
// Column sums

/// Sums of the rows of a `[rows, n]` matrix, `[n]` (the bias gradient of a dense layer);
/// candle's `sum(0)` walks the strided dimension on one thread.
struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "elmer-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, n) = l.shape().dims2()?;
        let x = f32_slice(s, l, "column sum input")?;
        let mut scratch = vec![0f32; rows];
        let sums = par_rows_sum(&mut scratch, 1, n, n, |r, _, acc| {
            acc.iter_mut()
                .zip(&x[r * n..(r + 1) * n])
                .for_each(|(a, &v)| *a += v)
        });
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}

/// Column sums `[n]` of `x` `[rows, n]` (f32 on the CPU; candle's `sum(0)` elsewhere). Not
/// differentiable: for gradients.
pub(crate) fn column_sum(x: &Tensor) -> candle_core::Result<Tensor> {
    if !applies(x) || x.rank() != 2 {
        return x.sum(0);
    }
    x.contiguous()?.apply_op1_no_bwd(&ColumnSum)
}

// ---------------------------------------------------------------------------------------------
// Dense layer

/// `x W^T (+ b)` as one node; the product is candle's CPU matmul on the raw storage.
struct LinearOp;

impl LinearOp {
    fn product(
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape, usize)> {
        let (out_dim, in_dim) = lw.shape().dims2()?;
        let dims = lx.dims();
        if dims.last() != Some(&in_dim) || !lx.is_contiguous() || !lw.is_contiguous() {
            candle_core::bail!("linear: input {dims:?} for weight [{out_dim}, {in_dim}]");
        }
        let rows = lx.shape().elem_count() / in_dim.max(1);
        let lx2 = Layout::new(
            Shape::from((rows, in_dim)),
            vec![in_dim, 1],
            lx.start_offset(),
        );
        let lwt = Layout::new(
            Shape::from((in_dim, out_dim)),
            vec![1, in_dim],
            lw.start_offset(),
        );
        let y = x.matmul(w, (1, rows, out_dim, in_dim), &lx2, &lwt)?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = out_dim;
        }
        Ok((y, Shape::from(out_dims), out_dim))
    }

    /// Gradients of `x` and `W` (and the bias's, `sum` over rows) for `grad` `[..., out]`.
    fn grads(
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        bias: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
        let (out_dim, in_dim) = w.dims2()?;
        let rows = x.elem_count() / in_dim.max(1);
        let g = grad.detach().contiguous()?.reshape((rows, out_dim))?;
        let x2 = x.detach().reshape((rows, in_dim))?;
        let dx = g.matmul(&w.detach())?.reshape(x.shape())?;
        let dw = g.t()?.matmul(&x2)?;
        let db = if bias { Some(column_sum(&g)?) } else { None };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "elmer-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, shape, _) = Self::product(s1, l1, s2, l2)?;
        Ok((y, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = Self::grads(x, w, grad, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "elmer-linear-bias"
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
        let (mut y, shape, out_dim) = Self::product(s1, l1, s2, l2)?;
        let b = f32_slice(s3, l3, "bias")?;
        if b.len() != out_dim {
            candle_core::bail!("linear: bias of {} values for {out_dim} outputs", b.len());
        }
        if let CpuStorage::F32(v) = &mut y {
            par_rows(v, out_dim, out_dim, |_, row| {
                row.iter_mut().zip(b).for_each(|(y, &c)| *y += c)
            });
        } else {
            candle_core::bail!("linear: expected an f32 product");
        }
        Ok((y, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = Self::grads(x, w, grad, true)?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// `x W^T (+ b)` for `x` `[..., in]`, `W` `[out, in]`, `b` `[out]`, giving `[..., out]`,
/// differentiable in all three as one graph node; `None` where it does not apply (not f32 on
/// the CPU, or mismatched shapes).
pub(crate) fn linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !applies(x) || !applies(w) || b.is_some_and(|b| !applies(b)) || w.rank() != 2 {
        return Ok(None);
    }
    let (out_dim, in_dim) = w.dims2()?;
    if x.dim(candle_core::D::Minus1)? != in_dim || b.is_some_and(|b| b.dims() != [out_dim]) {
        return Ok(None);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    Ok(Some(match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, LinearOp)?,
        None => x.apply_op2(&w, LinearOp)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{Device, Var, D};

    fn data(n: usize, seed: usize) -> Vec<f32> {
        crate::ops::test_data(n, seed, 17.0)
    }

    /// Value and gradients of `f` against `reference` for the same loss `sum(out * probe)`.
    fn check(
        vars: &[Var],
        fused: impl Fn(&[Tensor]) -> candle_core::Result<Option<Tensor>>,
        reference: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
        tol: f32,
    ) {
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let a = fused(&ts).unwrap().expect("fused op applies");
        let b = reference(&ts).unwrap();
        assert_eq!(a.dims(), b.dims());
        assert!(
            max_abs_diff(&a, &b) < tol,
            "values differ by {}",
            max_abs_diff(&a, &b)
        );
        let probe = Tensor::from_vec(data(a.elem_count(), 5), a.shape(), &Device::Cpu).unwrap();
        let ga = (&a * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (&b * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (x, y) = (ga.get(v).unwrap(), gb.get(v).unwrap());
            let d = max_abs_diff(x, y);
            let scale = y
                .abs()
                .unwrap()
                .max_keepdim(0)
                .unwrap()
                .flatten_all()
                .unwrap();
            let scale = scale.max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
            assert!(
                d < tol * scale,
                "gradient {i} differs by {d} (scale {scale})"
            );
        }
    }

    #[test]
    fn layer_norm_matches_composed_ops() {
        let dev = Device::Cpu;
        // Rows enough for two threads' partial sums of the weight and bias gradients.
        let (rows, d) = (701, 48);
        let x = Var::from_vec(data(rows * d, 1), (rows, d), &dev).unwrap();
        let w = Var::from_vec(data(d, 2), d, &dev).unwrap();
        let b = Var::from_vec(data(d, 3), d, &dev).unwrap();
        let x3 = |t: &Tensor| t.reshape((1, rows, d));
        check(
            &[x, w, b],
            |t| layer_norm(&x3(&t[0])?, &t[1], &t[2], 1e-5),
            |t| candle_nn::ops::layer_norm_slow(&x3(&t[0])?, &t[1], &t[2], 1e-5),
            2e-5,
        );
    }

    #[test]
    fn bias_gelu_matches_composed_ops() {
        let dev = Device::Cpu;
        let (rows, n) = (29, 64);
        let y = Var::from_vec(data(rows * n, 4), (rows, n), &dev).unwrap();
        let b = Var::from_vec(data(n, 6), n, &dev).unwrap();
        check(
            &[y, b],
            |t| bias_gelu(&t[0], &t[1]),
            |t| t[0].broadcast_add(&t[1])?.gelu_erf(),
            1e-5,
        );
    }

    #[test]
    fn masked_softmax_matches_composed_ops() {
        let dev = Device::Cpu;
        let (b, h, tq, tk) = (2, 3, 5, 7);
        let s = Var::from_vec(data(b * h * tq * tk, 7), (b, h, tq, tk), &dev).unwrap();
        let mut m = vec![0f32; b * tk];
        m[tk - 1] = f32::MIN;
        m[2 * tk - 2] = f32::MIN;
        let mask = Tensor::from_vec(m, (b, 1, 1, tk), &dev).unwrap();
        let scale = 0.35;
        let reference = |t: &[Tensor], m: Option<&Tensor>| {
            let s = (&t[0] * scale)?;
            let s = match m {
                Some(m) => s.broadcast_add(m)?,
                None => s,
            };
            candle_nn::ops::softmax(&s, D::Minus1)
        };
        check(
            std::slice::from_ref(&s),
            |t| masked_softmax(&t[0], scale, Some(&mask)),
            |t| reference(t, Some(&mask)),
            1e-6,
        );
        check(
            &[s],
            |t| masked_softmax(&t[0], scale, None),
            |t| reference(t, None),
            1e-6,
        );
    }

    #[test]
    fn linear_matches_composed_ops() {
        let dev = Device::Cpu;
        let (b, t, i, o) = (3, 5, 24, 40);
        let x = Var::from_vec(data(b * t * i, 8), (b, t, i), &dev).unwrap();
        let w = Var::from_vec(data(o * i, 9), (o, i), &dev).unwrap();
        let bias = Var::from_vec(data(o, 10), o, &dev).unwrap();
        let composed = |t: &[Tensor]| t[0].broadcast_matmul(&t[1].t()?);
        check(
            &[x.clone(), w.clone(), bias],
            |t| linear(&t[0], &t[1], Some(&t[2])),
            |t| composed(t)?.broadcast_add(&t[2]),
            1e-4,
        );
        check(&[x, w], |t| linear(&t[0], &t[1], None), composed, 1e-4);
    }

    #[test]
    fn dropout_matches_composed_ops() {
        let dev = Device::Cpu;
        let n = 3 * 4099;
        let x = Var::from_vec(data(n, 12), (3, 4099), &dev).unwrap();
        let keep: Vec<bool> = (0..n).map(|i| i % 7 != 3).collect();
        let mask: Vec<f32> = keep.iter().map(|&k| if k { 1.25 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (3, 4099), &dev).unwrap();
        check(
            &[x],
            |t| dropout(&t[0], keep.clone(), 1.25).map(Some),
            |t| &t[0] * &mask,
            1e-6,
        );
    }

    #[test]
    fn column_sum_matches_sum_over_rows() {
        // Enough rows for several threads' partial sums.
        let x = Tensor::from_vec(data(3001 * 40, 11), (3001, 40), &Device::Cpu).unwrap();
        let d = max_abs_diff(&column_sum(&x).unwrap(), &x.sum(0).unwrap());
        assert!(d < 1e-3, "column sums differ by {d}");
    }

    /// The generic bodies of the row kernels give the AVX2 bodies' results (forced through
    /// `cpu::GENERIC_ONLY`; other tests running meanwhile may take either path, both right).
    #[test]
    fn generic_and_avx2_kernels_agree() {
        use crate::ops::cpu::GENERIC_ONLY;
        use std::sync::atomic::Ordering;
        let dev = Device::Cpu;
        let (rows, d) = (9, 200);
        let x = Var::from_vec(data(rows * d, 13), (rows, d), &dev).unwrap();
        let w = Var::from_vec(data(d, 14), d, &dev).unwrap();
        let b = Var::from_vec(data(d, 15), d, &dev).unwrap();
        let labels = Tensor::from_vec((0..rows as u32).collect::<Vec<_>>(), rows, &dev).unwrap();
        let run = || {
            let ln = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)
                .unwrap()
                .unwrap();
            let ge = bias_gelu(x.as_tensor(), b.as_tensor()).unwrap().unwrap();
            let s = x.as_tensor().reshape((1, 1, rows, d)).unwrap();
            let sm = masked_softmax(&s, 0.3, None)
                .unwrap()
                .unwrap()
                .reshape((rows, d))
                .unwrap();
            let ce = crate::ops::cross_entropy::cross_entropy_rows_with_bias(
                x.as_tensor(),
                &labels,
                b.as_tensor(),
                1,
                0.1,
            )
            .unwrap()
            .unwrap();
            let loss = (ln.sum_all().unwrap() + (&ge * &sm).unwrap().sum_all().unwrap())
                .unwrap()
                .add(&ce.sum_all().unwrap())
                .unwrap();
            let g = loss.backward().unwrap();
            vec![
                ln,
                ge,
                sm,
                ce,
                g.get(&x).unwrap().clone(),
                g.get(&w).unwrap().clone(),
            ]
        };
        GENERIC_ONLY.store(true, Ordering::Relaxed);
        let generic = run();
        GENERIC_ONLY.store(false, Ordering::Relaxed);
        let fast = run();
        for (i, (a, b)) in generic.iter().zip(&fast).enumerate() {
            let diff = max_abs_diff(a, b);
            assert!(
                diff < 1e-4,
                "output {i}: generic and AVX2 bodies differ by {diff}"
            );
        }
    }

    #[test]
    fn ops_do_not_apply_off_f32() {
        let x = Tensor::zeros((2, 4), DType::F64, &Device::Cpu).unwrap();
        let w = Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap();
        assert!(layer_norm(&x, &w, &w, 1e-5).unwrap().is_none());
        assert!(bias_gelu(&x, &w).unwrap().is_none());
        let s = Tensor::zeros((1, 1, 2, 4), DType::F64, &Device::Cpu).unwrap();
        assert!(masked_softmax(&s, 1.0, None).unwrap().is_none());
    }
}
