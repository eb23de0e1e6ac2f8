//! The fine-tuning / evaluation tasks of the paper: where their data is, how they are split
//! and scored, their default lengths and the paper's ELMER-Soft numbers.

mod personachat;
mod squad;
mod xsum;

use std::path::Path;

use elmer::collapse_repeated_words;
use elmer::data::{Dataset, Example};
use elmer::Result;
use elmer_metrics::{coco_bleu, coco_rouge_l_corpus, distinct_1, distinct_2, Meteor, RougeScorer};

/// (train, valid, test) examples.
pub type Splits = (Vec<Example>, Vec<Example>, Vec<Example>);

/// `--task`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskName {
    /// SQuAD question generation (paper Table 3).
    Squad,
    /// XSUM extreme summarisation (paper Table 2).
    Xsum,
    /// PersonaChat response generation (paper Table 4).
    Personachat,
}

impl TaskName {
    pub fn task(self) -> &'static Task {
        match self {
            TaskName::Squad => &squad::TASK,
            TaskName::Xsum => &xsum::TASK,
            TaskName::Personachat => &personachat::TASK,
        }
    }
}

/// A metric column a task reports (the paper's).
#[derive(Clone, Copy, PartialEq)]
pub enum Metric {
    /// rouge-score ROUGE-1 F1, no stemming.
    Rouge1,
    /// rouge-score ROUGE-2 F1, no stemming.
    Rouge2,
    /// rouge-score ROUGE-L F1, no stemming.
    RougeL,
    /// coco-caption ROUGE-L.
    RougeLCoco,
    /// coco-caption corpus BLEU-n.
    Bleu(usize),
    /// METEOR 1.5 (exact + stem).
    Meteor,
    /// Distinct-n, percent.
    Distinct(usize),
}

impl Metric {
    pub fn name(&self) -> String {
        match self {
            Metric::Rouge1 => "ROUGE-1".into(),
            Metric::Rouge2 => "ROUGE-2".into(),
            Metric::RougeL | Metric::RougeLCoco => "ROUGE-L".into(),
            Metric::Bleu(n) => format!("BLEU-{n}"),
            Metric::Meteor => "METEOR".into(),
            Metric::Distinct(n) => format!("Distinct-{n}"),
        }
    }
}

/// A task: where its data is and how it is scored.
pub struct Task {
    /// Name in reports and default output directories.
    pub name: &'static str,
    /// Default `--data` (read from ../shared, never committed).
    pub default_data: &'static str,
    /// Reads (train, valid, test) from `--data` with the split seed.
    pub load: fn(&Path, u64) -> Result<Splits>,
    pub metrics: &'static [Metric],
    /// The paper's ELMER-Soft numbers for the same columns, for the report.
    pub paper: &'static [f64],
    /// Default source truncation (tokens).
    pub max_source_len: usize,
    /// Default output slot.
    pub max_len: usize,
}

impl Task {
    /// Scores `hyps` against single references with the task's columns (x100 except
    /// Distinct, already in percent).
    pub fn score(&self, hyps: &[String], refs: &[String]) -> Result<Vec<f64>> {
        let refs_multi: Vec<Vec<&str>> = refs.iter().map(|r| vec![r.as_str()]).collect();
        let need_rouge = self
            .metrics
            .iter()
            .any(|m| matches!(m, Metric::Rouge1 | Metric::Rouge2 | Metric::RougeL));
        let rouge = if need_rouge {
            Some(RougeScorer::new(false).score_corpus(hyps, &refs_multi)?)
        } else {
            None
        };
        let bleu = coco_bleu(hyps, &refs_multi)?;
        let mut out = Vec::new();
        for m in self.metrics {
            out.push(match m {
                Metric::Rouge1 => 100.0 * rouge.as_ref().map_or(0.0, |r| r.rouge1.f1),
                Metric::Rouge2 => 100.0 * rouge.as_ref().map_or(0.0, |r| r.rouge2.f1),
                Metric::RougeL => 100.0 * rouge.as_ref().map_or(0.0, |r| r.rouge_l.f1),
                Metric::RougeLCoco => 100.0 * coco_rouge_l_corpus(hyps, &refs_multi)?.score,
                Metric::Bleu(n) => 100.0 * bleu.corpus[n - 1],
                Metric::Meteor => {
                    let h: Vec<&str> = hyps.iter().map(String::as_str).collect();
                    100.0 * Meteor::default().score_corpus(&h, &refs_multi)?
                }
                Metric::Distinct(1) => distinct_1(hyps),
                Metric::Distinct(_) => distinct_2(hyps),
            });
        }
        Ok(out)
    }
}

impl Task {
    /// The model-selection score of `scores` (one per [`Task::metrics`] column): the mean of
    /// the quality columns (ROUGE, BLEU, METEOR; Distinct-n is left out, since noise can
    /// raise it).
    pub fn selection_score(&self, scores: &[f64]) -> f64 {
        let q: Vec<f64> = self
            .metrics
            .iter()
            .zip(scores)
            .filter(|(m, _)| !matches!(m, Metric::Distinct(_)))
            .map(|(_, &s)| s)
            .collect();
        q.iter().sum::<f64>() / q.len().max(1) as f64
    }
}

/// The authors' post-processing before scoring: collapse repeated words, lowercase.
pub fn postprocess(s: &str) -> String {
    collapse_repeated_words(s).to_lowercase()
}

/// Reports skipped (malformed) lines of a dataset as warnings.
pub fn report_skipped(ds: &Dataset) {
    for s in ds.skipped.iter().take(10) {
        tracing::warn!("skipped {s}");
    }
    if ds.skipped.len() > 10 {
        tracing::warn!("... and {} more skipped", ds.skipped.len() - 10);
    }
}

/// `dir/{train,valid,test}.src/.tgt` (the ELMER line format), every task's alternative
/// data layout.
fn read_splits(dir: &Path) -> Result<Splits> {
    let s = |n: &str| {
        elmer::data::read_split(dir, n).map(|d| {
            report_skipped(&d);
            d.examples
        })
    };
    Ok((s("train")?, s("valid")?, s("test")?))
}

/// Splits one dataset into train / valid / test with fixed held-out sizes (test drawn
/// first with `seed`, then valid with `seed + 1`).
fn three_way(ds: Dataset, valid: usize, test: usize, seed: u64) -> Splits {
    report_skipped(&ds);
    let (rest, test_set) = elmer::data::split_holdout(ds, test, seed);
    let (train, valid_set) = elmer::data::split_holdout(
        Dataset {
            examples: rest,
            skipped: Vec::new(),
        },
        valid,
        seed + 1,
    );
    (train, valid_set, test_set)
}
