//! Fused multi-head attention core with its backward pass, on the CPU in f32, for training and
//! inference (the encoder's self-attention and the NAR decoder's bidirectional self- and
//! cross-attention, paper section 3.2).
//!
//! `ctx = softmax(scale * q k^T + mask) v`, per head, as one graph node: queries `[batch, tq,
//! d]`, keys and values `[batch, tk, d]` with the heads interleaved in `d` (as the projections
//! produce them), additive mask `[batch, 1, 1, tk]`, result `[batch, tq, d]`. Composed from
//! candle ops the same computation is about fifteen nodes (head splits, transposes, copies,
//! two batched products, scale, mask, softmax, the merge), two of them score-sized
//! (`[batch, heads, tq, tk]`), and candle's backward zero-fills and adds a buffer for each.
//! Here the forward runs one task per (batch element, head), so batch-1 inference uses every
//! thread: the scores live in a scratch buffer, the products are single-threaded `gemm` calls
//! on strided views of the inputs (no copies), and each task writes its head's columns of the
//! result. The backward runs one task per batch element and recomputes the probabilities
//! instead of keeping them.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::f32_slice;
use super::fused::softmax_rows;
use super::training::softmax_grad_row;

/// A strided matrix view: element `(i, j)` at `data[off + i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    off: usize,
    rs: usize,
    cs: usize,
}

/// Whether a `rows x cols` view at `off` with strides `rs`, `cs` stays inside `len` values.
fn fits(len: usize, off: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || off + (rows - 1) * rs + (cols - 1) * cs < len
}

/// `c[m x n] (+)= scale * a[m x k] b[k x n]` (`c` at `c_off`, row stride `c_rs`, unit column
/// stride), on the calling thread.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    mnk: (usize, usize, usize),
    c: &mut [f32],
    c_off: usize,
    c_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    scale: f32,
) {
    // SAFETY: `c` is borrowed mutably for the call, so nothing else reads or writes it, and
    // it does not alias `a` or `b` (distinct borrows).
    unsafe {
        gemm_ptr(
            mnk,
            (c.as_mut_ptr(), c.len()),
            c_off,
            c_rs,
            accumulate,
            a,
            b,
            scale,
        )
    }
}

/// [`gemm_into`] on a raw output buffer of `c_len` values, for tasks that write disjoint
/// blocks of one buffer (each head its own columns).
///
/// # Safety
/// `c` must be valid for writes of `c_len` values, not alias `a` or `b`, and no other thread
/// may read or write the `m x n` block at `c_off` (row stride `c_rs`) during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_ptr(
    (m, n, k): (usize, usize, usize),
    (c, c_len): (*mut f32, usize),
    c_off: usize,
    c_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    scale: f32,
) {
    assert!(
        fits(c_len, c_off, m, n, c_rs, 1)
            && fits(a.data.len(), a.off, m, k, a.rs, a.cs)
            && fits(b.data.len(), b.off, k, n, b.rs, b.cs),
        "attention: strided view out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i of the block lies inside the buffer (checked above), and the
                // caller guarantees exclusive access to the block.
                unsafe { std::slice::from_raw_parts_mut(c.add(c_off + i * c_rs), n) }.fill(0.0);
            }
        }
        return;
    }
    // SAFETY: every view was checked above to lie inside its buffer; the caller guarantees
    // that the output block is not aliased.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.add(c_off),
            1,
            c_rs as isize,
            accumulate,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A contiguous `[rows, n]` buffer as a view.
fn row_major(data: &[f32], n: usize) -> View<'_> {
    View {
        data,
        off: 0,
        rs: n,
        cs: 1,
    }
}

/// The transpose of a contiguous `[rows, n]` buffer, `[n, rows]`, as a view.
fn col_major(data: &[f32], n: usize) -> View<'_> {
    View {
        data,
        off: 0,
        rs: 1,
        cs: n,
    }
}

/// An output pointer shared by tasks that write disjoint blocks (see [`gemm_ptr`]).
struct SendPtr(*mut f32);
// SAFETY: the tasks sharing it write disjoint blocks only (the contract of `gemm_ptr`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// Shapes of one call: batch, query and key lengths, model width, heads and head width.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    tq: usize,
    tk: usize,
    d: usize,
    heads: usize,
}

impl Dims {
    fn hd(&self) -> usize {
        self.d / self.heads
    }

    /// Head `h` of batch element `bi` of a `[batch, t, d]` tensor as a `[t, hd]` view.
    fn head<'a>(&self, data: &'a [f32], t: usize, bi: usize, h: usize) -> View<'a> {
        View {
            data,
            off: bi * t * self.d + h * self.hd(),
            rs: self.d,
            cs: 1,
        }
    }

    /// The same head transposed, `[hd, t]`.
    fn head_t<'a>(&self, data: &'a [f32], t: usize, bi: usize, h: usize) -> View<'a> {
        View {
            rs: 1,
            cs: self.d,
            ..self.head(data, t, bi, h)
        }
    }
}

/// The probabilities of head `h` of batch element `bi` into `p` `[tq, tk]`.
fn probabilities(
    dims: Dims,
    (q, k): (&[f32], &[f32]),
    mask: Option<&[f32]>,
    scale: f32,
    (bi, h): (usize, usize),
    p: &mut [f32],
) {
    let Dims { tq, tk, .. } = dims;
    gemm_into(
        (tq, tk, dims.hd()),
        p,
        0,
        tk,
        false,
        dims.head(q, tq, bi, h),
        dims.head_t(k, tk, bi, h),
        1.0,
    );
    softmax_rows(p, tk, scale, mask.map(|m| &m[bi * tk..(bi + 1) * tk]));
}

struct AttentionOp {
    heads: usize,
    scale: f32,
    /// Additive mask `[batch, tk]` (a copy: it takes no gradient).
    mask: Option<Vec<f32>>,
}

/// The shapes of queries, keys and values `[batch, t, d]` for `heads` heads (and a mask of
/// `mask_len` values, `[batch, tk]`), and their data.
#[allow(clippy::type_complexity)]
fn inputs<'a>(
    heads: usize,
    mask_len: Option<usize>,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(Dims, [&'a [f32]; 3])> {
    let (b, tq, d) = l1.shape().dims3()?;
    let (bk, tk, dk) = l2.shape().dims3()?;
    if bk != b || dk != d || l3.dims() != l2.dims() || d % heads.max(1) != 0 {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?}, values {:?} with {heads} heads",
            l1.dims(),
            l2.dims(),
            l3.dims()
        );
    }
    if mask_len.is_some_and(|m| m != b * tk) {
        candle_core::bail!("attention: mask does not match [{b}, 1, 1, {tk}]");
    }
    let dims = Dims {
        b,
        tq,
        tk,
        d,
        heads,
    };
    let q = f32_slice(s1, l1, "queries")?;
    let k = f32_slice(s2, l2, "keys")?;
    let v = f32_slice(s3, l3, "values")?;
    Ok((dims, [q, k, v]))
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "elmer-attention"
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
        let mask_len = self.mask.as_ref().map(Vec::len);
        let (dims, [q, k, v]) = inputs(self.heads, mask_len, (s1, l1), (s2, l2), (s3, l3))?;
        let Dims { b, tq, tk, d, .. } = dims;
        let hd = dims.hd();
        let mut out = vec![0f32; b * tq * d];
        if tq > 0 {
            // One task per (batch element, head), so that batch 1 (inference) uses every
            // thread too; each writes its head's columns of its batch element's rows.
            let dst = SendPtr(out.as_mut_ptr());
            let len = out.len();
            (0..b * self.heads).into_par_iter().for_each_init(
                || vec![0f32; tq * tk],
                |p, task| {
                    let (bi, h) = (task / self.heads, task % self.heads);
                    let mask = self.mask.as_deref();
                    probabilities(dims, (q, k), mask, self.scale, (bi, h), p);
                    let vh = dims.head(v, tk, bi, h);
                    let dst = &dst;
                    // SAFETY: `out` outlives the loop and is not otherwise borrowed in it;
                    // the block of task (bi, h), rows bi * tq.. of columns h * hd..(h + 1) *
                    // hd, is written by this task only.
                    unsafe {
                        gemm_ptr(
                            (tq, hd, tk),
                            (dst.0, len),
                            bi * tq * d + h * hd,
                            d,
                            false,
                            row_major(p, tk),
                            vh,
                            1.0,
                        )
                    }
                },
            );
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.flatten_all()?.to_vec1::<f32>()?;
        let op = AttentionGrad {
            heads: self.heads,
            scale: self.scale,
            mask: self.mask.clone(),
            grad,
        };
        let all = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = all.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = all.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The gradients of queries, keys and values, flattened one after the other.
struct AttentionGrad {
    heads: usize,
    scale: f32,
    mask: Option<Vec<f32>>,
    /// The gradient of the result, `[batch, tq, d]` flattened.
    grad: Vec<f32>,
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "elmer-attention-grad"
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
        let mask_len = self.mask.as_ref().map(Vec::len);
        let (dims, [q, k, v]) = inputs(self.heads, mask_len, (s1, l1), (s2, l2), (s3, l3))?;
        let g = self.grad.as_slice();
        let Dims { b, tq, tk, d, .. } = dims;
        if g.len() != b * tq * d {
            candle_core::bail!("attention grad: {} values for [{b}, {tq}, {d}]", g.len());
        }
        let hd = dims.hd();
        let mut out = vec![0f32; b * tq * d + 2 * b * tk * d];
        let (dq, rest) = out.split_at_mut(b * tq * d);
        let (dk, dv) = rest.split_at_mut(b * tk * d);
        if tq > 0 && tk > 0 {
            dq.par_chunks_mut(tq * d)
                .zip(dk.par_chunks_mut(tk * d))
                .zip(dv.par_chunks_mut(tk * d))
                .enumerate()
                .for_each(|(bi, ((dq, dk), dv))| {
                    let mut p = vec![0f32; tq * tk];
                    let mut dp = vec![0f32; tq * tk];
                    let mut ds = vec![0f32; tq * tk];
                    for h in 0..self.heads {
                        let mask = self.mask.as_deref();
                        probabilities(dims, (q, k), mask, self.scale, (bi, h), &mut p);
                        // dP = dO V^T, then dS = scale * P * (dP - rowsum(dP * P)).
                        let go = dims.head(g, tq, bi, h);
                        gemm_into(
                            (tq, tk, hd),
                            &mut dp,
                            0,
                            tk,
                            false,
                            go,
                            dims.head_t(v, tk, bi, h),
                            1.0,
                        );
                        for ((pr, gr), sr) in p
                            .chunks_exact(tk)
                            .zip(dp.chunks_exact(tk))
                            .zip(ds.chunks_exact_mut(tk))
                        {
                            softmax_grad_row(pr, gr, self.scale, sr);
                        }
                        // dQ = dS K, dK = dS^T Q, dV = P^T dO (this batch element's rows).
                        let kh = dims.head(k, tk, bi, h);
                        gemm_into(
                            (tq, hd, tk),
                            dq,
                            h * hd,
                            d,
                            false,
                            row_major(&ds, tk),
                            kh,
                            1.0,
                        );
                        let qh = dims.head(q, tq, bi, h);
                        gemm_into(
                            (tk, hd, tq),
                            dk,
                            h * hd,
                            d,
                            false,
                            col_major(&ds, tk),
                            qh,
                            1.0,
                        );
                        gemm_into(
                            (tk, hd, tq),
                            dv,
                            h * hd,
                            d,
                            false,
                            col_major(&p, tk),
                            go,
                            1.0,
                        );
                    }
                });
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from(b * tq * d + 2 * b * tk * d),
        ))
    }
}

/// `softmax(scale * q k^T + mask) v` per head for queries `[batch, tq, d]`, keys and values
/// `[batch, tk, d]` (heads interleaved in `d`) and an additive mask `[batch, 1, 1, tk]`,
/// giving `[batch, tq, d]`; differentiable in `q`, `k` and `v`. `None` where the fused op does
/// not apply (not f32 on the CPU, other shapes, a mask that takes gradients).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    heads: usize,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 3;
    if !f32_cpu(q) || !f32_cpu(k) || !f32_cpu(v) || heads == 0 {
        return Ok(None);
    }
    let (b, _, d) = q.dims3()?;
    let (bk, tk, dk) = k.dims3()?;
    if bk != b || dk != d || v.dims() != k.dims() || d % heads != 0 {
        return Ok(None);
    }
    let mask = match mask {
        None => None,
        Some(m) if m.dims() == [b, 1, 1, tk] && m.dtype() == DType::F32 && !m.track_op() => {
            Some(m.flatten_all()?.to_vec1::<f32>()?)
        }
        Some(_) => return Ok(None),
    };
    let op = AttentionOp {
        heads,
        scale: scale as f32,
        mask,
    };
    Ok(Some(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        op,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{Device, Var, D};

    fn data(n: usize, seed: usize) -> Vec<f32> {
        crate::ops::test_data(n, seed, 40.0)
    }

    /// Composed candle ops: split heads, scaled scores, mask, softmax, values, merge.
    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        heads: usize,
        scale: f64,
    ) -> candle_core::Result<Tensor> {
        let split = |x: &Tensor| {
            let (b, t, d) = x.dims3()?;
            x.reshape((b, t, heads, d / heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (b, tq, d) = q.dims3()?;
        let s = (split(q)?.matmul(&split(k)?.t()?)? * scale)?;
        let s = match mask {
            Some(m) => s.broadcast_add(m)?,
            None => s,
        };
        let p = candle_nn::ops::softmax(&s, D::Minus1)?;
        p.matmul(&split(v)?)?.transpose(1, 2)?.reshape((b, tq, d))
    }

    #[test]
    fn attention_matches_composed_ops() {
        let dev = Device::Cpu;
        // Cross-attention shapes (tq != tk) and enough batch elements for several tasks.
        let (b, tq, tk, d, heads) = (5, 7, 9, 24, 3);
        let q = Var::from_vec(data(b * tq * d, 1), (b, tq, d), &dev).unwrap();
        let k = Var::from_vec(data(b * tk * d, 2), (b, tk, d), &dev).unwrap();
        let v = Var::from_vec(data(b * tk * d, 3), (b, tk, d), &dev).unwrap();
        let mut m = vec![0f32; b * tk];
        m[tk - 1] = f32::MIN;
        m[3 * tk - 3] = f32::MIN;
        let mask = Tensor::from_vec(m, (b, 1, 1, tk), &dev).unwrap();
        let probe = Tensor::from_vec(data(b * tq * d, 4), (b, tq, d), &dev).unwrap();
        for mask in [Some(&mask), None] {
            let a = attention(&q, &k, &v, mask, heads, 0.4).unwrap().unwrap();
            let r = composed(&q, &k, &v, mask, heads, 0.4).unwrap();
            assert!(
                max_abs_diff(&a, &r) < 1e-5,
                "values differ by {}",
                max_abs_diff(&a, &r)
            );
            let ga = (&a * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gr = (&r * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
                let diff = max_abs_diff(ga.get(var).unwrap(), gr.get(var).unwrap());
                assert!(diff < 1e-4, "gradient of {name} differs by {diff}");
            }
        }
    }

    #[test]
    fn inference_at_batch_one_matches_composed_ops() {
        // No gradients, one batch element, many heads: the head-parallel forward alone.
        let dev = Device::Cpu;
        let (b, tq, tk, d, heads) = (1, 5, 11, 48, 8);
        let q = Tensor::from_vec(data(b * tq * d, 5), (b, tq, d), &dev).unwrap();
        let k = Tensor::from_vec(data(b * tk * d, 6), (b, tk, d), &dev).unwrap();
        let v = Tensor::from_vec(data(b * tk * d, 7), (b, tk, d), &dev).unwrap();
        let mut m = vec![0f32; b * tk];
        m[2] = f32::MIN;
        let mask = Tensor::from_vec(m, (b, 1, 1, tk), &dev).unwrap();
        for mask in [Some(&mask), None] {
            let a = attention(&q, &k, &v, mask, heads, 0.3).unwrap().unwrap();
            let r = composed(&q, &k, &v, mask, heads, 0.3).unwrap();
            assert!(max_abs_diff(&a, &r) < 1e-5, "{}", max_abs_diff(&a, &r));
        }
    }

    #[test]
    fn attention_does_not_apply_elsewhere() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 4), DType::F64, &dev).unwrap();
        assert!(attention(&x, &x, &x, None, 2, 1.0).unwrap().is_none());
        let x = Tensor::zeros((1, 2, 4), DType::F32, &dev).unwrap();
        assert!(attention(&x, &x, &x, None, 3, 1.0).unwrap().is_none());
        let bad_mask = Tensor::zeros((1, 1, 2, 2), DType::F32, &dev).unwrap();
        assert!(attention(&x, &x, &x, Some(&bad_mask), 2, 1.0)
            .unwrap()
            .is_none());
    }
}
