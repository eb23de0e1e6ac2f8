//! XSUM extreme summarisation with ELMER (paper Table 2): fine-tune, evaluate, generate.
//!
//! ```text
//! cargo run --release --example xsum -- --mode eval --exit soft --limit 50
//! ```
//! `--data` is a JSON-lines file of {document, summary} (default
//! `../shared/data/xsum/test-200.jsonl`: BBC text for research use only, read from ../shared
//! and never committed; split 150/25/25 with a seeded shuffle) or a directory with
//! `{train,valid,test}.src/.tgt`. Columns: ROUGE-1/2/L (rouge-score, no stemming; the paper
//! used files2rouge / ROUGE-1.5.5, which cannot run here).

mod common;

use std::path::Path;

use common::{main_for, report_skipped, Metric, Splits, Task};
use elmer::data;
use elmer::Result;

fn load(path: &Path, seed: u64) -> Result<Splits> {
    if path.is_dir() {
        let s = |n: &str| {
            data::read_split(path, n).map(|d| {
                report_skipped(&d);
                d.examples
            })
        };
        return Ok((s("train")?, s("valid")?, s("test")?));
    }
    let ds = data::read_xsum_jsonl(path)?;
    report_skipped(&ds);
    let n = ds.examples.len();
    let (rest, test) = data::split_holdout(ds, n / 8, seed);
    let (train, valid) = data::split_holdout(
        data::Dataset {
            examples: rest,
            skipped: Vec::new(),
        },
        n / 8,
        seed + 1,
    );
    Ok((train, valid, test))
}

fn main() {
    main_for(Task {
        name: "xsum",
        default_data: "../shared/data/xsum/test-200.jsonl",
        load,
        metrics: &[Metric::Rouge1, Metric::Rouge2, Metric::RougeL],
        paper: &[38.30, 14.17, 29.92],
        max_source_len: 512,
        max_len: 64,
    });
}
