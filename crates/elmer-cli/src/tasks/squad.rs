//! SQuAD question generation (paper Table 3).
//!
//! `--data` is a directory with the Du et al. split (default `../shared/data/squad-qg`):
//! with `src-train.txt`/`tgt-train.txt` there, train is all 75,722 train pairs, validation
//! (model selection) 500 dev pairs drawn with the seed, test the other 10,070 dev pairs;
//! with only `src-dev.txt`/`tgt-dev.txt`, the dev pairs are split 9,570 / 500 / 500 with a
//! seeded shuffle. It can also be a directory
//! with `{train,valid,test}.src/.tgt` (ELMER line format), or a SQuAD JSON file (sources
//! built as "answer [SEP] passage", split 80/10/10). Columns: ROUGE-L, BLEU-4 and METEOR,
//! coco-caption style.

use std::path::Path;

use elmer::data;
use elmer::Result;

use super::{read_splits, report_skipped, three_way, Metric, Splits, Task};

pub static TASK: Task = Task {
    name: "squad-qg",
    default_data: "../shared/data/squad-qg",
    load,
    metrics: &[Metric::RougeLCoco, Metric::Bleu(4), Metric::Meteor],
    paper: &[40.22, 13.49, 20.08],
    max_source_len: 128,
    max_len: 32,
};

fn load(path: &Path, seed: u64) -> Result<Splits> {
    if path.is_file() {
        let ds = data::read_squad_json(path)?;
        let n = ds.examples.len();
        return Ok(three_way(ds, n / 10, n / 10, seed));
    }
    if path.join("train.src").is_file() {
        return read_splits(path);
    }
    let dev = data::read_line_pairs(&path.join("src-dev.txt"), &path.join("tgt-dev.txt"))?;
    let (src_train, tgt_train) = (path.join("src-train.txt"), path.join("tgt-train.txt"));
    if src_train.is_file() && tgt_train.is_file() {
        let train = data::read_line_pairs(&src_train, &tgt_train)?;
        report_skipped(&train);
        report_skipped(&dev);
        let (test, valid) = data::split_holdout(dev, 500, seed);
        return Ok((train.examples, valid, test));
    }
    Ok(three_way(dev, 500, 500, seed))
}
