//! The training loop: loss goes down, checkpoints load, a killed and resumed run follows the
//! same trajectory as an uninterrupted one.

use crate::common::*;
use candle_core::Device;
use elmer::train::Params;
use elmer::train::{Document, LplmConfig, LplmObjective};
use elmer::train::{TrainConfig, Trainer};
use elmer::{DecodeOptions, ElmerModel, ExitPolicy, LoadOptions};
use rand::{Rng, SeedableRng};

/// Synthetic documents over the cg fixture's 128-token vocabulary: sentences of random
/// content ids ending with a full stop (id 4).
fn docs(n: usize, seed: u64) -> Vec<Document> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(6..20);
            let mut ids = vec![0u32];
            for j in 0..len {
                ids.push(if j % 7 == 6 {
                    4
                } else {
                    rng.random_range(5..120)
                });
            }
            ids.push(2);
            let word_start = vec![true; ids.len()];
            Document { ids, word_start }
        })
        .collect()
}

fn setup(out: &std::path::Path, steps: usize) -> (Trainer, LplmObjective) {
    let params = Params::from_dir(model_dir("cg"), &Device::Cpu).unwrap();
    let cfg = params.config().clone();
    let obj = LplmObjective::new(
        docs(40, 1),
        docs(8, 2),
        LplmConfig {
            batch_size: 4,
            k: 2,
            eval_k: 1,
            eval_batch_size: 8,
            ..LplmConfig::default()
        },
        &cfg,
        7,
        &Device::Cpu,
    )
    .unwrap();
    let tc = TrainConfig {
        steps,
        lr: 3e-3,
        warmup_steps: 2,
        grad_accum: 2,
        max_grad_norm: Some(1.0),
        eval_every: 3,
        save_every: 3,
        log_every: 1,
        keep_checkpoints: 2,
        out_dir: out.to_path_buf(),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(params, tc).unwrap();
    t.verbose = false;
    (t, obj)
}

#[test]
fn killed_and_resumed_run_follows_the_same_trajectory() {
    let a = tempfile::tempdir().unwrap();
    let (mut full, obj) = setup(a.path(), 6);
    let s_full = full.run(&obj).unwrap();

    let b = tempfile::tempdir().unwrap();
    let (mut first, obj_b) = setup(b.path(), 6);
    first.run_until(&obj_b, 4).unwrap(); // checkpoint at 3, then "killed" during step 4..
    drop(first);
    let (mut second, obj_b) = setup(b.path(), 6);
    assert_eq!(second.resume().unwrap(), 3);
    let s_res = second.run(&obj_b).unwrap();
    assert_eq!(s_res.resumed_from, 3);

    let la: Vec<f64> = s_full.state.history.iter().map(|e| e.loss).collect();
    let lb: Vec<f64> = s_res.state.history.iter().map(|e| e.loss).collect();
    assert_eq!(la.len(), 6);
    assert_eq!(lb.len(), 6);
    for (x, y) in la.iter().zip(&lb) {
        assert!(
            (x - y).abs() < 1e-6,
            "loss trajectories differ: {la:?} vs {lb:?}"
        );
    }
    // Final weights agree too.
    let wa = full.params().tensors();
    let wb = second.params().tensors();
    for (k, t) in &wa {
        assert!(max_abs_diff(t, &wb[k]) < 1e-6, "{k} differs after resume");
    }
}

#[test]
fn loss_decreases_and_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, obj) = setup(dir.path(), 24);
    let acc_before = obj.reconstruction_accuracy(t.model()).unwrap();
    let s = t.run(&obj).unwrap();
    let first = s.state.initial_eval_loss.unwrap();
    let last = s.state.history.last().unwrap().eval_loss.unwrap();
    assert!(
        last < first - 0.3,
        "eval loss did not go down: {first} -> {last}"
    );
    let acc_after = obj.reconstruction_accuracy(t.model()).unwrap();
    assert_eq!(acc_after.len(), 3);
    assert!(acc_after.iter().sum::<f64>() > acc_before.iter().sum::<f64>());
    // The latest checkpoint and best/ load as ordinary checkpoints.
    let latest = Trainer::latest_checkpoint(dir.path()).unwrap();
    assert!(latest.ends_with("checkpoint-0000024"));
    for d in [latest, dir.path().join("best")] {
        let m = ElmerModel::from_dir(&d, &LoadOptions::default()).unwrap();
        let ids = candle_core::Tensor::new(&[[0u32, 7, 9, 2]], &Device::Cpu).unwrap();
        let enc = m.encode(&ids, None).unwrap();
        m.decode(
            &enc,
            &m.slot_input(1, 4).unwrap(),
            None,
            &DecodeOptions::new(ExitPolicy::Soft),
        )
        .unwrap();
    }
    // Only the last `keep_checkpoints` are kept.
    let n = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("checkpoint-")
        })
        .count();
    assert_eq!(n, 2);
}

/// A run killed while it replaced `best/` (old one moved away, new one not in yet) or while it
/// wrote a checkpoint (a stale `.tmp-checkpoint-*`) resumes with `best/` back and the stale
/// temporary directory gone.
#[test]
fn interrupted_saves_are_repaired_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, obj) = setup(dir.path(), 6);
    first.run_until(&obj, 4).unwrap();
    drop(first);
    let best = dir.path().join("best");
    assert!(best.is_dir());
    std::fs::rename(&best, dir.path().join(".old-best")).unwrap();
    let stale = dir.path().join(".tmp-checkpoint-0000005");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), b"partial").unwrap();
    let (mut second, obj) = setup(dir.path(), 6);
    assert_eq!(second.resume().unwrap(), 3);
    assert!(best.is_dir(), "best/ was not restored");
    assert!(!dir.path().join(".old-best").exists());
    assert!(!stale.exists(), "stale temporary checkpoint left behind");
    ElmerModel::from_dir(&best, &LoadOptions::default()).unwrap();
    second.run(&obj).unwrap();
}

/// Micro-batches run on two threads at once take the same steps as one after the other:
/// the same losses and the same weights (up to the rounding of single-threaded kernels).
#[test]
fn concurrent_micro_batches_take_the_same_steps() {
    let a = tempfile::tempdir().unwrap();
    let (mut seq, obj) = setup(a.path(), 4);
    let s_seq = seq.run(&obj).unwrap();
    let b = tempfile::tempdir().unwrap();
    let (mut par, obj_b) = setup(b.path(), 4);
    par.set_micro_batch_threads(2).unwrap();
    let s_par = par.run(&obj_b).unwrap();
    let la: Vec<f64> = s_seq.state.history.iter().map(|e| e.loss).collect();
    let lb: Vec<f64> = s_par.state.history.iter().map(|e| e.loss).collect();
    assert_eq!(la.len(), 4);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-5, "losses differ: {la:?} vs {lb:?}");
    }
    let wa = seq.params().tensors();
    let wb = par.params().tensors();
    for (k, t) in &wa {
        assert!(max_abs_diff(t, &wb[k]) < 1e-5, "{k} differs");
    }
    assert!(par.set_micro_batch_threads(0).is_err());
}
