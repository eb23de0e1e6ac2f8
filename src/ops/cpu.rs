//! Shared plumbing of the CPU kernels: row-parallel loops on rayon's pool, typed views of
//! candle's CPU storage, the run-time AVX2/FMA check and a vectorisable `exp`.
//!
//! Every kernel in [`crate::ops`] is compiled twice where it matters: a generic body, and the
//! same body under `#[target_feature(enable = "avx2,fma")]`, picked at run time by
//! [`has_avx2_fma`], so one binary runs on any x86-64 (and other) CPU.

use candle_core::{CpuStorage, Layout};

pub(crate) fn threads_for(rows: usize, cols: usize) -> usize {
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

pub(crate) fn u32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [u32]> {
    let v = match s {
        CpuStorage::U32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: expected u32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
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

/// `erf(x)`, Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
pub(crate) fn erf_approx(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - p * exp_nonpositive(-a * a);
    y.copysign(x)
}

/// Defines `fn $name(args) -> ret` from a body compiled twice, generic and with
/// `#[target_feature(enable = "avx2,fma")]`, and picks the second at run time where the CPU
/// has those features ([`has_avx2_fma`]): row loops around the inlined `exp` / `erf` here
/// vectorise 8 wide instead of 4.
macro_rules! avx2_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::ops::cpu::has_avx2_fma() && !$crate::ops::cpu::generic_forced() {
                // SAFETY: the CPU supports the enabled target features (checked just above).
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

/// Unit tests set this to run the generic bodies of [`avx2_dispatch`] kernels on a CPU that
/// has AVX2 (both paths tested on one machine).
#[cfg(test)]
pub(crate) static GENERIC_ONLY: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the generic bodies are forced (tests only; always `false` otherwise).
#[inline(always)]
pub(crate) fn generic_forced() -> bool {
    #[cfg(test)]
    {
        GENERIC_ONLY.load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(test))]
    {
        false
    }
}

/// Whether the CPU has AVX-512F with AVX2/FMA, so the 512-bit instances of the elementwise
/// kernels may run (`bias_act`, softmax: about 20 % faster softmax than the AVX2 build on the
/// Xeon, `cargo bench --bench kernels -- softmax`).
pub(crate) fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX2 and FMA, so the `#[target_feature(enable = "avx2,fma")]`
/// instances of the kernels in [`crate::ops`] may run
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
