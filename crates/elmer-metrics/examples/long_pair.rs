//! Scores one long (hypothesis, reference) pair, one metric at a time, for measuring time
//! and peak memory on long inputs:
//!
//! ```text
//! cargo build --release -p elmer-metrics --example long_pair
//! /usr/bin/time -v target/release/examples/long_pair rouge 30000
//! ```
//!
//! Arguments: `METRIC WORDS [lines] [SEED]`, with METRIC one of `rouge` (ROUGE-1/2/L/Lsum
//! through `RougeScorer::score_corpus`), `rouge-uncapped` (the same through
//! `RougeScorer::score`, which has no length cap), `coco` (`coco_rouge_l_corpus`), `meteor`
//! (`Meteor::score_corpus`, exact + stem; with `METEOR_JAR` set, all four modules) or
//! `all` (`score_all`); `lines` puts one sentence per line (ROUGE-Lsum sentences), else
//! both texts are a single line. The pair is the one of `tests/support/long_text.rs`;
//! `kind=same` makes it the word `a` repeated (one `b` at the end of the hypothesis), the
//! worst case, `kind=identical` uses the reference as the hypothesis, and `kind=dots`
//! makes the hypothesis one run of WORDS dots (the METEOR normaliser's worst case),
//! `kind=word` one word of about WORDS letters (the stemmers), `kind=lines` one word
//! per line (ROUGE-Lsum's sentence pairs).

#[path = "../tests/support/long_text.rs"]
mod long_text;

use std::time::Instant;

use elmer_metrics::{coco_rouge_l_corpus, score_all, Meteor, RougeScorer};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let metric = args.first().map(String::as_str).unwrap_or("all");
    let words: usize = args
        .get(1)
        .map(|s| s.parse().expect("WORDS is a number"))
        .unwrap_or(30_000);
    let lines = args.iter().any(|a| a == "lines");
    let seed: u64 = args
        .iter()
        .skip(2)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1);
    let words = words.max(1);
    let (hyp, reference) = match args.iter().find_map(|a| a.strip_prefix("kind=")) {
        // The worst case for the LCS and METEOR's candidates: one word repeated.
        Some("same") => (
            "a ".repeat(words - 1) + "b",
            "a ".repeat(words).trim_end().to_string(),
        ),
        Some("identical") => {
            let (_, r) = long_text::long_pair(words, seed, lines);
            (r.clone(), r)
        }
        // One "word" of WORDS dots: the METEOR normaliser's multiple-dot escapes.
        Some("dots") => (".".repeat(words), "a .".to_string()),
        // One word per line (ROUGE-Lsum's sentence pairs).
        Some("lines") => {
            let (h, r) = long_text::long_pair(words, seed, false);
            (h.replace(' ', "\n"), r.replace(' ', "\n"))
        }
        // One word of WORDS letters (stemmers, normaliser).
        Some("word") => ("ab".repeat(words / 2) + "ing", "ab".to_string()),
        Some(k) => panic!("unknown kind={k} (same, identical, dots, word, lines)"),
        None => long_text::long_pair(words, seed, lines),
    };
    let hyps = [hyp.as_str()];
    let refs = [vec![reference.as_str()]];
    eprintln!(
        "pair: {} / {} whitespace words, {} / {} lines",
        hyp.split_whitespace().count(),
        reference.split_whitespace().count(),
        hyp.lines().count(),
        reference.lines().count()
    );
    let t = Instant::now();
    match metric {
        "rouge" => {
            let s = RougeScorer::new(true)
                .score_corpus(&hyps, &refs)
                .expect("rouge");
            println!(
                "rouge1 {:.12} rouge2 {:.12} rougeL {:.12} rougeLsum {:.12}",
                s.rouge1.f1, s.rouge2.f1, s.rouge_l.f1, s.rouge_lsum.f1
            );
        }
        "rouge-uncapped" => {
            // RougeScorer::score: the single-pair function, which has no length cap.
            let s = RougeScorer::new(true).score(&hyp, &reference);
            println!(
                "rouge1 {:.12} rouge2 {:.12} rougeL {:.12} rougeLsum {:.12}",
                s.rouge1.f1, s.rouge2.f1, s.rouge_l.f1, s.rouge_lsum.f1
            );
        }
        "coco" => {
            let s = coco_rouge_l_corpus(&hyps, &refs).expect("coco");
            println!("coco_rouge_l {:.12}", s.score);
        }
        "meteor" => {
            let m = match std::env::var_os("METEOR_JAR") {
                Some(jar) => Meteor::from_jar(jar).expect("METEOR_JAR"),
                None => Meteor::default(),
            };
            let t = Instant::now();
            let s = m.score_corpus(&hyps, &refs).expect("meteor");
            eprintln!("meteor alone: {:.2?}", t.elapsed());
            println!("meteor {s:.12}");
        }
        "all" => {
            let r = score_all(&hyps, &refs).expect("score_all");
            println!("{r:?}");
        }
        other => panic!("unknown metric {other:?} (rouge, coco, meteor, all)"),
    }
    eprintln!("{metric} on {words} words: {:.2?}", t.elapsed());
}
