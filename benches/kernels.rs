//! The CPU kernels under the latency numbers, at BART-base shapes: dense-layer products in
//! both weight layouts, the off-ramp product, the few-row matrix-vector kernel, the fused
//! elementwise kernels. Throughput is reported as elements per second where one element is
//! one floating-point operation (so "Melem/s" reads as MFLOP/s) or, for the streaming
//! kernels, one byte of weights read (MB/s).
//!
//! ```text
//! cargo bench --bench kernels
//! ```
//! Weights cycle through 12 distinct matrices so the streaming cases read memory, not cache,
//! as a real decoder pass does.

use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use elmer::__bench::argmax_entropy_cols;
use elmer::__bench::linear_few_rows;
use elmer::__bench::{bias_act_, masked_softmax_};
use elmer::__bench::{PackedMatrix, Precision};
use elmer::Activation;

const VOCAB: usize = 50_265;
const D: usize = 768;
const FFN: usize = 3072;

fn randn(shape: (usize, usize)) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).expect("randn")
}

/// `[out, in]` weights stored row-major (the checkpoint layout) and as a transposed view of a
/// contiguous `[in, out]` matrix (the inference layout).
fn layouts(out: usize, inp: usize, n: usize) -> (Vec<Tensor>, Vec<Tensor>) {
    let w: Vec<Tensor> = (0..n).map(|_| randn((out, inp))).collect();
    let wt = w
        .iter()
        .map(|w| {
            w.t()
                .and_then(|t| t.contiguous())
                .and_then(|t| t.t())
                .expect("layout")
        })
        .collect();
    (w, wt)
}

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2));

    // Dense layer at encoder shapes (128 and 512 source tokens), both weight layouts.
    let (w, wt) = layouts(FFN, D, 1);
    for rows in [128usize, 512] {
        let x = randn((rows, D));
        g.throughput(Throughput::Elements((2 * rows * D * FFN) as u64));
        g.bench_function(format!("fc1_{rows}rows_row_major_weights"), |b| {
            b.iter(|| black_box(x.matmul(&w[0].t().unwrap()).unwrap()))
        });
        g.bench_function(format!("fc1_{rows}rows_inference_layout"), |b| {
            b.iter(|| black_box(x.matmul(&wt[0].t().unwrap()).unwrap()))
        });
    }

    // The packed-weight kernels against candle's gemm (inference layout) at decoder and
    // encoder row counts: fc1 [rows x 768] x [768 x 3072], fc2 [rows x 3072] x [3072 x 768].
    for (name, out, inp) in [("fc1", FFN, D), ("fc2", D, FFN)] {
        let (_, wt) = layouts(out, inp, 1);
        let packed: Vec<(Precision, PackedMatrix)> =
            [Precision::F32, Precision::Bf16, Precision::Int8]
                .into_iter()
                .filter_map(|p| PackedMatrix::pack(&wt[0], p).expect("pack").map(|m| (p, m)))
                .collect();
        for rows in [16usize, 32, 64, 128, 512] {
            let x = randn((rows, inp));
            g.throughput(Throughput::Elements((2 * rows * inp * out) as u64));
            g.bench_function(format!("{name}_{rows}rows_candle_gemm"), |b| {
                b.iter(|| black_box(x.matmul(&wt[0].t().unwrap()).unwrap()))
            });
            for (p, m) in &packed {
                g.bench_function(format!("{name}_{rows}rows_packed_{}", p.name()), |b| {
                    b.iter(|| black_box(m.matmul(&x).unwrap()))
                });
            }
        }
    }
    // The off-ramp projection at 32 rows: candle `W h^T` against the packed table.
    {
        let w = randn((VOCAB, D));
        let h = randn((32, D));
        g.throughput(Throughput::Elements((2 * 32 * D * VOCAB) as u64));
        g.bench_function("offramp_32rows_candle_w_ht", |b| {
            b.iter(|| black_box(w.matmul(&h.t().unwrap()).unwrap()))
        });
        for p in [Precision::F32, Precision::Bf16, Precision::Int8] {
            if let Some(m) = PackedMatrix::pack(&w, p).expect("pack") {
                g.bench_function(format!("offramp_32rows_packed_{}", p.name()), |b| {
                    b.iter(|| black_box(m.matmul(&h).unwrap()))
                });
            }
        }
    }

    // fc2 at 64 rows (a decoder slot): the layout matters most at few rows.
    let (w2, wt2) = layouts(D, FFN, 1);
    let x = randn((64, FFN));
    g.throughput(Throughput::Elements((2 * 64 * D * FFN) as u64));
    g.bench_function("fc2_64rows_row_major_weights", |b| {
        b.iter(|| black_box(x.matmul(&w2[0].t().unwrap()).unwrap()))
    });
    g.bench_function("fc2_64rows_inference_layout", |b| {
        b.iter(|| black_box(x.matmul(&wt2[0].t().unwrap()).unwrap()))
    });

    // Off-ramp product at 32 and 64 tokens: `h W^T` against `W h^T` (what the crate runs).
    let table = randn((VOCAB, D));
    for rows in [32usize, 64] {
        let h = randn((rows, D));
        g.throughput(Throughput::Elements((2 * rows * D * VOCAB) as u64));
        g.bench_function(format!("offramp_{rows}rows_h_wt"), |b| {
            b.iter(|| black_box(h.matmul(&table.t().unwrap()).unwrap()))
        });
        g.bench_function(format!("offramp_{rows}rows_w_ht"), |b| {
            b.iter(|| black_box(table.matmul(&h.t().unwrap()).unwrap()))
        });
    }
    let logits_t = randn((VOCAB, 64));
    let bias = Tensor::zeros(VOCAB, candle_core::DType::F32, &Device::Cpu).unwrap();
    g.throughput(Throughput::Elements((VOCAB * 64) as u64));
    g.bench_function("offramp_argmax_entropy_64rows", |b| {
        b.iter(|| black_box(argmax_entropy_cols(&logits_t, &bias, true).unwrap()))
    });

    // One row (an AR step) through 12 distinct 768 x 3072 layers: bytes of weights per second.
    let (w, wt) = layouts(FFN, D, 12);
    let x = randn((1, D));
    g.throughput(Throughput::Bytes((12 * FFN * D * 4) as u64));
    g.bench_function("one_row_12_layers_gemm", |b| {
        b.iter(|| {
            for w in &wt {
                black_box(x.matmul(&w.t().unwrap()).unwrap());
            }
        })
    });
    g.bench_function("one_row_12_layers_streaming_row_major", |b| {
        b.iter(|| {
            for w in &w {
                black_box(linear_few_rows(&x, w).unwrap());
            }
        })
    });
    g.bench_function("one_row_12_layers_streaming_inference_layout", |b| {
        b.iter(|| {
            for w in &wt {
                black_box(linear_few_rows(&x, w).unwrap());
            }
        })
    });
    for p in [Precision::F32, Precision::Bf16, Precision::Int8] {
        let packed: Vec<PackedMatrix> = w
            .iter()
            .filter_map(|w| PackedMatrix::pack(w, p).expect("pack"))
            .collect();
        if packed.is_empty() {
            continue;
        }
        // Bytes of f32 weights (the same work), so the rate compares with the cases above.
        g.bench_function(format!("one_row_12_layers_packed_{}", p.name()), |b| {
            b.iter(|| {
                for m in &packed {
                    black_box(m.matmul(&x).unwrap());
                }
            })
        });
    }

    // Fused elementwise kernels at source 512 against candle's ops.
    let y = randn((512, FFN));
    let b1 = randn((1, FFN)).flatten_all().unwrap();
    g.throughput(Throughput::Elements((512 * FFN) as u64));
    g.bench_function("bias_gelu_512x3072_candle", |b| {
        b.iter(|| black_box(y.broadcast_add(&b1).unwrap().gelu_erf().unwrap()))
    });
    g.bench_function("bias_gelu_512x3072_fused", |b| {
        b.iter(|| {
            let t = y.copy().unwrap();
            bias_act_(&t, &b1, Some(Activation::Gelu)).unwrap();
            black_box(t)
        })
    });
    let s = Tensor::randn(0f32, 1.0, (1, 12, 512, 512), &Device::Cpu).unwrap();
    g.throughput(Throughput::Elements((12 * 512 * 512) as u64));
    g.bench_function("softmax_12x512x512_candle", |b| {
        b.iter(|| black_box(candle_nn::ops::softmax_last_dim(&(&s * 0.125).unwrap()).unwrap()))
    });
    g.bench_function("softmax_12x512x512_fused", |b| {
        b.iter(|| {
            let t = s.copy().unwrap();
            masked_softmax_(&t, 0.125, None).unwrap();
            black_box(t)
        })
    });
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
