//! CPU kernels chosen at run time: the packed-weight path (AVX-512, used by `from_dir`) against
//! candle's matmul (a model built from raw weights), and bf16 inference against f32.

use crate::common::*;
use candle_core::{DType, Tensor};
use elmer::{DecodeOptions, ElmerModel, Error, ExitPolicy, LoadOptions};

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
    let loaded = ElmerModel::from_dir(model_dir("cg"), &opts);
    if !LoadOptions::cpu_bf16_supported() {
        let Err(e) = loaded else {
            panic!("bf16 on a CPU without AVX512_BF16 must be refused")
        };
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("AVX512_BF16") || e.to_string().contains("portable"));
        return;
    }
    let bf16 = loaded.unwrap();
    assert_eq!(bf16.dtype(), DType::F32, "activations stay f32");
    let f32m = ElmerModel::from_dir(model_dir("cg"), &LoadOptions::default()).unwrap();
    let mut same = 0usize;
    let mut total = 0usize;
    for ((name, a, ids_a), (_, b, ids_b)) in
        outputs(&f32m, "cg").into_iter().zip(outputs(&bf16, "cg"))
    {
        let d = max_abs_diff(&a, &b);
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // bf16 keeps 8 bits of mantissa: products off by ~2^-9 relative, sums in f32.
        assert!(
            d > 0.0,
            "{name}: bf16 gave exactly the f32 numbers (not in use?)"
        );
        assert!(
            d < 0.03 * scale.max(1.0),
            "{name}: {d} against a scale of {scale}"
        );
        for (ra, rb) in ids_a.iter().zip(&ids_b) {
            total += ra.len();
            same += ra.iter().zip(rb).filter(|(x, y)| x == y).count();
        }
    }
    assert!(
        same as f64 >= 0.9 * total as f64,
        "only {same} of {total} ids agree with f32"
    );
}
