// The machine's f32 FMA peak (GFLOP/s) on 1 and 2 threads: 12 independent AVX-512 FMA chains
// per thread, no memory traffic. Not part of the build:
//   rustc -O -C target-cpu=native scripts/fma_peak.rs -o /tmp/fma_peak && /tmp/fma_peak
// (an AVX-512F CPU). The README's "against the peak" ratios divide by its 2-thread figure.
use std::arch::x86_64::*;
use std::time::Instant;
#[target_feature(enable = "avx512f")]
unsafe fn run(iters: u64) -> f32 {
    let a = _mm512_set1_ps(1.0000001);
    let b = _mm512_set1_ps(0.9999999);
    let mut c = [_mm512_set1_ps(0.0); 12];
    for _ in 0..iters {
        for k in 0..12 { c[k] = _mm512_fmadd_ps(a, c[k], b); }
    }
    let mut s = _mm512_setzero_ps();
    for k in 0..12 { s = _mm512_add_ps(s, c[k]); }
    _mm512_reduce_add_ps(s)
}
fn main() {
    let iters = 200_000_000u64;
    for threads in [1usize, 2] {
        let t = Instant::now();
        let hs: Vec<_> = (0..threads).map(|_| std::thread::spawn(move || unsafe { run(iters) })).collect();
        let mut x = 0.0; for h in hs { x += h.join().unwrap(); }
        let secs = t.elapsed().as_secs_f64();
        let flops = iters as f64 * 12.0 * 16.0 * 2.0 * threads as f64;
        println!("{threads} threads: {:.1} GFLOP/s ({x})", flops / secs / 1e9);
    }
}
