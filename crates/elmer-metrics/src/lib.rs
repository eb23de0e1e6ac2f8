//! Text-generation metrics with exact parity to the public Python scorers that
//! ELMER-style papers report (crate `elmer-metrics`, re-exported by `elmer` as
//! `elmer::metrics` behind its default `metrics` feature; no candle dependency).
//!
//! | metric | item | matches |
//! |---|---|---|
//! | ROUGE-1/2/L/Lsum (P, R, F1) | [`rouge::RougeScorer`] | Google `rouge-score` 0.1.2 |
//! | ROUGE-L (COCO, β = 1.2) | [`rouge::coco_rouge_l_corpus`] | `pycocoevalcap` 1.2 `Rouge` |
//! | BLEU-1..4 (COCO) | [`bleu::coco_bleu`] | `pycocoevalcap` 1.2 `Bleu(4)` |
//! | BLEU (NLTK) | [`bleu::nltk_corpus_bleu`] | `nltk.translate.bleu_score.corpus_bleu` |
//! | METEOR 1.5 | [`meteor::Meteor`] | `pycocoevalcap` 1.2 `Meteor` (`meteor-1.5.jar`) |
//! | Distinct-n | [`distinct::distinct_n`] | `len(set(ngrams))/len(ngrams)*100` |
//! | Porter stemmer | [`porter::stem`] | `nltk.stem.porter.PorterStemmer()` |
//!
//! Parity is checked to 1e-6 on >1,000 real pairs by `tests/metrics_parity.rs` against
//! the fixtures in `tests/fixtures/metrics/`, made by the elmer repository's
//! `scripts/fixtures/make_metric_fixtures.py`.
//!
//! METEOR ([`meteor::Meteor`]) reimplements METEOR 1.5 (English, `-norm`) as run by
//! `pycocoevalcap`'s `meteor-1.5.jar`: exact and Snowball-stem matching always, synonym and
//! paraphrase matching with the jar's tables, which are not bundled (LGPL / WordNet data):
//! [`Meteor::from_jar`] reads them from the user's own `meteor-1.5.jar` (and the
//! `data/paraphrase-en.gz` next to it, as pycocoevalcap installs them). Checked against the
//! jar on 500 real pairs by `tests/meteor_parity.rs` (fixtures in `tests/fixtures/meteor/`,
//! from `scripts/fixtures/make_meteor_fixtures.py`): identical (corpus and all 500 segments)
//! with both tables, 0.23 METEOR points below the jar's corpus score without them, identical
//! to the jar run with `-m "exact stem"`.
//!
//! ROUGE as `files2rouge` (ROUGE-1.5.5, the Perl script) computes it is **not** provided and
//! cannot run here: our ROUGE numbers are `rouge-score`'s, which papers sometimes report
//! instead; expect small differences from ROUGE-1.5.5 (tokenisation, stemmer version).
//!
//! Tokenisation differs per scorer, on purpose (see [`tokenize`]): ROUGE lowercases
//! and keeps only ASCII `[a-z0-9]` runs; COCO BLEU, NLTK BLEU and Distinct split on
//! whitespace and are case-sensitive; COCO ROUGE-L splits on single spaces. None of
//! them runs the PTB tokenizer that the COCO toolkit normally applies first.
//!
//! # Example
//!
//! ```
//! use elmer_metrics::{coco_bleu, score_all, Meteor, RougeScorer};
//!
//! let hyps = ["the cat sat on the mat", "a dog barked"];
//! let refs = [
//!     vec!["the cat sat on the mat"],
//!     vec!["the dog barked loudly", "a dog was barking"],
//! ];
//!
//! // Everything at once: ROUGE (stemmed), COCO BLEU-1..4 and ROUGE-L, Distinct-1/2,
//! // and METEOR without the synonym / paraphrase tables.
//! let report = score_all(&hyps, &refs)?;
//! assert_eq!(report.num_pairs, 2);
//! println!(
//!     "R-1 {:.2} R-2 {:.2} R-L {:.2} BLEU-4 {:.2} METEOR {:.2}",
//!     100.0 * report.rouge1_f1,
//!     100.0 * report.rouge2_f1,
//!     100.0 * report.rouge_l_f1,
//!     100.0 * report.bleu[3],
//!     100.0 * report.meteor.unwrap_or(0.0),
//! );
//!
//! // Or one metric at a time.
//! let rouge = RougeScorer::new(true).score_multi(hyps[1], &refs[1])?;
//! assert!(rouge.rouge1.f1 > 0.5);
//! let bleu = coco_bleu(&hyps, &refs)?;
//! assert!((bleu.per_pair[0][3] - 1.0).abs() < 1e-6); // identical pair
//! let meteor = Meteor::default().score_segment(hyps[0], &refs[0]);
//! assert!((meteor - 1.0).abs() < 1e-12);
//! # Ok::<(), elmer_metrics::MetricsError>(())
//! ```
//!
//! METEOR as pycocoevalcap reports it needs the jar's tables (see [`Meteor::with_jar`]):
//!
//! ```no_run
//! use elmer_metrics::{score_all_with, Meteor};
//!
//! let meteor = Meteor::from_jar("/path/to/site-packages/pycocoevalcap/meteor/meteor-1.5.jar")?;
//! let report = score_all_with(&["a hypothesis"], &[vec!["a reference"]], true, Some(&meteor))
//!     .expect("one reference list per hypothesis");
//! println!("METEOR {:.4}", report.meteor.unwrap());
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod bleu;
pub mod distinct;
mod jar;
mod lcs;
pub mod meteor;
mod meteor_norm;
pub mod porter;
mod porter_meteor;
pub mod rouge;
pub mod tokenize;

use std::fmt;

pub use bleu::{coco_bleu, nltk_bleu_1_to_4, nltk_corpus_bleu, nltk_corpus_bleu_str, CocoBleu};
pub use distinct::{distinct_1, distinct_2, distinct_n};
pub use meteor::{Meteor, MeteorParams, MeteorStats};
pub use rouge::{coco_rouge_l, coco_rouge_l_corpus, CocoRougeL, RougeScorer, RougeScores, Score};

/// The README's examples, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The longest hypothesis or reference, in words, that the corpus-level scorers accept:
/// 50,000.
///
/// ROUGE-L, ROUGE-Lsum, COCO ROUGE-L and METEOR compare every word of a hypothesis with
/// every word of its reference, so their time grows with the product of the two lengths
/// (memory stays linear, see below). At this cap a worst-case pair (50,000 words on both
/// sides, one line, one word repeated or natural text) takes a few seconds in a release
/// build: about 0.3 s for ROUGE, 0.1 s for COCO ROUGE-L and 2–3 s for METEOR. Real
/// generation outputs (a long summary is ~1,000 words) are far below it.
///
/// "Words" are the tokens of the scorer that checks them: `rouge-score` tokens for
/// [`RougeScorer`] (after lower-casing and splitting on everything outside `[a-z0-9]`),
/// `str.split(" ")` fields for [`coco_rouge_l`], the normalised tokens for [`Meteor`].
/// Checked, with [`MetricsError::SegmentTooLong`] past it, by [`score_all`],
/// [`score_all_with`], [`RougeScorer::score_multi`] / [`RougeScorer::score_pairs`] /
/// [`RougeScorer::score_corpus`], [`coco_rouge_l`] / [`coco_rouge_l_corpus`] and
/// [`Meteor::score_corpus`] / [`Meteor::try_score_corpus`]. BLEU and Distinct are linear in
/// the length and are not capped; neither are the single-pair functions that cannot
/// return an error ([`RougeScorer::score`], [`Meteor::score_segment`],
/// [`Meteor::segment_stats`], [`rouge::rouge_l`], ...), which accept any length and simply
/// take longer.
///
/// Memory is linear in the length for every metric: ROUGE-L and COCO ROUGE-L keep one bit
/// row of the LCS table, ROUGE-Lsum about `2·√n` bit rows for its backtrace, and METEOR
/// shares structure between its partial alignments and considers a bounded number of
/// candidate matches per word on long segments (see [`meteor::FULL_SEARCH_CANDIDATES`]
/// and [`meteor::MAX_CANDIDATES_PER_WORD`]).
pub const MAX_SEGMENT_WORDS: usize = 50_000;

/// Which text of a pair an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The hypothesis (system output).
    Hypothesis,
    /// Reference number `.0` (0-based) of the pair's reference list.
    Reference(usize),
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Side::Hypothesis => f.write_str("hypothesis"),
            Side::Reference(k) => write!(f, "reference {k}"),
        }
    }
}

/// Errors of the corpus-level metric functions: bad input shapes, or a text longer than
/// [`MAX_SEGMENT_WORDS`]. No metric fails on the content of the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsError {
    /// `hyps` and `refs` have different lengths.
    LengthMismatch {
        /// Number of hypotheses.
        hyps: usize,
        /// Number of reference lists.
        refs: usize,
    },
    /// The reference list of pair `index` is empty (every pair needs at least one
    /// reference, which may be the empty string).
    NoReferences {
        /// Position of the pair in the corpus.
        index: usize,
    },
    /// A hypothesis or reference has more than [`MAX_SEGMENT_WORDS`] words (tokens of
    /// the scorer that reports it).
    SegmentTooLong {
        /// Position of the pair in the corpus (0 for the single-pair functions).
        index: usize,
        /// The hypothesis, or which of the pair's references.
        side: Side,
        /// Its length in words.
        words: usize,
        /// The cap, [`MAX_SEGMENT_WORDS`].
        max: usize,
    },
}

impl MetricsError {
    /// [`MetricsError::SegmentTooLong`] if `words > MAX_SEGMENT_WORDS`.
    pub(crate) fn check_length(index: usize, side: Side, words: usize) -> Result<(), Self> {
        if words > MAX_SEGMENT_WORDS {
            return Err(MetricsError::SegmentTooLong {
                index,
                side,
                words,
                max: MAX_SEGMENT_WORDS,
            });
        }
        Ok(())
    }
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsError::LengthMismatch { hyps, refs } => {
                write!(f, "metrics: {hyps} hypotheses but {refs} reference lists")
            }
            MetricsError::NoReferences { index } => {
                write!(f, "metrics: pair {index} has no reference")
            }
            MetricsError::SegmentTooLong {
                index,
                side,
                words,
                max,
            } => write!(
                f,
                "metrics: pair {index}: the {side} has {words} words, more than the \
                 {max} allowed (MAX_SEGMENT_WORDS); split it or truncate it"
            ),
        }
    }
}

impl std::error::Error for MetricsError {}

/// The usual table of corpus-level numbers for a generation run
/// (all fractions in `[0, 1]` except Distinct, which is in percent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricReport {
    /// Number of (hypothesis, references) pairs scored.
    pub num_pairs: usize,
    /// Whether the ROUGE fields used Porter stemming (`use_stemmer`).
    pub rouge_stemmed: bool,
    /// `rouge-score` ROUGE-1 F1, mean over pairs (multi-reference: best F per pair).
    pub rouge1_f1: f64,
    /// `rouge-score` ROUGE-2 F1, mean over pairs.
    pub rouge2_f1: f64,
    /// `rouge-score` ROUGE-L F1, mean over pairs.
    pub rouge_l_f1: f64,
    /// `rouge-score` ROUGE-Lsum F1 (lines = `'\n'`-separated sentences), mean over pairs.
    pub rouge_lsum_f1: f64,
    /// `pycocoevalcap` corpus BLEU-1..4 (index 0 = BLEU-1), whitespace tokens.
    pub bleu: [f64; 4],
    /// `pycocoevalcap` ROUGE-L (β = 1.2), mean over pairs, space tokens.
    pub rouge_l_coco: f64,
    /// Distinct-1 of the hypotheses, percent.
    pub distinct1: f64,
    /// Distinct-2 of the hypotheses, percent.
    pub distinct2: f64,
    /// Corpus METEOR 1.5 (0..1, the jar's aggregate score) when computed.
    pub meteor: Option<f64>,
}

/// [`score_all_with`] with ROUGE stemming on (`use_stemmer=True`, the
/// `ROUGE-1.5.5 -m` convention of summarisation papers) and METEOR without tables.
pub fn score_all<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
) -> Result<MetricReport, MetricsError> {
    score_all_with(hyps, refs, true, Some(&Meteor::default()))
}

/// Computes every metric of [`MetricReport`]; METEOR only when `meteor` is given.
///
/// `hyps[i]` is scored against all of `refs[i]` (at least one reference each).
/// Errors with [`MetricsError`] on mismatched lengths, an empty reference list, or a
/// hypothesis or reference longer than [`MAX_SEGMENT_WORDS`] words
/// ([`MetricsError::SegmentTooLong`], naming the pair and the side).
/// An empty corpus gives an all-zero report.
pub fn score_all_with<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
    rouge_stem: bool,
    meteor: Option<&Meteor>,
) -> Result<MetricReport, MetricsError> {
    let rouge = RougeScorer::new(rouge_stem).score_corpus(hyps, refs)?;
    let meteor = match meteor {
        Some(m) => {
            let h: Vec<&str> = hyps.iter().map(AsRef::as_ref).collect();
            let r: Vec<Vec<&str>> = refs
                .iter()
                .map(|rs| rs.iter().map(AsRef::as_ref).collect())
                .collect();
            Some(m.score_corpus(&h, &r)?)
        }
        None => None,
    };
    let bleu = coco_bleu(hyps, refs)?;
    let coco_l = coco_rouge_l_corpus(hyps, refs)?;
    Ok(MetricReport {
        num_pairs: hyps.len(),
        rouge_stemmed: rouge_stem,
        rouge1_f1: rouge.rouge1.f1,
        rouge2_f1: rouge.rouge2.f1,
        rouge_l_f1: rouge.rouge_l.f1,
        rouge_lsum_f1: rouge.rouge_lsum.f1,
        bleu: bleu.corpus,
        rouge_l_coco: coco_l.score,
        distinct1: distinct_1(hyps),
        distinct2: distinct_2(hyps),
        meteor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_all_smoke() {
        let hyps = vec!["the cat sat on the mat".to_string(), String::new()];
        let refs = vec![
            vec!["the cat sat on the mat".to_string()],
            vec!["a dog".to_string(), "the dog".to_string()],
        ];
        let r = score_all(&hyps, &refs).unwrap();
        assert_eq!(r.num_pairs, 2);
        assert!((r.rouge1_f1 - 0.5).abs() < 1e-12);
        assert!(r.meteor.is_some());
        assert!(score_all(&hyps, &refs[..1]).is_err());
        let empty: [&str; 0] = [];
        let no_refs: [Vec<&str>; 0] = [];
        let z = score_all(&empty, &no_refs).unwrap();
        assert_eq!(z.bleu, [0.0; 4]);
        assert_eq!(z.rouge1_f1, 0.0);
    }
}
