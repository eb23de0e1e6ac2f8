//! Dense products against a matrix packed once at load time (CPU inference):
//! `y = x W^T` for `x` `[m, k]` f32 and a fixed `W` `[n, k]`, in f32 (AVX-512F FMA) or with
//! bf16 weights (AVX-512 BF16 dot products, `x` rounded to bf16 on the fly, f32 sums).
//!
//! Batch-1 NAR decoding multiplies 16-128 rows by each weight matrix, where a general gemm
//! that packs its operands on every call loses to its own overhead (issue 13: candle's gemm
//! ran the decoder FFN at 32 rows at about 55 GFLOP/s on a 2-core Xeon whose peak is about
//! 300). Here `W` is packed once into panels of 16 output columns, `[k][16]` f32 (or
//! `[k/2][16][2]` bf16 pairs, the operand layout of `vdpbf16ps`), and a register tile of up
//! to 8 rows x 48 columns runs over the whole `k` with the accumulators in 24 zmm registers:
//! each step loads 3 weight vectors and broadcasts one `x` value per row. Column groups are
//! split over rayon's pool. The same kernel serves the vocabulary projection of the
//! off-ramps (`x` = decoder states `[tokens, d]`, `W` = the `[vocab, d]` table; the result is
//! token-major `[tokens, vocab]`).
//!
//! Kernels are chosen at run time: [`Precision::F32`] needs AVX-512F, [`Precision::Bf16`]
//! also AVX512_BF16 ([`available`]); without them nothing is packed and the callers keep
//! candle's matmul. Where the CPU also has AMX-BF16 (Intel, on Linux) the bf16 products run
//! on AMX tiles ([`super::amx`]: the same packed layout is the tiles' operand layout);
//! `ELMER_CPU_KERNELS=avx512` keeps the AVX512_BF16 kernel, `ELMER_CPU_KERNELS=portable`
//! turns packing off (the fallback paths, for tests and comparisons).
//!
//! Shapes: `x` `[m, k]` f32 row-major, packed `W` `[n, k]`; result `[m, n]` f32 row-major.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::fused::{bias_act_rows, FusedAct};

/// What the products' epilogue applies to each finished block of the result, while it is
/// still in cache: `y <- act(y + bias)` (`bias` `[n]`).
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub(crate) bias: &'a [f32],
    pub(crate) act: FusedAct,
}

impl Epilogue<'_> {
    /// Applies to columns `c0..c1` of rows `r0..r1` of `y` `[.., n]`.
    ///
    /// # Safety
    /// `y` points to at least `r1` rows of `n` f32; no other thread touches these elements.
    pub(crate) unsafe fn apply(
        &self,
        y: *mut f32,
        n: usize,
        r0: usize,
        r1: usize,
        c0: usize,
        c1: usize,
    ) {
        for r in r0..r1 {
            let row = std::slice::from_raw_parts_mut(y.add(r * n + c0), c1 - c0);
            bias_act_rows(row, &self.bias[c0..c1], self.act);
        }
    }
}

/// Output columns per panel (one zmm register of f32).
const LANES: usize = 16;
/// Rows per register tile.
const MR: usize = 8;
/// Panels per register tile (48 columns).
const NP: usize = 3;
/// Values of `k` per cache block.
const KC: usize = 256;
/// Rows per block of the f32 / AVX512_BF16 loops: every column group runs over one block of
/// rows before the next (the encoder at source 512 on the Xeon: 222 / 247 / 228 against
/// 217 / 220 / 200 ms unblocked / blocked, alternating `cargo bench --bench latency` runs).
const MC_ROWS: usize = 128;

/// Steps of `k` the first row tile prefetches the weights ahead (16 steps: 1 KB a panel).
pub(crate) const PREFETCH: usize = 16;

/// Precision of the CPU inference kernels: how the dense layers and off-ramps are stored
/// once packed at load time ([`crate::LoadOptions::cpu_precision`], `--dtype`). Activations
/// and everything outside those products stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Precision {
    /// f32 weights, f32 arithmetic.
    F32,
    /// bf16 weights; `x` rounded to bf16, products summed in f32.
    Bf16,
    /// int8 weights (one scale per output column) and int8 activations (one scale and zero
    /// point per row, computed on every call), products summed exactly in i32 (AVX512-VNNI),
    /// then scaled to f32.
    Int8,
}

impl Precision {
    /// Name as `--dtype` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

/// `ELMER_CPU_KERNELS`, trimmed and lower-cased (empty when unset).
fn kernels_env() -> String {
    std::env::var("ELMER_CPU_KERNELS")
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Whether the packed kernels are turned off by `ELMER_CPU_KERNELS=portable`.
fn forced_portable() -> bool {
    kernels_env() == "portable"
}

/// Whether `ELMER_CPU_KERNELS` is `avx512` or `portable`: no AMX tiles.
pub(crate) fn kernels_forced_below_amx() -> bool {
    matches!(kernels_env().as_str(), "avx512" | "portable")
}

/// Whether this CPU runs the kernels of `precision` (checked at run time).
pub fn cpu_supports(precision: Precision) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match precision {
            Precision::F32 => std::arch::is_x86_feature_detected!("avx512f"),
            Precision::Bf16 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            Precision::Int8 => super::int8::cpu_has_vnni(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = precision;
        false
    }
}

/// Whether packing for `precision` is on: the CPU has the instructions and
/// `ELMER_CPU_KERNELS` is not `portable`.
pub fn available(precision: Precision) -> bool {
    cpu_supports(precision) && !forced_portable()
}

/// `Ok` when packing for `precision` is [`available`], else why not: the CPU lacks the
/// instructions, or `ELMER_CPU_KERNELS=portable` turned the kernels off.
pub fn require(precision: Precision) -> crate::error::Result<()> {
    if available(precision) {
        return Ok(());
    }
    Err(crate::error::Error::Unsupported(
        if cpu_supports(precision) {
            format!(
                "{} inference on CPU needs the packed kernels, which ELMER_CPU_KERNELS=portable \
             turns off",
                precision.name()
            )
        } else {
            format!(
                "{} inference on CPU needs AVX-512F{}, which this CPU lacks; load as f32 (the \
             default)",
                precision.name(),
                match precision {
                    Precision::F32 => "",
                    Precision::Bf16 => " and AVX512_BF16",
                    Precision::Int8 => " and AVX512-VNNI",
                }
            )
        },
    ))
}

/// f32 -> bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// A `[n, k]` matrix packed in panels of 16 rows of `W` (16 output columns of `x W^T`).
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    precision: Precision,
    /// F32: panel p is `[k][16]` at `p * k * 16`.
    f32_data: Vec<f32>,
    /// Bf16: panel p is `[k2][16][2]` at `p * k2 * 32`, `k2 = ceil(k / 2)`.
    bf16_data: Vec<u16>,
    /// Int8: panels `[k4][16][4]` with per-column scales and sums ([`super::int8`]).
    int8: super::int8::QuantizedWeights,
    /// Bf16 products run on AMX tiles ([`super::amx`]) instead of AVX512_BF16.
    amx: bool,
}

impl PackedMatrix {
    /// Packs `w` `[n, k]` (any layout, f32/f16/bf16 on CPU); `None` when `precision`'s
    /// kernels are not [`available`] here.
    pub fn pack(w: &Tensor, precision: Precision) -> candle_core::Result<Option<Self>> {
        if !available(precision) || !w.device().is_cpu() || w.rank() != 2 {
            return Ok(None);
        }
        let (n, k) = w.dims2()?;
        if n == 0 || k == 0 {
            return Ok(None);
        }
        // Read in place when `w` is contiguous f32 (no copy of a large table).
        let w = w.to_dtype(DType::F32)?.contiguous()?;
        let (ws, wl) = w.storage_and_layout();
        let Storage::Cpu(cpu) = &*ws else {
            return Ok(None);
        };
        let flat = super::cpu::f32_slice(cpu, wl, "packed weight")?;
        let panels = n.div_ceil(LANES);
        let mut m = Self {
            n,
            k,
            precision,
            f32_data: Vec::new(),
            bf16_data: Vec::new(),
            int8: Default::default(),
            amx: false,
        };
        match precision {
            Precision::F32 => {
                let mut d = vec![0f32; panels * k * LANES];
                for (j, row) in flat.chunks_exact(k).enumerate() {
                    let (p, lane) = (j / LANES, j % LANES);
                    let base = p * k * LANES;
                    for (kk, &v) in row.iter().enumerate() {
                        d[base + kk * LANES + lane] = v;
                    }
                }
                m.f32_data = d;
            }
            Precision::Bf16 => {
                let k2 = k.div_ceil(2);
                let mut d = vec![0u16; panels * k2 * LANES * 2];
                for (j, row) in flat.chunks_exact(k).enumerate() {
                    let (p, lane) = (j / LANES, j % LANES);
                    let base = p * k2 * LANES * 2;
                    for (kk, &v) in row.iter().enumerate() {
                        d[base + (kk / 2) * LANES * 2 + lane * 2 + kk % 2] = bf16_bits(v);
                    }
                }
                m.bf16_data = d;
                m.amx = super::amx::available() && k2.is_multiple_of(16);
            }
            Precision::Int8 => m.int8 = super::int8::quantize_weights(flat, n, k),
        }
        Ok(Some(m))
    }

    /// Elements per step of `k` per lane: 1 (f32), 2 (a bf16 pair) or 4 (int8).
    fn pair(&self) -> usize {
        match self.precision {
            Precision::F32 => 1,
            Precision::Bf16 => 2,
            Precision::Int8 => 4,
        }
    }

    /// Rows `n` of `W` (output columns).
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Columns `k` of `W` (input features).
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// The storage precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether the products run on AMX tiles (bf16 on a CPU with AMX-BF16, `ceil(k / 2)` a
    /// multiple of 16, `ELMER_CPU_KERNELS` not `avx512` or `portable`).
    pub fn uses_amx(&self) -> bool {
        self.amx
    }

    /// The same matrix on the AVX512_BF16 kernel instead of AMX (tests, comparisons).
    pub fn without_amx(mut self) -> Self {
        self.amx = false;
        self
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.f32_data.len() * 4
            + self.bf16_data.len() * 2
            + self.int8.data.len()
            + (self.int8.scale.len() + self.int8.colsum.len()) * 4
    }

    /// `x W^T` for `x` `[m, k]` (any float dtype on CPU, made contiguous f32): `[m, n]` f32.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!(
                "packed matmul: x has {k} features, the packed matrix {}",
                self.k
            );
        }
        let y = self.matmul_vec(x)?;
        Tensor::from_vec(y, (m, self.n), &Device::Cpu)
    }

    /// [`matmul`](Self::matmul) into a row-major `[m, n]` vector; `x` is read in place when
    /// it is contiguous f32.
    pub fn matmul_vec(&self, x: &Tensor) -> candle_core::Result<Vec<f32>> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!(
                "packed matmul: x has {k} features, the packed matrix {}",
                self.k
            );
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        match &*xs {
            Storage::Cpu(s) => {
                let v = super::cpu::f32_slice(s, xl, "packed matmul x")?;
                Ok(self.matmul_slice(v, m))
            }
            _ => candle_core::bail!("packed matmul: x is not on the CPU"),
        }
    }

    /// `x W^T` for `x` `[m, k]` row-major: `[m, n]` row-major.
    pub fn matmul_slice(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_slice_epilogue(x, m, None)
    }

    /// `act(x W^T + b)` for `x` `[m, k]` (any float dtype on CPU) and `bias` `[n]` f32 on
    /// the CPU: `[m, n]` f32, the bias and activation applied by each task to its block of
    /// the result while it is in cache (no separate pass).
    pub(crate) fn matmul_bias_act(
        &self,
        x: &Tensor,
        bias: &Tensor,
        act: FusedAct,
    ) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k || bias.elem_count() != self.n {
            candle_core::bail!(
                "packed matmul: x has {k} features and the bias {} values, the packed matrix is \
                 [{}, {}]",
                bias.elem_count(),
                self.n,
                self.k
            );
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let b = bias.to_dtype(DType::F32)?.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (bs, bl) = b.storage_and_layout();
        let y = match (&*xs, &*bs) {
            (Storage::Cpu(xc), Storage::Cpu(bc)) => {
                let xv = super::cpu::f32_slice(xc, xl, "packed matmul x")?;
                let bias = super::cpu::f32_slice(bc, bl, "packed matmul bias")?;
                self.matmul_slice_epilogue(xv, m, Some(Epilogue { bias, act }))
            }
            _ => candle_core::bail!("packed matmul: x or the bias is not on the CPU"),
        };
        Tensor::from_vec(y, (m, self.n), &Device::Cpu)
    }

    /// [`matmul_slice`](Self::matmul_slice) with an optional epilogue.
    pub(crate) fn matmul_slice_epilogue(
        &self,
        x: &[f32],
        m: usize,
        epi: Option<Epilogue>,
    ) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "packed matmul: x is not [m, k]");
        if let Some(e) = &epi {
            assert_eq!(e.bias.len(), n, "packed matmul: the bias is not [n]");
        }
        // Not zeroed: every element is stored below (each task stores every row of its
        // columns; the first block of `k` stores rather than adds). Zeroing cost about 2 % of
        // the encoder's time on the 2-core Xeon (`perf`: memset).
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        if m == 0 {
            return y;
        }
        // Units of work split over the pool: 48-column groups, or 32-column panel pairs on AMX.
        let groups = n.div_ceil(LANES * if self.amx { 2 } else { NP });
        // About 256 KFLOP per task at least (at one row that is 512 KB of f32 weights to
        // stream): below that the pool costs more than it saves.
        let work = 2 * m * n * k;
        let tasks = rayon::current_num_threads()
            .max(1)
            .min(groups)
            .min((work >> 18).max(1));
        let out = SendPtr(y.as_mut_ptr());
        let xb: Vec<u32> = match self.precision {
            Precision::F32 | Precision::Int8 => Vec::new(),
            Precision::Bf16 => bf16_pairs(x, m, k),
        };
        let xq = match self.precision {
            Precision::Int8 => Some(super::int8::quantize_rows(x, m, k)),
            _ => None,
        };
        let run = |t: usize| {
            let (g0, g1) = (t * groups / tasks, (t + 1) * groups / tasks);
            #[cfg(target_arch = "x86_64")]
            if self.amx {
                // SAFETY: `amx` is set only where AMX is available and `k2 % 16 == 0`; `xb`
                // holds `m * k2` pairs; task t writes only the columns of panel pairs
                // g0..g1, disjoint from every other task's; `y` outlives the loop.
                unsafe {
                    super::amx::panel_pairs(
                        &xb,
                        m,
                        k.div_ceil(2),
                        &self.bf16_data,
                        n,
                        g0,
                        g1,
                        out.0,
                        epi,
                    )
                };
                return;
            }
            // SAFETY: task t writes only the columns of groups g0..g1 of every row, disjoint
            // from every other task's; `y` outlives the parallel loop.
            unsafe { self.groups(x, &xb, xq.as_ref(), m, g0, g1, out, epi) };
        };
        if tasks == 1 {
            run(0);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
        // SAFETY: the tasks above wrote all `m * n` elements (see the allocation).
        unsafe { y.set_len(m * n) };
        y
    }

    /// Column groups `g0..g1` (48 columns each) of every row of `y`.
    ///
    /// # Safety
    /// `y` points to `[m, n]` f32; no other thread writes these columns.
    #[allow(clippy::too_many_arguments)]
    unsafe fn groups(
        &self,
        x: &[f32],
        xb: &[u32],
        xq: Option<&super::int8::QuantizedRows>,
        m: usize,
        g0: usize,
        g1: usize,
        y: SendPtr,
        epi: Option<Epilogue>,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            let panels = self.n.div_ceil(LANES);
            // Steps of k per block (f32 values or bf16 pairs): a block of 48 columns of W
            // (48 KB f32, 24 KB bf16) stays in L1 while every row tile of x runs over it.
            // int8: a step is four values, a block 48 KB as in f32.
            let (ksteps, kc) = match self.precision {
                Precision::F32 => (self.k, KC),
                Precision::Bf16 => (self.k.div_ceil(2), KC / 2),
                Precision::Int8 => (self.k.div_ceil(4), KC),
            };
            // Rows in blocks of MC_ROWS: the `x` slice a block of k reads stays in L2 while
            // the tiles of every column group run over it.
            let mut rb0 = 0;
            while rb0 < m {
                let rb1 = (rb0 + MC_ROWS).min(m);
                for g in g0..g1 {
                    let p0 = g * NP;
                    let np = NP.min(panels - p0);
                    let col0 = p0 * LANES;
                    let ncols = (self.n - col0).min(np * LANES);
                    let mut k0 = 0;
                    while k0 < ksteps {
                        let kb = kc.min(ksteps - k0);
                        let mut r0 = rb0;
                        while r0 < rb1 {
                            let rows = MR.min(rb1 - r0);
                            let yp = y.0.add(r0 * self.n + col0);
                            let tile = Tile {
                                kc: kb,
                                prefetch: r0 == rb0,
                                ldx: ksteps,
                                panel: ksteps * LANES * self.pair(),
                                ldy: self.n,
                                ncols,
                                first: k0 == 0,
                                last: k0 + kb == ksteps,
                            };
                            match self.precision {
                                Precision::F32 => {
                                    let w = self.f32_data.as_ptr().add((p0 * ksteps + k0) * LANES);
                                    let xp = x.as_ptr().add(r0 * ksteps + k0);
                                    f32_tile_dispatch(rows, np, &tile, xp, w, yp);
                                }
                                Precision::Bf16 => {
                                    let w =
                                        self.bf16_data.as_ptr().add((p0 * ksteps + k0) * LANES * 2);
                                    let xp = xb.as_ptr().add(r0 * ksteps + k0);
                                    bf16_tile_dispatch(rows, np, &tile, xp, w, yp);
                                }
                                Precision::Int8 => {
                                    let Some(q) = xq else {
                                        unreachable!("int8 products quantize x first")
                                    };
                                    let w =
                                        self.int8.data.as_ptr().add((p0 * ksteps + k0) * LANES * 4);
                                    let xp = q.data.as_ptr().add(r0 * ksteps + k0);
                                    let d = super::int8::Dequant {
                                        row_scale: q.scale.as_ptr().add(r0),
                                        row_zero: q.zero.as_ptr().add(r0),
                                        col_scale: self.int8.scale.as_ptr().add(col0),
                                        col_sum: self.int8.colsum.as_ptr().add(col0),
                                    };
                                    int8_tile_dispatch(rows, np, &tile, xp, w, yp, &d);
                                }
                            }
                            r0 += rows;
                        }
                        k0 += kb;
                    }
                    if let Some(e) = &epi {
                        e.apply(y.0, self.n, rb0, rb1, col0, col0 + ncols);
                    }
                }
                rb0 = rb1;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, xb, xq, m, g0, g1, y, epi);
            unreachable!("packed kernels are only built on x86-64");
        }
    }
}

/// `x` `[m, k]` as bf16 pairs `[m, ceil(k/2)]` (element 2i in the low half, 2i+1 in the high
/// half; an odd `k` is padded with zero).
fn bf16_pairs(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let k2 = k.div_ceil(2);
    let mut out = vec![0u32; m * k2];
    #[cfg(target_arch = "x86_64")]
    if k.is_multiple_of(32) && cpu_supports(Precision::Bf16) {
        // SAFETY: the CPU has AVX-512F and AVX512_BF16 (checked just above); `x` holds
        // `m * k` values and `out` `m * k / 2` pairs.
        unsafe { x86::bf16_pairs_avx512(x, &mut out) };
        return out;
    }
    for (row, o) in x.chunks_exact(k).zip(out.chunks_exact_mut(k2)) {
        for (i, slot) in o.iter_mut().enumerate() {
            let lo = bf16_bits(row[2 * i]) as u32;
            let hi = if 2 * i + 1 < k {
                bf16_bits(row[2 * i + 1]) as u32
            } else {
                0
            };
            *slot = lo | (hi << 16);
        }
    }
    out
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint column ranges of one output buffer to pool tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{LANES, PREFETCH};

    /// `x` as bf16 pairs (round to nearest even), 32 values at a time (`x.len() % 32 == 0`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_pairs_avx512(x: &[f32], out: &mut [u32]) {
        for (src, dst) in x.chunks_exact(32).zip(out.chunks_exact_mut(16)) {
            let lo = _mm512_loadu_ps(src.as_ptr());
            let hi = _mm512_loadu_ps(src.as_ptr().add(16));
            // Lower 256 bits: bf16(lo), upper: bf16(hi), so pair i is (x[2i], x[2i+1]).
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v);
        }
    }

    /// Stores `acc` to `y` (16 columns, the first `valid` of them).
    #[inline(always)]
    unsafe fn store(y: *mut f32, acc: __m512, valid: usize) {
        if valid >= LANES {
            _mm512_storeu_ps(y, acc);
        } else if valid > 0 {
            _mm512_mask_storeu_ps(y, ((1u32 << valid) - 1) as u16, acc);
        }
    }

    /// `R` rows x `P` panels of `y = x W^T`, f32.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f32_tile<const R: usize, const P: usize>(
        t: &super::Tile,
        x: *const f32,
        w: *const f32,
        y: *mut f32,
    ) {
        let mut acc = init::<R, P>(t, y);
        for kk in 0..t.kc {
            if t.prefetch {
                // The weights PREFETCH steps ahead (the panels run on into the next block
                // of k): this tile streams them from memory, the other row tiles then
                // find them in cache.
                for p in 0..P {
                    _mm_prefetch::<_MM_HINT_T0>(
                        w.wrapping_add(p * t.panel + (kk + PREFETCH) * LANES) as *const i8,
                    );
                }
            }
            let mut b = [_mm512_setzero_ps(); P];
            for (p, bp) in b.iter_mut().enumerate() {
                *bp = _mm512_loadu_ps(w.add(p * t.panel + kk * LANES));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*x.add(r * t.ldx + kk));
                for (p, c) in row.iter_mut().enumerate() {
                    *c = _mm512_fmadd_ps(a, b[p], *c);
                }
            }
        }
        finish::<R, P>(t, y, &acc);
    }

    /// `R` rows x `P` panels of `y = x W^T` with bf16 pairs (`x` `[R, k2]` pairs, `W` panels
    /// `[k2][16][2]`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_tile<const R: usize, const P: usize>(
        t: &super::Tile,
        x: *const u32,
        w: *const u16,
        y: *mut f32,
    ) {
        let mut acc = init::<R, P>(t, y);
        for kk in 0..t.kc {
            if t.prefetch {
                // As in `f32_tile`: 16 steps (2 KB a panel of bf16 pairs) ahead.
                for p in 0..P {
                    _mm_prefetch::<_MM_HINT_T0>(
                        w.wrapping_add(p * t.panel + (kk + PREFETCH) * LANES * 2) as *const i8,
                    );
                }
            }
            let mut b = [_mm512_setzero_si512(); P];
            for (p, bp) in b.iter_mut().enumerate() {
                *bp = _mm512_loadu_si512(w.add(p * t.panel + kk * LANES * 2) as *const _);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let a: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*x.add(r * t.ldx + kk) as i32));
                for (p, c) in row.iter_mut().enumerate() {
                    *c = _mm512_dpbf16_ps(*c, a, std::mem::transmute::<__m512i, __m512bh>(b[p]));
                }
            }
        }
        finish::<R, P>(t, y, &acc);
    }

    /// The accumulators: zero for the first block of `k`, else the partial sums in `y`.
    #[inline(always)]
    unsafe fn init<const R: usize, const P: usize>(
        t: &super::Tile,
        y: *mut f32,
    ) -> [[__m512; P]; R] {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        if !t.first {
            for (r, row) in acc.iter_mut().enumerate() {
                for (p, c) in row.iter_mut().enumerate() {
                    let valid = t.ncols.saturating_sub(p * LANES);
                    let ptr = y.add(r * t.ldy + p * LANES);
                    *c = if valid >= LANES {
                        _mm512_loadu_ps(ptr)
                    } else if valid > 0 {
                        _mm512_maskz_loadu_ps(((1u32 << valid) - 1) as u16, ptr)
                    } else {
                        _mm512_setzero_ps()
                    };
                }
            }
        }
        acc
    }

    #[inline(always)]
    unsafe fn finish<const R: usize, const P: usize>(
        t: &super::Tile,
        y: *mut f32,
        acc: &[[__m512; P]; R],
    ) {
        for (r, row) in acc.iter().enumerate() {
            for (p, c) in row.iter().enumerate() {
                let valid = t.ncols.saturating_sub(p * LANES);
                store(y.add(r * t.ldy + p * LANES), *c, valid);
            }
        }
    }
}

/// One register tile's geometry: `kc` steps of `k` (f32 values, bf16 pairs or int8
/// quadruples) from `x` rows `ldx` apart and weight panels `panel` elements apart, into
/// `ncols` valid columns of `y` rows `ldy` apart; `first`: the first block of `k` (else add
/// to `y`); `last`: the last (int8 scales its i32 sums to f32 there).
pub(crate) struct Tile {
    pub(crate) kc: usize,
    /// Prefetch the weights ahead (the first row tile of a block).
    pub(crate) prefetch: bool,
    pub(crate) ldx: usize,
    pub(crate) panel: usize,
    pub(crate) ldy: usize,
    pub(crate) ncols: usize,
    pub(crate) first: bool,
    pub(crate) last: bool,
}

/// Runs tile kernel `$kernel::<R, P>(t, x, w, y)` for `R = rows` (1..=8) and `P = np`
/// (1..=3): the const parameters the register tiles are unrolled for.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch_tile {
    ($($kernel:ident)::+, $rows:expr, $np:expr, $($arg:expr),*) => {{
        macro_rules! go {
            ($r:literal) => {
                match $np {
                    1 => $($kernel)::+::<$r, 1>($($arg),*),
                    2 => $($kernel)::+::<$r, 2>($($arg),*),
                    _ => $($kernel)::+::<$r, 3>($($arg),*),
                }
            };
        }
        match $rows {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            4 => go!(4),
            5 => go!(5),
            6 => go!(6),
            7 => go!(7),
            _ => go!(8),
        }
    }};
}

/// Runs the f32 tile for `rows` (1..=8) x `np` (1..=3) panels.
#[cfg(target_arch = "x86_64")]
unsafe fn f32_tile_dispatch(
    rows: usize,
    np: usize,
    t: &Tile,
    x: *const f32,
    w: *const f32,
    y: *mut f32,
) {
    dispatch_tile!(x86::f32_tile, rows, np, t, x, w, y)
}

/// Runs the bf16 tile for `rows` (1..=8) x `np` (1..=3) panels.
#[cfg(target_arch = "x86_64")]
unsafe fn bf16_tile_dispatch(
    rows: usize,
    np: usize,
    t: &Tile,
    x: *const u32,
    w: *const u16,
    y: *mut f32,
) {
    dispatch_tile!(x86::bf16_tile, rows, np, t, x, w, y)
}

/// Runs the int8 tile for `rows` (1..=8) x `np` (1..=3) panels.
#[cfg(target_arch = "x86_64")]
unsafe fn int8_tile_dispatch(
    rows: usize,
    np: usize,
    t: &Tile,
    x: *const u32,
    w: *const i8,
    y: *mut f32,
    d: &super::int8::Dequant,
) {
    dispatch_tile!(super::int8::x86::int8_tile, rows, np, t, x, w, y, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_round(t: &Tensor) -> Tensor {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    #[test]
    fn packed_products_match_matmul() {
        let dev = Device::Cpu;
        for precision in [Precision::F32, Precision::Bf16] {
            if !available(precision) {
                eprintln!(
                    "skipping {}: this CPU lacks its instructions",
                    precision.name()
                );
                continue;
            }
            for (m, k, n) in [
                (1, 8, 16),
                (3, 5, 7),
                (8, 64, 48),
                (9, 33, 50),
                (32, 192, 768),
                (17, 768, 100),
                (130, 96, 49),
            ] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let packed = PackedMatrix::pack(&w, precision).unwrap().unwrap();
                assert_eq!((packed.out_dim(), packed.in_dim()), (n, k));
                let got = packed.matmul(&x).unwrap();
                // bf16: the reference is the product of the bf16-rounded operands in f32.
                let (xr, wr) = match precision {
                    Precision::F32 => (x.clone(), w.clone()),
                    _ => (bf16_round(&x), bf16_round(&w)),
                };
                let want = xr.matmul(&wr.t().unwrap()).unwrap();
                let d = crate::ops::max_abs_diff(&got, &want);
                let tol = 1e-4 * (k as f32).sqrt() * 4.0;
                assert!(d < tol, "{} [{m},{k}]x[{n},{k}]^T: {d}", precision.name());
                // A transposed (column-major) weight packs to the same thing.
                let wt = w.t().unwrap().contiguous().unwrap().t().unwrap();
                let again = PackedMatrix::pack(&wt, precision).unwrap().unwrap();
                assert_eq!(
                    crate::ops::max_abs_diff(&again.matmul(&x).unwrap(), &got),
                    0.0
                );
            }
        }
    }

    /// Both bf16 kernels (AMX tiles and AVX512_BF16) against the f32 product of the rounded
    /// operands, over row counts around the 16-row tile and partial last panels.
    #[test]
    fn amx_and_avx512_bf16_kernels_agree() {
        if !available(Precision::Bf16) {
            eprintln!("skipping: this CPU lacks AVX512_BF16");
            return;
        }
        if !super::super::amx::available() {
            eprintln!("skipping the AMX half: no AMX-BF16 here (or ELMER_CPU_KERNELS=avx512)");
        }
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 32, 16),
            (5, 64, 17),
            (16, 96, 32),
            (17, 192, 50),
            (31, 32, 33),
            (32, 768, 100),
            (33, 64, 48),
            (70, 128, 31),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let want = bf16_round(&x).matmul(&bf16_round(&w).t().unwrap()).unwrap();
            let tol = 1e-4 * (k as f32).sqrt() * 4.0;
            let packed = PackedMatrix::pack(&w, Precision::Bf16).unwrap().unwrap();
            assert_eq!(packed.uses_amx(), super::super::amx::available());
            let got = packed.matmul(&x).unwrap();
            let d = crate::ops::max_abs_diff(&got, &want);
            assert!(d < tol, "default bf16 kernel [{m},{k}]x[{n},{k}]^T: {d}");
            let fallback = packed.without_amx();
            assert!(!fallback.uses_amx());
            let d = crate::ops::max_abs_diff(&fallback.matmul(&x).unwrap(), &want);
            assert!(d < tol, "AVX512_BF16 kernel [{m},{k}]x[{n},{k}]^T: {d}");
        }
    }

    /// The fused epilogue equals the product followed by bias and activation, on every
    /// kernel this CPU has (f32, bf16 on AMX and on AVX512_BF16).
    #[test]
    fn epilogue_matches_bias_and_activation_after_the_product() {
        let dev = Device::Cpu;
        for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
            if !available(precision) {
                continue;
            }
            for (m, k, n) in [(1, 32, 16), (9, 64, 50), (40, 96, 100), (130, 64, 33)] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
                let packed = PackedMatrix::pack(&w, precision).unwrap().unwrap();
                let mut kernels = vec![packed.clone()];
                if packed.uses_amx() {
                    kernels.push(packed.without_amx());
                }
                for p in &kernels {
                    let plain = p.matmul(&x).unwrap().broadcast_add(&b).unwrap();
                    for (act, want) in [
                        (FusedAct::None, plain.clone()),
                        (FusedAct::Relu, plain.relu().unwrap()),
                        (FusedAct::Gelu, plain.gelu_erf().unwrap()),
                    ] {
                        let got = p.matmul_bias_act(&x, &b, act).unwrap();
                        let d = crate::ops::max_abs_diff(&got, &want);
                        assert!(
                            d < 1e-5,
                            "{} amx={} {act:?} [{m},{k}]x[{n},{k}]^T: {d}",
                            precision.name(),
                            p.uses_amx()
                        );
                    }
                }
            }
        }
    }

    /// The int8 kernel against the same quantized operands multiplied exactly (i64), over
    /// partial panels, `k` not a multiple of 4, several blocks of `k` and of rows; and
    /// against the f32 product within the quantization error.
    #[test]
    fn int8_products_match_the_exact_product_of_the_quantized_operands() {
        if !available(Precision::Int8) {
            eprintln!("skipping: this CPU lacks AVX512-VNNI");
            return;
        }
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 4, 16),
            (3, 5, 7),
            (8, 64, 48),
            (9, 33, 50),
            (32, 768, 100),
            (17, 1100, 49),
            (130, 96, 33),
            (200, 1030, 64),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let packed = PackedMatrix::pack(&w, Precision::Int8).unwrap().unwrap();
            let got: Vec<f32> = packed
                .matmul(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let q = super::super::int8::quantize_rows(&xv, m, k);
            let wq = &packed.int8;
            let k4 = k.div_ceil(4);
            for r in 0..m {
                for j in 0..n {
                    let mut acc = 0i64;
                    for kk in 0..k {
                        let u = (q.data[r * k4 + kk / 4] >> (8 * (kk % 4))) & 0xff;
                        let (p, lane) = (j / LANES, j % LANES);
                        let wv = wq.data[p * k4 * 64 + (kk / 4) * 64 + lane * 4 + kk % 4];
                        acc += (u as i64 - q.zero[r] as i64) * wv as i64;
                    }
                    let want = q.scale[r] * wq.scale[j] * acc as f32;
                    let g = got[r * n + j];
                    let tol = 1e-5 * (1.0 + want.abs());
                    assert!(
                        (g - want).abs() <= tol,
                        "[{m},{k}]x[{n},{k}] ({r},{j}): {g} vs {want}"
                    );
                }
            }
            // Against f32: about sqrt(k) steps of each operand's scale (a loose bound).
            let exact = x.matmul(&w.t().unwrap()).unwrap();
            let d = crate::ops::max_abs_diff(&packed.matmul(&x).unwrap(), &exact);
            assert!(
                d < 0.1 * (k as f32).sqrt(),
                "[{m},{k}]x[{n},{k}] against f32: {d}"
            );
        }
        // A NaN in a row makes that row's outputs NaN (as in f32), and only that row's.
        let (m, k, n) = (3, 64, 20);
        let mut xv: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        xv[k + 5] = f32::NAN;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let packed = PackedMatrix::pack(&w, Precision::Int8).unwrap().unwrap();
        let y = packed.matmul_slice(&xv, m);
        assert!(y[n..2 * n].iter().all(|v| v.is_nan()));
        assert!(y[..n].iter().chain(&y[2 * n..]).all(|v| v.is_finite()));
    }

    #[test]
    fn vector_and_scalar_bf16_conversions_agree() {
        let x: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 0.37 + 1.0 / 256.0)
            .collect();
        let got = bf16_pairs(&x, 4, 64);
        for (i, pair) in got.iter().enumerate() {
            assert_eq!(
                pair & 0xffff,
                bf16_bits(x[2 * i]) as u32,
                "element {}",
                2 * i
            );
            assert_eq!(
                pair >> 16,
                bf16_bits(x[2 * i + 1]) as u32,
                "element {}",
                2 * i + 1
            );
        }
    }

    #[test]
    fn bf16_pairs_round_to_nearest_even() {
        let x = [1.0f32, -2.5, 3.0];
        let p = bf16_pairs(&x, 1, 3);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0] & 0xffff, 0x3f80);
        assert_eq!(p[0] >> 16, half::bf16::from_f32(-2.5).to_bits() as u32);
        assert_eq!(p[1] >> 16, 0, "odd k is padded with zero");
        // 1 + 2^-8 is halfway between two bf16 values: rounds to even (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
    }
}
