//! The model against the PyTorch/transformers ELMER reference
//! (`scripts/fixtures/make_model_fixtures.py`, fixtures in `tests/fixtures/model`).
//! Logits within 1e-4 absolute, ids and exit layers exactly. `ELMER_TEST_DEVICE=cuda:0` runs
//! them on a GPU (logits within 1e-3; `scripts/gpu_check.sh`).

use std::cell::RefCell;

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use elmer::{DecodeOptions, ElmerModel, ExitPolicy, LoadOptions, Mode};
use rand::SeedableRng;

/// 1e-4 on CPU, 1e-3 on a GPU (`ELMER_TEST_DEVICE`).
fn tol() -> f32 {
    device_tol(1e-4)
}

fn load(dir: &str) -> ElmerModel {
    ElmerModel::from_dir(model_dir(dir), &LoadOptions::on(test_device()))
        .expect("load fixture checkpoint")
}

fn thresholds(name: &str) -> Vec<f64> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("model/meta.json")).unwrap())
            .unwrap();
    meta[name]["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Checks every output of one checkpoint against its reference.
fn check_all(model: &ElmerModel, refname: &str, soft: bool) {
    let r = reference(refname);
    let input = dev_ids(&r["input_ids"]);
    let mask = dev_ids(&r["attention_mask"]);
    let dec = dev_ids(&r["decoder_input_ids"]);
    let enc = model.encode(&input, Some(&mask)).unwrap();
    assert_close(
        &format!("{refname} encoder"),
        &enc.hidden,
        &r["encoder_hidden"],
        tol(),
    );

    // Last layer, with every off-ramp.
    let opts = DecodeOptions::new(ExitPolicy::LastLayer)
        .with_logits()
        .with_offramp_logits();
    let out = model.decode(&enc, &dec, None, &opts).unwrap();
    assert_close(
        &format!("{refname} last"),
        out.logits.as_ref().unwrap(),
        &r["last_logits"],
        tol(),
    );
    let ramps = Tensor::stack(out.offramp_logits.as_ref().unwrap(), 0).unwrap();
    assert_close(
        &format!("{refname} off-ramps"),
        &ramps,
        &r["offramp_logits_all"],
        tol(),
    );
    assert_eq!(
        to_u32_vec2(&out.ids),
        to_u32_vec2(&r["last_logits"].argmax(2).unwrap())
    );
    let l = model.num_decoder_layers() as u32;
    assert!(to_u32_vec2(&out.exit_layers)
        .iter()
        .flatten()
        .all(|&e| e == l));

    // Fixed exit, sparse inference path.
    let fixed = dev_ids(&r["fixed_exit"]);
    let opts = DecodeOptions::new(ExitPolicy::Fixed(fixed.clone())).with_logits();
    let out = model.decode(&enc, &dec, None, &opts).unwrap();
    assert_close(
        &format!("{refname} fixed (sparse)"),
        out.logits.as_ref().unwrap(),
        &r["fixed_logits"],
        tol(),
    );
    assert_eq!(to_u32_vec2(&out.exit_layers), to_u32_vec2(&fixed));
    assert_eq!(
        to_u32_vec2(&out.ids),
        to_u32_vec2(&r["fixed_logits"].argmax(2).unwrap())
    );
    // Fixed exit without logits: the off-ramps run once, after the last layer, on every
    // token's exit-layer state.
    let out = model
        .decode(
            &enc,
            &dec,
            None,
            &DecodeOptions::new(ExitPolicy::Fixed(fixed.clone())),
        )
        .unwrap();
    assert_eq!(to_u32_vec2(&out.exit_layers), to_u32_vec2(&fixed));
    assert_eq!(
        to_u32_vec2(&out.ids),
        to_u32_vec2(&r["fixed_logits"].argmax(2).unwrap()),
        "{refname} fixed (deferred off-ramps)"
    );
    // Fixed exit, dense path (taken when off-ramp logits are requested).
    let opts = DecodeOptions::new(ExitPolicy::Fixed(fixed.clone()))
        .with_logits()
        .with_offramp_logits();
    let out = model.decode(&enc, &dec, None, &opts).unwrap();
    assert_close(
        &format!("{refname} fixed (dense)"),
        out.logits.as_ref().unwrap(),
        &r["fixed_logits"],
        tol(),
    );

    // Soft exit.
    if soft {
        let opts = DecodeOptions::new(ExitPolicy::Soft)
            .with_logits()
            .with_offramp_logits();
        let out = model.decode(&enc, &dec, None, &opts).unwrap();
        assert_close(
            &format!("{refname} soft"),
            out.logits.as_ref().unwrap(),
            &r["soft_logits"],
            tol(),
        );
        let ramps = out.offramp_logits.unwrap();
        assert_eq!(ramps.len(), l as usize);
        let inter = Tensor::stack(&ramps[..ramps.len() - 1], 0).unwrap();
        assert_close(
            &format!("{refname} soft off-ramps"),
            &inter,
            &r["soft_offramp_logits"],
            tol(),
        );
    } else {
        let err = model
            .decode(&enc, &dec, None, &DecodeOptions::new(ExitPolicy::Soft))
            .unwrap_err();
        assert!(err.to_string().contains("concat_head"), "{err}");
    }

    // The generation paths (argmax only, fused kernels) give the same ids as the logits paths.
    let mut policies = vec![ExitPolicy::LastLayer, ExitPolicy::Fixed(fixed.clone())];
    if soft {
        policies.push(ExitPolicy::Soft);
    }
    for p in policies {
        let fast = model
            .decode(&enc, &dec, None, &DecodeOptions::new(p.clone()))
            .unwrap();
        let full = model
            .decode(
                &enc,
                &dec,
                None,
                &DecodeOptions::new(p.clone()).with_logits(),
            )
            .unwrap();
        assert_eq!(
            to_u32_vec2(&fast.ids),
            to_u32_vec2(&full.ids),
            "{} ids",
            p.name()
        );
        assert_eq!(
            to_u32_vec2(&fast.exit_layers),
            to_u32_vec2(&full.exit_layers)
        );
    }

    // Hard exit at both thresholds.
    for (k, th) in thresholds(refname).into_iter().enumerate() {
        let opts = DecodeOptions::new(ExitPolicy::Hard { threshold: th }).with_logits();
        let out = model.decode(&enc, &dec, None, &opts).unwrap();
        assert_eq!(
            to_u32_vec2(&out.ids),
            to_u32_vec2(&r[&format!("hard_ids_{k}")]),
            "hard ids {k}"
        );
        assert_eq!(
            to_u32_vec2(&out.exit_layers),
            to_u32_vec2(&r[&format!("hard_exit_{k}")]),
            "hard exit layers {k}"
        );
        assert_close(
            &format!("{refname} hard logits {k}"),
            out.logits.as_ref().unwrap(),
            &r[&format!("hard_logits_{k}")],
            tol(),
        );
        // Without logits requested the ids and exits are the same.
        let out2 = model
            .decode(
                &enc,
                &dec,
                None,
                &DecodeOptions::new(ExitPolicy::Hard { threshold: th }),
            )
            .unwrap();
        assert_eq!(to_u32_vec2(&out2.ids), to_u32_vec2(&out.ids));
        assert_eq!(
            to_u32_vec2(&out2.exit_layers),
            to_u32_vec2(&out.exit_layers)
        );
    }
}

#[test]
fn cg_safetensors_matches_reference() {
    check_all(&load("cg"), "cg", true);
}

#[test]
fn cg_pytorch_bin_matches_reference() {
    check_all(&load("cg_bin"), "cg", true);
}

#[test]
fn cg_sharded_matches_reference() {
    check_all(&load("cg_sharded"), "cg", true);
}

#[test]
fn bare_model_matches_reference() {
    // The directory has both formats; safetensors is preferred.
    let (model, report) =
        ElmerModel::from_dir_with_report(model_dir("bare"), &LoadOptions::on(test_device()))
            .unwrap();
    assert_eq!(report.layout, elmer::checkpoint::NameLayout::BareModel);
    assert_eq!(report.format, elmer::checkpoint::WeightFormat::Safetensors);
    check_all(&model, "bare", false);
}

#[test]
fn bare_model_from_pytorch_bin_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(model_dir("bare").join(f), dir.path().join(f)).unwrap();
    }
    let model = ElmerModel::from_dir(dir.path(), &LoadOptions::on(test_device())).unwrap();
    check_all(&model, "bare", false);
}

#[test]
fn tiny_random_bart_loads_and_matches_reference() {
    let dir = fixtures().join("tiny-random-bart");
    let (model, report) =
        ElmerModel::from_dir_with_report(&dir, &LoadOptions::on(test_device())).unwrap();
    assert_eq!(report.layout, elmer::checkpoint::NameLayout::BareModel);
    assert_eq!(report.format, elmer::checkpoint::WeightFormat::PytorchBin);
    assert!(
        report.extra.is_empty(),
        "unexpected extras: {:?}",
        report.extra
    );
    // The mask id comes from the directory's tokenizer files.
    assert_eq!(model.config().mask_token_id(), 4);
    let r = reference("tiny_random_bart");
    let enc = model
        .encode(
            &dev_ids(&r["input_ids"]),
            Some(&dev_ids(&r["attention_mask"])),
        )
        .unwrap();
    assert_close("tiny encoder", &enc.hidden, &r["encoder_hidden"], tol());
    let dec = dev_ids(&r["decoder_input_ids"]);
    let out = model
        .decode(
            &enc,
            &dec,
            None,
            &DecodeOptions::new(ExitPolicy::LastLayer)
                .with_logits()
                .with_offramp_logits(),
        )
        .unwrap();
    assert_close(
        "tiny last",
        out.logits.as_ref().unwrap(),
        &r["last_logits"],
        tol(),
    );
    let ramps = Tensor::stack(out.offramp_logits.as_ref().unwrap(), 0).unwrap();
    assert_close("tiny off-ramps", &ramps, &r["offramp_logits_all"], tol());
    let opts = DecodeOptions::new(ExitPolicy::Fixed(dev_ids(&r["fixed_exit"]))).with_logits();
    let out = model.decode(&enc, &dec, None, &opts).unwrap();
    assert_close(
        "tiny fixed",
        out.logits.as_ref().unwrap(),
        &r["fixed_logits"],
        tol(),
    );
}

/// The dense fixed-exit path used in training (dropout off) equals the reference too, with
/// and without detaching the copied states.
#[test]
fn training_path_fixed_exit_matches_reference() {
    let (mut cfg, weights, _) =
        elmer::checkpoint::load_dir(model_dir("cg"), &LoadOptions::on(test_device())).unwrap();
    cfg.dropout = 0.0;
    cfg.attention_dropout = 0.0;
    cfg.activation_dropout = 0.0;
    let r = reference("cg");
    for detach in [true, false] {
        cfg.elmer_detach_copied_states = detach;
        let model = ElmerModel::from_weights(cfg.clone(), &weights).unwrap();
        let rng = RefCell::new(rand::rngs::StdRng::seed_from_u64(0));
        let mode = Mode::Train { rng: &rng };
        let enc = model
            .encode_with_mode(
                &dev_ids(&r["input_ids"]),
                Some(&dev_ids(&r["attention_mask"])),
                mode,
            )
            .unwrap();
        let opts = DecodeOptions::new(ExitPolicy::Fixed(dev_ids(&r["fixed_exit"]))).with_logits();
        let out = model
            .decode_with_mode(&enc, &dev_ids(&r["decoder_input_ids"]), None, &opts, mode)
            .unwrap();
        assert_close(
            "fixed (train path)",
            out.logits.as_ref().unwrap(),
            &r["fixed_logits"],
            tol(),
        );
    }
}

/// Each example of the padded batch alone gives the same outputs (within 1e-5).
#[test]
fn padded_batch_equals_single_examples() {
    let model = load("cg");
    let r = reference("cg");
    let input = dev_ids(&r["input_ids"]);
    let mask = dev_ids(&r["attention_mask"]);
    let enc = model.encode(&input, Some(&mask)).unwrap();
    let th = thresholds("cg")[1];
    let policies = [
        ExitPolicy::LastLayer,
        ExitPolicy::Soft,
        ExitPolicy::Hard { threshold: th },
        ExitPolicy::Fixed(dev_ids(&r["fixed_exit"])),
    ];
    let lens: Vec<usize> = to_u32_vec2(&mask)
        .iter()
        .map(|row| row.iter().sum::<u32>() as usize)
        .collect();
    for policy in policies {
        let batch = model
            .decode(
                &enc,
                &model.slot_input(3, 8).unwrap(),
                None,
                &DecodeOptions::new(policy.clone()).with_logits(),
            )
            .unwrap();
        for (i, &len) in lens.iter().enumerate() {
            let one = input.narrow(0, i, 1).unwrap().narrow(1, 0, len).unwrap();
            let enc1 = model.encode(&one, None).unwrap();
            assert_close(
                "encoder single",
                &enc1.hidden,
                &enc.hidden
                    .narrow(0, i, 1)
                    .unwrap()
                    .narrow(1, 0, len)
                    .unwrap(),
                1e-5,
            );
            let p1 = match &policy {
                ExitPolicy::Fixed(f) => ExitPolicy::Fixed(f.narrow(0, i, 1).unwrap()),
                p => p.clone(),
            };
            let single = model
                .decode(
                    &enc1,
                    &model.slot_input(1, 8).unwrap(),
                    None,
                    &DecodeOptions::new(p1).with_logits(),
                )
                .unwrap();
            assert_close(
                &format!("{} single vs batch", policy.name()),
                single.logits.as_ref().unwrap(),
                &batch.logits.as_ref().unwrap().narrow(0, i, 1).unwrap(),
                1e-5,
            );
            assert_eq!(to_u32_vec2(&single.ids)[0], to_u32_vec2(&batch.ids)[i]);
            assert_eq!(
                to_u32_vec2(&single.exit_layers)[0],
                to_u32_vec2(&batch.exit_layers)[i]
            );
        }
    }
}

#[test]
fn cached_cross_attention_gives_same_results() {
    let model = load("cg");
    let r = reference("cg");
    let mut enc = model
        .encode(
            &dev_ids(&r["input_ids"]),
            Some(&dev_ids(&r["attention_mask"])),
        )
        .unwrap();
    model.cache_cross_attention(&mut enc).unwrap();
    assert!(enc.has_cross_attention_cache());
    let out = model
        .decode(
            &enc,
            &dev_ids(&r["decoder_input_ids"]),
            None,
            &DecodeOptions::new(ExitPolicy::Soft).with_logits(),
        )
        .unwrap();
    assert_close(
        "soft with cache",
        out.logits.as_ref().unwrap(),
        &r["soft_logits"],
        tol(),
    );
}

/// f16 and bf16 checkpoints load (converted to f32 on CPU) and stay close to the f32 model.
#[test]
fn half_precision_weights_load() {
    let r = reference("cg");
    let (_, weights, _) =
        elmer::checkpoint::load_dir(model_dir("cg"), &LoadOptions::on(test_device())).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let dir = tempfile::tempdir().unwrap();
        let mut map = std::collections::HashMap::new();
        for (k, t) in weights.map() {
            let name = if elmer::checkpoint::is_body_name(k) {
                format!("model.{k}")
            } else {
                k.clone()
            };
            map.insert(name, t.to_dtype(dtype).unwrap());
        }
        candle_core::safetensors::save(&map, dir.path().join("model.safetensors")).unwrap();
        std::fs::copy(
            model_dir("cg").join("config.json"),
            dir.path().join("config.json"),
        )
        .unwrap();
        let (model, report) =
            ElmerModel::from_dir_with_report(dir.path(), &LoadOptions::on(test_device())).unwrap();
        assert_eq!(report.stored_dtype, dtype);
        assert_eq!(model.dtype(), DType::F32);
        let enc = model
            .encode(
                &dev_ids(&r["input_ids"]),
                Some(&dev_ids(&r["attention_mask"])),
            )
            .unwrap();
        let out = model
            .decode(
                &enc,
                &dev_ids(&r["decoder_input_ids"]),
                None,
                &DecodeOptions::new(ExitPolicy::LastLayer).with_logits(),
            )
            .unwrap();
        let tol = if dtype == DType::F16 { 0.05 } else { 0.3 };
        assert_close(
            &format!("{dtype:?} weights"),
            out.logits.as_ref().unwrap(),
            &r["last_logits"],
            tol,
        );
    }
    let _ = Device::Cpu;
}

/// Per-layer off-ramps that all equal the shared one reproduce the shared results.
#[test]
fn per_layer_offramps_equal_to_shared_reproduce_shared() {
    let (mut cfg, weights, _) =
        elmer::checkpoint::load_dir(model_dir("cg"), &LoadOptions::on(test_device())).unwrap();
    let mut map = weights.map().clone();
    let shared = map["shared.weight"].clone();
    let bias = map["final_logits_bias"].reshape(cfg.vocab_size).unwrap();
    for i in 0..cfg.decoder_layers {
        map.insert(format!("offramps.{i}.weight"), shared.clone());
        map.insert(format!("offramps.{i}.bias"), bias.clone());
    }
    cfg.elmer_offramps = elmer::OffRampKind::PerLayer;
    let dir = tempfile::tempdir().unwrap();
    elmer::checkpoint::save_dir(dir.path(), &cfg, &map).unwrap();
    let model = ElmerModel::from_dir(dir.path(), &LoadOptions::on(test_device())).unwrap();
    assert_eq!(model.config().elmer_offramps, elmer::OffRampKind::PerLayer);
    check_all(&model, "cg", true);
}

/// With distinct per-layer off-ramps, the deferred off-ramps of a fixed schedule (no logits
/// requested) give the ids of each token's own exit-layer off-ramp, as the per-layer path that
/// returns logits does.
#[test]
fn fixed_exit_deferred_offramps_use_each_tokens_exit_layer() {
    let (mut cfg, weights, _) =
        elmer::checkpoint::load_dir(model_dir("cg"), &LoadOptions::on(test_device())).unwrap();
    let mut map = weights.map().clone();
    let shared = map["shared.weight"].clone();
    for i in 0..cfg.decoder_layers {
        // Layer-specific projections: the shared table plus noise of its own scale.
        let noise = Tensor::randn(0f32, 0.5, shared.shape(), shared.device()).unwrap();
        map.insert(format!("offramps.{i}.weight"), (&shared + noise).unwrap());
        let b = Tensor::randn(0f32, 1.0, cfg.vocab_size, shared.device()).unwrap();
        map.insert(format!("offramps.{i}.bias"), b);
    }
    cfg.elmer_offramps = elmer::OffRampKind::PerLayer;
    let dir = tempfile::tempdir().unwrap();
    elmer::checkpoint::save_dir(dir.path(), &cfg, &map).unwrap();
    let model = ElmerModel::from_dir(dir.path(), &LoadOptions::on(test_device())).unwrap();
    let r = reference("cg");
    let enc = model
        .encode(
            &dev_ids(&r["input_ids"]),
            Some(&dev_ids(&r["attention_mask"])),
        )
        .unwrap();
    let dec = dev_ids(&r["decoder_input_ids"]);
    let fixed = dev_ids(&r["fixed_exit"]);
    let with_logits = model
        .decode(
            &enc,
            &dec,
            None,
            &DecodeOptions::new(ExitPolicy::Fixed(fixed.clone())).with_logits(),
        )
        .unwrap();
    let deferred = model
        .decode(
            &enc,
            &dec,
            None,
            &DecodeOptions::new(ExitPolicy::Fixed(fixed.clone())),
        )
        .unwrap();
    assert_eq!(to_u32_vec2(&deferred.ids), to_u32_vec2(&with_logits.ids));
    assert_eq!(
        to_u32_vec2(&deferred.ids),
        to_u32_vec2(&with_logits.logits.unwrap().argmax(2).unwrap())
    );
    // Directly: each token's exit-layer state through its own layer's off-ramp, and (to show
    // the test can tell) through the last layer's off-ramp for every token.
    let states = model
        .fixed_exit_hidden(&enc, &dec, None, &fixed, Mode::Eval)
        .unwrap();
    let exits = to_u32_vec2(&fixed);
    let ramps = model.decoder().offramps();
    let (b, t) = (exits.len(), exits[0].len());
    let mut want = vec![vec![0u32; t]; b];
    let mut one_ramp = vec![vec![0u32; t]; b];
    for bi in 0..b {
        for ti in 0..t {
            let h = states.narrow(0, bi, 1).unwrap().narrow(1, ti, 1).unwrap();
            let id = |layer: usize| {
                ramps
                    .logits(layer, &h)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .argmax(0)
                    .unwrap()
                    .to_scalar::<u32>()
                    .unwrap()
            };
            want[bi][ti] = id(exits[bi][ti] as usize);
            one_ramp[bi][ti] = id(model.num_decoder_layers());
        }
    }
    assert_eq!(to_u32_vec2(&deferred.ids), want);
    assert_ne!(
        want, one_ramp,
        "per-layer off-ramps too similar for this test"
    );
}
