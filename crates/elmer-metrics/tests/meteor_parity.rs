//! Parity of the Rust METEOR with meteor-1.5.jar (through pycocoevalcap).
//! Fixtures (`tests/fixtures/meteor/`) are produced by the elmer repository's
//! `scripts/fixtures/make_meteor_fixtures.py`.
//!
//! The table-backed comparisons run only when their variables are set:
//! * `METEOR_JAR=/path/to/meteor-1.5.jar`: both tables through [`Meteor::from_jar`]
//!   (synonyms from inside the jar, `data/paraphrase-en.gz` next to it, which is how
//!   pycocoevalcap installs them);
//! * `METEOR_SYNONYM_DIR` (directory with the jar's `english.synsets` /
//!   `english.exceptions`) and/or `METEOR_PARAPHRASE` (`paraphrase-en.gz`).
//!
//! With both tables the scores must equal the jar's to 1e-6 (corpus and every segment);
//! with only one of them, the corpus must be within 0.01.
//! Use `--release`: loading the paraphrase table takes ~4 s there, much longer in debug.

use std::path::PathBuf;

use elmer_metrics::meteor::{Meteor, MeteorParams};
use serde_json::Value;

/// Fixture directory, relative to `CARGO_MANIFEST_DIR`.
const FIXTURE_DIR: &str = "tests/fixtures/meteor";

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURE_DIR)
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("fixture json")
}

struct Cases {
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
    kinds: Vec<String>,
    seg_full: Vec<f64>,
    seg_es: Vec<f64>,
    corpus_full: f64,
    corpus_es: f64,
}

fn cases() -> Cases {
    let v = fixture("cases.json");
    let mut c = Cases {
        hyps: vec![],
        refs: vec![],
        kinds: vec![],
        seg_full: vec![],
        seg_es: vec![],
        corpus_full: v["corpus_full"].as_f64().expect("corpus_full"),
        corpus_es: v["corpus_exact_stem"].as_f64().expect("corpus_exact_stem"),
    };
    for x in v["cases"].as_array().expect("cases") {
        c.hyps.push(x["hyp"].as_str().expect("hyp").to_string());
        c.refs.push(
            x["refs"]
                .as_array()
                .expect("refs")
                .iter()
                .map(|r| r.as_str().expect("ref").to_string())
                .collect(),
        );
        c.kinds.push(x["kind"].as_str().expect("kind").to_string());
        c.seg_full.push(x["seg_full"].as_f64().expect("seg_full"));
        c.seg_es
            .push(x["seg_exact_stem"].as_f64().expect("seg_exact_stem"));
    }
    c
}

fn run(m: &Meteor, c: &Cases) -> (f64, Vec<f64>) {
    let hyps: Vec<&str> = c.hyps.iter().map(String::as_str).collect();
    let refs: Vec<Vec<&str>> = c
        .refs
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect();
    m.try_score_corpus(&hyps, &refs).expect("same lengths")
}

fn summary(label: &str, ours: &[f64], jar: &[f64], kinds: &[String]) -> (f64, f64) {
    let diffs: Vec<f64> = ours.iter().zip(jar).map(|(a, b)| (a - b).abs()).collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    let exact = diffs.iter().filter(|&&d| d < 1e-9).count();
    eprintln!(
        "{label}: segment |diff| mean {mean:.3e} max {max:.3e}; {exact}/{} identical",
        diffs.len()
    );
    let mut worst: Vec<usize> = (0..diffs.len()).collect();
    worst.sort_by(|&a, &b| diffs[b].total_cmp(&diffs[a]));
    for &i in worst.iter().take(5).filter(|&&i| diffs[i] > 1e-9) {
        eprintln!(
            "  case {i} ({}) ours {:.6} jar {:.6}",
            kinds[i], ours[i], jar[i]
        );
    }
    (mean, max)
}

#[test]
fn exact_stem_matches_jar_exact_stem_run() {
    // The jar run with `-m "exact stem"` (weights 1.0 0.6): same modules as our
    // table-free scorer, so this should agree to rounding.
    let c = cases();
    let (corpus, segs) = run(&Meteor::default(), &c);
    eprintln!(
        "exact+stem: corpus ours {corpus:.6} jar {:.6} gap {:.6}",
        c.corpus_es,
        (corpus - c.corpus_es).abs()
    );
    let (_, max) = summary(
        "exact+stem vs jar -m 'exact stem'",
        &segs,
        &c.seg_es,
        &c.kinds,
    );
    assert!((corpus - c.corpus_es).abs() < 1e-6);
    assert!(max < 1e-6);
}

#[test]
fn corpus_without_tables_within_one_point_of_pycocoevalcap() {
    let c = cases();
    let (corpus, segs) = run(&Meteor::default(), &c);
    let gap = (corpus - c.corpus_full).abs();
    eprintln!(
        "no tables: corpus ours {corpus:.6} pycocoevalcap {:.6} gap {gap:.6}",
        c.corpus_full
    );
    summary("no tables vs pycocoevalcap", &segs, &c.seg_full, &c.kinds);
    assert!(gap < 0.01, "gap {gap}");
}

#[test]
fn corpus_with_tables_matches_pycocoevalcap() {
    let syn = std::env::var_os("METEOR_SYNONYM_DIR");
    let para = std::env::var_os("METEOR_PARAPHRASE");
    if syn.is_none() && para.is_none() {
        eprintln!("skipped: set METEOR_SYNONYM_DIR and/or METEOR_PARAPHRASE");
        return;
    }
    let both = syn.is_some() && para.is_some();
    let mut m = Meteor::new(MeteorParams::default());
    if let Some(d) = syn {
        m = m.with_synonym_dir(d).expect("synonym dir");
    }
    if let Some(p) = para {
        m = m.with_paraphrase_table(p).expect("paraphrase table");
    }
    check_full_tables("tables from dir/file", &m, both);
}

#[test]
fn corpus_with_jar_tables_matches_pycocoevalcap() {
    let Some(jar) = std::env::var_os("METEOR_JAR") else {
        eprintln!("skipped: set METEOR_JAR=/path/to/meteor-1.5.jar");
        return;
    };
    let t = std::time::Instant::now();
    let m = Meteor::from_jar(&jar).unwrap_or_else(|e| panic!("METEOR_JAR: {e}"));
    eprintln!(
        "loaded {} in {:.1?}",
        PathBuf::from(&jar).display(),
        t.elapsed()
    );
    assert!(m.has_synonyms() && m.has_paraphrases());
    check_full_tables("tables from METEOR_JAR", &m, true);
}

/// Compares `m` with the jar's all-module scores: to 1e-6 per segment and corpus when
/// `all_tables`, else only the corpus within 0.01.
fn check_full_tables(label: &str, m: &Meteor, all_tables: bool) {
    let c = cases();
    let (corpus, segs) = run(m, &c);
    let gap = (corpus - c.corpus_full).abs();
    eprintln!(
        "{label}: corpus ours {corpus:.9} pycocoevalcap {:.9} gap {gap:.3e}",
        c.corpus_full
    );
    let (_, max) = summary(
        &format!("{label} vs pycocoevalcap"),
        &segs,
        &c.seg_full,
        &c.kinds,
    );
    if all_tables {
        assert!(gap < 1e-6, "corpus gap {gap}");
        assert!(max < 1e-6, "segment max |diff| {max}");
    } else {
        assert!(gap < 0.01, "gap {gap}");
    }
}

#[test]
fn stemmer_matches_jar_snowball() {
    let v = fixture("stems.json");
    let mut bad = vec![];
    let obj = v.as_object().expect("stems");
    for (w, s) in obj {
        let s = s.as_str().expect("stem");
        let ours = elmer_metrics::meteor::snowball_stem(w);
        if ours != s {
            bad.push(format!("{w}: ours {ours} jar {s}"));
        }
    }
    eprintln!("stemmer: {}/{} differ", bad.len(), obj.len());
    for b in bad.iter().take(20) {
        eprintln!("  {b}");
    }
    assert!(bad.is_empty());
}

#[test]
fn normalizer_matches_jar() {
    let v = fixture("norm.json");
    let m = Meteor::default();
    let mut bad = 0;
    let arr = v.as_array().expect("norm");
    for pair in arr {
        let raw = pair[0].as_str().expect("raw");
        let jar = pair[1].as_str().expect("jar");
        let ours = m.tokens(raw).join(" ");
        let jar_lc = jar.to_lowercase();
        if ours != jar_lc {
            bad += 1;
            eprintln!("  raw {raw:?}\n  ours {ours:?}\n  jar  {jar_lc:?}");
        }
    }
    eprintln!("normalizer: {bad}/{} differ", arr.len());
    assert_eq!(bad, 0);
}
