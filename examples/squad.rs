//! SQuAD question generation with ELMER (paper Table 3): fine-tune, evaluate, generate.
//!
//! ```text
//! cargo run --release --example squad -- --mode eval --exit soft --limit 200
//! cargo run --release --example squad -- --mode finetune --exit soft --steps 500 --out runs/squad-soft
//! ```
//! `--data` is a directory with the Du et al. split (`src-dev.txt`/`tgt-dev.txt`, default
//! `../shared/data/squad-qg`, split 80/10/10 with a seeded shuffle), a directory with
//! `{train,valid,test}.src/.tgt` (ELMER line format), or a SQuAD JSON file (sources built as
//! "answer [SEP] passage"). Columns: ROUGE-L, BLEU-4 and METEOR, coco-caption style.

mod common;

use std::path::Path;

use common::{main_for, report_skipped, Metric, Splits, Task};
use elmer::data;
use elmer::Result;

/// Splits one dataset into train / valid / test with fixed held-out sizes.
pub fn three_way(ds: data::Dataset, valid: usize, test: usize, seed: u64) -> Splits {
    report_skipped(&ds);
    let (rest, test_set) = data::split_holdout(ds, test, seed);
    let (train, valid_set) = data::split_holdout(
        data::Dataset {
            examples: rest,
            skipped: Vec::new(),
        },
        valid,
        seed + 1,
    );
    (train, valid_set, test_set)
}

fn load(path: &Path, seed: u64) -> Result<Splits> {
    if path.is_file() {
        let ds = data::read_squad_json(path)?;
        let n = ds.examples.len();
        return Ok(three_way(ds, n / 10, n / 10, seed));
    }
    if path.join("train.src").is_file() {
        let s = |n: &str| {
            data::read_split(path, n).map(|d| {
                report_skipped(&d);
                d.examples
            })
        };
        return Ok((s("train")?, s("valid")?, s("test")?));
    }
    let ds = data::read_line_pairs(&path.join("src-dev.txt"), &path.join("tgt-dev.txt"))?;
    Ok(three_way(ds, 500, 500, seed))
}

fn main() {
    main_for(Task {
        name: "squad-qg",
        default_data: "../shared/data/squad-qg",
        load,
        metrics: &[Metric::RougeLCoco, Metric::Bleu(4), Metric::Meteor],
        paper: &[40.22, 13.49, 20.08],
        max_source_len: 128,
        max_len: 32,
    });
}
