//! Scoring speed: every metric over 10,000 (hypothesis, references) pairs built from the real
//! pairs of `tests/fixtures/metrics/pairs.json` (SQuAD questions, PersonaChat responses, XSUM
//! summaries and their perturbations), repeated to 10,000.
//!
//! ```text
//! cargo bench -p elmer-metrics --bench metrics
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use elmer_metrics::{
    coco_bleu, coco_rouge_l_corpus, distinct_2, score_all_with, Meteor, RougeScorer,
};

fn pairs() -> (Vec<String>, Vec<Vec<String>>) {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics/pairs.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json");
    let items = v["pairs"].as_array().expect("pairs");
    let mut hyps = Vec::new();
    let mut refs = Vec::new();
    for i in 0..10_000 {
        let it = &items[i % items.len()];
        hyps.push(it["hyp"].as_str().unwrap_or_default().to_string());
        refs.push(
            it["refs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        );
    }
    (hyps, refs)
}

fn bench(c: &mut Criterion) {
    let (hyps, refs) = pairs();
    let mut g = c.benchmark_group("metrics_10k_pairs");
    g.sample_size(10);
    g.bench_function("all_without_meteor", |b| {
        b.iter(|| score_all_with(&hyps, &refs, true, None).expect("score"))
    });
    g.bench_function("rouge_stemmed", |b| {
        b.iter(|| {
            RougeScorer::new(true)
                .score_corpus(&hyps, &refs)
                .expect("rouge")
        })
    });
    g.bench_function("coco_bleu", |b| {
        b.iter(|| coco_bleu(&hyps, &refs).expect("bleu"))
    });
    g.bench_function("coco_rouge_l", |b| {
        b.iter(|| coco_rouge_l_corpus(&hyps, &refs).expect("rouge-l"))
    });
    g.bench_function("distinct_2", |b| b.iter(|| distinct_2(&hyps)));
    let meteor = Meteor::default();
    let h: Vec<&str> = hyps.iter().map(String::as_str).collect();
    let r: Vec<Vec<&str>> = refs
        .iter()
        .map(|x| x.iter().map(String::as_str).collect())
        .collect();
    g.bench_function("meteor_exact_stem", |b| {
        b.iter(|| meteor.score_corpus(&h, &r).expect("meteor"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
