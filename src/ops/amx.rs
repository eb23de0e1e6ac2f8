//! Intel AMX (Advanced Matrix Extensions) tiles for the bf16 packed products
//! (`--dtype bf16` on CPU).
//!
//! On Intel Xeons since Sapphire Rapids the AVX512_BF16 dot product (`vdpbf16ps`) has half
//! the issue rate of an f32 FMA, so the register-tile kernel of [`super::packed`] gains
//! nothing from bf16 there (issue 13: 181 against 238 GFLOP/s for fc1 at 32 rows on a 2-core
//! Xeon). AMX-BF16 instead multiplies whole tiles: one `tdpbf16ps` adds a `[16 x 32]` bf16
//! tile times a `[32 x 16]` bf16 tile into a `[16 x 16]` f32 tile.
//!
//! Layout. The packed bf16 weights are panels of 16 output columns stored as `[k/2][16][2]`
//! bf16 pairs: 16 consecutive pair-rows of a panel (1 KB) are exactly an AMX B tile
//! (`[16 pair-rows][16 columns x 2]`, 64 bytes a row). `x` as bf16 pairs `[m][k/2]` gives the
//! A tiles (`[rows][32 bf16]`) with the row stride of `x`. A block of up to 32 rows x 32
//! columns keeps four f32 accumulator tiles (tmm0-3) over the whole `k`, loading two A tiles
//! (tmm4-5) and two B tiles (tmm6-7) per 32 values of `k`.
//!
//! Use. Chosen at run time: the CPU reports AMX-TILE and AMX-BF16 (CPUID leaf 7) and Linux
//! grants this process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); other systems keep
//! the AVX512_BF16 kernel. `ELMER_CPU_KERNELS=avx512` turns AMX off (the fallback path, for
//! tests and comparisons). The instructions are written with `asm!`, as Rust's AMX intrinsics
//! are not stable.
//!
//! Numerics: bf16 products summed in f32, like the AVX512_BF16 kernel, in a different order;
//! AMX treats bf16 denormals as zero.

/// Whether AMX-BF16 tiles run here: CPU support, the OS grant, and `ELMER_CPU_KERNELS` not
/// `avx512` (or `portable`, which turns every packed kernel off).
pub(crate) fn available() -> bool {
    supported() && !super::packed::kernels_forced_below_amx()
}

/// Whether the CPU has AMX-TILE and AMX-BF16 and the OS lets this process use the tile
/// registers (asked once).
pub(crate) fn supported() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
    if __get_cpuid_max(0).0 < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    // The tile data state is off until the process asks for it (Linux 5.16+); an older
    // kernel, or one that cannot save it, refuses and AMX stays off.
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    // SAFETY: arch_prctl only changes this process's permitted extended state; it reads
    // and writes no memory of ours.
    let ret = unsafe { x86::syscall2(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Columns of `y = x W^T` for panel pairs `q0..q1` (panel pair q = columns `32 q .. 32 q +
/// 32`), every row.
///
/// `xb`: `x` as bf16 pairs `[m][k2]`; `w`: the packed bf16 panels (`[k2][16][2]` each,
/// `panels = ceil(n / 16)` of them, zero beyond column `n`); `y`: `[m, n]` f32 row-major.
///
/// # Safety
/// [`available`] is true; `k2` is a multiple of 16; `xb` holds `m * k2` pairs, `w` the
/// panels; `y` points to `m * n` f32 and no other thread writes these columns; `epi`
/// (applied to each finished block) has a bias of `n` values.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn panel_pairs(
    xb: &[u32],
    m: usize,
    k2: usize,
    w: &[u16],
    n: usize,
    q0: usize,
    q1: usize,
    y: *mut f32,
    epi: Option<super::packed::Epilogue>,
) {
    x86::panel_pairs(xb, m, k2, w, n, q0, q1, y, epi)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;

    /// `syscall(n, a, b)` (Linux x86-64 calling convention).
    #[cfg(target_os = "linux")]
    pub(super) unsafe fn syscall2(n: i64, a: i64, b: i64) -> i64 {
        let ret: i64;
        asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a,
            in("rsi") b,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
        ret
    }

    /// The 64-byte tile configuration `ldtilecfg` reads (palette 1).
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    impl TileConfig {
        /// C tiles tmm0-1 and A tile tmm4 with `h0` rows, C tiles tmm2-3 and A tile tmm5
        /// with `h1` rows (unused when 0), B tiles tmm6-7 with 16 pair-rows; 64 bytes a row.
        fn new(h0: usize, h1: usize) -> Self {
            let mut c = TileConfig {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                colsb: [0; 16],
                rows: [0; 16],
            };
            for (t, h) in [
                (0, h0),
                (1, h0),
                (4, h0),
                (2, h1),
                (3, h1),
                (5, h1),
                (6, 16),
                (7, 16),
            ] {
                if h > 0 {
                    c.rows[t] = h as u8;
                    c.colsb[t] = 64;
                }
            }
            c
        }
    }

    /// Bytes of one B tile: 16 pair-rows x 16 columns x 2 bf16.
    const B_TILE: usize = 1024;

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn panel_pairs(
        xb: &[u32],
        m: usize,
        k2: usize,
        w: &[u16],
        n: usize,
        q0: usize,
        q1: usize,
        y: *mut f32,
        epi: Option<super::super::packed::Epilogue>,
    ) {
        let panels = n.div_ceil(16);
        let ldx = k2 * 4; // bytes between rows of x
        let ldy = n * 4; // bytes between rows of y
        let panel_bytes = k2 * 64;
        let steps = k2 / 16;
        let mut scratch = Scratch([0f32; 256]);
        let mut r0 = 0;
        while r0 < m {
            let h = (m - r0).min(32);
            let (h0, h1) = (h.min(16), h.saturating_sub(16));
            let cfg = TileConfig::new(h0, h1);
            asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack));
            let a0 = xb.as_ptr().add(r0 * k2) as *const u8;
            // Rows 16.. of the block (not dereferenced when h1 is 0, hence wrapping).
            let a1 = a0.wrapping_add(16 * ldx);
            // The first block of rows streams the weights from memory: fetch them ahead.
            let pf = r0 == 0;
            for q in q0..q1 {
                let p0 = 2 * q;
                let two = p0 + 1 < panels;
                let b0 = (w.as_ptr() as *const u8).add(p0 * panel_bytes);
                // The second panel; for a lone last panel the first again (its products in
                // tmm1 / tmm3 are not stored), so one kernel serves both.
                let b1 = if two { b0.add(panel_bytes) } else { b0 };
                // (A tile that is not configured, tmm2-3 when h1 is 0, must not be touched.)
                asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
                if h1 > 0 {
                    asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                }
                for s in 0..steps {
                    if pf {
                        prefetch_b(b0, b1, s);
                    }
                    if h1 > 0 {
                        asm!(
                            "tileloadd tmm4, [{a0} + {lda}]",
                            "tileloadd tmm5, [{a1} + {lda}]",
                            "tileloadd tmm6, [{b0} + {ldb}]",
                            "tileloadd tmm7, [{b1} + {ldb}]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(s * 64),
                            a1 = in(reg) a1.add(s * 64),
                            b0 = in(reg) b0.add(s * B_TILE),
                            b1 = in(reg) b1.add(s * B_TILE),
                            lda = in(reg) ldx,
                            ldb = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                    } else {
                        asm!(
                            "tileloadd tmm4, [{a0} + {lda}]",
                            "tileloadd tmm6, [{b0} + {ldb}]",
                            "tileloadd tmm7, [{b1} + {ldb}]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            a0 = in(reg) a0.add(s * 64),
                            b0 = in(reg) b0.add(s * B_TILE),
                            b1 = in(reg) b1.add(s * B_TILE),
                            lda = in(reg) ldx,
                            ldb = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                    }
                }
                // Store the accumulators: straight into y where all 16 columns of the panel
                // exist, through the scratch tile for the last, partial panel.
                let yrow0 = (y as *mut u8).add(r0 * ldy);
                let yrow1 = yrow0.wrapping_add(16 * ldy); // used only when h1 > 0
                store::<0>(yrow0, ldy, p0, n, h0, &mut scratch);
                if two {
                    store::<1>(yrow0, ldy, p0 + 1, n, h0, &mut scratch);
                }
                if h1 > 0 {
                    store::<2>(yrow1, ldy, p0, n, h1, &mut scratch);
                    if two {
                        store::<3>(yrow1, ldy, p0 + 1, n, h1, &mut scratch);
                    }
                }
                if let Some(e) = &epi {
                    // This block of the result, while it is in L1.
                    e.apply(y, n, r0, r0 + h, 16 * p0, (16 * (p0 + 2)).min(n));
                }
            }
            r0 += h;
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// B tiles this many steps ahead are prefetched (4 KB a panel).
    const PREFETCH_STEPS: usize = 4;

    /// Prefetches step `s + PREFETCH_STEPS` of the two panels at `b0`, `b1` (16 cache lines
    /// each; past the end of the weights the hint is dropped, nothing is read).
    #[inline(always)]
    unsafe fn prefetch_b(b0: *const u8, b1: *const u8, s: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let off = (s + PREFETCH_STEPS) * B_TILE;
        for line in 0..B_TILE / 64 {
            _mm_prefetch::<_MM_HINT_T0>(b0.wrapping_add(off + 64 * line) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b1.wrapping_add(off + 64 * line) as *const i8);
        }
    }

    #[repr(C, align(64))]
    struct Scratch([f32; 256]);

    /// Stores accumulator tile `T` (`rows` rows) as columns `16 p ..` of the rows at `yrow`.
    #[inline(always)]
    unsafe fn store<const T: usize>(
        yrow: *mut u8,
        ldy: usize,
        p: usize,
        n: usize,
        rows: usize,
        scratch: &mut Scratch,
    ) {
        let col0 = 16 * p;
        if col0 + 16 <= n {
            tile_store::<T>(yrow.add(col0 * 4), ldy);
        } else {
            tile_store::<T>(scratch.0.as_mut_ptr() as *mut u8, 64);
            let valid = n - col0;
            for r in 0..rows {
                let dst = (yrow.add(r * ldy) as *mut f32).add(col0);
                std::ptr::copy_nonoverlapping(scratch.0.as_ptr().add(r * 16), dst, valid);
            }
        }
    }

    #[inline(always)]
    unsafe fn tile_store<const T: usize>(dst: *mut u8, stride: usize) {
        match T {
            0 => {
                asm!("tilestored [{0} + {1}], tmm0", in(reg) dst, in(reg) stride, options(nostack))
            }
            1 => {
                asm!("tilestored [{0} + {1}], tmm1", in(reg) dst, in(reg) stride, options(nostack))
            }
            2 => {
                asm!("tilestored [{0} + {1}], tmm2", in(reg) dst, in(reg) stride, options(nostack))
            }
            _ => {
                asm!("tilestored [{0} + {1}], tmm3", in(reg) dst, in(reg) stride, options(nostack))
            }
        }
    }
}
