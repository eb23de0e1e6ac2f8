//! Fine-tuning objectives on tiny data: soft exit (with concat_head creation and gold mixing),
//! hard exit (deep supervision) and last layer all learn; target truncation keeps `</s>`.

use crate::common::*;
use candle_core::Device;
use elmer::data::Example;
use elmer::train::Params;
use elmer::train::{tokenize_pairs, FinetuneMode, FinetuneObjective, Pair};
use elmer::train::{TrainConfig, Trainer};
use elmer::BartTokenizer;
use rand::{Rng, SeedableRng};

/// A copy task over the cg fixture's vocabulary: the target is the source content reversed.
fn pairs(n: usize, seed: u64) -> Vec<Pair> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(3..7);
            let content: Vec<u32> = (0..len).map(|_| rng.random_range(5..40)).collect();
            let mut source = vec![0];
            source.extend(&content);
            source.push(2);
            let mut labels: Vec<u32> = content.iter().rev().copied().collect();
            labels.push(2);
            Pair { source, labels }
        })
        .collect()
}

fn train(mode: FinetuneMode, drop_concat_head: bool) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut params = if drop_concat_head {
        let (cfg, w, _) =
            elmer::checkpoint::load_dir(model_dir("cg"), &elmer::LoadOptions::default()).unwrap();
        let mut map = w.map().clone();
        map.remove("concat_head.weight");
        Params::from_tensors(cfg, &map).unwrap()
    } else {
        Params::from_dir(model_dir("cg"), &Device::Cpu).unwrap()
    };
    if matches!(mode, FinetuneMode::Soft { .. }) {
        assert_eq!(
            params.ensure_concat_head(3, 0.02).unwrap(),
            drop_concat_head
        );
    }
    let cfg = params.config().clone();
    let obj = FinetuneObjective::new(pairs(64, 1), pairs(16, 2), mode, 8, 16, &cfg, &Device::Cpu)
        .unwrap();
    let tc = TrainConfig {
        steps: 30,
        lr: 3e-3,
        warmup_steps: 3,
        eval_every: 30,
        save_every: 0,
        out_dir: dir.path().to_path_buf(),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(params, tc).unwrap();
    t.verbose = false;
    let s = t.run(&obj).unwrap();
    (
        s.state.initial_eval_loss.unwrap(),
        s.state.history.last().unwrap().eval_loss.unwrap(),
    )
}

#[test]
fn soft_exit_fine_tuning_learns_and_creates_concat_head() {
    let (a, b) = train(FinetuneMode::Soft { gold_prob: 0.3 }, true);
    assert!(b < a - 0.5, "soft: {a} -> {b}");
}

#[test]
fn hard_exit_deep_supervision_learns() {
    let (a, b) = train(FinetuneMode::Hard, false);
    assert!(b < a - 0.5, "hard: {a} -> {b}");
}

#[test]
fn last_layer_fine_tuning_learns() {
    let (a, b) = train(FinetuneMode::Last, false);
    assert!(b < a - 0.5, "last: {a} -> {b}");
}

#[test]
fn tokenized_targets_are_truncated_to_the_slot_and_end_in_eos() {
    let tok = BartTokenizer::from_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/tokenizer/bart-base"
    ))
    .unwrap();
    let ex = vec![Example {
        source: "a long source sentence that goes on and on and on".into(),
        target: "what is the question that is much longer than the slot ?".into(),
    }];
    let p = tokenize_pairs(&tok, &ex, 6, 5).unwrap();
    assert_eq!(p[0].source.len(), 6);
    assert_eq!(*p[0].source.last().unwrap(), 2);
    assert_eq!(p[0].labels.len(), 5);
    assert_eq!(*p[0].labels.last().unwrap(), 2);
    assert_ne!(p[0].labels[0], 0, "labels drop the leading <s>");
    assert!(tokenize_pairs(&tok, &ex, 6, 1).is_err());
    assert!(FinetuneMode::parse("medium").is_err());
}
