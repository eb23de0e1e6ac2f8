//! SQuAD question generation with the shipped small model: questions for a few sentences of
//! the SQuAD dev set (Du et al. split) with soft exit, scored against the reference
//! questions with `elmer::metrics` the way the paper's Table 3 is (coco-caption BLEU-4 and
//! ROUGE-L, METEOR 1.5). The full evaluation (500 held-out pairs, latency, exit sweep):
//! `cargo run --release -p elmer-cli -- eval --task squad --help`.
//!
//! ```text
//! cargo run --release --example squad
//! ```

use elmer::metrics::{coco_bleu, coco_rouge_l_corpus, Meteor};
use elmer::{BartTokenizer, ElmerModel, ExitPolicy, LoadOptions};
use elmer::{GenerationConfig, Generator};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/elmer-small-squadqg");

/// (sentence, reference question) pairs of the SQuAD dev set, tokenised and lower-cased.
const PAIRS: &[(&str, &str)] = &[
    ("the game was played on february 7 , 2016 , at levi 's stadium in the san francisco bay area at santa clara , california .",
     "where did super bowl 50 take place ?"),
    ("the broncos practiced at stanford university and stayed at the santa clara marriott .",
     "where did the broncos stay at for super bowl 50 ?"),
    ("in 1862 , the tesla family moved to gospić , austrian empire , where tesla 's father worked as a pastor .",
     "what job did tesla 's father have in gospic ?"),
    ("in january 1880 , two of tesla 's uncles put together enough money to help him leave gospić for prague where he was to study .",
     "what city did tesla move to in 1880 ?"),
    ("the invading normans and their descendants replaced the anglo-saxons as the ruling class of england .",
     "who was the ruling class ahead of the normans ?"),
];

fn main() -> elmer::Result<()> {
    let model = ElmerModel::from_dir(MODEL, &LoadOptions::default())?;
    let tok = BartTokenizer::from_dir(MODEL)?;
    let cfg = GenerationConfig {
        policy: Some(ExitPolicy::Soft),
        max_len: 32,
        collapse_repeats: true, // the authors' post-processing
        ..GenerationConfig::default()
    };
    let mut gen = Generator::new(&model, cfg)?.with_tokenizer(&tok);
    let sources: Vec<&str> = PAIRS.iter().map(|p| p.0).collect();
    let outs = gen.generate(&sources)?;
    for ((source, reference), g) in PAIRS.iter().zip(&outs) {
        println!(
            "{source}\n  generated: {}\n  reference: {reference}",
            g.text
        );
    }
    let hyps: Vec<String> = outs.iter().map(|g| g.text.to_lowercase()).collect();
    let refs: Vec<Vec<&str>> = PAIRS.iter().map(|p| vec![p.1]).collect();
    let bleu = coco_bleu(&hyps, &refs)?;
    let rouge_l = coco_rouge_l_corpus(&hyps, &refs)?;
    let h: Vec<&str> = hyps.iter().map(String::as_str).collect();
    let meteor = Meteor::default().score_corpus(&h, &refs)?;
    println!(
        "\nBLEU-4 {:.2}  ROUGE-L {:.2}  METEOR {:.2} (x100; the paper's ELMER-Soft: 13.49 / 40.22 / 20.08)",
        100.0 * bleu.corpus[3],
        100.0 * rouge_l.score,
        100.0 * meteor
    );
    println!("exits: {}", gen.stats());
    Ok(())
}
