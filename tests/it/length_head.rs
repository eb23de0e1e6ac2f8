//! The target-length predictor: loading (both tensors or neither), the prediction is the
//! argmax of a linear map of the masked mean of the encoder states (checked by hand, and
//! unchanged by padding), generation decodes each source's predicted slot with the rest
//! masked, `TargetLength` options, and the length loss trains the head.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use elmer::train::{FinetuneMode, FinetuneObjective, Objective, Pair, Params};
use elmer::train::{TrainConfig, Trainer};
use elmer::{DecodeOptions, ElmerModel, Error, ExitPolicy, GenerationConfig, Generator};
use elmer::{PaddedBatch, TargetLength};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::*;

/// The cg fixture's tensors plus a length head: weight uniform in `[-scale, scale]` (seeded),
/// bias `bias(class)`. Returns the model and the head's weight rows and bias.
fn cg_with_head(bias: impl Fn(usize) -> f32, scale: f32) -> (ElmerModel, Vec<Vec<f32>>, Vec<f32>) {
    let (cfg, w, _) =
        elmer::checkpoint::load_dir(model_dir("cg"), &elmer::LoadOptions::default()).unwrap();
    let n = cfg.max_position_embeddings + 1;
    let d = cfg.d_model;
    let mut rng = StdRng::seed_from_u64(11);
    let wdata: Vec<f32> = (0..n * d)
        .map(|_| rng.random_range(-scale..=scale))
        .collect();
    let bdata: Vec<f32> = (0..n).map(bias).collect();
    let mut map: HashMap<String, Tensor> = w.map().clone();
    map.insert(
        "length_head.weight".into(),
        Tensor::from_vec(wdata.clone(), (n, d), &Device::Cpu).unwrap(),
    );
    map.insert(
        "length_head.bias".into(),
        Tensor::from_vec(bdata.clone(), n, &Device::Cpu).unwrap(),
    );
    let weights = elmer::checkpoint::Weights::new(map);
    let model = ElmerModel::from_weights(cfg, &weights).unwrap();
    let rows = wdata.chunks(d).map(<[f32]>::to_vec).collect();
    (model, rows, bdata)
}

/// The cg fixture's tensors plus an all-zero length head, built with config `cfg`.
fn cg_with_zero_head(cfg: elmer::ElmerConfig) -> ElmerModel {
    let (_, w, _) =
        elmer::checkpoint::load_dir(model_dir("cg"), &elmer::LoadOptions::default()).unwrap();
    let n = cfg.max_position_embeddings + 1;
    let mut map = w.map().clone();
    map.insert(
        "length_head.weight".into(),
        Tensor::zeros((n, cfg.d_model), DType::F32, &Device::Cpu).unwrap(),
    );
    map.insert(
        "length_head.bias".into(),
        Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap(),
    );
    ElmerModel::from_weights(cfg, &elmer::checkpoint::Weights::new(map)).unwrap()
}

fn sources(seed: u64, n: usize) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(1..10);
            let mut s = vec![0u32];
            s.extend((0..len).map(|_| rng.random_range(5..120)));
            s.push(2);
            s
        })
        .collect()
}

#[test]
fn a_length_head_needs_both_tensors() {
    let (cfg, w, _) =
        elmer::checkpoint::load_dir(model_dir("cg"), &elmer::LoadOptions::default()).unwrap();
    assert!(!ElmerModel::from_weights(cfg.clone(), &w)
        .unwrap()
        .has_length_head());
    let n = cfg.max_position_embeddings + 1;
    let mut map = w.map().clone();
    map.insert(
        "length_head.weight".into(),
        Tensor::zeros((n, cfg.d_model), DType::F32, &Device::Cpu).unwrap(),
    );
    let e =
        ElmerModel::from_weights(cfg.clone(), &elmer::checkpoint::Weights::new(map)).unwrap_err();
    assert!(
        matches!(&e, Error::MissingTensor { name, .. } if name == "length_head.bias"),
        "{e}"
    );
    // A saved model directory keeps the head, and the loader checks its shape.
    let (model, _, _) = cg_with_head(|_| 0.0, 0.1);
    assert!(model.has_length_head());
    let dir = tempfile::tempdir().unwrap();
    let mut map = w.map().clone();
    map.insert(
        "length_head.weight".into(),
        Tensor::zeros((n, cfg.d_model), DType::F32, &Device::Cpu).unwrap(),
    );
    map.insert(
        "length_head.bias".into(),
        Tensor::zeros(n + 1, DType::F32, &Device::Cpu).unwrap(),
    );
    elmer::checkpoint::save_dir(dir.path(), &cfg, &map).unwrap();
    let e = ElmerModel::from_dir(dir.path(), &elmer::LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::TensorShape { .. }), "{e}");
}

#[test]
fn predicted_length_is_the_argmax_over_the_masked_mean_and_ignores_padding() {
    let (model, w, b) = cg_with_head(|_| 0.0, 2.0);
    let srcs = sources(3, 6);
    let max_len = 12;
    let batch = PaddedBatch::new(&srcs, 1);
    let (ids, mask) = batch.to_tensors(&Device::Cpu).unwrap();
    let enc = model.encode(&ids, Some(&mask)).unwrap();
    let predicted = model.predict_lengths(&enc, max_len).unwrap();
    let logits = model.length_logits(&enc).unwrap().unwrap();
    let logits = logits.to_vec2::<f32>().unwrap();
    let hidden = enc.hidden.to_vec3::<f32>().unwrap();
    let mut distinct = std::collections::BTreeSet::new();
    for (i, s) in srcs.iter().enumerate() {
        // By hand: the mean over the row's real positions, then W h + b.
        let d = hidden[i][0].len();
        let mut mean = vec![0f32; d];
        for h in &hidden[i][..s.len()] {
            for (m, x) in mean.iter_mut().zip(h) {
                *m += x / s.len() as f32;
            }
        }
        for (k, (row, bias)) in w.iter().zip(&b).enumerate() {
            let want: f32 = row.iter().zip(&mean).map(|(a, x)| a * x).sum::<f32>() + bias;
            assert!(
                (want - logits[i][k]).abs() < 1e-3,
                "row {i} class {k}: {want} vs {}",
                logits[i][k]
            );
        }
        // Alone (no padding), the same source gives the same logits and length.
        let alone_ids = Tensor::new(s.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let alone = model.encode(&alone_ids, None).unwrap();
        let alone_logits = model.length_logits(&alone).unwrap().unwrap();
        let alone_logits = alone_logits.to_vec2::<f32>().unwrap();
        for (a, b) in alone_logits[0].iter().zip(&logits[i]) {
            assert!(
                (a - b).abs() < 1e-4,
                "row {i}: {a} vs {b} (padding leaked in)"
            );
        }
        let best = (2..=max_len)
            .max_by(|&a, &b| logits[i][a].total_cmp(&logits[i][b]))
            .unwrap();
        assert_eq!(predicted[i], best, "row {i}");
        assert_eq!(model.predict_lengths(&alone, max_len).unwrap()[0], best);
        distinct.insert(best);
    }
    assert!(
        distinct.len() > 1,
        "the head ignores the source: {distinct:?}"
    );
    // Classes outside 2..=max_len are never chosen, and an empty range is an error.
    assert!(predicted.iter().all(|&n| (2..=max_len).contains(&n)));
    assert!(model.predict_lengths(&enc, 0).is_err());
}

/// Ids of decoding `enc` by hand in slots of `lengths` (the rest masked), last layer.
fn decode_masked(
    model: &ElmerModel,
    enc: &elmer::EncoderOutput,
    lengths: &[usize],
) -> Vec<Vec<u32>> {
    let (slot, keep) = model.slot_input_with_lengths(lengths).unwrap();
    model
        .decode(
            enc,
            &slot,
            Some(&keep),
            &DecodeOptions::new(ExitPolicy::LastLayer),
        )
        .unwrap()
        .ids
        .to_vec2::<u32>()
        .unwrap()
}

#[test]
fn generation_decodes_each_predicted_slot() {
    // Bias towards length 5 for every source (weights small): slots of 5.
    let (model, _, _) = cg_with_head(|k| if k == 5 { 50.0 } else { 0.0 }, 0.01);
    let srcs = sources(4, 7);
    let cfg = GenerationConfig {
        max_len: 12,
        policy: Some(ExitPolicy::LastLayer),
        batch_size: 3,
        ..GenerationConfig::default()
    };
    let mut gen = Generator::new(&model, cfg.clone()).unwrap();
    assert!(gen.predicts_length(), "auto uses the head");
    let outs = gen.generate_ids(&srcs).unwrap();
    // The same as decoding the masked 5-slot by hand.
    let batch = PaddedBatch::new(&srcs, 1);
    let (ids, mask) = batch.to_tensors(&Device::Cpu).unwrap();
    let enc = model.encode(&ids, Some(&mask)).unwrap();
    let by_hand = decode_masked(&model, &enc, &[5; 7]);
    assert_eq!(by_hand.len(), 7);
    assert_eq!(by_hand[0].len(), 5);
    for (g, row) in outs.iter().zip(&by_hand) {
        assert!(g.num_tokens <= 4, "{} tokens in a slot of 5", g.num_tokens);
        let end = row[..5].iter().position(|&t| t == 2).unwrap_or(4);
        assert_eq!(g.ids, row[..end].to_vec());
        assert_eq!(g.ended, row[..5].contains(&2));
    }
    // An offset shifts every slot (kept in 2..=max_len), and the recorded one is the default.
    for (offset, slot_len) in [(2i64, 7usize), (-10, 2), (40, 12)] {
        let cfg_off = GenerationConfig {
            length_offset: Some(offset),
            ..cfg.clone()
        };
        let mut g = Generator::new(&model, cfg_off).unwrap();
        assert_eq!(g.length_offset(), offset);
        let outs = g.generate_ids(&srcs).unwrap();
        let by_hand = decode_masked(&model, &enc, &[slot_len; 7]);
        for (g, row) in outs.iter().zip(&by_hand) {
            let end = row[..slot_len]
                .iter()
                .position(|&t| t == 2)
                .unwrap_or(slot_len - 1);
            assert_eq!(g.ids, row[..end].to_vec(), "offset {offset}");
        }
    }
    let (cfg_rec, _, _) =
        elmer::checkpoint::load_dir(model_dir("cg"), &elmer::LoadOptions::default()).unwrap();
    let n = cfg_rec.max_position_embeddings + 1;
    let mut recorded = cfg_rec.clone();
    recorded.elmer_length_offset = Some(3);
    let m = cg_with_zero_head(recorded.clone());
    assert_eq!(Generator::new(&m, cfg.clone()).unwrap().length_offset(), 3);
    recorded.elmer_length_offset = Some(-(n as i64) - 5);
    let e = recorded.validate().unwrap_err();
    assert!(e.to_string().contains("elmer_length_offset"), "{e}");
    // The full slot gives different work: outputs may run to 12 tokens.
    let slot_cfg = GenerationConfig {
        length: TargetLength::Slot,
        ..cfg.clone()
    };
    let g = Generator::new(&model, slot_cfg).unwrap();
    assert!(!g.predicts_length());
    // Mixed lengths in one batch: rows padded to the longest, each masked to its own.
    let (slot, keep) = model.slot_input_with_lengths(&[2, 4]).unwrap();
    assert_eq!(
        slot.to_vec2::<u32>().unwrap(),
        vec![vec![0, 127, 1, 1], vec![0, 127, 127, 127]]
    );
    assert_eq!(
        keep.to_vec2::<u32>().unwrap(),
        vec![vec![1, 1, 0, 0], vec![1, 1, 1, 1]]
    );
    assert!(model.slot_input_with_lengths(&[0, 3]).is_err());
    assert!(model
        .slot_input_with_lengths(&[model.max_target_len() + 1])
        .is_err());
    // Predicted without a head is refused clearly.
    let plain = ElmerModel::from_dir(model_dir("cg"), &elmer::LoadOptions::default()).unwrap();
    assert!(!Generator::new(&plain, GenerationConfig::default())
        .unwrap()
        .predicts_length());
    let e = Generator::new(
        &plain,
        GenerationConfig {
            length: TargetLength::Predicted,
            ..GenerationConfig::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("length_head"), "{e}");
}

fn pairs(n: usize, seed: u64) -> Vec<Pair> {
    reversal_pairs(n, seed, 2..9)
}

fn length_accuracy(model: &ElmerModel, pairs: &[Pair]) -> f64 {
    let srcs: Vec<Vec<u32>> = pairs.iter().map(|p| p.source.clone()).collect();
    let batch = PaddedBatch::new(&srcs, 1);
    let (ids, mask) = batch.to_tensors(&Device::Cpu).unwrap();
    let enc = model.encode(&ids, Some(&mask)).unwrap();
    let got = model.predict_lengths(&enc, 16).unwrap();
    let hits = got
        .iter()
        .zip(pairs)
        .filter(|(g, p)| **g == p.labels.len())
        .count();
    hits as f64 / pairs.len() as f64
}

#[test]
fn the_length_loss_trains_the_head() {
    let mut params = Params::from_dir(model_dir("cg"), &Device::Cpu).unwrap();
    let obj = |p: &Params| {
        FinetuneObjective::new(
            pairs(96, 1),
            pairs(32, 2),
            FinetuneMode::Last,
            16,
            32,
            p.config(),
            &Device::Cpu,
        )
        .unwrap()
    };
    // Without a head, a length loss is an error naming what is missing.
    let no_head = obj(&params).with_length_loss(1.0).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let e = no_head
        .train_loss(&params.model().unwrap(), 0, 0, &mut rng, elmer::Mode::Eval)
        .err()
        .unwrap();
    assert!(e.to_string().contains("length head"), "{e}");
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        assert!(obj(&params).with_length_loss(bad).is_err(), "{bad}");
    }
    assert!(params.ensure_length_head(5, 0.02).unwrap());
    assert!(!params.ensure_length_head(5, 0.02).unwrap());
    let valid = pairs(32, 2);
    let before = length_accuracy(&params.model().unwrap(), &valid);
    let dir = tempfile::tempdir().unwrap();
    let tc = TrainConfig {
        steps: 200,
        lr: 5e-3,
        warmup_steps: 3,
        eval_every: 200,
        save_every: 200,
        out_dir: dir.path().to_path_buf(),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(params, tc).unwrap();
    t.verbose = false;
    let with_loss = obj(&Params::from_dir(model_dir("cg"), &Device::Cpu).unwrap())
        .with_length_loss(1.0)
        .unwrap();
    t.run(&with_loss).unwrap();
    // The saved checkpoint carries the trained head.
    let saved = ElmerModel::from_dir(
        dir.path().join("checkpoint-0000200"),
        &elmer::LoadOptions::default(),
    )
    .unwrap();
    assert!(saved.has_length_head());
    let after = length_accuracy(&saved, &valid);
    assert!(
        after >= 0.8 && after > before + 0.3,
        "length accuracy {before} -> {after}"
    );
}

/// By hand, alone: the output ids, exit layers and slot of `src` under the length beam of
/// `k` candidates (top-k of the head's logits in 2..=max_len, plus `offset`, distinct), keeping
/// the highest mean log-probability over the tokens read (through `</s>`).
fn beam_by_hand(
    model: &ElmerModel,
    src: &[u32],
    max_len: usize,
    k: usize,
    offset: i64,
    policy: &ExitPolicy,
) -> (Vec<u32>, Vec<u32>, usize, bool) {
    let ids = Tensor::new(src, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let enc = model.encode(&ids, None).unwrap();
    let logits = model.length_logits(&enc).unwrap().unwrap();
    let logits = &logits.to_vec2::<f32>().unwrap()[0];
    let mut order: Vec<usize> = (2..=max_len).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let mut lengths: Vec<usize> = Vec::new();
    for &n in &order[..k] {
        let n = (n as i64 + offset).clamp(2, max_len as i64) as usize;
        if !lengths.contains(&n) {
            lengths.push(n);
        }
    }
    let mut best: Option<(f32, Vec<u32>, Vec<u32>, usize)> = None;
    for &n in &lengths {
        let (slot, keep) = model.slot_input_with_lengths(&[n]).unwrap();
        let out = model
            .decode(
                &enc,
                &slot,
                Some(&keep),
                &DecodeOptions::new(policy.clone()).with_logits(),
            )
            .unwrap();
        let row = out.ids.to_vec2::<u32>().unwrap().remove(0);
        let exits = out.exit_layers.to_vec2::<u32>().unwrap().remove(0);
        let lg = out.logits.unwrap().to_vec3::<f32>().unwrap().remove(0);
        let read = row[..n].iter().position(|&t| t == 2).map_or(n, |e| e + 1);
        let mut total = 0f32;
        for (p, &id) in lg.iter().zip(&row).take(read) {
            let m = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + p.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            total += p[id as usize] - lse;
        }
        let score = total / read as f32;
        if best.as_ref().is_none_or(|b| score > b.0 + 1e-6) {
            best = Some((score, row, exits, n));
        }
    }
    let (_, row, exits, n) = best.unwrap();
    let end = row[..n].iter().position(|&t| t == 2);
    let m = end.unwrap_or(n - 1);
    (row[..m].to_vec(), exits[..m].to_vec(), n, end.is_some())
}

#[test]
fn the_length_beam_keeps_the_most_probable_candidate() {
    let (model, _, _) = cg_with_head(|_| 0.0, 2.0);
    let srcs = sources(5, 9);
    let max_len = 12;
    let batch = PaddedBatch::new(&srcs, 1);
    let (ids, mask) = batch.to_tensors(&Device::Cpu).unwrap();
    let enc = model.encode(&ids, Some(&mask)).unwrap();
    // Candidates: most likely first, the first is the point prediction, all in range.
    let cands = model.predict_length_candidates(&enc, max_len, 4).unwrap();
    let single = model.predict_lengths(&enc, max_len).unwrap();
    for (c, s) in cands.iter().zip(&single) {
        assert_eq!(c.len(), 4);
        assert_eq!(c[0], *s);
        assert!(c.iter().all(|n| (2..=max_len).contains(n)));
    }
    assert!(model.predict_length_candidates(&enc, max_len, 0).is_err());
    let mut changed = 0;
    for policy in [ExitPolicy::LastLayer, ExitPolicy::Hard { threshold: 3.0 }] {
        for (k, offset) in [(3usize, 0i64), (4, 2)] {
            let cfg = GenerationConfig {
                max_len,
                policy: Some(policy.clone()),
                batch_size: 4,
                length_candidates: Some(k),
                length_offset: Some(offset),
                ..GenerationConfig::default()
            };
            let mut gen = Generator::new(&model, cfg.clone()).unwrap();
            assert_eq!(gen.length_candidates(), k);
            let outs = gen.generate_ids(&srcs).unwrap();
            let mut one = Generator::new(
                &model,
                GenerationConfig {
                    length_candidates: Some(1),
                    ..cfg
                },
            )
            .unwrap();
            let plain = one.generate_ids(&srcs).unwrap();
            for (i, (g, p)) in outs.iter().zip(&plain).enumerate() {
                let (ids, exits, _, ended) =
                    beam_by_hand(&model, &srcs[i], max_len, k, offset, &policy);
                assert_eq!(g.ids, ids, "{} k {k} source {i}", policy.name());
                assert_eq!(g.exit_layers, exits, "{} k {k} source {i}", policy.name());
                assert_eq!(g.ended, ended);
                assert_eq!(g.num_tokens, g.ids.len());
                changed += usize::from(g.ids != p.ids);
            }
        }
    }
    // The beam changed some outputs (else this test could not tell it from one length).
    assert!(changed > 0, "the length beam never chose another length");
    // The recorded number is the default; zero is refused in the options and the config.
    let (cfg_rec, w, _) =
        elmer::checkpoint::load_dir(model_dir("cg"), &elmer::LoadOptions::default()).unwrap();
    let mut recorded = cfg_rec.clone();
    recorded.elmer_length_candidates = Some(3);
    let m = ElmerModel::from_weights(recorded.clone(), &w).unwrap();
    let cfg = GenerationConfig {
        max_len,
        ..GenerationConfig::default()
    };
    // Without a length head the beam has nothing to choose from: one candidate.
    assert_eq!(
        Generator::new(&m, cfg.clone()).unwrap().length_candidates(),
        1
    );
    let m = cg_with_zero_head(recorded.clone());
    assert_eq!(
        Generator::new(&m, cfg.clone()).unwrap().length_candidates(),
        3
    );
    assert_eq!(
        Generator::new(&model, cfg.clone())
            .unwrap()
            .length_candidates(),
        1
    );
    let zero = GenerationConfig {
        length_candidates: Some(0),
        ..cfg
    };
    let e = Generator::new(&model, zero).err().unwrap();
    assert!(e.to_string().contains("length_candidates"), "{e}");
    recorded.elmer_length_candidates = Some(0);
    let e = recorded.validate().unwrap_err();
    assert!(e.to_string().contains("elmer_length_candidates"), "{e}");
    // Rows of an encoder output: repeats allowed, out of range refused.
    let two = enc.select_rows(&[1, 1]).unwrap();
    assert_eq!(two.batch_size(), 2);
    assert!(enc.select_rows(&[9]).is_err());
}
