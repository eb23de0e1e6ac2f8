//! Training losses and gradients against the PyTorch reference
//! (`scripts/fixtures/make_train_fixtures.py`, fixtures in `tests/fixtures/train`): every loss within
//! 1e-5 and the gradient of every parameter within relative 1e-4 (of that gradient's largest
//! entry; 2e-6 absolute floor for gradients that are zero in exact arithmetic).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use elmer::checkpoint::is_body_name;
use elmer::train::Params;
use elmer::train::{loss, Batch};
use elmer::Mode;
use rand::SeedableRng;

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("train/train_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn setup(detach: bool) -> (Params, Batch, HashMap<String, Tensor>) {
    let r = fixture();
    let mut p = Params::from_dir(model_dir("cg"), &Device::Cpu).unwrap();
    let c = p.config_mut();
    c.dropout = 0.0;
    c.attention_dropout = 0.0;
    c.activation_dropout = 0.0;
    c.elmer_detach_copied_states = detach;
    let labels = ids(&r["labels"]);
    let pad = 1u32;
    let n_tgt = to_u32_vec2(&labels)
        .iter()
        .flatten()
        .filter(|&&x| x != pad)
        .count();
    let batch = Batch {
        input_ids: ids(&r["input_ids"]),
        attention_mask: ids(&r["attention_mask"]),
        decoder_input_ids: ids(&r["decoder_input_ids"]),
        target_lengths: ids(&r["decoder_attention_mask"]).sum(1).unwrap(),
        decoder_attention_mask: ids(&r["decoder_attention_mask"]),
        labels,
        num_target_tokens: n_tgt,
        num_source_tokens: 0,
        label_smoothing: 0.0,
        length_loss: 0.0,
    };
    (p, batch, r)
}

fn check(name: &str, params: &Params, loss: &Tensor, r: &HashMap<String, Tensor>) {
    let want = r[&format!("{name}.loss")]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let got = loss.to_scalar::<f32>().unwrap();
    eprintln!("{name}: loss {got} (reference {want})");
    assert!((got - want).abs() < 1e-5, "{name} loss {got} vs {want}");
    let grads = loss.backward().unwrap();
    let mut worst = (0.0f32, String::new());
    for (k, var) in params.vars() {
        let stored = if is_body_name(k) {
            format!("model.{k}")
        } else {
            k.clone()
        };
        let reference = &r[&format!("{name}.grad.{stored}")];
        let g = match grads.get(var.as_tensor()) {
            Some(g) => g.clone(),
            None => Tensor::zeros(var.shape(), DType::F32, &Device::Cpu).unwrap(),
        };
        let diff = max_abs_diff(&g, reference);
        let scale = reference
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let tol = 1e-4 * scale + 2e-6;
        assert!(
            diff <= tol,
            "{name}: gradient of {stored} differs by {diff} (scale {scale})"
        );
        let rel = diff / scale.max(1e-12);
        if scale > 1e-6 && rel > worst.0 {
            worst = (rel, stored);
        }
    }
    eprintln!(
        "{name}: {} gradients match; worst relative diff {:.2e} ({})",
        params.vars().len(),
        worst.0,
        worst.1
    );
}

fn exits(r: &HashMap<String, Tensor>) -> Vec<Tensor> {
    let e = ids(&r["exits"]);
    (0..e.dim(0).unwrap()).map(|a| e.get(a).unwrap()).collect()
}

#[test]
fn lplm_loss_and_gradients_match() {
    for (detach, name) in [(true, "lplm"), (false, "lplm_nodetach")] {
        let (p, batch, r) = setup(detach);
        let model = p.model().unwrap();
        let rng = RefCell::new(rand::rngs::StdRng::seed_from_u64(0));
        let loss = loss::lplm_loss(&model, &batch, &exits(&r), Mode::Train { rng: &rng }).unwrap();
        check(name, &p, &loss, &r);
    }
}

#[test]
fn soft_exit_loss_and_gradients_match() {
    let (p, batch, r) = setup(true);
    let model = p.model().unwrap();
    let rng = RefCell::new(rand::rngs::StdRng::seed_from_u64(0));
    let use_gold = r["use_gold"].to_dtype(DType::U8).unwrap();
    let loss = loss::soft_exit_loss(&model, &batch, &use_gold, Mode::Train { rng: &rng }).unwrap();
    check("soft", &p, &loss, &r);
}

#[test]
fn deep_supervision_and_last_layer_match() {
    let (p, batch, r) = setup(true);
    let model = p.model().unwrap();
    let rng = RefCell::new(rand::rngs::StdRng::seed_from_u64(0));
    let loss = loss::deep_supervision_loss(&model, &batch, Mode::Train { rng: &rng }).unwrap();
    check("deep", &p, &loss, &r);
    let loss = loss::last_layer_loss(&model, &batch, Mode::Train { rng: &rng }).unwrap();
    check("last", &p, &loss, &r);
}

/// Detaching the copied exit states changes the gradients below the top layer (so the
/// comparison above can tell the two apart).
#[test]
fn detach_changes_lower_gradients() {
    let r = fixture();
    let a = &r["lplm.grad.model.decoder.layers.0.fc2.weight"];
    let b = &r["lplm_nodetach.grad.model.decoder.layers.0.fc2.weight"];
    assert!(max_abs_diff(a, b) > 1e-3);
}
