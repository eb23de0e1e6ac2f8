//! Autoregressive greedy decoding against transformers' `BartForConditionalGeneration.generate`
//! (`scripts/fixtures/make_ar_fixtures.py`, fixtures in `tests/fixtures/ar`): ids exactly, per row up to
//! and including EOS.

use std::path::PathBuf;

use crate::common::*;
use candle_core::{Device, Tensor};
use elmer::{generate_greedy, generate_greedy_with, GreedyOptions};
use elmer::{ElmerModel, Error, LoadOptions};
use serde_json::Value;

struct Case {
    name: String,
    opts: GreedyOptions,
    rows: Vec<Vec<u32>>,
}

struct Fixture {
    checkpoint: PathBuf,
    input_ids: Tensor,
    attention_mask: Tensor,
    cases: Vec<Case>,
}

fn u32_rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn rows_tensor(rows: &[Vec<u32>]) -> Tensor {
    let (b, s) = (rows.len(), rows[0].len());
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (b, s), &Device::Cpu).unwrap()
}

fn fixture(name: &str) -> Fixture {
    let path = fixtures().join("ar").join(format!("{name}.json"));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = j["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            opts: GreedyOptions {
                max_new_tokens: c["max_new_tokens"].as_u64().unwrap() as usize,
                min_new_tokens: c["min_new_tokens"].as_u64().unwrap() as usize,
            },
            rows: u32_rows(&c["rows"]),
        })
        .collect();
    Fixture {
        checkpoint: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(j["checkpoint"].as_str().unwrap()),
        input_ids: rows_tensor(&u32_rows(&j["input_ids"])),
        attention_mask: rows_tensor(&u32_rows(&j["attention_mask"])),
        cases,
    }
}

/// Every case of `name`: padded batch, with and without the cross-attention cache, and each
/// example alone (unpadded, batch of 1).
fn check(name: &str) {
    let f = fixture(name);
    let model = ElmerModel::from_dir(&f.checkpoint, &LoadOptions::default()).unwrap();
    let mut enc = model.encode(&f.input_ids, Some(&f.attention_mask)).unwrap();
    for case in &f.cases {
        let got = generate_greedy_with(&model, &enc, &case.opts).unwrap();
        assert_eq!(got, case.rows, "{name}/{}: padded batch", case.name);
    }
    model.cache_cross_attention(&mut enc).unwrap();
    for case in &f.cases {
        let got = generate_greedy_with(&model, &enc, &case.opts).unwrap();
        assert_eq!(
            got, case.rows,
            "{name}/{}: cached cross-attention",
            case.name
        );
    }
    let lens: Vec<usize> = to_u32_vec2(&f.attention_mask)
        .iter()
        .map(|r| r.iter().filter(|&&m| m == 1).count())
        .collect();
    for (b, &n) in lens.iter().enumerate() {
        let ids = f
            .input_ids
            .narrow(0, b, 1)
            .unwrap()
            .narrow(1, 0, n)
            .unwrap();
        let enc1 = model.encode(&ids, None).unwrap();
        for case in &f.cases {
            let got = generate_greedy_with(&model, &enc1, &case.opts).unwrap();
            assert_eq!(
                got[0], case.rows[b],
                "{name}/{}: example {b} alone",
                case.name
            );
        }
    }
    eprintln!(
        "{name}: {} cases match, row lengths {:?}",
        f.cases.len(),
        f.cases
            .iter()
            .map(|c| c.rows.iter().map(Vec::len).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
}

#[test]
fn cg_matches_transformers_generate() {
    check("cg");
}

#[test]
fn cg_with_eos_matches_transformers_generate() {
    // Rows stop at different steps (5, 15, none within 24): per-row stopping and <pad> feeding.
    let f = fixture("cg_eos");
    let lens: Vec<usize> = f.cases[0].rows.iter().map(Vec::len).collect();
    assert_eq!(lens, [5, 15, 24], "fixture should exercise early stopping");
    check("cg_eos");
}

#[test]
fn bare_model_matches_transformers_generate() {
    check("bare");
}

#[test]
fn tiny_random_bart_matches_transformers_generate() {
    check("tiny_random_bart");
}

#[test]
fn default_entry_point_stops_at_eos() {
    let f = fixture("cg_eos");
    let model = ElmerModel::from_dir(&f.checkpoint, &LoadOptions::default()).unwrap();
    let enc = model.encode(&f.input_ids, Some(&f.attention_mask)).unwrap();
    let rows = generate_greedy(&model, &enc, 24).unwrap();
    assert_eq!(rows, f.cases[0].rows);
    // A shorter limit truncates every row at the limit (or its EOS).
    let rows = generate_greedy(&model, &enc, 7).unwrap();
    let want: Vec<Vec<u32>> = f.cases[0]
        .rows
        .iter()
        .map(|r| r[..r.len().min(7)].to_vec())
        .collect();
    assert_eq!(rows, want);
    // Exactly N tokens, EOS never chosen.
    let rows = generate_greedy_with(&model, &enc, &GreedyOptions::exact(10)).unwrap();
    assert!(rows.iter().all(|r| r.len() == 10 && !r.contains(&2)));
}

#[test]
fn bad_lengths_are_errors() {
    let f = fixture("cg");
    let model = ElmerModel::from_dir(&f.checkpoint, &LoadOptions::default()).unwrap();
    let enc = model.encode(&f.input_ids, Some(&f.attention_mask)).unwrap();
    let too_long = model.max_target_len() + 1;
    for opts in [
        GreedyOptions::new(0),
        GreedyOptions::new(too_long),
        GreedyOptions {
            max_new_tokens: 4,
            min_new_tokens: 5,
        },
    ] {
        match generate_greedy_with(&model, &enc, &opts) {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("{opts:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    // The whole position table is usable.
    let rows =
        generate_greedy_with(&model, &enc, &GreedyOptions::exact(model.max_target_len())).unwrap();
    assert!(rows.iter().all(|r| r.len() == model.max_target_len()));
}
