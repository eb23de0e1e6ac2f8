//! XSUM extreme summarisation (paper Table 2).
//!
//! `--data` is a JSON-lines file of {document, summary} (default
//! `../shared/data/xsum/test-200.jsonl`: BBC text for research use only, read from ../shared
//! and never committed; split 6/8 train, 1/8 valid, 1/8 test with a seeded shuffle) or a
//! directory with `{train,valid,test}.src/.tgt`. Columns: ROUGE-1/2/L (rouge-score, no
//! stemming; the paper used files2rouge / ROUGE-1.5.5, which cannot run here).

use std::path::Path;

use elmer::data;
use elmer::Result;

use super::{read_splits, three_way, Metric, Splits, Task};

pub static TASK: Task = Task {
    name: "xsum",
    default_data: "../shared/data/xsum/test-200.jsonl",
    load,
    metrics: &[Metric::Rouge1, Metric::Rouge2, Metric::RougeL],
    paper: &[38.30, 14.17, 29.92],
    max_source_len: 512,
    max_len: 64,
};

fn load(path: &Path, seed: u64) -> Result<Splits> {
    if path.is_dir() {
        return read_splits(path);
    }
    let ds = data::read_xsum_jsonl(path)?;
    let n = ds.examples.len();
    Ok(three_way(ds, n / 8, n / 8, seed))
}
