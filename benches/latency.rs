//! Latency and throughput of ELMER NAR decoding vs. AR BART greedy decoding on a BART-base-sized
//! model with random weights (CPU, f32). See `benches/README.md` for the cases, the commands and
//! the summary files.
//!
//! - `cargo bench --bench latency` runs every case and writes `target/elmer-bench-summary.json`
//!   and `target/elmer-bench-summary.md` (ms per sample, NAR/AR speedup, samples/s);
//! - `cargo bench --bench latency -- <filter>` runs the matching `group/case` ids only
//!   (e.g. `src128_slot32/`, `ar_greedy`, `throughput/`); the summary then covers whatever
//!   criterion has stored so far;
//! - `ELMER_BENCH_BREAKDOWN=1 cargo bench --bench latency` instead prints where the time goes
//!   (encoder, cross-attention keys/values, decoder sublayers, off-ramp projections,
//!   entropy, argmax, soft feedback, sparse gather/scatter) for the NAR policies, using
//!   stage-timed re-implementations checked to give the same ids as the library.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, D};
use criterion::{Criterion, SamplingMode, Throughput};
use elmer::__bench::argmax_entropy_cols;
use elmer::__bench::DecoderLayer;
use elmer::__bench::KeyValue;
use elmer::checkpoint::Weights;
use elmer::checkpoint::{expected_tensors, TensorKind};
use elmer::{generate_greedy_with, GreedyOptions};
use elmer::{ElmerConfig, ElmerModel, ExitPolicy, Mode};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Source lengths and output slots of the batch-1 latency cases.
const SOURCES: [usize; 2] = [128, 512];
const SLOTS: [usize; 2] = [32, 64];
/// Batch sizes of the criterion throughput cases (source 128, slot 32).
const BATCHES: [usize; 1] = [8];
/// Batch sizes timed outside criterion (criterion needs at least 10 runs per case, and one
/// batch-32 run takes ~10-25 s on 2 cores): one warm-up, then [`MANUAL_RUNS`] runs, median.
const MANUAL_BATCHES: [usize; 1] = [32];
const MANUAL_RUNS: usize = 3;
/// Fraction of tokens exiting at layers 1..6 in the fixed schedule (shaped like the paper's
/// Figure 2: most tokens leave before the last layer, ~30% go all the way).
const EXIT_FRACTIONS: [f64; 6] = [0.05, 0.10, 0.15, 0.20, 0.20, 0.30];
const SEED: u64 = 0x45_4c4d_4552;

/// The NAR policies benchmarked, by case name.
const NAR: [&str; 4] = ["nar_last", "nar_soft", "nar_hard0", "nar_fixed"];

struct Setup {
    model: ElmerModel,
    /// Source ids `[1, S]` per source length.
    sources: HashMap<usize, Tensor>,
    /// Batched sources `[B, 128]` per batch size.
    batches: HashMap<usize, Tensor>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let t = Instant::now();
        let model = base_model();
        eprintln!(
            "built BART-base-sized model with random weights in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let mut rng = StdRng::seed_from_u64(SEED + 1);
        let vocab = model.config().vocab_size as u32;
        let mut src = |b: usize, s: usize| {
            let mut v = Vec::with_capacity(b * s);
            for _ in 0..b {
                v.push(0u32);
                v.extend((0..s - 2).map(|_| rng.random_range(4..vocab - 1)));
                v.push(2);
            }
            Tensor::from_vec(v, (b, s), &Device::Cpu)
                .unwrap()
                .to_device(&bench_device())
                .unwrap()
        };
        let sources = SOURCES.iter().map(|&s| (s, src(1, s))).collect();
        let batches = BATCHES
            .iter()
            .chain(MANUAL_BATCHES.iter())
            .map(|&b| (b, src(b, 128)))
            .collect();
        Setup {
            model,
            sources,
            batches,
        }
    })
}

/// The canonical tensors of [`base_model`] (before the inference layout).
fn base_weights() -> (ElmerConfig, HashMap<String, Tensor>) {
    let cfg = ElmerConfig::base();
    let mut rng = StdRng::seed_from_u64(SEED);
    let normal = Normal::new(0f32, 0.02).unwrap();
    let mut map = HashMap::new();
    for spec in expected_tensors(&cfg) {
        if spec.name == "lm_head.weight" || spec.name.starts_with("offramps.") {
            continue;
        }
        let n: usize = spec.shape.iter().product();
        let data: Vec<f32> = match spec.kind {
            TensorKind::NormWeight => vec![1.0; n],
            TensorKind::NormBias | TensorKind::Bias | TensorKind::LogitsBias => vec![0.0; n],
            _ => (0..n).map(|_| normal.sample(&mut rng)).collect(),
        };
        let t = Tensor::from_vec(data, spec.shape, &Device::Cpu).unwrap();
        map.insert(spec.name, t);
    }
    (cfg, map)
}

/// `ELMER_BENCH_DTYPE`: f32 (default), bf16 (on CPU: the mixed-precision path; on CUDA:
/// bf16 throughout) or int8 (CPU: int8 dense layers and off-ramps, f32 activations).
fn bench_dtype() -> candle_core::DType {
    match std::env::var("ELMER_BENCH_DTYPE").as_deref() {
        Ok("bf16") => candle_core::DType::BF16,
        Ok("f32") | Ok("int8") | Err(_) => candle_core::DType::F32,
        Ok(other) => panic!("ELMER_BENCH_DTYPE={other}: f32, bf16 or int8"),
    }
}

/// `ELMER_BENCH_DTYPE=int8`: the CPU int8 path.
fn bench_int8() -> Option<elmer::Precision> {
    (std::env::var("ELMER_BENCH_DTYPE").as_deref() == Ok("int8")).then_some(elmer::Precision::Int8)
}

/// `ELMER_BENCH_DEVICE`: cpu (default) or cuda:N (a build with the `cuda` feature).
fn bench_device() -> Device {
    match std::env::var("ELMER_BENCH_DEVICE").as_deref() {
        Ok("cpu") | Ok("") | Err(_) => Device::Cpu,
        Ok(s) => {
            let n: usize = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .or((s == "cuda").then_some(0))
                .unwrap_or_else(|| panic!("ELMER_BENCH_DEVICE={s}: cpu or cuda:N"));
            Device::new_cuda(n).unwrap_or_else(|e| panic!("ELMER_BENCH_DEVICE={s}: {e}"))
        }
    }
}

/// BART-base shape (d 768, 6+6 layers, 12 heads, FFN 3072, vocab 50265, 1024 positions) with
/// N(0, 0.02) weights from a seeded `StdRng`, zero biases, unit layer-norm gains, and a
/// `concat_head` so soft exit works; on `ELMER_BENCH_DEVICE` in `ELMER_BENCH_DTYPE`.
fn base_model() -> ElmerModel {
    // ELMER_BENCH_MODEL_DIR: load a checkpoint directory instead (as `elmer generate` does),
    // e.g. the base-size one the memory bench writes (`elmer-bench-base-checkpoint`).
    if let Ok(dir) = std::env::var("ELMER_BENCH_MODEL_DIR") {
        let opts = elmer::LoadOptions {
            device: bench_device(),
            dtype: Some(bench_dtype()),
            cpu_precision: bench_int8(),
            ..Default::default()
        };
        return ElmerModel::from_dir(&dir, &opts).unwrap();
    }
    let (cfg, map) = base_weights();
    assert!(map.contains_key("concat_head.weight"));
    // The layout `ElmerModel::from_dir` gives loaded checkpoints; ELMER_BENCH_DTYPE=bf16:
    // the CPU mixed-precision path (dense layers and off-ramps in bf16).
    let dev = bench_device();
    let weights = if dev.is_cpu() {
        match bench_int8() {
            Some(p) => Weights::new(map).into_inference_layout_as(p).unwrap(),
            None => Weights::new(map)
                .into_inference_layout_with(bench_dtype())
                .unwrap(),
        }
    } else {
        let dtype = bench_dtype();
        Weights::new(
            map.into_iter()
                .map(|(k, t)| (k, t.to_dtype(dtype).unwrap().to_device(&dev).unwrap()))
                .collect(),
        )
    };
    let model = ElmerModel::from_weights(cfg, &weights).unwrap();
    assert!(model.has_concat_head());
    model
}

/// Exit layer per token `[batch, t]`: per-layer counts from [`EXIT_FRACTIONS`] (largest
/// remainder rounding), positions shuffled with a fixed seed (the cost does not depend on
/// which positions exit).
fn fixed_schedule(batch: usize, t: usize) -> Tensor {
    let exact: Vec<f64> = EXIT_FRACTIONS.iter().map(|f| f * t as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a].fract(), exact[b].fract());
        rb.partial_cmp(&ra).unwrap().then(a.cmp(&b))
    });
    let missing = t - counts.iter().sum::<usize>();
    for &i in order.iter().take(missing) {
        counts[i] += 1;
    }
    let mut rng = StdRng::seed_from_u64(SEED + t as u64);
    let mut data = Vec::with_capacity(batch * t);
    for _ in 0..batch {
        let mut row: Vec<u32> = counts
            .iter()
            .enumerate()
            .flat_map(|(l, &c)| std::iter::repeat_n(l as u32 + 1, c))
            .collect();
        row.shuffle(&mut rng);
        data.extend(row);
    }
    Tensor::from_vec(data, (batch, t), &Device::Cpu).unwrap()
}

fn policy(name: &str, batch: usize, slot: usize) -> ExitPolicy {
    match name {
        "nar_last" => ExitPolicy::LastLayer,
        "nar_soft" => ExitPolicy::Soft,
        // Random weights never reach a low entropy: every token runs every layer and off-ramp.
        "nar_hard0" => ExitPolicy::Hard { threshold: 0.0 },
        "nar_fixed" => ExitPolicy::Fixed(fixed_schedule(batch, slot)),
        other => unreachable!("unknown policy {other}"),
    }
}

/// Encode + NAR decode; returns the ids (read back, as a caller would).
fn run_nar(model: &ElmerModel, ids: &Tensor, slot: usize, p: &ExitPolicy) -> Vec<Vec<u32>> {
    let enc = model.encode(ids, None).unwrap();
    let out = model.decode_slot(&enc, slot, p.clone()).unwrap();
    out.ids.to_vec2().unwrap()
}

/// Encode + AR greedy decode of exactly `slot` tokens.
fn run_ar(model: &ElmerModel, ids: &Tensor, slot: usize) -> Vec<Vec<u32>> {
    let enc = model.encode(ids, None).unwrap();
    generate_greedy_with(model, &enc, &GreedyOptions::exact(slot)).unwrap()
}

fn benches(c: &mut Criterion) {
    // Batch-1 latency per (source, slot): every NAR policy and AR greedy, encode included.
    for &src in &SOURCES {
        let mut g = c.benchmark_group("encoder");
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        g.bench_function(format!("src{src}"), |b| {
            let s = setup();
            let ids = &s.sources[&src];
            b.iter(|| {
                let h = s.model.encode(ids, None).unwrap().hidden;
                // A GPU runs asynchronously: wait for the work, not just its launch.
                s.model.device().synchronize().unwrap();
                black_box(h)
            });
        });
        g.finish();
        for &slot in &SLOTS {
            let mut g = c.benchmark_group(format!("src{src}_slot{slot}"));
            g.sample_size(10)
                .sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(3));
            for name in NAR {
                g.bench_function(name, |b| {
                    let s = setup();
                    let ids = &s.sources[&src];
                    let p = policy(name, 1, slot);
                    b.iter(|| black_box(run_nar(&s.model, ids, slot, &p)));
                });
            }
            g.bench_function("ar_greedy", |b| {
                let s = setup();
                let ids = &s.sources[&src];
                b.iter(|| black_box(run_ar(&s.model, ids, slot)));
            });
            g.finish();
        }
    }
    // Throughput (samples/s) of the NAR policies at larger batches, source 128, slot 32.
    let mut g = c.benchmark_group("throughput");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for &batch in &BATCHES {
        g.throughput(Throughput::Elements(batch as u64));
        for name in NAR {
            g.bench_function(format!("{name}_b{batch}"), |b| {
                let s = setup();
                let ids = &s.batches[&batch];
                let p = policy(name, batch, 32);
                b.iter(|| black_box(run_nar(&s.model, ids, 32, &p)));
            });
        }
    }
    g.finish();
}

/// The criterion filter of `cargo bench --bench latency -- <filter>` (first positional
/// argument), `Some(None)` without one, `None` when not benchmarking (`cargo test`, `--list`).
fn cli_filter() -> Option<Option<String>> {
    const WITH_VALUE: [&str; 16] = [
        "--color",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--format",
        "--profile-time",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--list") {
        return None;
    }
    let mut prev: Option<&str> = None;
    for a in &args {
        if !a.starts_with('-') && !prev.is_some_and(|p| WITH_VALUE.contains(&p)) {
            return Some(Some(a.clone()));
        }
        prev = Some(a);
    }
    Some(None)
}

fn manual_path() -> PathBuf {
    criterion_dir().join("elmer-manual.json")
}

/// Batch-32 throughput outside criterion (see [`MANUAL_BATCHES`]); runs the ids containing the
/// filter as a substring (all without a filter) and merges the results into
/// `target/criterion/elmer-manual.json`.
fn manual_throughput() {
    let Some(filter) = cli_filter() else { return };
    let runs: usize = std::env::var("ELMER_BENCH_MANUAL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MANUAL_RUNS);
    let mut stored: serde_json::Map<String, serde_json::Value> =
        std::fs::read_to_string(manual_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    for &batch in &MANUAL_BATCHES {
        for name in NAR {
            let id = format!("throughput/{name}_b{batch}");
            if filter.as_ref().is_some_and(|f| !id.contains(f.as_str())) {
                continue;
            }
            let s = setup();
            let ids = &s.batches[&batch];
            let p = policy(name, batch, 32);
            eprintln!("{id} (manual: 1 warm-up + {runs} runs)");
            black_box(run_nar(&s.model, ids, 32, &p));
            let mut ms: Vec<f64> = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    black_box(run_nar(&s.model, ids, 32, &p));
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let med = ms[ms.len() / 2];
            eprintln!(
                "{id:<40} time: {med:.1} ms per batch (runs {ms:.1?}), {:.2} samples/s",
                batch as f64 * 1e3 / med
            );
            stored.insert(
                id,
                serde_json::json!({"median_ms": med, "runs_ms": ms, "batch": batch}),
            );
        }
    }
    let _ = std::fs::create_dir_all(target_dir());
    let _ = std::fs::write(
        manual_path(),
        serde_json::to_string_pretty(&serde_json::Value::Object(stored)).unwrap(),
    );
}

// ------------------------------------------------------------------------------------------
// summary: criterion's stored estimates -> target/elmer-bench-summary.{json,md}
// ------------------------------------------------------------------------------------------

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("criterion"))
}

/// Median and mean time per iteration (ms) of `group/case`, from criterion's last run.
fn estimate_ms(id: &str) -> Option<(f64, f64)> {
    let p = criterion_dir().join(id).join("new").join("estimates.json");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    let get = |k: &str| j[k]["point_estimate"].as_f64().map(|ns| ns / 1e6);
    Some((get("median")?, get("mean")?))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn write_summary(load_before: &str) {
    let mut cases = BTreeMap::new();
    let mut md = String::from(
        "# elmer latency (CPU, f32, BART-base shape, random weights)\n\n\
         Batch 1, ms per sample (criterion median), encode + decode; speedup = AR greedy / case.\n\n\
         | source | slot | encoder | nar_last | nar_soft | nar_hard0 | nar_fixed | ar_greedy | AR/last | AR/soft | AR/hard0 | AR/fixed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut decode_md = String::from(
        "\nDecoding alone (case minus `encoder/src{S}`, ms; speedup = AR decode / NAR decode):\n\n\
         | source | slot | nar_last | nar_soft | nar_hard0 | nar_fixed | ar_greedy | AR/last | AR/soft | AR/hard0 | AR/fixed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &src in &SOURCES {
        let enc_id = format!("encoder/src{src}");
        let enc = estimate_ms(&enc_id).map(|e| e.0);
        if let Some(e) = estimate_ms(&enc_id) {
            cases.insert(
                enc_id,
                serde_json::json!({"median_ms": e.0, "mean_ms": e.1}),
            );
        }
        for &slot in &SLOTS {
            let mut row = vec![format!("{src}"), format!("{slot}"), fmt(enc)];
            let ar = estimate_ms(&format!("src{src}_slot{slot}/ar_greedy")).map(|e| e.0);
            let mut speed = Vec::new();
            for name in NAR.iter().chain(std::iter::once(&"ar_greedy")) {
                let id = format!("src{src}_slot{slot}/{name}");
                let e = estimate_ms(&id);
                row.push(fmt(e.map(|e| e.0)));
                if let Some((med, mean)) = e {
                    let mut v = serde_json::json!({"median_ms": med, "mean_ms": mean});
                    if let (Some(ar), true) = (ar, name.starts_with("nar")) {
                        v["ar_speedup"] = serde_json::json!(ar / med);
                        // Decoding alone: the shared encoder time taken off both sides.
                        if let Some(enc) = enc {
                            v["ar_speedup_decode_only"] =
                                serde_json::json!((ar - enc) / (med - enc));
                        }
                    }
                    cases.insert(id, v);
                }
                if name.starts_with("nar") {
                    speed.push(match (ar, e) {
                        (Some(ar), Some(e)) => format!("{:.1}x", ar / e.0),
                        _ => "-".into(),
                    });
                }
            }
            row.extend(speed);
            md.push_str(&format!("| {} |\n", row.join(" | ")));
            let dec = |id: &str| Some(estimate_ms(id)?.0 - enc?);
            let ar_dec = dec(&format!("src{src}_slot{slot}/ar_greedy"));
            let mut drow = vec![format!("{src}"), format!("{slot}")];
            for name in NAR.iter().chain(std::iter::once(&"ar_greedy")) {
                drow.push(fmt(dec(&format!("src{src}_slot{slot}/{name}"))));
            }
            for name in NAR {
                drow.push(
                    match (ar_dec, dec(&format!("src{src}_slot{slot}/{name}"))) {
                        (Some(a), Some(n)) if n > 0.0 => format!("{:.1}x", a / n),
                        _ => "-".into(),
                    },
                );
            }
            decode_md.push_str(&format!("| {} |\n", drow.join(" | ")));
        }
    }
    md.push_str(&decode_md);
    md.push_str(
        "\nThroughput, source 128, slot 32 (samples/s = batch / median time per batch; batch 32 \
         timed outside criterion: 1 warm-up + 3 runs):\n\n\
         | batch | nar_last | nar_soft | nar_hard0 | nar_fixed |\n|---|---|---|---|---|\n",
    );
    let manual: serde_json::Value = std::fs::read_to_string(manual_path())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    for &batch in BATCHES.iter().chain(MANUAL_BATCHES.iter()) {
        let mut row = vec![format!("{batch}")];
        for name in NAR {
            let id = format!("throughput/{name}_b{batch}");
            let e = estimate_ms(&id).or_else(|| {
                let m = manual[&id]["median_ms"].as_f64()?;
                Some((m, m))
            });
            row.push(e.map_or("-".into(), |e| format!("{:.1}", batch as f64 * 1e3 / e.0)));
            if let Some((med, mean)) = e {
                cases.insert(
                    id,
                    serde_json::json!({"median_ms": med, "mean_ms": mean, "batch": batch,
                        "samples_per_s": batch as f64 * 1e3 / med}),
                );
            }
        }
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    let load_after = loadavg();
    md.push_str(&format!(
        "\nfixed schedule: fractions exiting at layers 1..6 = {EXIT_FRACTIONS:?}; \
         threads: {}; load average before/after: {load_before} / {load_after}\n",
        candle_core::utils::get_num_threads()
    ));
    let summary = serde_json::json!({
        "device": format!("{:?}", bench_device().location()),
        "dtype": "f32",
        "threads": candle_core::utils::get_num_threads(),
        "model": format!("BART-base shape (d 768, 6+6 layers, 12 heads, ffn 3072, vocab 50265), random N(0, 0.02), weights {}", std::env::var("ELMER_BENCH_DTYPE").unwrap_or_else(|_| "f32".into())),
        "fixed_exit_fractions": EXIT_FRACTIONS,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "cases": cases,
    });
    let dir = target_dir();
    let _ = std::fs::create_dir_all(&dir);
    let json = dir.join("elmer-bench-summary.json");
    let mdp = dir.join("elmer-bench-summary.md");
    match std::fs::write(&json, serde_json::to_string_pretty(&summary).unwrap())
        .and_then(|_| std::fs::write(&mdp, &md))
    {
        Ok(()) => eprintln!("\n{md}\nwrote {} and {}", json.display(), mdp.display()),
        Err(e) => eprintln!("could not write the summary: {e}"),
    }
}

// ------------------------------------------------------------------------------------------
// breakdown: where the time goes (ELMER_BENCH_BREAKDOWN=1)
// ------------------------------------------------------------------------------------------

/// Accumulated wall time per stage, in first-seen order.
#[derive(Default)]
struct Stages {
    order: Vec<&'static str>,
    time: HashMap<&'static str, Duration>,
}

impl Stages {
    fn time<T>(&mut self, stage: &'static str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        let dt = t.elapsed();
        if !self.time.contains_key(stage) {
            self.order.push(stage);
        }
        *self.time.entry(stage).or_default() += dt;
        out
    }

    fn total(&self) -> Duration {
        self.time.values().sum()
    }
}

/// `DecoderLayer::forward` with each sublayer timed (self-attention incl. its key/value
/// projection of all tokens, cross-attention with cached keys/values, FFN; each with its
/// residual + layer norm).
fn timed_layer(
    st: &mut Stages,
    layer: &DecoderLayer,
    x_q: &Tensor,
    x_all: &Tensor,
    cross: &KeyValue,
) -> Tensor {
    let x = st.time("dec self-attn", || {
        let kv = layer.self_attn().key_value(x_all).unwrap();
        let h = layer
            .self_attn()
            .attend(x_q, &kv, None, Mode::Eval)
            .unwrap();
        layer
            .self_attn_layer_norm()
            .forward(&(x_q + h).unwrap(), Mode::Eval)
            .unwrap()
    });
    let x = st.time("dec cross-attn", || {
        let h = layer
            .encoder_attn()
            .attend(&x, cross, None, Mode::Eval)
            .unwrap();
        layer
            .encoder_attn_layer_norm()
            .forward(&(x + h).unwrap(), Mode::Eval)
            .unwrap()
    });
    st.time("dec ffn", || {
        let h = layer.ffn().forward(&x, Mode::Eval).unwrap();
        layer
            .final_layer_norm()
            .forward(&(x + h).unwrap(), Mode::Eval)
            .unwrap()
    })
}

/// The off-ramp after `layer` for `rows` `[n, d]` as the library runs it: `W h^T` (timed as
/// the projection), then the fused per-token argmax (and entropy for hard exit). Returns the
/// ids `[n]`.
fn timed_offramp(
    st: &mut Stages,
    dec: &elmer::__bench::Decoder,
    layer: usize,
    rows: &Tensor,
    with_entropy: bool,
) -> Tensor {
    let (w, b) = dec.offramps().projection(layer).unwrap();
    let raw_t = st.time("off-ramp projection", || {
        w.matmul(&rows.t().unwrap()).unwrap()
    });
    let stage = if with_entropy {
        "argmax + entropy"
    } else {
        "argmax"
    };
    st.time(stage, || {
        let (ids, ent) = argmax_entropy_cols(&raw_t, b, with_entropy)
            .unwrap()
            .unwrap();
        if let Some(e) = ent {
            black_box(e.to_vec1::<f32>().unwrap());
        }
        black_box(ids.to_vec1::<u32>().unwrap());
        ids
    })
}

/// One stage-timed NAR pass at batch 1; returns the ids and exit layers.
fn timed_nar(
    st: &mut Stages,
    model: &ElmerModel,
    ids: &Tensor,
    slot: usize,
    name: &str,
) -> (Vec<u32>, Vec<u32>) {
    let dec = model.decoder();
    let n = dec.num_layers();
    let enc = st.time("encoder", || model.encode(ids, None).unwrap());
    let cross: Vec<KeyValue> = st.time("cross-attn K/V (encoder states)", || {
        dec.layers()
            .iter()
            .map(|l| l.cross_key_value(&enc.hidden).unwrap())
            .collect()
    });
    let mut h = st.time("dec embeddings", || {
        let slot_ids = model.slot_input(1, slot).unwrap();
        dec.embeddings()
            .forward(&slot_ids, "slot", Mode::Eval)
            .unwrap()
    });
    let d = h.dim(D::Minus1).unwrap();
    match name {
        "nar_last" | "nar_soft" | "nar_hard0" => {
            let mut pred: Option<Tensor> = None;
            for (i, layer) in dec.layers().iter().enumerate() {
                if name == "nar_soft" {
                    if let Some(p) = pred.take() {
                        h = st.time("soft feedback (embed + concat_head)", || {
                            let e = dec.embeddings().lookup(&p.reshape((1, slot)).unwrap());
                            let cat = Tensor::cat(&[&h, &e.unwrap()], D::Minus1).unwrap();
                            dec.concat_head().unwrap().forward(&cat).unwrap()
                        });
                    }
                }
                h = timed_layer(st, layer, &h, &h, &cross[i]);
                let last = i + 1 == n;
                if last || name != "nar_last" {
                    let hard = name == "nar_hard0" && !last;
                    pred = Some(timed_offramp(
                        st,
                        dec,
                        i + 1,
                        &h.reshape((slot, d)).unwrap(),
                        hard,
                    ));
                }
            }
            let ids = pred.unwrap().to_vec1::<u32>().unwrap();
            (ids, vec![n as u32; slot])
        }
        "nar_fixed" => {
            let sched: Vec<u32> = fixed_schedule(1, slot).to_vec2::<u32>().unwrap()[0].clone();
            let mut active: Vec<u32> = (0..slot as u32).collect();
            let mut exits = vec![0u32; slot];
            for (i, layer) in dec.layers().iter().enumerate() {
                let l = i as u32 + 1;
                if active.is_empty() {
                    break;
                }
                let rows = if active.len() == slot {
                    h = timed_layer(st, layer, &h, &h, &cross[i]);
                    h.reshape((slot, d)).unwrap()
                } else {
                    let a = active.len();
                    let idx = Tensor::new(active.as_slice(), &Device::Cpu).unwrap();
                    let x_q = st.time("sparse gather/scatter", || {
                        h.reshape((slot, d))
                            .unwrap()
                            .index_select(&idx, 0)
                            .unwrap()
                            .reshape((1, a, d))
                            .unwrap()
                    });
                    let out = timed_layer(st, layer, &x_q, &h, &cross[i]);
                    st.time("sparse gather/scatter", || {
                        let rows = out.reshape((a, d)).unwrap();
                        let dst = idx
                            .reshape((a, 1))
                            .unwrap()
                            .broadcast_as((a, d))
                            .unwrap()
                            .contiguous()
                            .unwrap();
                        h = h
                            .reshape((slot, d))
                            .unwrap()
                            .scatter(&dst, &rows, 0)
                            .unwrap()
                            .reshape((1, slot, d))
                            .unwrap();
                        rows
                    })
                };
                let last = i + 1 == n;
                let exiting: Vec<usize> = (0..active.len())
                    .filter(|&k| last || sched[active[k] as usize] == l)
                    .collect();
                if exiting.is_empty() {
                    continue;
                }
                let _ = rows;
                for &k in &exiting {
                    exits[active[k] as usize] = l;
                }
                let gone: Vec<u32> = exiting.iter().map(|&k| active[k]).collect();
                active.retain(|p| !gone.contains(p));
            }
            // As the library: one off-ramp pass over every token's exit-layer state (the rows
            // of `h` stop changing when their token exits; the bench's off-ramp is shared).
            let out_ids = timed_offramp(st, dec, n, &h.reshape((slot, d)).unwrap(), false)
                .to_vec1::<u32>()
                .unwrap();
            (out_ids, exits)
        }
        other => unreachable!("{other}"),
    }
}

fn breakdown() {
    let s = setup();
    let runs: usize = std::env::var("ELMER_BENCH_BREAKDOWN_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut report = String::from(
        "# Where the time goes (batch 1, ms per sample, mean of runs after one warm-up)\n",
    );
    for &(src, slot) in &[(128usize, 32usize), (512, 64)] {
        let ids = &s.sources[&src];
        for name in NAR {
            // The library's own path, end to end, and the ids it gives.
            let p = policy(name, 1, slot);
            let enc = s.model.encode(ids, None).unwrap();
            let want = s.model.decode_slot(&enc, slot, p.clone()).unwrap();
            let want_ids = want.ids.to_vec2::<u32>().unwrap()[0].clone();
            let want_exits = want.exit_layers.to_vec2::<u32>().unwrap()[0].clone();
            let mut e2e = Duration::ZERO;
            for _ in 0..runs {
                let t = Instant::now();
                black_box(run_nar(&s.model, ids, slot, &p));
                e2e += t.elapsed();
            }
            // The stage-timed re-implementation.
            let mut st = Stages::default();
            let got = timed_nar(&mut Stages::default(), &s.model, ids, slot, name); // warm-up
            assert_eq!(
                got,
                (want_ids, want_exits),
                "{name}: re-implementation differs"
            );
            for _ in 0..runs {
                timed_nar(&mut st, &s.model, ids, slot, name);
            }
            let ms = |d: Duration| d.as_secs_f64() * 1e3 / runs as f64;
            let total = ms(st.total());
            report.push_str(&format!(
                "\n## {name}, source {src}, slot {slot}: library {:.1} ms, stage-timed total {total:.1} ms\n\n\
                 | stage | ms | share |\n|---|---|---|\n",
                ms(e2e)
            ));
            for stage in &st.order {
                let v = ms(st.time[stage]);
                report.push_str(&format!(
                    "| {stage} | {v:.1} | {:.0}% |\n",
                    100.0 * v / total
                ));
            }
        }
    }
    println!("{report}");
    let p = target_dir().join("elmer-bench-breakdown.md");
    if std::fs::write(&p, &report).is_ok() {
        eprintln!("wrote {}", p.display());
    }
}

// ------------------------------------------------------------------------------------------
// peak memory: one fresh process per case (ELMER_BENCH_MEMORY=1)
// ------------------------------------------------------------------------------------------

/// `VmHWM` (peak resident set) and `VmRSS` of this process, MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Batch-1 case ids measured for peak memory.
fn memory_cases() -> Vec<String> {
    let mut ids = vec![LOAD_CASE.to_string()];
    for &src in &SOURCES {
        ids.push(format!("encoder/src{src}"));
        for &slot in &SLOTS {
            for name in NAR.iter().copied().chain(["ar_greedy"]) {
                ids.push(format!("src{src}_slot{slot}/{name}"));
            }
        }
    }
    ids
}

/// Loading the base-size model from a `model.safetensors` checkpoint (written once by the
/// parent into the target directory, 563 MB) with `ElmerModel::from_dir`.
const LOAD_CASE: &str = "load/safetensors";

fn load_case_dir() -> PathBuf {
    target_dir().join("elmer-bench-base-checkpoint")
}

/// Child: build the model, run case `id` twice, print one JSON line with the resident set
/// after building and the peak over the whole process.
fn memory_child(id: &str) {
    if id == LOAD_CASE {
        let model = ElmerModel::from_dir(load_case_dir(), &elmer::LoadOptions::default()).unwrap();
        let (peak, rss) = rss_mib();
        black_box(model);
        println!(
            "{}",
            serde_json::json!({"id": id, "after_build_mib": rss, "peak_mib": peak})
        );
        return;
    }
    let s = setup();
    let (_, built) = rss_mib();
    let (group, name) = id.split_once('/').expect("case id group/name");
    for _ in 0..2 {
        if group == "encoder" {
            let src: usize = name.trim_start_matches("src").parse().unwrap();
            black_box(s.model.encode(&s.sources[&src], None).unwrap().hidden);
            continue;
        }
        let (src, slot) = group
            .strip_prefix("src")
            .and_then(|g| g.split_once("_slot"))
            .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
            .expect("case id srcS_slotT/name");
        let ids = &s.sources[&src];
        if name == "ar_greedy" {
            black_box(run_ar(&s.model, ids, slot));
        } else {
            black_box(run_nar(&s.model, ids, slot, &policy(name, 1, slot)));
        }
    }
    let (peak, _) = rss_mib();
    println!(
        "{}",
        serde_json::json!({"id": id, "after_build_mib": built, "peak_mib": peak})
    );
}

/// Parent: one child process per case (filter: substring of the id, as criterion's), results
/// to `target/elmer-bench-memory.{json,md}`.
fn memory() {
    let filter = cli_filter().flatten();
    let exe = std::env::current_exe().expect("bench executable");
    let mut rows = serde_json::Map::new();
    let mut md = String::from(
        "| case | resident after building the model (MiB) | peak resident (MiB) |\n|---|---|---|\n",
    );
    for id in memory_cases() {
        if filter.as_ref().is_some_and(|f| !id.contains(f.as_str())) {
            continue;
        }
        if id == LOAD_CASE && !load_case_dir().join("model.safetensors").is_file() {
            let (cfg, map) = base_weights();
            elmer::checkpoint::save_dir(load_case_dir(), &cfg, &map).unwrap();
        }
        let out = std::process::Command::new(&exe)
            .env("ELMER_BENCH_MEMORY_CHILD", &id)
            .env_remove("ELMER_BENCH_MEMORY")
            .output()
            .expect("run the bench executable");
        let line = String::from_utf8_lossy(&out.stdout);
        let Some(v) = line
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        else {
            eprintln!("{id}: no result ({})", String::from_utf8_lossy(&out.stderr));
            continue;
        };
        let (built, peak) = (
            v["after_build_mib"].as_f64().unwrap_or(f64::NAN),
            v["peak_mib"].as_f64().unwrap_or(f64::NAN),
        );
        eprintln!("{id:<28} after build {built:7.1} MiB, peak {peak:7.1} MiB");
        md.push_str(&format!("| {id} | {built:.1} | {peak:.1} |\n"));
        rows.insert(id, v);
    }
    let _ = std::fs::create_dir_all(target_dir());
    let json = target_dir().join("elmer-bench-memory.json");
    let _ = std::fs::write(
        &json,
        serde_json::to_string_pretty(&serde_json::json!({ "cases": rows })).unwrap(),
    );
    let _ = std::fs::write(target_dir().join("elmer-bench-memory.md"), &md);
    println!("{md}");
    eprintln!("wrote {}", json.display());
}

fn main() {
    // As the `elmer` binary does, and as the crate's docs ask library users to do.
    elmer::limit_pool_spinning();
    if let Ok(id) = std::env::var("ELMER_BENCH_MEMORY_CHILD") {
        memory_child(&id);
        return;
    }
    if std::env::var_os("ELMER_BENCH_MEMORY").is_some() {
        memory();
        return;
    }
    if std::env::var_os("ELMER_BENCH_BREAKDOWN").is_some() {
        breakdown();
        return;
    }
    let load_before = loadavg();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    manual_throughput();
    write_summary(&load_before);
}
