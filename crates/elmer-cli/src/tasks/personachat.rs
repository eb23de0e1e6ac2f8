//! PersonaChat response generation (paper Table 4).
//!
//! `--data` is a directory with ConvAI2 `source.txt`/`target.txt` (persona sentences and the
//! partner's utterance, TAB-separated; default `../shared/data/personachat`; the dialogue
//! history (4 turns) is rebuilt from consecutive lines; split 80/10/10 with a seeded shuffle)
//! or with `{train,valid,test}.src/.tgt`. Columns: BLEU-1/2 (coco) and Distinct-1/2 (percent).

use std::path::Path;

use elmer::data;
use elmer::Result;

use super::{read_splits, three_way, Metric, Splits, Task};

pub static TASK: Task = Task {
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
};

fn load(path: &Path, seed: u64) -> Result<Splits> {
    if path.join("train.src").is_file() {
        return read_splits(path);
    }
    let ds = data::read_personachat(&path.join("source.txt"), &path.join("target.txt"), 4)?;
    let n = ds.examples.len();
    Ok(three_way(ds, n / 10, n / 10, seed))
}
