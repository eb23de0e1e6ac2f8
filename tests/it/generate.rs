//! Library-level generation invariants: batch size and input order do not matter, runs are
//! deterministic, output stops before the first `</s>`, the slot length is `max_len`, exit
//! statistics add up, and bad options are errors.
//!
//! Checkpoints: `tests/fixtures/model/cg` (vocab 128, L = 3, `concat_head`, no tokenizer: ids
//! only) and `tests/fixtures/tiny-random-bart` (bare `BartModel`, vocab 1000, L = 2, with
//! tokenizer files), plus a temporary copy of it with a random `concat_head.weight` for soft
//! exit from text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use elmer::checkpoint::Weights;
use elmer::{collapse_repeated_words, ExitStats, Generation, GenerationConfig, Generator};
use elmer::{BartTokenizer, DecodeOptions, ElmerModel, Error, ExitPolicy, LoadOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cg_dir() -> PathBuf {
    fixtures().join("model/cg")
}

fn tiny_dir() -> PathBuf {
    fixtures().join("tiny-random-bart")
}

fn load(dir: &Path) -> ElmerModel {
    ElmerModel::from_dir(dir, &LoadOptions::default()).unwrap()
}

fn tokenizer(dir: &Path) -> BartTokenizer {
    BartTokenizer::from_dir(dir).unwrap()
}

/// `cg` with `final_logits_bias[eos] += shift` (built in memory).
fn cg_with_eos_shift(shift: f32) -> ElmerModel {
    let (cfg, w, _) = elmer::checkpoint::load_dir(cg_dir(), &LoadOptions::default()).unwrap();
    let mut map: HashMap<String, Tensor> = w.map().clone();
    let bias = map["final_logits_bias"].clone();
    let mut v: Vec<f32> = bias.flatten_all().unwrap().to_vec1().unwrap();
    v[cfg.eos_token_id as usize] += shift;
    map.insert(
        "final_logits_bias".into(),
        Tensor::from_vec(v, bias.dims(), &Device::Cpu).unwrap(),
    );
    ElmerModel::from_weights(cfg, &Weights::new(map)).unwrap()
}

const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer_config.json",
];

/// A temporary copy of tiny-random-bart with a random `concat_head.weight` [16, 32] (seeded),
/// saved with `checkpoint::save_dir`, tokenizer files copied along.
fn tiny_with_concat_head() -> tempfile::TempDir {
    tiny_copy(1.0)
}

/// Like [`tiny_with_concat_head`], with the cross-attention value projections scaled by 30.
/// The random checkpoint's outputs hardly depend on the source (every input gets the same
/// argmaxes, in the PyTorch reference too), which would make order and batch tests vacuous;
/// with the scaled projections different sources give different outputs.
fn tiny_sensitive() -> tempfile::TempDir {
    tiny_copy(30.0)
}

/// tiny-random-bart + random `concat_head`, cross-attention values scaled by `cross_scale`.
fn tiny_copy(cross_scale: f64) -> tempfile::TempDir {
    let (cfg, w, _) = elmer::checkpoint::load_dir(tiny_dir(), &LoadOptions::default()).unwrap();
    let d = cfg.d_model;
    let mut rng = StdRng::seed_from_u64(7);
    let data: Vec<f32> = (0..d * 2 * d)
        .map(|_| rng.random_range(-0.5f32..0.5))
        .collect();
    let mut map = w.map().clone();
    if cross_scale != 1.0 {
        for (k, t) in map.iter_mut() {
            if k.contains("encoder_attn.v_proj") {
                *t = (t.clone() * cross_scale).unwrap();
            }
        }
    }
    map.insert(
        "concat_head.weight".into(),
        Tensor::from_vec(data, (d, 2 * d), &Device::Cpu).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    elmer::checkpoint::save_dir(dir.path(), &cfg, &map).unwrap();
    for f in TOKENIZER_FILES {
        std::fs::copy(tiny_dir().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn config(max_len: usize, policy: ExitPolicy, batch_size: usize) -> GenerationConfig {
    GenerationConfig {
        max_len,
        policy: Some(policy),
        batch_size,
        ..GenerationConfig::default()
    }
}

/// Framed random sources `<s> x.. </s>` of lengths 2..=max_len, ids in 3..vocab-1.
fn random_sources(seed: u64, n: usize, vocab: u32, max_len: usize) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(0..=max_len - 2);
            let mut s = vec![0u32];
            s.extend((0..len).map(|_| rng.random_range(3..vocab - 1)));
            s.push(2);
            s
        })
        .collect()
}

const TEXTS: [&str; 9] = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "ELMER exits early, layer by layer, and fills every position at once.",
    "What is the capital of France?",
    "   leading and trailing spaces   ",
    "numbers 1 2 3 4 5 6 7 8 9 10 11 12",
    "émigré café naïve 東京",
    "",
];

/// A generation without its latency: text, ids, exit layers, num_tokens, ended.
type Stripped = (String, Vec<u32>, Vec<u32>, usize, bool);

/// Everything but the latency (which is a timing).
fn strip(gs: &[Generation]) -> Vec<Stripped> {
    gs.iter()
        .map(|g| {
            (
                g.text.clone(),
                g.ids.clone(),
                g.exit_layers.clone(),
                g.num_tokens,
                g.ended,
            )
        })
        .collect()
}

fn gen_ids(model: &ElmerModel, cfg: GenerationConfig, src: &[Vec<u32>]) -> Vec<Generation> {
    Generator::new(model, cfg)
        .unwrap()
        .generate_ids(src)
        .unwrap()
}

fn gen_text(
    model: &ElmerModel,
    tok: &BartTokenizer,
    cfg: GenerationConfig,
    texts: &[&str],
) -> Vec<Generation> {
    Generator::new(model, cfg)
        .unwrap()
        .with_tokenizer(tok)
        .generate(texts)
        .unwrap()
}

/// Basic shape checks every generation must pass.
fn check_shape(gs: &[Generation], max_len: usize, layers: u32, eos: u32) {
    for g in gs {
        assert_eq!(g.num_tokens, g.ids.len());
        assert_eq!(g.exit_layers.len(), g.ids.len());
        assert!(!g.ids.contains(&eos), "{:?}", g.ids);
        assert!(g.exit_layers.iter().all(|&l| (1..=layers).contains(&l)));
        assert!(g.ids.len() <= max_len);
        if !g.ended {
            assert_eq!(g.ids.len(), max_len);
        }
        assert!(g.latency_ms.is_finite() && g.latency_ms >= 0.0);
    }
}

fn cg_policies() -> Vec<ExitPolicy> {
    vec![
        ExitPolicy::LastLayer,
        // Entropies of this random model are close to ln(128) = 4.85; with these thresholds
        // tokens exit at every layer (about 22/11/67 % and 56/25/19 % on random sources).
        ExitPolicy::Hard { threshold: 3.95 },
        ExitPolicy::Hard { threshold: 4.065 },
        ExitPolicy::Soft,
    ]
}

#[test]
fn batch_size_does_not_change_ids() {
    let model = load(&cg_dir());
    let src = random_sources(1, 11, 128, 30);
    for policy in cg_policies() {
        let base = strip(&gen_ids(&model, config(24, policy.clone(), 1), &src));
        check_shape(
            &gen_ids(&model, config(24, policy.clone(), 1), &src),
            24,
            3,
            2,
        );
        let distinct: std::collections::HashSet<_> = base.iter().map(|g| g.1.clone()).collect();
        assert!(
            distinct.len() > 1,
            "{}: every source gave the same ids",
            policy.name()
        );
        for bs in [2, 3, 7, 16] {
            let got = strip(&gen_ids(&model, config(24, policy.clone(), bs), &src));
            assert_eq!(got, base, "{} batch size {bs}", policy.name());
        }
    }
    // Hard exit uses every layer on these sources (the test is not vacuous).
    let gs = gen_ids(
        &model,
        config(24, ExitPolicy::Hard { threshold: 4.0 }, 4),
        &src,
    );
    let layers: std::collections::HashSet<u32> =
        gs.iter().flat_map(|g| g.exit_layers.clone()).collect();
    assert_eq!(layers.len(), 3, "{layers:?}");
}

#[test]
fn batch_size_does_not_change_text() {
    let concat = tiny_with_concat_head();
    let sens = tiny_sensitive();
    let cases = [
        (tiny_dir(), ExitPolicy::LastLayer, false),
        (tiny_dir(), ExitPolicy::Hard { threshold: 0.5 }, false),
        (tiny_dir(), ExitPolicy::Hard { threshold: 100.0 }, false),
        (concat.path().to_path_buf(), ExitPolicy::Soft, false),
        (sens.path().to_path_buf(), ExitPolicy::LastLayer, true),
        (sens.path().to_path_buf(), ExitPolicy::Soft, true),
    ];
    for (dir, policy, varied) in cases {
        let model = load(&dir);
        let tok = tokenizer(&dir);
        let base = gen_text(&model, &tok, config(20, policy.clone(), 1), &TEXTS);
        assert_eq!(base.len(), TEXTS.len());
        check_shape(&base, 20, 2, 2);
        let distinct: std::collections::HashSet<_> = base.iter().map(|g| g.ids.clone()).collect();
        if varied {
            assert!(distinct.len() > 3, "{}: {}", policy.name(), distinct.len());
        }
        for g in &base {
            assert_eq!(g.text, tok.decode(&g.ids).unwrap());
        }
        for bs in [2, 3, 7] {
            let got = gen_text(&model, &tok, config(20, policy.clone(), bs), &TEXTS);
            assert_eq!(strip(&got), strip(&base), "{} batch {bs}", policy.name());
        }
    }
}

#[test]
fn input_order_does_not_matter() {
    let model = load(&cg_dir());
    let src = random_sources(2, 13, 128, 25);
    let mut rng = StdRng::seed_from_u64(3);
    for policy in cg_policies() {
        let base = strip(&gen_ids(&model, config(16, policy.clone(), 4), &src));
        for _ in 0..3 {
            let mut perm: Vec<usize> = (0..src.len()).collect();
            perm.shuffle(&mut rng);
            let shuffled: Vec<Vec<u32>> = perm.iter().map(|&i| src[i].clone()).collect();
            let got = strip(&gen_ids(&model, config(16, policy.clone(), 4), &shuffled));
            for (k, &i) in perm.iter().enumerate() {
                assert_eq!(got[k], base[i], "{} position {k}", policy.name());
            }
        }
    }
    // Text path, on the copy whose outputs depend on the source.
    let dir = tiny_sensitive();
    let model = load(dir.path());
    let tok = tokenizer(dir.path());
    for policy in [ExitPolicy::LastLayer, ExitPolicy::Soft] {
        let base = strip(&gen_text(
            &model,
            &tok,
            config(12, policy.clone(), 2),
            &TEXTS,
        ));
        let rev: Vec<&str> = TEXTS.iter().rev().copied().collect();
        let got = strip(&gen_text(&model, &tok, config(12, policy.clone(), 2), &rev));
        let mut back = got.clone();
        back.reverse();
        assert_eq!(back, base, "{}", policy.name());
        assert_ne!(
            got,
            base,
            "{}: outputs do not depend on the source",
            policy.name()
        );
    }
}

#[test]
fn runs_are_deterministic() {
    let model = load(&cg_dir());
    let src = random_sources(4, 9, 128, 40);
    for policy in cg_policies() {
        let mut g = Generator::new(&model, config(32, policy.clone(), 3)).unwrap();
        let a = strip(&g.generate_ids(&src).unwrap());
        let b = strip(&g.generate_ids(&src).unwrap());
        let c = strip(&gen_ids(&model, config(32, policy.clone(), 3), &src));
        assert_eq!(a, b, "{}", policy.name());
        assert_eq!(a, c, "{}", policy.name());
    }
    let tok = tokenizer(&tiny_dir());
    let tiny = load(&tiny_dir());
    let a = gen_text(&tiny, &tok, config(16, ExitPolicy::LastLayer, 4), &TEXTS);
    let b = gen_text(&tiny, &tok, config(16, ExitPolicy::LastLayer, 4), &TEXTS);
    assert_eq!(strip(&a), strip(&b));
}

/// Raw slot ids (no eos cut) of every source, one source at a time.
fn raw_ids(
    model: &ElmerModel,
    src: &[Vec<u32>],
    max_len: usize,
    policy: &ExitPolicy,
) -> Vec<(Vec<u32>, Vec<u32>)> {
    src.iter()
        .map(|s| {
            let ids = Tensor::new(s.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let enc = model.encode(&ids, None).unwrap();
            let out = model.decode_slot(&enc, max_len, policy.clone()).unwrap();
            let ids: Vec<u32> = out.ids.squeeze(0).unwrap().to_vec1().unwrap();
            let ex: Vec<u32> = out.exit_layers.squeeze(0).unwrap().to_vec1().unwrap();
            (ids, ex)
        })
        .collect()
}

#[test]
fn output_stops_before_the_first_eos() {
    let eos = 2u32;
    let max_len = 24;
    let src = random_sources(5, 24, 128, 30);
    // Find a bias shift that makes `</s>` the argmax somewhere inside some slots but not all.
    let mut found = None;
    for step in 1..=24 {
        let shift = step as f32 * 0.25;
        let model = cg_with_eos_shift(shift);
        let raw = raw_ids(&model, &src, max_len, &ExitPolicy::LastLayer);
        let inside = raw
            .iter()
            .filter(|(r, _)| r.iter().skip(1).any(|&i| i == eos) && r[0] != eos)
            .count();
        let without = raw.iter().filter(|(r, _)| !r.contains(&eos)).count();
        if inside > 0 && without > 0 {
            found = Some(shift);
            break;
        }
    }
    let shift = found.expect("no bias shift puts </s> inside some slots");
    let model = cg_with_eos_shift(shift);
    let mut saw = [false; 2];
    for policy in cg_policies() {
        let raw = raw_ids(&model, &src, max_len, &policy);
        let gs = gen_ids(&model, config(max_len, policy.clone(), 5), &src);
        check_shape(&gs, max_len, 3, eos);
        for ((r, ex), g) in raw.iter().zip(&gs) {
            match r.iter().position(|&i| i == eos) {
                Some(p) => {
                    saw[0] |= p > 0;
                    assert!(g.ended, "{}", policy.name());
                    assert_eq!(g.ids, r[..p], "{}", policy.name());
                    assert_eq!(g.exit_layers, ex[..p], "{}", policy.name());
                    assert_eq!(g.num_tokens, p);
                }
                None => {
                    saw[1] = true;
                    assert!(!g.ended);
                    assert_eq!(&g.ids, r);
                    assert_eq!(&g.exit_layers, ex);
                    assert_eq!(g.num_tokens, max_len);
                }
            }
        }
    }
    assert!(saw[0] && saw[1], "{saw:?}");

    // `</s>` really is the argmax of the exit-layer logits at the cut position.
    let gs = gen_ids(&model, config(max_len, ExitPolicy::LastLayer, 8), &src);
    let (i, g) = gs
        .iter()
        .enumerate()
        .find(|(_, g)| g.ended && g.num_tokens > 0)
        .unwrap();
    let ids = Tensor::new(src[i].as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let enc = model.encode(&ids, None).unwrap();
    let slot = model.slot_input(1, max_len).unwrap();
    let out = model
        .decode(
            &enc,
            &slot,
            None,
            &DecodeOptions::new(ExitPolicy::LastLayer).with_logits(),
        )
        .unwrap();
    let logits = out.logits.unwrap().squeeze(0).unwrap();
    let argmax: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    assert_eq!(argmax[g.num_tokens], eos);
    assert_eq!(argmax[..g.num_tokens], g.ids[..]);
}

#[test]
fn slot_length_is_max_len() {
    let model = load(&cg_dir());
    let src = random_sources(6, 10, 128, 60);
    // Plain cg never generates </s>: every output fills the slot, whatever the source length.
    for max_len in [1, 2, 7, 33, model.max_target_len()] {
        for policy in cg_policies() {
            let gs = gen_ids(&model, config(max_len, policy.clone(), 4), &src);
            for g in &gs {
                assert!(!g.ended);
                assert_eq!(g.ids.len(), max_len, "{} max_len {max_len}", policy.name());
                assert_eq!(g.exit_layers.len(), max_len);
            }
        }
    }
    // The text path fills the slot exactly too when no </s> comes.
    let tiny = load(&tiny_dir());
    let tok = tokenizer(&tiny_dir());
    for max_len in [1, 5, 30] {
        let gs = gen_text(
            &tiny,
            &tok,
            config(max_len, ExitPolicy::LastLayer, 3),
            &TEXTS,
        );
        for g in gs.iter().filter(|g| !g.ended) {
            assert_eq!(g.ids.len(), max_len);
        }
    }
}

#[test]
fn collapse_repeats_is_the_authors_post_processing() {
    assert_eq!(
        collapse_repeated_words("the the cat cat  cat sat on the the mat the"),
        "the cat sat on the mat the"
    );
    assert_eq!(collapse_repeated_words("  "), "");
    assert_eq!(collapse_repeated_words("a A a"), "a A a");
    let model = load(&tiny_dir());
    let tok = tokenizer(&tiny_dir());
    let plain = gen_text(&model, &tok, config(40, ExitPolicy::LastLayer, 4), &TEXTS);
    let mut cfg = config(40, ExitPolicy::LastLayer, 4);
    cfg.collapse_repeats = true;
    let collapsed = gen_text(&model, &tok, cfg, &TEXTS);
    for (p, c) in plain.iter().zip(&collapsed) {
        assert_eq!(c.text, collapse_repeated_words(&p.text));
        // Ids and exit layers are left as generated.
        assert_eq!(c.ids, p.ids);
        assert_eq!(c.exit_layers, p.exit_layers);
    }
}

#[test]
fn exit_statistics_accumulate() {
    let model = load(&cg_dir());
    let policy = ExitPolicy::Hard { threshold: 4.0 };
    let mut g = Generator::new(&model, config(20, policy, 3)).unwrap();
    assert_eq!(g.stats().total(), 0);
    assert_eq!(g.stats().counts.len(), 3);
    let a = g.generate_ids(&random_sources(7, 5, 128, 20)).unwrap();
    let after_a = g.stats().clone();
    let b = g.generate_ids(&random_sources(8, 6, 128, 20)).unwrap();
    let mut expect = ExitStats::new(3);
    for x in a.iter().chain(&b) {
        expect.add(&x.exit_layers);
    }
    assert_eq!(g.stats(), &expect);
    let tokens: usize = a.iter().chain(&b).map(|x| x.num_tokens).sum();
    assert_eq!(g.stats().total() as usize, tokens);
    assert!(g.stats().total() > after_a.total());
    let fr = g.stats().fractions();
    assert_eq!(fr.len(), 3);
    assert!((fr.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{fr:?}");
    assert!(fr.iter().all(|&f| f > 0.0), "{fr:?}");
    let mean = g.stats().mean_layer();
    assert!((1.0..=3.0).contains(&mean));
    assert!(g.stats().to_string().contains(&format!("{tokens} tokens")));
    // Last layer: everything at L.
    let mut g = Generator::new(&model, config(20, ExitPolicy::LastLayer, 3)).unwrap();
    g.generate_ids(&random_sources(9, 4, 128, 20)).unwrap();
    assert_eq!(g.stats().fractions(), vec![0.0, 0.0, 1.0]);
}

#[test]
fn hard_exit_with_threshold_zero_is_last_layer() {
    let model = load(&cg_dir());
    let src = random_sources(10, 12, 128, 30);
    let last = gen_ids(&model, config(24, ExitPolicy::LastLayer, 5), &src);
    let hard = gen_ids(
        &model,
        config(24, ExitPolicy::Hard { threshold: 0.0 }, 5),
        &src,
    );
    assert_eq!(strip(&hard), strip(&last));
    assert!(hard.iter().all(|g| g.exit_layers.iter().all(|&l| l == 3)));
    let tiny = load(&tiny_dir());
    let tok = tokenizer(&tiny_dir());
    let last = gen_text(&tiny, &tok, config(16, ExitPolicy::LastLayer, 5), &TEXTS);
    let hard = gen_text(
        &tiny,
        &tok,
        config(16, ExitPolicy::Hard { threshold: 0.0 }, 5),
        &TEXTS,
    );
    assert_eq!(strip(&hard), strip(&last));
    // A threshold above ln(vocab) sends every token out at layer 1.
    let all1 = gen_text(
        &tiny,
        &tok,
        config(16, ExitPolicy::Hard { threshold: 100.0 }, 5),
        &TEXTS,
    );
    assert!(all1.iter().all(|g| g.exit_layers.iter().all(|&l| l == 1)));
}

#[test]
fn soft_exit_from_text_uses_the_concat_head() {
    let dir = tiny_with_concat_head();
    let model = load(dir.path());
    assert!(model.has_concat_head());
    let tok = tokenizer(dir.path());
    let soft = gen_text(&model, &tok, config(16, ExitPolicy::Soft, 4), &TEXTS);
    check_shape(&soft, 16, 2, 2);
    assert!(soft.iter().all(|g| g.exit_layers.iter().all(|&l| l == 2)));
    // The soft pass is not the plain pass.
    let last = gen_text(&model, &tok, config(16, ExitPolicy::LastLayer, 4), &TEXTS);
    assert_ne!(strip(&soft), strip(&last));
}

#[test]
fn empty_input_list_gives_empty_output() {
    let model = load(&cg_dir());
    let mut g = Generator::new(&model, GenerationConfig::default()).unwrap();
    assert!(g.generate_ids(&[]).unwrap().is_empty());
    assert_eq!(g.stats().total(), 0);
}

fn is_invalid(e: &Error, name: &str) -> bool {
    matches!(e, Error::InvalidArgument { name: n, .. } if n == name)
}

#[test]
fn bad_options_are_errors() {
    let cg = load(&cg_dir());
    let tiny = load(&tiny_dir());
    let err = |m: &ElmerModel, c: GenerationConfig| Generator::new(m, c).err().unwrap();

    let e = err(&cg, config(0, ExitPolicy::LastLayer, 1));
    assert!(is_invalid(&e, "max_len"), "{e}");
    let e = err(
        &cg,
        config(cg.max_target_len() + 1, ExitPolicy::LastLayer, 1),
    );
    assert!(is_invalid(&e, "max_len"), "{e}");
    assert!(e.to_string().contains("position table"), "{e}");
    let e = err(&cg, config(8, ExitPolicy::LastLayer, 0));
    assert!(is_invalid(&e, "batch_size"), "{e}");
    let fixed = Tensor::ones((1, 8), candle_core::DType::U32, &Device::Cpu).unwrap();
    let e = err(&cg, config(8, ExitPolicy::Fixed(fixed), 1));
    assert!(is_invalid(&e, "policy"), "{e}");
    let e = err(&tiny, config(8, ExitPolicy::Soft, 1));
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("concat_head"), "{e}");
    for t in [-1.0, f64::NAN, f64::INFINITY] {
        let e = err(&cg, config(8, ExitPolicy::Hard { threshold: t }, 1));
        assert!(is_invalid(&e, "policy"), "{t}: {e}");
    }
    let mut c = config(8, ExitPolicy::LastLayer, 1);
    c.max_source_len = Some(1);
    let e = err(&cg, c);
    assert!(is_invalid(&e, "max_source_len"), "{e}");

    let mut g = Generator::new(&cg, config(8, ExitPolicy::LastLayer, 2)).unwrap();
    let e = g.generate_ids(&[vec![0, 5, 2], vec![]]).unwrap_err();
    assert!(
        is_invalid(&e, "sources") && e.to_string().contains("source 1"),
        "{e}"
    );
    let e = g.generate_ids(&[vec![0, 128, 2]]).unwrap_err();
    assert!(
        is_invalid(&e, "sources") && e.to_string().contains("128"),
        "{e}"
    );
    let too_long = vec![5u32; cg.max_source_len() + 1];
    let e = g.generate_ids(&[too_long]).unwrap_err();
    assert!(is_invalid(&e, "sources"), "{e}");
    let e = g.generate(&["hello"]).unwrap_err();
    assert!(is_invalid(&e, "tokenizer"), "{e}");
    // Failed calls add nothing to the statistics.
    assert_eq!(g.stats().total(), 0);

    // A source limit truncates text input instead of failing.
    let tok = tokenizer(&tiny_dir());
    let mut c = config(8, ExitPolicy::LastLayer, 2);
    c.max_source_len = Some(4);
    let mut g = Generator::new(&tiny, c).unwrap().with_tokenizer(&tok);
    assert_eq!(g.max_source_len(), 4);
    assert_eq!(g.generate(&TEXTS).unwrap().len(), TEXTS.len());
}

/// Bounded memory: a large batch is cut into model calls of at most `max_batch_tokens`
/// padded source tokens, and off-ramp decisions over more than 1,024 token rows run in
/// chunks; neither changes a single output.
#[test]
fn token_budget_and_offramp_chunks_do_not_change_outputs() {
    let model = load(&cg_dir());
    let src = random_sources(21, 48, 128, 30);
    for policy in cg_policies() {
        let base = strip(&gen_ids(&model, config(32, policy.clone(), 1), &src));
        // 48 x 32 = 1,536 slot rows in one call: the off-ramp runs in two chunks.
        let big = strip(&gen_ids(&model, config(32, policy.clone(), 48), &src));
        assert_eq!(big, base, "{} batch 48", policy.name());
        let mut cfg = config(32, policy.clone(), 48);
        cfg.max_batch_tokens = 40; // one or two sources per model call
        let cut = strip(&gen_ids(&model, cfg, &src));
        assert_eq!(cut, base, "{} max_batch_tokens 40", policy.name());
    }
    let mut cfg = config(8, ExitPolicy::LastLayer, 4);
    cfg.max_batch_tokens = 0;
    assert!(Generator::new(&model, cfg).is_err());
}

/// `generate_each` streams results in input order, window by window, equal to `generate`.
#[test]
fn generate_each_streams_in_input_order() {
    let dir = tiny_dir();
    let model = load(&dir);
    let tok = tokenizer(&dir);
    let texts: Vec<String> = (0..150)
        .map(|i| TEXTS[i % TEXTS.len()].repeat(1 + i % 3))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let all = gen_text(&model, &tok, config(16, ExitPolicy::LastLayer, 2), &refs);
    let mut g = Generator::new(&model, config(16, ExitPolicy::LastLayer, 2))
        .unwrap()
        .with_tokenizer(&tok);
    let mut seen = Vec::new();
    let n = g
        .generate_each(texts.iter().map(Ok::<_, Error>), |i, gen| {
            assert_eq!(i, seen.len());
            seen.push(gen);
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 150);
    assert_eq!(strip(&seen), strip(&all));
    // An error from the sink stops the run with that error.
    let e = g
        .generate_each(texts.iter().map(Ok::<_, Error>), |i, _| {
            if i == 3 {
                Err(Error::invalid_arg("sink", "full"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(is_invalid(&e, "sink"), "{e}");
}

/// Sources longer than the position table are cut, and say so.
#[test]
fn truncated_sources_are_flagged() {
    let dir = tiny_dir();
    let model = load(&dir);
    let tok = tokenizer(&dir);
    let long = "word ".repeat(400);
    let gs = gen_text(
        &model,
        &tok,
        config(8, ExitPolicy::LastLayer, 2),
        &["short one", &long],
    );
    assert!(!gs[0].source_truncated);
    assert!(gs[1].source_truncated);
}

/// tiny_sensitive with `elmer_exit_policy` set to `policy` in its config.json.
fn with_recorded_policy(policy: &str) -> tempfile::TempDir {
    let dir = tiny_sensitive();
    let path = dir.path().join("config.json");
    let mut cfg = elmer::ElmerConfig::from_file(&path).unwrap();
    cfg.elmer_exit_policy = Some(policy.to_string());
    cfg.elmer_max_len = Some(12);
    cfg.save(&path).unwrap();
    dir
}

#[test]
fn the_recorded_policy_is_used_when_none_is_given() {
    let srcs = random_sources(5, 6, 1000, 12);
    for (recorded, explicit) in [
        ("hard:0.3", ExitPolicy::Hard { threshold: 0.3 }),
        ("soft", ExitPolicy::Soft),
        ("last", ExitPolicy::LastLayer),
    ] {
        let dir = with_recorded_policy(recorded);
        let model = load(dir.path());
        assert_eq!(model.recorded_policy().unwrap().name(), explicit.name());
        assert_eq!(model.config().elmer_max_len, Some(12));
        let default_cfg = GenerationConfig {
            max_len: 12,
            ..GenerationConfig::default()
        };
        let g = Generator::new(&model, default_cfg.clone()).unwrap();
        assert_eq!(g.policy().name(), explicit.name());
        let by_default = strip(&gen_ids(&model, default_cfg, &srcs));
        let named = strip(&gen_ids(&model, config(12, explicit.clone(), 4), &srcs));
        assert_eq!(by_default, named, "{recorded}");
        // An explicit policy still wins.
        let g = Generator::new(&model, config(12, ExitPolicy::LastLayer, 4)).unwrap();
        assert_eq!(g.policy().name(), "last");
    }
    // Without a record: the last layer.
    let model = load(&tiny_dir());
    assert!(model.recorded_policy().is_none());
    let g = Generator::new(&model, GenerationConfig::default()).unwrap();
    assert_eq!(g.policy().name(), "last");
}

#[test]
fn a_bad_recorded_policy_is_a_config_error() {
    for (bad, needle) in [("fast", "fast"), ("hard:-1", "threshold")] {
        let dir = with_recorded_policy(bad);
        let e = ElmerModel::from_dir(dir.path(), &LoadOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("elmer_exit_policy") && msg.contains(needle),
            "{msg}"
        );
    }
    // soft recorded on a checkpoint without concat_head.
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(tiny_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut cfg = elmer::ElmerConfig::from_file(&path).unwrap();
    cfg.elmer_exit_policy = Some("soft".into());
    cfg.save(&path).unwrap();
    let msg = ElmerModel::from_dir(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("elmer_exit_policy") && msg.contains("concat_head"),
        "{msg}"
    );
    // A slot longer than the position table.
    cfg.elmer_exit_policy = None;
    cfg.elmer_max_len = Some(cfg.max_position_embeddings + 1);
    cfg.save(&path).unwrap();
    let msg = ElmerModel::from_dir(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("elmer_max_len"), "{msg}");
}

#[test]
fn orphan_pieces_change_only_the_text_and_follow_the_recorded_choice() {
    let dir = tiny_dir();
    let tok = tokenizer(&dir);
    let (mut cfg, w, _) = elmer::checkpoint::load_dir(&dir, &LoadOptions::default()).unwrap();
    let model = ElmerModel::from_weights(cfg.clone(), &w).unwrap();
    let gen_cfg = |drop: Option<bool>| GenerationConfig {
        drop_orphan_pieces: drop,
        ..config(24, ExitPolicy::LastLayer, 4)
    };
    // Off unless recorded or asked for.
    assert!(!Generator::new(&model, gen_cfg(None))
        .unwrap()
        .drops_orphan_pieces());
    let keep = gen_text(&model, &tok, gen_cfg(Some(false)), &TEXTS);
    let drop = gen_text(&model, &tok, gen_cfg(Some(true)), &TEXTS);
    let mut changed = 0;
    for (k, d) in keep.iter().zip(&drop) {
        // Ids and exit layers stay as generated; the text only loses pieces.
        assert_eq!((&k.ids, &k.exit_layers), (&d.ids, &d.exit_layers));
        assert!(d.text.len() <= k.text.len(), "{:?} -> {:?}", k.text, d.text);
        changed += (k.text != d.text) as usize;
    }
    // The random model glues pieces somewhere: the option reaches the text.
    assert!(changed > 0, "no output changed");
    // The model's recorded choice applies when the caller gives none; an explicit one wins.
    cfg.elmer_drop_orphan_pieces = Some(true);
    let recorded = ElmerModel::from_weights(cfg, &w).unwrap();
    let g = Generator::new(&recorded, gen_cfg(None)).unwrap();
    assert!(g.drops_orphan_pieces());
    assert_eq!(
        strip(&gen_text(&recorded, &tok, gen_cfg(None), &TEXTS)),
        strip(&drop)
    );
    assert!(!Generator::new(&recorded, gen_cfg(Some(false)))
        .unwrap()
        .drops_orphan_pieces());
}
