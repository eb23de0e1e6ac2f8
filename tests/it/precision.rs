//! CPU kernels chosen at run time: the packed-weight path (AVX-512, used by `from_dir`) against
//! candle's matmul (a model built from raw weights), and bf16 / int8 inference against f32.

use crate::common::*;
use candle_core::{DType, Tensor};
use elmer::{DecodeOptions, ElmerModel, Error, ExitPolicy, LoadOptions, Precision};

/// The reference inputs of fixture `name`: (input ids, mask, decoder input ids).
fn inputs(name: &str) -> (Tensor, Tensor, Tensor) {
    let r = reference(name);
    (
        ids(&r["input_ids"]),
        ids(&r["attention_mask"]),
        ids(&r["decoder_input_ids"]),
    )
}

/// Encoder states and the last-layer, soft and hard-exit logits (with ids) of `model`.
fn outputs(model: &ElmerModel, refname: &str) -> Vec<(String, Tensor, Vec<Vec<u32>>)> {
    let (input, mask, dec) = inputs(refname);
    let enc = model.encode(&input, Some(&mask)).unwrap();
    let mut out = vec![("encoder".to_string(), enc.hidden.clone(), vec![])];
    let mut policies = vec![ExitPolicy::LastLayer, ExitPolicy::Hard { threshold: 2.0 }];
    if model.has_concat_head() {
        policies.push(ExitPolicy::Soft);
    }
    for p in policies {
        let o = model
            .decode(
                &enc,
                &dec,
                None,
                &DecodeOptions::new(p.clone()).with_logits(),
            )
            .unwrap();
        out.push((p.name(), o.logits.unwrap(), to_u32_vec2(&o.ids)));
    }
    out
}

#[test]
fn packed_and_portable_dense_layers_agree() {
    for (dir, refname) in [("cg", "cg"), ("bare", "bare")] {
        // From raw weights: no inference layout, candle's matmul everywhere.
        let (cfg, w, _) =
            elmer::checkpoint::load_dir(model_dir(dir), &LoadOptions::default()).unwrap();
        let portable = ElmerModel::from_weights(cfg, &w).unwrap();
        // From the directory: packed on a CPU with AVX-512F, else the transposed layout;
        // with and without the off-ramps' vocabulary table packed.
        for pack_offramp_table in [true, false] {
            let opts = LoadOptions {
                pack_offramp_table,
                ..LoadOptions::default()
            };
            let fast = ElmerModel::from_dir(model_dir(dir), &opts).unwrap();
            for ((name, a, ids_a), (_, b, ids_b)) in outputs(&portable, refname)
                .into_iter()
                .zip(outputs(&fast, refname))
            {
                let d = max_abs_diff(&a, &b);
                assert!(
                    d < 1e-4,
                    "{dir} {name} (table packed: {pack_offramp_table}): {d}"
                );
                assert_eq!(
                    ids_a, ids_b,
                    "{dir} {name} (table packed: {pack_offramp_table})"
                );
            }
        }
    }
}

#[test]
fn bf16_inference_tracks_f32_or_is_refused() {
    let opts = LoadOptions {
        dtype: Some(DType::BF16),
        ..LoadOptions::default()
    };
    // bf16 keeps 8 bits of mantissa: products off by ~2^-9 relative, sums in f32.
    reduced_precision_tracks_f32(Precision::Bf16, &opts, "AVX512_BF16", 0.03, 0.9);
}

#[test]
fn int8_inference_tracks_f32_or_is_refused() {
    let opts = LoadOptions {
        cpu_precision: Some(Precision::Int8),
        ..LoadOptions::default()
    };
    // Weights to 1/254 of each column's range, activations to 1/255 of each row's.
    reduced_precision_tracks_f32(Precision::Int8, &opts, "AVX512-VNNI", 0.05, 0.9);
}

#[test]
fn contradictory_precision_options_are_refused() {
    let opts = LoadOptions {
        dtype: Some(DType::BF16),
        cpu_precision: Some(Precision::Int8),
        ..LoadOptions::default()
    };
    let Err(e) = ElmerModel::from_dir(model_dir("cg"), &opts) else {
        panic!("bf16 dtype with int8 weights must be refused")
    };
    assert!(e.to_string().contains("cpu_precision"), "{e}");
    let opts = LoadOptions {
        dtype: Some(DType::F16),
        cpu_precision: Some(Precision::Int8),
        ..LoadOptions::default()
    };
    assert!(ElmerModel::from_dir(model_dir("cg"), &opts).is_err());
}

/// Loads fixture `cg` with `opts` (asking for `precision`): refused with an error naming
/// `instructions` where the CPU lacks them, else its outputs are within `rel` of f32's
/// (relative to their scale) and at least `agree` of the ids equal f32's.
fn reduced_precision_tracks_f32(
    precision: Precision,
    opts: &LoadOptions,
    instructions: &str,
    rel: f32,
    agree: f64,
) {
    let loaded = ElmerModel::from_dir(model_dir("cg"), opts);
    if !LoadOptions::cpu_supports(precision) {
        let Err(e) = loaded else {
            panic!(
                "{} on a CPU without {instructions} must be refused",
                precision.name()
            )
        };
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        assert!(e.to_string().contains(instructions) || e.to_string().contains("portable"));
        return;
    }
    let reduced = loaded.unwrap();
    assert_eq!(reduced.dtype(), DType::F32, "activations stay f32");
    let f32m = ElmerModel::from_dir(model_dir("cg"), &LoadOptions::default()).unwrap();
    let mut same = 0usize;
    let mut total = 0usize;
    for ((name, a, ids_a), (_, b, ids_b)) in outputs(&f32m, "cg")
        .into_iter()
        .zip(outputs(&reduced, "cg"))
    {
        let d = max_abs_diff(&a, &b);
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            d > 0.0,
            "{name}: {} gave exactly the f32 numbers (not in use?)",
            precision.name()
        );
        assert!(
            d < rel * scale.max(1.0),
            "{} {name}: {d} against a scale of {scale}",
            precision.name()
        );
        for (ra, rb) in ids_a.iter().zip(&ids_b) {
            total += ra.len();
            same += ra.iter().zip(rb).filter(|(x, y)| x == y).count();
        }
    }
    assert!(
        same as f64 >= agree * total as f64,
        "{}: only {same} of {total} ids agree with f32",
        precision.name()
    );
}
