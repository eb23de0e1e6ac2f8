//! Dense layers for a few rows at a time (autoregressive steps, a handful of still-active
//! tokens): `y = x W^T + b` as a multi-threaded matrix-vector kernel.
//!
//! At one to a few rows a dense layer is bound by reading its weights once from memory, not
//! by arithmetic. candle's gemm streamed 24-26 GB/s at one row (768 x 3072 layers cycling
//! through more memory than the caches, this 2-core machine); these kernels 39-44 GB/s. Both
//! weight layouts are handled: the checkpoint's row-major `[out, in]` (a dot product per
//! output, output ranges split over tasks) and the inference layout of
//! [`crate::model::nn::Weights::into_inference_layout`], `[in, out]` contiguous (input rows
//! split over tasks and streamed in order, partial sums added). Tasks run on rayon's pool.
//!
//! Shapes: `x` `[rows, in]` with `rows <= MAX_ROWS`, `W` `[out, in]` (either layout), `b`
//! `[out]`; result `[rows, out]`.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Most rows the kernel takes; larger products go to gemm.
pub const MAX_ROWS: usize = 4;

const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * q;
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(p, q)| p * q)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Outputs `o0..o0 + out.len() / rows` (output-major `[n, rows]`) from row-major `W [out, in]`.
#[inline(always)]
fn dot_block(x: &[f32], rows: usize, w: &[f32], d_in: usize, o0: usize, out: &mut [f32]) {
    for (j, y) in out.chunks_exact_mut(rows).enumerate() {
        let wr = &w[(o0 + j) * d_in..(o0 + j + 1) * d_in];
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = dot(&x[r * d_in..(r + 1) * d_in], wr);
        }
    }
}

/// Partial sums `acc[r * out + o] += sum_{i in i0..i1} x[r, i] Wt[i, o]` over a contiguous block
/// of `Wt [in, out]` rows (sequential reads; the caller adds the blocks' partials).
#[inline(always)]
fn axpy_rows(
    x: &[f32],
    rows: usize,
    wt: &[f32],
    d_in: usize,
    d_out: usize,
    i0: usize,
    acc: &mut [f32],
) {
    let n_rows = wt.len() / d_out;
    for (k, w) in wt.chunks_exact(d_out).enumerate().take(n_rows) {
        let i = i0 + k;
        for (r, a) in acc.chunks_exact_mut(d_out).enumerate().take(rows) {
            let xi = x[r * d_in + i];
            for (s, &v) in a.iter_mut().zip(w) {
                *s += xi * v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_block_avx2(
    x: &[f32],
    rows: usize,
    w: &[f32],
    d_in: usize,
    o0: usize,
    out: &mut [f32],
) {
    dot_block(x, rows, w, d_in, o0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_rows_avx2(
    x: &[f32],
    rows: usize,
    wt: &[f32],
    d_in: usize,
    d_out: usize,
    i0: usize,
    acc: &mut [f32],
) {
    axpy_rows(x, rows, wt, d_in, d_out, i0, acc)
}

/// Transposes a row-major `[rows, cols]` buffer (a copy only when both exceed 1).
fn transpose_buf(v: Vec<f32>, rows: usize, cols: usize) -> Vec<f32> {
    if rows == 1 || cols == 1 {
        return v;
    }
    let mut t = vec![0f32; v.len()];
    for (r, row) in v.chunks_exact(cols).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            t[c * rows + r] = x;
        }
    }
    t
}

/// `x W^T` as `(values, rows, out)`: output-major `[out, rows]` when `out_major`, else
/// `[rows, out]`; `None` when the kernel does not apply. Each weight layout produces one of the
/// two orders natively; the other costs one transposition of the small result.
fn product(
    x: &Tensor,
    w: &Tensor,
    out_major: bool,
) -> candle_core::Result<Option<(Vec<f32>, usize, usize)>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op();
    if !cpu_f32(x) || !cpu_f32(w) || x.rank() != 2 || w.rank() != 2 {
        return Ok(None);
    }
    let (rows, d_in) = x.dims2()?;
    let (d_out, w_in) = w.dims2()?;
    if rows == 0 || rows > MAX_ROWS || w_in != d_in || d_out == 0 || !x.is_contiguous() {
        return Ok(None);
    }
    let transposed = if w.is_contiguous() {
        false
    } else if w.t()?.is_contiguous() {
        true
    } else {
        return Ok(None);
    };
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::F32(wv))) = (&*xs, &*ws)
    else {
        return Ok(None);
    };
    let x_s = &xv[xl.start_offset()..xl.start_offset() + rows * d_in];
    let w_s = &wv[wl.start_offset()..wl.start_offset() + d_out * d_in];
    let threads = rayon::current_num_threads().max(1);
    let avx2 = super::cpu::has_avx2_fma();
    if transposed {
        // `Wt [in, out]`: split the input rows (contiguous memory, streamed in order) over
        // tasks, each accumulating all outputs; then add the partial sums.
        let per = d_in.div_ceil(threads * 2).max(1);
        let partials: Vec<Vec<f32>> = w_s
            .par_chunks(per * d_out)
            .enumerate()
            .map(|(c, block)| {
                let mut acc = vec![0f32; rows * d_out];
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the CPU supports the enabled target features (has_avx2_fma).
                    unsafe { axpy_rows_avx2(x_s, rows, block, d_in, d_out, c * per, &mut acc) };
                    return acc;
                }
                axpy_rows(x_s, rows, block, d_in, d_out, c * per, &mut acc);
                acc
            })
            .collect();
        let mut y = vec![0f32; rows * d_out];
        for p in &partials {
            y.iter_mut().zip(p).for_each(|(a, &b)| *a += b);
        }
        let y = if out_major {
            transpose_buf(y, rows, d_out)
        } else {
            y
        };
        return Ok(Some((y, rows, d_out)));
    }
    // Row-major `W [out, in]`: about four tasks per thread over output ranges, a dot product
    // per output.
    let chunk = d_out.div_ceil(threads * 4).max(LANES);
    let mut y_t = vec![0f32; d_out * rows];
    y_t.par_chunks_mut(chunk * rows)
        .enumerate()
        .for_each(|(c, out)| {
            let o0 = c * chunk;
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU supports the enabled target features (has_avx2_fma).
                unsafe { dot_block_avx2(x_s, rows, w_s, d_in, o0, out) };
                return;
            }
            let _ = avx2;
            dot_block(x_s, rows, w_s, d_in, o0, out)
        });
    let y = if out_major {
        y_t
    } else {
        transpose_buf(y_t, d_out, rows)
    };
    Ok(Some((y, rows, d_out)))
}

/// `x W^T` as a vocabulary-major (output-major) tensor `[out, rows]`, the layout the off-ramp
/// argmax kernel reads; `None` when the kernel does not apply.
pub fn matmul_t_output_major(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    product(x, w, true)?
        .map(|(y_t, rows, d_out)| Tensor::from_vec(y_t, (d_out, rows), &Device::Cpu))
        .transpose()
}

/// `y = x W^T` `[rows, out]` for `x` `[rows, in]` with `rows <= MAX_ROWS` and `w` `[out, in]`
/// stored row-major or as a transposed view of a contiguous `[in, out]` matrix (the bias and
/// activation are [`super::fused::bias_act_`]'s job). Returns `None` when the kernel does not
/// apply (not CPU f32, more rows, another layout, or gradients tracked): the caller then uses
/// candle's matmul.
pub fn linear_few_rows(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    product(x, w, false)?
        .map(|(y, rows, d_out)| Tensor::from_vec(y, (rows, d_out), &Device::Cpu))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_matmul_for_both_layouts() {
        let dev = Device::Cpu;
        for (rows, d_in, d_out) in [(1, 768, 3072), (3, 100, 77), (4, 33, 513), (2, 768, 50)] {
            let x = Tensor::randn(0f32, 1.0, (rows, d_in), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (d_out, d_in), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, d_out, &dev).unwrap();
            let want = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let wt = w.t().unwrap().contiguous().unwrap().t().unwrap();
            for w in [&w, &wt] {
                // As `Linear` uses it: the product, then the fused in-place bias.
                let got = linear_few_rows(&x, w).unwrap().unwrap();
                assert!(crate::ops::fused::bias_act_(&got, &b, None).unwrap());
                let d = crate::ops::max_abs_diff(&got, &want);
                assert!(d < 1e-3, "[{rows},{d_in}]x[{d_out}]: {d}");
                // Output-major, as the off-ramps read it.
                let got_t = matmul_t_output_major(&x, w).unwrap().unwrap();
                let want_t = want.broadcast_sub(&b).unwrap().t().unwrap();
                let d = crate::ops::max_abs_diff(&got_t, &want_t);
                assert!(d < 1e-3, "output-major [{rows},{d_in}]x[{d_out}]: {d}");
            }
        }
        // Too many rows, or a tracked variable: not applicable.
        let x = Tensor::zeros((MAX_ROWS + 1, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        assert!(linear_few_rows(&x, &w).unwrap().is_none());
        let v = candle_core::Var::zeros((4, 8), DType::F32, &dev).unwrap();
        let x1 = Tensor::zeros((1, 8), DType::F32, &dev).unwrap();
        assert!(linear_few_rows(&x1, v.as_tensor()).unwrap().is_none());
    }
}
