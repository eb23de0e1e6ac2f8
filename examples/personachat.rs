//! PersonaChat response generation with ELMER (paper Table 4): fine-tune, evaluate, generate.
//!
//! ```text
//! cargo run --release --example personachat -- --mode eval --exit soft --limit 200
//! ```
//! `--data` is a directory with ConvAI2 `source.txt`/`target.txt` (persona sentences and the
//! partner's utterance, TAB-separated; default `../shared/data/personachat`; the dialogue
//! history is rebuilt from consecutive lines; split 80/10/10 with a seeded shuffle) or with
//! `{train,valid,test}.src/.tgt`. Columns: BLEU-1/2 (coco) and Distinct-1/2 (percent).

mod common;

use std::path::Path;

use common::{main_for, report_skipped, Metric, Splits, Task};
use elmer::data;
use elmer::Result;

fn load(path: &Path, seed: u64) -> Result<Splits> {
    if path.join("train.src").is_file() {
        let s = |n: &str| {
            data::read_split(path, n).map(|d| {
                report_skipped(&d);
                d.examples
            })
        };
        return Ok((s("train")?, s("valid")?, s("test")?));
    }
    let ds = data::read_personachat(&path.join("source.txt"), &path.join("target.txt"), 4)?;
    report_skipped(&ds);
    let n = ds.examples.len();
    let (rest, test) = data::split_holdout(ds, n / 10, seed);
    let (train, valid) = data::split_holdout(
        data::Dataset {
            examples: rest,
            skipped: Vec::new(),
        },
        n / 10,
        seed + 1,
    );
    Ok((train, valid, test))
}

fn main() {
    main_for(Task {
        name: "personachat",
        default_data: "../shared/data/personachat",
        load,
        metrics: &[
            Metric::Bleu(1),
            Metric::Bleu(2),
            Metric::Distinct(1),
            Metric::Distinct(2),
        ],
        paper: &[31.45, 23.99, 3.66, 24.96],
        max_source_len: 256,
        max_len: 32,
    });
}
