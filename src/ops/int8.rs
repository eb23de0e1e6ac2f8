//! int8 products for CPU inference on AVX512-VNNI (`--dtype int8`, issue 13): `y = x W^T`
//! with `W` `[n, k]` quantized once at load time and `x` `[m, k]` quantized on every call,
//! products summed exactly in i32 by `vpdpbusd` (four u8 x i8 products per lane and
//! instruction: twice the multiply-adds per cycle of f32 FMA on the Xeons and EPYCs here).
//!
//! - **Weights**, per output column `j` (a row of `W`), symmetric: `sw_j = max|W_j| / 127`,
//!   `q_jk = round(W_jk / sw_j)` in [-127, 127] (i8), with the column sums
//!   `c_j = sum_k q_jk` kept for the zero-point correction below.
//! - **Activations**, per row `r`, asymmetric (dynamic quantization, as fbgemm / PyTorch's
//!   `quantize_dynamic` do): over `[lo, hi] = [min(x_r, 0), max(x_r, 0)]`,
//!   `s_r = (hi - lo) / 255`, zero point `z_r = round(-lo / s_r)` in [0, 255],
//!   `u_rk = clamp(round(x_rk / s_r) + z_r, 0, 255)` (u8). A row after GELU (mostly
//!   positive) keeps nearly all 8 bits this way.
//! - **Product**: `y_rj = s_r * sw_j * (sum_k u_rk q_jk - z_r * c_j)`, exact in i32 up to
//!   the final scaling (|sum| < k * 255 * 127, below 2^31 for k < 66,000).
//!
//! Layout: `W` in panels of 16 output columns, `[k4][16][4]` i8 (`k4 = ceil(k / 4)`, zero
//! padded), the operand layout of `vpdpbusd`; `x` as `[m][k4]` u32 (four u8, the broadcast
//! operand). The register tiles, blocking and threading are those of [`super::packed`]; this
//! module holds the quantizers and the tile kernel.

use rayon::prelude::*;

/// Output columns per panel (one zmm register of i32).
pub(crate) const LANES: usize = 16;

/// Whether this CPU has AVX-512F and AVX512-VNNI (checked at run time).
pub(crate) fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `W` `[n, k]` row-major quantized per row and packed: panel `p` is `[k4][16][4]` i8 at
/// `p * k4 * 64`; `scale` and `colsum` are padded to whole panels (zeros).
#[derive(Debug, Clone, Default)]
pub(crate) struct QuantizedWeights {
    pub(crate) data: Vec<i8>,
    pub(crate) scale: Vec<f32>,
    pub(crate) colsum: Vec<i32>,
}

/// Quantizes and packs `w` `[n, k]` row-major (see the module docs).
pub(crate) fn quantize_weights(w: &[f32], n: usize, k: usize) -> QuantizedWeights {
    let k4 = k.div_ceil(4);
    let panels = n.div_ceil(LANES);
    let mut q = QuantizedWeights {
        data: vec![0i8; panels * k4 * LANES * 4],
        scale: vec![0f32; panels * LANES],
        colsum: vec![0i32; panels * LANES],
    };
    for (j, row) in w.chunks_exact(k).enumerate() {
        let amax = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let (scale, inv) = if amax > 0.0 && amax.is_finite() {
            (amax / 127.0, 127.0 / amax)
        } else {
            (0.0, 0.0)
        };
        let (p, lane) = (j / LANES, j % LANES);
        let base = p * k4 * LANES * 4;
        let mut sum = 0i32;
        for (kk, &v) in row.iter().enumerate() {
            let v = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
            q.data[base + (kk / 4) * LANES * 4 + lane * 4 + kk % 4] = v;
            sum += v as i32;
        }
        q.scale[j] = scale;
        q.colsum[j] = sum;
    }
    q
}

/// `x` `[m, k]` quantized per row: `[m][k4]` u32 of four u8 each (zero padded), the row
/// scales `s_r` and zero points `z_r`.
pub(crate) struct QuantizedRows {
    pub(crate) data: Vec<u32>,
    pub(crate) scale: Vec<f32>,
    pub(crate) zero: Vec<i32>,
}

/// One row's scale, its reciprocal and its zero point from the row's extremes (`nan`: the
/// row holds a NaN).
#[inline]
fn row_params(lo: f32, hi: f32, nan: bool) -> (f32, f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let s = (hi - lo) / 255.0;
    if nan || !s.is_finite() {
        // A NaN or infinite input: the row's outputs are NaN (as f32 products would be),
        // not a finite number computed from the rest of the row.
        return (f32::NAN, 0.0, 0);
    }
    let inv = 1.0 / s;
    if s == 0.0 || !inv.is_finite() {
        // All zeros (or values so small that 1 / s overflows): every u is the zero point 0
        // and every output 0.
        return (0.0, 0.0, 0);
    }
    let z = (-lo * inv).round_ties_even().clamp(0.0, 255.0) as i32;
    (s, inv, z)
}

/// Quantizes one row into `out` (`ceil(k / 4)` u32), scalar; returns `(s_r, z_r)`.
fn quantize_row_scalar(row: &[f32], out: &mut [u32]) -> (f32, i32) {
    let lo = row.iter().fold(f32::INFINITY, |a, &v| a.min(v));
    let hi = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let (s, inv, z) = row_params(lo, hi, row.iter().any(|v| v.is_nan()));
    out.fill(0);
    for (kk, &v) in row.iter().enumerate() {
        let u = ((v * inv).round_ties_even() as i32 + z).clamp(0, 255) as u32;
        out[kk / 4] |= u << (8 * (kk % 4));
    }
    (s, z)
}

/// Quantizes `x` `[m, k]` row-major per row (see the module docs); rows are split over
/// rayon's pool when there are many.
pub(crate) fn quantize_rows(x: &[f32], m: usize, k: usize) -> QuantizedRows {
    let k4 = k.div_ceil(4);
    let mut q = QuantizedRows {
        data: vec![0u32; m * k4],
        scale: vec![0f32; m],
        zero: vec![0i32; m],
    };
    if m == 0 || k == 0 {
        return q;
    }
    #[cfg(target_arch = "x86_64")]
    let vector = k.is_multiple_of(LANES) && cpu_has_vnni();
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    let one = |(r, out): (usize, &mut [u32])| {
        let row = &x[r * k..(r + 1) * k];
        if vector {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (checked above); `row` holds k values,
            // k % 16 == 0, and `out` k / 4 u32.
            return unsafe { x86::quantize_row(row, out) };
        }
        quantize_row_scalar(row, out)
    };
    let params: Vec<(f32, i32)> = if m * k >= 1 << 16 && m > 1 {
        q.data.par_chunks_mut(k4).enumerate().map(one).collect()
    } else {
        q.data.chunks_mut(k4).enumerate().map(one).collect()
    };
    for (r, (s, z)) in params.into_iter().enumerate() {
        q.scale[r] = s;
        q.zero[r] = z;
    }
    q
}

/// Where the last block of `k` finds the quantization parameters: row scales and zero
/// points from the tile's first row, column scales and sums from its first column.
pub(crate) struct Dequant {
    pub(crate) row_scale: *const f32,
    pub(crate) row_zero: *const i32,
    pub(crate) col_scale: *const f32,
    pub(crate) col_sum: *const i32,
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{Dequant, LANES};
    use crate::ops::packed::{Tile, PREFETCH};

    /// One row (k % 16 == 0) quantized into `out` (k / 4 u32): the vector form of
    /// `quantize_row_scalar`, bit for bit (`vcvtps2dq` rounds to nearest even).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quantize_row(row: &[f32], out: &mut [u32]) -> (f32, i32) {
        let mut lo = _mm512_setzero_ps();
        let mut hi = _mm512_setzero_ps();
        let mut nan: u16 = 0;
        for c in row.chunks_exact(LANES) {
            let v = _mm512_loadu_ps(c.as_ptr());
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        }
        let (s, inv, z) =
            super::row_params(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi), nan != 0);
        let vinv = _mm512_set1_ps(inv);
        let vz = _mm512_set1_epi32(z);
        let (zero, top) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        for (c, o) in row.chunks_exact(LANES).zip(out.chunks_exact_mut(LANES / 4)) {
            let v = _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), vinv);
            let u = _mm512_add_epi32(_mm512_cvtps_epi32(v), vz);
            let u = _mm512_min_epi32(_mm512_max_epi32(u, zero), top);
            _mm_storeu_si128(o.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(u));
        }
        (s, z)
    }

    /// `R` rows x `P` panels of `y = x W^T` in int8: `x` `[R, k4]` u32 (four u8), `W`
    /// panels `[k4][16][4]` i8. Partial sums of earlier blocks of `k` live in `y` as i32
    /// bits; the last block scales them to f32 (`d`).
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(crate) unsafe fn int8_tile<const R: usize, const P: usize>(
        t: &Tile,
        x: *const u32,
        w: *const i8,
        y: *mut f32,
        d: &Dequant,
    ) {
        let yi = y as *mut i32;
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        if !t.first {
            for (r, row) in acc.iter_mut().enumerate() {
                for (p, c) in row.iter_mut().enumerate() {
                    let valid = t.ncols.saturating_sub(p * LANES);
                    let ptr = yi.add(r * t.ldy + p * LANES);
                    *c = if valid >= LANES {
                        _mm512_loadu_si512(ptr as *const _)
                    } else if valid > 0 {
                        _mm512_maskz_loadu_epi32(((1u32 << valid) - 1) as u16, ptr)
                    } else {
                        _mm512_setzero_si512()
                    };
                }
            }
        }
        for kk in 0..t.kc {
            if t.prefetch {
                // As in the f32 tile: PREFETCH steps (1 KB a panel) ahead.
                for p in 0..P {
                    _mm_prefetch::<_MM_HINT_T0>(
                        w.wrapping_add(p * t.panel + (kk + PREFETCH) * LANES * 4),
                    );
                }
            }
            let mut b = [_mm512_setzero_si512(); P];
            for (p, bp) in b.iter_mut().enumerate() {
                *bp = _mm512_loadu_si512(w.add(p * t.panel + kk * LANES * 4) as *const _);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_epi32(*x.add(r * t.ldx + kk) as i32);
                for (p, c) in row.iter_mut().enumerate() {
                    *c = _mm512_dpbusd_epi32(*c, a, b[p]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let (sr, zr) = if t.last {
                (*d.row_scale.add(r), *d.row_zero.add(r))
            } else {
                (0.0, 0)
            };
            for (p, c) in row.iter().enumerate() {
                let valid = t.ncols.saturating_sub(p * LANES);
                if valid == 0 {
                    continue;
                }
                let mask = if valid >= LANES {
                    u16::MAX
                } else {
                    ((1u32 << valid) - 1) as u16
                };
                let ptr = y.add(r * t.ldy + p * LANES);
                if t.last {
                    // Column scales and sums are padded to whole panels: full loads.
                    let sum = _mm512_loadu_si512(d.col_sum.add(p * LANES) as *const _);
                    let cs = _mm512_loadu_ps(d.col_scale.add(p * LANES));
                    let v = _mm512_sub_epi32(*c, _mm512_mullo_epi32(_mm512_set1_epi32(zr), sum));
                    let f =
                        _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(cs, _mm512_set1_ps(sr)));
                    _mm512_mask_storeu_ps(ptr, mask, f);
                } else {
                    _mm512_mask_storeu_epi32(ptr as *mut i32, mask, *c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of values with a few outliers.
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i * 7919 + seed * 104_729) % 2003;
                let v = (h as f32 - 1001.0) / 400.0;
                if h.is_multiple_of(97) {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn vector_and_scalar_row_quantizers_agree() {
        if !cpu_has_vnni() {
            eprintln!("skipping: this CPU lacks AVX512-VNNI");
            return;
        }
        for (k, seed) in [(16, 1), (64, 2), (768, 3), (3072, 4)] {
            let mut row = values(k, seed);
            if seed == 2 {
                // A positive-only row (zero point 0) and an all-zero one.
                row.iter_mut().for_each(|v| *v = v.abs());
            }
            let mut with_nan = row.clone();
            with_nan[k / 2] = f32::NAN;
            let mut with_inf = row.clone();
            with_inf[k - 1] = f32::INFINITY;
            for row in [row.clone(), vec![0.0; k], with_nan, with_inf] {
                let mut a = vec![0u32; k / 4];
                let mut b = vec![0u32; k / 4];
                let sa = quantize_row_scalar(&row, &mut a);
                // SAFETY: AVX-512F checked above, k % 16 == 0.
                let sb = unsafe { x86::quantize_row(&row, &mut b) };
                if row.iter().any(|v| !v.is_finite()) {
                    assert!(sa.0.is_nan() && sb.0.is_nan(), "k {k}: a non-finite row");
                    continue;
                }
                assert_eq!(sa, sb, "k {k}");
                assert_eq!(a, b, "k {k}");
            }
        }
    }

    #[test]
    fn quantized_rows_reconstruct_within_half_a_step() {
        let (m, k) = (5, 37);
        let x = values(m * k, 9);
        let q = quantize_rows(&x, m, k);
        for r in 0..m {
            let (s, z) = (q.scale[r], q.zero[r]);
            assert!((0..=255).contains(&z));
            for kk in 0..k {
                let u = (q.data[r * k.div_ceil(4) + kk / 4] >> (8 * (kk % 4))) & 0xff;
                let back = s * (u as i32 - z) as f32;
                let v = x[r * k + kk];
                assert!((back - v).abs() <= 0.5 * s * 1.0001 + 1e-7, "{v} -> {back}");
            }
            // Padding bytes of the last group are zero.
            assert_eq!(q.data[r * k.div_ceil(4) + k / 4] >> 8, 0);
        }
    }

    #[test]
    fn quantized_weights_hold_column_scales_and_sums() {
        let (n, k) = (19, 10);
        let w = values(n * k, 5);
        let q = quantize_weights(&w, n, k);
        let k4 = k.div_ceil(4);
        assert_eq!(q.scale.len(), 32);
        for j in 0..n {
            let (p, lane) = (j / LANES, j % LANES);
            let mut sum = 0;
            let mut amax = 0i32;
            for kk in 0..k {
                let v = q.data[p * k4 * 64 + (kk / 4) * 64 + lane * 4 + kk % 4] as i32;
                amax = amax.max(v.abs());
                sum += v;
                let back = q.scale[j] * v as f32;
                assert!((back - w[j * k + kk]).abs() <= 0.5 * q.scale[j] * 1.0001);
            }
            assert_eq!(amax, 127, "column {j} uses the full range");
            assert_eq!(q.colsum[j], sum);
        }
        assert_eq!(q.scale[n..], [0.0; 13]);
    }
}
