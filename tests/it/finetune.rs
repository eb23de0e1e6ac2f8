//! Fine-tuning objectives on tiny data: soft exit (with concat_head creation and gold mixing),
//! hard exit (deep supervision) and last layer all learn; target truncation keeps `</s>`.

use crate::common::*;
use candle_core::Device;
use elmer::data::Example;
use elmer::train::Params;
use elmer::train::{tokenize_pairs, FinetuneMode, FinetuneObjective, Pair};
use elmer::train::{TrainConfig, Trainer};
use elmer::BartTokenizer;
use rand::SeedableRng;

/// A copy task over the cg fixture's vocabulary: the target is the source content reversed.
fn pairs(n: usize, seed: u64) -> Vec<Pair> {
    reversal_pairs(n, seed, 3..7)
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
    if mode.uses_soft_exit() {
        assert_eq!(
            params.ensure_concat_head(3, 0.02).unwrap(),
            drop_concat_head
        );
    }
    let cfg = params.config().clone();
    let obj = FinetuneObjective::new(pairs(64, 1), pairs(16, 2), mode, 8, 16, &cfg, &Device::Cpu)
        .unwrap();
    run_steps(params, &obj, dir.path(), 30)
}

/// Trains `steps` steps at lr 3e-3 (validation at the start and the end); returns the first
/// and last validation losses.
fn run_steps(
    params: Params,
    obj: &FinetuneObjective,
    out: &std::path::Path,
    steps: usize,
) -> (f64, f64) {
    let tc = TrainConfig {
        steps,
        lr: 3e-3,
        warmup_steps: 3,
        eval_every: steps,
        save_every: 0,
        out_dir: out.to_path_buf(),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(params, tc).unwrap();
    t.verbose = false;
    let s = t.run(obj).unwrap();
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
fn soft_and_hard_fine_tuning_learns_both_exits() {
    assert_eq!(
        FinetuneMode::parse("soft+hard").unwrap(),
        FinetuneMode::SoftAndHard { gold_prob: 0.3 }
    );
    let (a, b) = train(FinetuneMode::SoftAndHard { gold_prob: 0.3 }, true);
    assert!(b < a - 0.5, "soft+hard: {a} -> {b}");
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

fn objective(mode: FinetuneMode) -> (Params, FinetuneObjective) {
    let params = Params::from_dir(model_dir("cg"), &Device::Cpu).unwrap();
    let cfg = params.config().clone();
    let obj = FinetuneObjective::new(pairs(64, 1), pairs(16, 2), mode, 8, 16, &cfg, &Device::Cpu)
        .unwrap();
    (params, obj)
}

#[test]
fn generation_slot_and_label_smoothing_options() {
    use elmer::train::Objective;
    let (params, plain) = objective(FinetuneMode::Last);
    let model = &params.model().unwrap();
    let slot = |o: FinetuneObjective, t| o.with_generation_slot(Some(t));
    // The slot must hold every label row and fit the position table.
    let (_, o) = objective(FinetuneMode::Last);
    assert!(slot(o, 3).is_err());
    let (_, o) = objective(FinetuneMode::Last);
    assert!(slot(o, 100_000).is_err());
    for bad in [-0.1, 1.0, f64::NAN] {
        let (_, o) = objective(FinetuneMode::Last);
        assert!(o.with_label_smoothing(bad).is_err(), "{bad}");
    }
    // In the generation slot the model must also predict where the text ends without the
    // mask giving the length away: a different (here: higher) validation loss.
    let (_, o) = objective(FinetuneMode::Last);
    let in_slot = slot(o, 12).unwrap();
    let l_plain = plain.eval_loss(model).unwrap();
    let l_slot = in_slot.eval_loss(model).unwrap();
    assert!((l_plain - l_slot).abs() > 1e-4, "{l_plain} vs {l_slot}");
    // Smoothing changes the training loss, never the validation loss.
    let (_, o) = objective(FinetuneMode::Last);
    let smoothed = slot(o, 12).unwrap().with_label_smoothing(0.1).unwrap();
    assert_eq!(smoothed.eval_loss(model).unwrap(), l_slot);
    let train = |o: &FinetuneObjective| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let l = o
            .train_loss(model, 0, 0, &mut rng, elmer::Mode::Eval)
            .unwrap();
        l.loss.to_scalar::<f32>().unwrap()
    };
    // The smoothed loss is (1 - eps) NLL + eps * (mean over the vocabulary of -log p):
    // linear in eps, and not the plain loss.
    let at = |eps: f64| {
        let (_, o) = objective(FinetuneMode::Last);
        train(&slot(o, 12).unwrap().with_label_smoothing(eps).unwrap()) as f64
    };
    let (l0, l1, l2) = (at(0.0), at(0.1), at(0.2));
    assert_eq!(train(&smoothed) as f64, l1);
    assert!((l1 - l0).abs() > 1e-3, "{l0} {l1}");
    assert!(((l2 - l1) - (l1 - l0)).abs() < 1e-4, "{l0} {l1} {l2}");
}

/// Last-layer training in a 10-token generation slot with the options `configure` adds
/// learns: the validation loss drops by more than 0.5 in 60 steps.
fn learns_in_slot(configure: impl FnOnce(FinetuneObjective) -> FinetuneObjective) {
    let dir = tempfile::tempdir().unwrap();
    let (params, obj) = objective(FinetuneMode::Last);
    let obj = configure(obj.with_generation_slot(Some(10)).unwrap());
    let (a, b) = run_steps(params, &obj, dir.path(), 60);
    assert!(b < a - 0.5, "{a} -> {b}");
}

#[test]
fn generation_slot_training_learns_where_the_text_ends() {
    learns_in_slot(|o| o.with_label_smoothing(0.1).unwrap());
}

#[test]
fn best_checkpoint_follows_the_validation_score() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (params, obj) = objective(FinetuneMode::Last);
    // Scripted scores at the evaluations of steps 0, 2, 4, 6: the best is step 4 (a tie
    // with step 2 goes to the later step), whatever the losses do.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let obj = obj.with_validation_scorer(Box::new(move |_m: &elmer::ElmerModel| {
        let i = c.fetch_add(1, Ordering::SeqCst);
        Ok([0.1, 0.9, 0.9, 0.3][i.min(3)])
    }));
    let tc = TrainConfig {
        steps: 6,
        lr: 1e-3,
        warmup_steps: 1,
        eval_every: 2,
        save_every: 2,
        out_dir: dir.path().to_path_buf(),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(params, tc).unwrap();
    t.verbose = false;
    let s = t.run(&obj).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(s.state.best_score, Some((4, 0.9)));
    let scores: Vec<Option<f64>> = s.state.history.iter().map(|e| e.eval_score).collect();
    assert_eq!(scores.iter().flatten().count(), 3, "{scores:?}");
    // best/ holds step 4's weights.
    let read = |p: &str| std::fs::read(dir.path().join(p).join("model.safetensors")).unwrap();
    assert_eq!(read("best"), read("checkpoint-0000004"));
    assert_ne!(read("best"), read("checkpoint-0000006"));
}

#[test]
fn length_buckets_group_similar_sources() {
    let (_, plain) = objective(FinetuneMode::Last);
    let (_, o) = objective(FinetuneMode::Last);
    let bucketed = o.with_length_buckets(8).unwrap();
    let (_, o) = objective(FinetuneMode::Last);
    assert!(o.with_length_buckets(0).is_err());
    let train = pairs(64, 1);
    let spread = |o: &FinetuneObjective| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut total = 0usize;
        for _ in 0..40 {
            let b = o.sample_batch(&mut rng);
            assert_eq!(b.len(), 8);
            assert!(b.iter().all(|p| train.contains(p)));
            let lens: Vec<usize> = b.iter().map(|p| p.source.len()).collect();
            total += lens.iter().max().unwrap() - lens.iter().min().unwrap();
        }
        total
    };
    let (a, b) = (spread(&plain), spread(&bucketed));
    assert!(b * 2 < a, "length spread: plain {a}, bucketed {b}");
}

/// A training draw of `o` as sources, label rows and the plain batch in the 10-token slot.
fn slot_batch(
    params: &Params,
    o: &FinetuneObjective,
    rng: &mut rand::rngs::StdRng,
) -> (Vec<Vec<u32>>, Vec<Vec<u32>>, elmer::train::Batch) {
    let pairs = o.sample_batch(rng);
    let s: Vec<Vec<u32>> = pairs.iter().map(|p| p.source.clone()).collect();
    let l: Vec<Vec<u32>> = pairs.iter().map(|p| p.labels.clone()).collect();
    let batch =
        elmer::train::Batch::from_ids_in_slot(&s, &l, Some(10), params.config(), &Device::Cpu)
            .unwrap();
    (s, l, batch)
}

#[test]
fn glancing_feeds_gold_tokens_and_drops_them_from_the_loss() {
    let (params, o) = objective(FinetuneMode::Last);
    let model = params.model().unwrap();
    for bad in [-0.1, 1.5, f64::NAN] {
        let (_, o) = objective(FinetuneMode::Last);
        assert!(o.with_glancing(bad).is_err(), "{bad}");
    }
    let o = o
        .with_generation_slot(Some(10))
        .unwrap()
        .with_glancing(1.0)
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let (_, l, plain) = slot_batch(&params, &o, &mut rng);
    let before_dec = to_u32_vec2(&plain.decoder_input_ids);
    let glanced = o.glance(&model, plain.clone(), &mut rng).unwrap();
    let dec = to_u32_vec2(&glanced.decoder_input_ids);
    let lab = to_u32_vec2(&glanced.labels);
    let mut kept = 0;
    for (i, row) in l.iter().enumerate() {
        for (j, &y) in row.iter().enumerate() {
            if lab[i][j] == y {
                // Still predicted: its input is the plain slot's.
                assert_eq!(dec[i][j], before_dec[i][j]);
                kept += 1;
            } else {
                // Glanced: the gold token is the input, the label is ignored.
                assert_eq!(lab[i][j], 1);
                assert_eq!(dec[i][j], y);
            }
        }
        // Padding past the text is untouched; at least one label of each row is kept.
        assert!(lab[i].iter().take(row.len()).any(|&x| x != 1));
        assert_eq!(&dec[i][row.len()..], &before_dec[i][row.len()..]);
    }
    assert_eq!(glanced.num_target_tokens, kept);
    assert!(kept < plain.num_target_tokens, "an untrained model glances");
    // Training with glancing learns (validation: the plain slot, no glancing).
    learns_in_slot(|o| o.with_glancing(0.5).unwrap());
}

#[test]
fn order_agnostic_alignment_is_the_most_likely_order_of_the_same_words() {
    use elmer::train::loss::last_layer_loss;
    use elmer::train::Batch;
    let (params, o) = objective(FinetuneMode::Last);
    let model = params.model().unwrap();
    let o = o
        .with_generation_slot(Some(10))
        .unwrap()
        .with_order_agnostic(1.0)
        .unwrap();
    let cfg = params.config().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (s, l, plain) = slot_batch(&params, &o, &mut rng);
    let aligned = o.align_labels(&model, plain.clone()).unwrap();
    let lab = to_u32_vec2(&aligned.labels);
    let mut moved = 0;
    for (i, row) in l.iter().enumerate() {
        let n = row.len();
        // The same words, `</s>` in place, padding untouched.
        let (mut a, mut b) = (lab[i][..n - 1].to_vec(), row[..n - 1].to_vec());
        moved += (a != b) as usize;
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "row {i}");
        assert_eq!(lab[i][n - 1], 2);
        assert!(lab[i][n..].iter().all(|&x| x == 1));
    }
    assert!(moved > 0, "an untrained model prefers some other order");
    assert_eq!(
        aligned.decoder_input_ids.to_vec2::<u32>().unwrap(),
        to_u32_vec2(&plain.decoder_input_ids)
    );
    // The chosen order is the most likely one: its NLL is at most the gold order's and a
    // shuffled order's.
    let nll = |b: &Batch| {
        last_layer_loss(&model, b, elmer::Mode::Eval)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let shuffled: Vec<Vec<u32>> = l
        .iter()
        .map(|row| {
            let mut r = row.clone();
            let n = r.len();
            r[..n - 1].rotate_left(1);
            r
        })
        .collect();
    let shuffled = Batch::from_ids_in_slot(&s, &shuffled, Some(10), &cfg, &Device::Cpu).unwrap();
    let (a, g, r) = (nll(&aligned), nll(&plain), nll(&shuffled));
    assert!(
        a <= g + 1e-5 && a <= r + 1e-5,
        "aligned {a}, gold {g}, rotated {r}"
    );
    assert!(a < g, "aligned {a} vs gold {g}");
    for bad in [-0.1, 1.5, f64::NAN] {
        let (_, o) = objective(FinetuneMode::Last);
        assert!(o.with_order_agnostic(bad).is_err(), "{bad}");
    }
    // With fixed ends, the first and last words stay too; the middle still moves.
    let o = o.with_order_agnostic_fixed_ends(true);
    let lab = to_u32_vec2(&o.align_labels(&model, plain.clone()).unwrap().labels);
    let mut moved = 0;
    for (i, row) in l.iter().enumerate() {
        let n = row.len();
        assert_eq!(lab[i][0], row[0], "row {i}");
        assert_eq!(lab[i][n - 2], row[n - 2], "row {i}");
        moved += (lab[i][..n] != row[..]) as usize;
    }
    assert!(moved > 0);
    // Training with it learns the (ordered) task, fully or mixed with ordered rows.
    learns_in_slot(|o| o.with_order_agnostic(1.0).unwrap());
    learns_in_slot(|o| o.with_order_agnostic(0.5).unwrap());
}
