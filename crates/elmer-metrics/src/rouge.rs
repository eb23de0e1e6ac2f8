//! ROUGE, two flavours:
//!
//! * [`RougeScorer`]: ROUGE-1, ROUGE-2 (any ROUGE-N via [`rouge_n`]), ROUGE-L and
//!   ROUGE-Lsum exactly as Google's `rouge-score` 0.1.2
//!   (`rouge_score.rouge_scorer.RougeScorer(['rouge1','rouge2','rougeL','rougeLsum'],
//!   use_stemmer=...)`, `.score(target, prediction)` / `.score_multi(targets, prediction)`).
//! * [`coco_rouge_l`] / [`coco_rouge_l_corpus`]: the ROUGE-L of the MS-COCO caption
//!   toolkit (`pycocoevalcap` 1.2, `pycocoevalcap.rouge.Rouge().compute_score`).
//!
//! Values are fractions in `[0, 1]` (multiply by 100 for the usual tables).
//!
//! ## rouge-score definitions
//! Text is tokenised by [`rouge_tokenize`](super::tokenize::rouge_tokenize) (lowercase, everything outside
//! `[a-z0-9]` is a separator — non-ASCII letters are dropped — optional NLTK
//! Porter stemming of tokens longer than 3 characters).
//!
//! * ROUGE-N: with `overlap = Σ_g min(count_ref(g), count_hyp(g))` over n-grams g,
//!   `P = overlap / max(#hyp n-grams, 1)`, `R = overlap / max(#ref n-grams, 1)`.
//! * ROUGE-L: `P = LCS / |hyp|`, `R = LCS / |ref|`; all zero if either side has no
//!   tokens.
//! * ROUGE-Lsum: both texts are split on `'\n'` (only on newlines — put one
//!   sentence per line yourself; `rouge-score`'s `split_summaries=True` NLTK
//!   sentence splitting is not provided), empty lines are dropped, and each line is
//!   tokenised. `hits` = Σ over reference lines r of |union-LCS(r, hyp lines)|,
//!   where the union is taken over the reference-token *positions* of one LCS per
//!   hypothesis line (the LCS chosen by `rouge-score`'s backtracking), and each
//!   hit consumes one occurrence of the token from both texts' token counts (so a
//!   token is never counted more often than it occurs). `P = hits / |hyp|`,
//!   `R = hits / |ref|`. Single-line texts give ROUGE-Lsum == ROUGE-L.
//! * F1 (`scoring.fmeasure`): `2PR / (P + R)`, or 0 when `P + R == 0`.
//! * Several references ([`RougeScorer::score_multi`]): for **each** ROUGE type
//!   independently, the (P, R, F) of the reference with the highest F; ties go to
//!   the first such reference (`numpy.argmax`).
//! * Corpus ([`RougeScorer::score_corpus`]): the arithmetic mean over pairs of
//!   P, R and F separately. `rouge-score`'s `BootstrapAggregator().aggregate()`
//!   reports as `mid` the median of 1000 bootstrap re-sample means; that is a
//!   random estimate of this same mean and differs from it by bootstrap noise
//!   (typically < 1e-3 on 1,000 pairs), so we return the exact mean instead.
//!   An empty corpus gives all zeros (Python's `numpy.mean` of nothing is NaN).
//!
//! Empty inputs: an empty (or token-less, e.g. `"!!"`, `"北京"`) hypothesis or
//! reference gives P = R = F = 0 for every type.
//!
//! ## Long texts
//! The LCS of ROUGE-L, ROUGE-Lsum and COCO ROUGE-L takes time proportional to the product
//! of the two lengths (64 table cells per machine-word operation) but only linear memory:
//! `rouge-score`'s full `(n+1)·(m+1)` table is never built (the LCS length keeps one bit
//! row; ROUGE-Lsum's backtrace, which must pick exactly `rouge-score`'s LCS, keeps about
//! `2·√n` bit rows per sentence pair). ROUGE-Lsum also skips the sentence pairs that
//! cannot add to a reference sentence's union LCS (a repeated hypothesis sentence, or one
//! sharing no word with the reference sentence's positions still outside the union), so
//! one word per line costs no more than one line. The functions that return a `Result`
//! reject a text of more than [`MAX_SEGMENT_WORDS`](crate::MAX_SEGMENT_WORDS) tokens with
//! [`MetricsError::SegmentTooLong`]. A 30,000-word pair scores in about 0.1 s (release
//! build), on one line or one sentence per line.

use crate::lcs::{lcs_len, lcs_ref_indices_with, Interner, LcsScratch, Masks, NO_MATCH};
use crate::tokenize::{ngram_counts, rouge_tokenize_into, split_on_space, FxHashMap};
use crate::{MetricsError, Side};

/// Precision, recall and F1 of one ROUGE type (`rouge_score.scoring.Score`, whose
/// `fmeasure` field is called `f1` here).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    /// Matched units / hypothesis units.
    pub precision: f64,
    /// Matched units / reference units.
    pub recall: f64,
    /// Harmonic mean `2PR/(P+R)`, 0 when `P + R == 0`.
    pub f1: f64,
}

impl Score {
    /// Builds a score from precision and recall with `rouge-score`'s F-measure.
    pub fn from_pr(precision: f64, recall: f64) -> Self {
        Score {
            precision,
            recall,
            f1: fmeasure(precision, recall),
        }
    }
}

/// `rouge_score.scoring.fmeasure`: `2PR/(P+R)` if `P + R > 0`, else 0.
pub fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// The four `rouge-score` types for one (hypothesis, reference(s)) pair or a corpus mean.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RougeScores {
    /// `rouge1`: unigram overlap.
    pub rouge1: Score,
    /// `rouge2`: bigram overlap.
    pub rouge2: Score,
    /// `rougeL`: LCS over the whole text (newlines are ordinary separators).
    pub rouge_l: Score,
    /// `rougeLsum`: summary-level union LCS over `'\n'`-separated lines.
    pub rouge_lsum: Score,
}

/// A text tokenised once for all ROUGE types: tokens per line (for ROUGE-Lsum)
/// and all tokens (for ROUGE-1/2/L; equal to the concatenation of the lines,
/// because `'\n'` is a token boundary anyway).
struct Tokenized {
    all: Vec<String>,
    /// `[start, end)` ranges into `all`, one per non-empty line.
    lines: Vec<(usize, usize)>,
}

impl Tokenized {
    fn new(text: &str, stem: bool) -> Self {
        let mut all = Vec::new();
        let mut lines = Vec::new();
        for line in text.split('\n') {
            // rouge-score keeps lines with len(line) > 0 (even if they have no tokens).
            if line.is_empty() {
                continue;
            }
            let start = all.len();
            rouge_tokenize_into(line, stem, &mut all);
            lines.push((start, all.len()));
        }
        Tokenized { all, lines }
    }

    fn line_slices(&self) -> Vec<&[String]> {
        self.lines.iter().map(|&(s, e)| &self.all[s..e]).collect()
    }
}

/// Google `rouge-score` (0.1.2) scorer for ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum
/// with the default tokenizer; see the [module docs](self) for the formulas.
///
/// `RougeScorer { stem: true }` is `RougeScorer(types, use_stemmer=True)`
/// (the `ROUGE-1.5.5.pl -m` setting usual in summarisation papers);
/// `stem: false` is the package default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RougeScorer {
    /// Apply NLTK's Porter stemmer to tokens longer than 3 characters.
    pub stem: bool,
}

impl RougeScorer {
    /// A scorer with or without Porter stemming.
    pub fn new(stem: bool) -> Self {
        RougeScorer { stem }
    }

    /// The `rouge-score` tokens of `text` under this scorer's stemming setting.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        Tokenized::new(text, self.stem).all
    }

    /// Scores one hypothesis against one reference
    /// (`RougeScorer.score(target=reference, prediction=hyp)`).
    pub fn score(&self, hyp: &str, reference: &str) -> RougeScores {
        let h = Tokenized::new(hyp, self.stem);
        let r = Tokenized::new(reference, self.stem);
        score_tokenized(&h, &r)
    }

    /// Scores one hypothesis against several references
    /// (`RougeScorer.score_multi(targets=refs, prediction=hyp)`): per ROUGE type,
    /// the scores of the reference with the highest F1 (first one on ties).
    ///
    /// Errors with [`MetricsError::NoReferences`] (index 0) if `refs` is empty
    /// (`rouge-score` raises there), and with [`MetricsError::SegmentTooLong`] (index 0)
    /// if the hypothesis or a reference has more than
    /// [`MAX_SEGMENT_WORDS`](crate::MAX_SEGMENT_WORDS) tokens.
    pub fn score_multi<R: AsRef<str>>(
        &self,
        hyp: &str,
        refs: &[R],
    ) -> Result<RougeScores, MetricsError> {
        self.score_multi_at(hyp, refs, 0)
    }

    fn score_multi_at<R: AsRef<str>>(
        &self,
        hyp: &str,
        refs: &[R],
        index: usize,
    ) -> Result<RougeScores, MetricsError> {
        if refs.is_empty() {
            return Err(MetricsError::NoReferences { index });
        }
        let h = Tokenized::new(hyp, self.stem);
        MetricsError::check_length(index, Side::Hypothesis, h.all.len())?;
        let mut best: Option<RougeScores> = None;
        for (k, r) in refs.iter().enumerate() {
            let r = Tokenized::new(r.as_ref(), self.stem);
            MetricsError::check_length(index, Side::Reference(k), r.all.len())?;
            let s = score_tokenized(&h, &r);
            best = Some(match best {
                None => s,
                Some(b) => RougeScores {
                    rouge1: better(b.rouge1, s.rouge1),
                    rouge2: better(b.rouge2, s.rouge2),
                    rouge_l: better(b.rouge_l, s.rouge_l),
                    rouge_lsum: better(b.rouge_lsum, s.rouge_lsum),
                },
            });
        }
        best.ok_or(MetricsError::NoReferences { index })
    }

    /// Per-pair scores ([`Self::score_multi`]) for a corpus.
    ///
    /// Errors if `hyps.len() != refs.len()`, some pair has no reference, or a text has
    /// more than [`MAX_SEGMENT_WORDS`](crate::MAX_SEGMENT_WORDS) tokens
    /// ([`MetricsError::SegmentTooLong`] with the pair index and side).
    pub fn score_pairs<H: AsRef<str>, R: AsRef<str>>(
        &self,
        hyps: &[H],
        refs: &[Vec<R>],
    ) -> Result<Vec<RougeScores>, MetricsError> {
        check_lengths(hyps.len(), refs.len())?;
        hyps.iter()
            .zip(refs)
            .enumerate()
            .map(|(i, (h, r))| self.score_multi_at(h.as_ref(), r, i))
            .collect()
    }

    /// Corpus score: the mean over pairs of the [`Self::score_multi`] P, R and F1
    /// (the exact mean that `BootstrapAggregator`'s `mid` estimates). Empty
    /// corpus: all zeros. Errors as [`Self::score_pairs`].
    pub fn score_corpus<H: AsRef<str>, R: AsRef<str>>(
        &self,
        hyps: &[H],
        refs: &[Vec<R>],
    ) -> Result<RougeScores, MetricsError> {
        Ok(mean_scores(&self.score_pairs(hyps, refs)?))
    }
}

/// Arithmetic mean of each field over `scores` (all zeros when empty).
pub fn mean_scores(scores: &[RougeScores]) -> RougeScores {
    if scores.is_empty() {
        return RougeScores::default();
    }
    let n = scores.len() as f64;
    let mean = |f: &dyn Fn(&RougeScores) -> Score| {
        let (mut p, mut r, mut f1) = (0.0, 0.0, 0.0);
        for s in scores {
            let x = f(s);
            p += x.precision;
            r += x.recall;
            f1 += x.f1;
        }
        Score {
            precision: p / n,
            recall: r / n,
            f1: f1 / n,
        }
    };
    RougeScores {
        rouge1: mean(&|s| s.rouge1),
        rouge2: mean(&|s| s.rouge2),
        rouge_l: mean(&|s| s.rouge_l),
        rouge_lsum: mean(&|s| s.rouge_lsum),
    }
}

fn better(best: Score, new: Score) -> Score {
    if new.f1 > best.f1 {
        new
    } else {
        best
    }
}

pub(crate) fn check_lengths(hyps: usize, refs: usize) -> Result<(), MetricsError> {
    if hyps != refs {
        return Err(MetricsError::LengthMismatch { hyps, refs });
    }
    Ok(())
}

fn score_tokenized(h: &Tokenized, r: &Tokenized) -> RougeScores {
    RougeScores {
        rouge1: rouge_n(&h.all, &r.all, 1),
        rouge2: rouge_n(&h.all, &r.all, 2),
        rouge_l: rouge_l(&h.all, &r.all),
        rouge_lsum: rouge_lsum(&h.line_slices(), &r.line_slices()),
    }
}

/// ROUGE-N on token lists (`rouge_scorer._score_ngrams(_create_ngrams(...))`).
/// `n == 0` gives all zeros.
pub fn rouge_n<T: AsRef<str>>(hyp: &[T], reference: &[T], n: usize) -> Score {
    let h: Vec<&str> = hyp.iter().map(AsRef::as_ref).collect();
    let r: Vec<&str> = reference.iter().map(AsRef::as_ref).collect();
    let hc = ngram_counts(&h, n);
    let rc = ngram_counts(&r, n);
    let overlap: usize = rc
        .iter()
        .map(|(g, &c)| c.min(hc.get(g).copied().unwrap_or(0)))
        .sum();
    let h_total: usize = hc.values().sum();
    let r_total: usize = rc.values().sum();
    Score::from_pr(
        overlap as f64 / h_total.max(1) as f64,
        overlap as f64 / r_total.max(1) as f64,
    )
}

/// ROUGE-L on token lists (`rouge_scorer._score_lcs`): zero if either is empty.
pub fn rouge_l<T: AsRef<str>>(hyp: &[T], reference: &[T]) -> Score {
    if hyp.is_empty() || reference.is_empty() {
        return Score::default();
    }
    let mut ids = Interner::new();
    let h = ids.ids(hyp.iter().map(AsRef::as_ref));
    let r = ids.ids(reference.iter().map(AsRef::as_ref));
    let lcs = lcs_len(&r, &h, ids.len()) as f64;
    Score::from_pr(lcs / h.len() as f64, lcs / r.len() as f64)
}

/// ROUGE-Lsum on already tokenised lines (`rouge_scorer._summary_level_lcs(ref, hyp)`).
pub fn rouge_lsum<T: AsRef<str>>(hyp_lines: &[&[T]], ref_lines: &[&[T]]) -> Score {
    if hyp_lines.is_empty() || ref_lines.is_empty() {
        return Score::default();
    }
    let mut ids = Interner::new();
    let hyp: Vec<Vec<u32>> = hyp_lines
        .iter()
        .map(|l| ids.ids(l.iter().map(AsRef::as_ref)))
        .collect();
    let refs: Vec<Vec<u32>> = ref_lines
        .iter()
        .map(|l| ids.ids(l.iter().map(AsRef::as_ref)))
        .collect();
    let m: usize = refs.iter().map(Vec::len).sum();
    let n: usize = hyp.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return Score::default();
    }
    let mut cnt_r = vec![0usize; ids.len()];
    let mut cnt_c = vec![0usize; ids.len()];
    for &t in refs.iter().flatten() {
        cnt_r[t as usize] += 1;
    }
    for &t in hyp.iter().flatten() {
        cnt_c[t as usize] += 1;
    }
    let v = ids.len();
    // The distinct hypothesis lines (equal lines have equal LCSs with any reference
    // line), each with its distinct tokens in first-appearance order (its local ids
    // 0..k) and, built on first use, its match masks.
    let mut distinct: FxHashMap<&[u32], usize> = FxHashMap::default();
    let mut lines: Vec<(&[u32], Vec<u32>, Option<Masks>)> = Vec::new();
    // For each token id: the distinct hypothesis lines that contain it.
    let mut containing: Vec<Vec<u32>> = vec![Vec::new(); v];
    let mut seen = vec![u32::MAX; v];
    for c in &hyp {
        distinct.entry(c.as_slice()).or_insert_with(|| {
            let d = lines.len();
            let mut toks = Vec::new();
            for &t in c {
                if seen[t as usize] != d as u32 {
                    seen[t as usize] = d as u32;
                    toks.push(t);
                    containing[t as usize].push(d as u32);
                }
            }
            lines.push((c.as_slice(), toks, None));
            d
        });
    }
    // For each reference line, the union of the LCS positions over the hypothesis lines
    // (`marked`). A hypothesis line can only add positions whose token it contains, so
    // only the lines containing a token with a position not yet in the union are
    // visited, token by token, until every position of the token is in; the union is
    // the same as over all lines, but repeated lines and words cost no more pairs.
    let mut marked: Vec<bool> = Vec::new();
    let mut unmarked = vec![0usize; v]; // per token: its positions in r not yet marked
    let mut visited = vec![usize::MAX; lines.len()];
    let mut token_done = vec![usize::MAX; v]; // token already iterated for this r
    let mut local = vec![NO_MATCH; v];
    let mut scratch = LcsScratch::default();
    let (mut c_ids, mut r_ids, mut ind) = (Vec::new(), Vec::new(), Vec::new());
    let mut hits = 0usize;
    for (ri, r) in refs.iter().enumerate() {
        marked.clear();
        marked.resize(r.len(), false);
        for &t in r {
            unmarked[t as usize] += 1;
        }
        let mut remaining = r.len();
        for &t in r {
            if remaining == 0 {
                break;
            }
            if token_done[t as usize] == ri {
                continue;
            }
            token_done[t as usize] = ri;
            for &d in &containing[t as usize] {
                if unmarked[t as usize] == 0 {
                    break;
                }
                let d = d as usize;
                if visited[d] == ri {
                    continue;
                }
                visited[d] = ri;
                let (c, toks, masks) = &mut lines[d];
                for (k, &x) in toks.iter().enumerate() {
                    local[x as usize] = k as u32;
                }
                c_ids.clear();
                c_ids.extend(c.iter().map(|&x| local[x as usize]));
                r_ids.clear();
                r_ids.extend(r.iter().map(|&x| local[x as usize]));
                for &x in toks.iter() {
                    local[x as usize] = NO_MATCH;
                }
                // The LCS `rouge_score.rouge_scorer.lcs_ind` picks (full table, then
                // `_backtrack_norec`), computed in linear memory.
                let m = masks.get_or_insert_with(|| Masks::new(&c_ids, toks.len()));
                lcs_ref_indices_with(&r_ids, &c_ids, m, &mut scratch, &mut ind);
                for &i in &ind {
                    if !marked[i] {
                        marked[i] = true;
                        unmarked[r[i] as usize] -= 1;
                        remaining -= 1;
                    }
                }
            }
        }
        for &t in r {
            unmarked[t as usize] = 0;
        }
        // The union, in ascending reference position.
        for (i, &t) in r.iter().enumerate() {
            if !marked[i] {
                continue;
            }
            let t = t as usize;
            if cnt_c[t] > 0 && cnt_r[t] > 0 {
                hits += 1;
                cnt_c[t] -= 1;
                cnt_r[t] -= 1;
            }
        }
    }
    Score::from_pr(hits as f64 / n as f64, hits as f64 / m as f64)
}

/// `beta` of pycocoevalcap's ROUGE-L.
pub const COCO_ROUGE_BETA: f64 = 1.2;

/// MS-COCO caption ROUGE-L of one hypothesis (`pycocoevalcap` 1.2,
/// `Rouge().calc_score([hyp], refs)`).
///
/// Tokens are `str.split(" ")` ([`split_on_space`]): case-sensitive, punctuation
/// kept, only U+0020 splits, so `""` is one empty token and `"a  b"` has an empty
/// middle token (the toolkit expects PTB-tokenised, lowercased input; this
/// function does **not** run the Java PTB tokenizer — tokenise before calling if
/// you want that). For each reference, `P_i = LCS_i/|hyp|`, `R_i = LCS_i/|ref_i|`;
/// then `P = max_i P_i` and `R = max_i R_i` **separately** (possibly from different
/// references), and the score is `(1+β²)·P·R / (R + β²·P)` with β = 1.2, or 0
/// if `P == 0` or `R == 0`. Consequently an empty hypothesis scores 1.0 against
/// an empty reference (both are `[""]`).
///
/// Errors with [`MetricsError::NoReferences`] if `refs` is empty, and with
/// [`MetricsError::SegmentTooLong`] if the hypothesis or a reference has more than
/// [`MAX_SEGMENT_WORDS`](crate::MAX_SEGMENT_WORDS) tokens.
pub fn coco_rouge_l<R: AsRef<str>>(hyp: &str, refs: &[R]) -> Result<f64, MetricsError> {
    coco_rouge_l_at(hyp, refs, 0)
}

fn coco_rouge_l_at<R: AsRef<str>>(
    hyp: &str,
    refs: &[R],
    index: usize,
) -> Result<f64, MetricsError> {
    if refs.is_empty() {
        return Err(MetricsError::NoReferences { index });
    }
    let mut ids = Interner::new();
    let c = ids.ids(split_on_space(hyp));
    MetricsError::check_length(index, Side::Hypothesis, c.len())?;
    let mut p_max = f64::NEG_INFINITY;
    let mut r_max = f64::NEG_INFINITY;
    for (k, r) in refs.iter().enumerate() {
        let t = ids.ids(split_on_space(r.as_ref()));
        MetricsError::check_length(index, Side::Reference(k), t.len())?;
        let lcs = lcs_len(&t, &c, ids.len()) as f64;
        p_max = p_max.max(lcs / c.len() as f64);
        r_max = r_max.max(lcs / t.len() as f64);
    }
    let b2 = COCO_ROUGE_BETA * COCO_ROUGE_BETA;
    if p_max != 0.0 && r_max != 0.0 {
        Ok(((1.0 + b2) * p_max * r_max) / (r_max + b2 * p_max))
    } else {
        Ok(0.0)
    }
}

/// Corpus result of [`coco_rouge_l_corpus`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CocoRougeL {
    /// Mean of `per_pair` (`Rouge().compute_score` first return value); 0.0 for an
    /// empty corpus (numpy would give NaN).
    pub score: f64,
    /// [`coco_rouge_l`] of every pair, in input order.
    pub per_pair: Vec<f64>,
}

/// MS-COCO ROUGE-L over a corpus (`pycocoevalcap.rouge.Rouge().compute_score(gts, res)`):
/// the mean of the per-pair [`coco_rouge_l`] values.
///
/// Errors if `hyps.len() != refs.len()`, some pair has no reference, or a text has more
/// than [`MAX_SEGMENT_WORDS`](crate::MAX_SEGMENT_WORDS) tokens
/// ([`MetricsError::SegmentTooLong`] with the pair index and side).
pub fn coco_rouge_l_corpus<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
) -> Result<CocoRougeL, MetricsError> {
    check_lengths(hyps.len(), refs.len())?;
    let per_pair = hyps
        .iter()
        .zip(refs)
        .enumerate()
        .map(|(i, (h, r))| coco_rouge_l_at(h.as_ref(), r, i))
        .collect::<Result<Vec<f64>, _>>()?;
    let score = if per_pair.is_empty() {
        0.0
    } else {
        per_pair.iter().sum::<f64>() / per_pair.len() as f64
    };
    Ok(CocoRougeL { score, per_pair })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lcs::lcs_ref_indices_table;
    use crate::tokenize::{lcs_length, FxHashMap};

    /// `rouge_score`'s `_summary_level_lcs` as this crate computed it before the
    /// linear-memory LCS: full `(n+1)(m+1)` table per sentence pair.
    fn quadratic_lsum(hyp: &[Vec<&str>], refs: &[Vec<&str>]) -> Score {
        let m: usize = refs.iter().map(Vec::len).sum();
        let n: usize = hyp.iter().map(Vec::len).sum();
        if hyp.is_empty() || refs.is_empty() || m == 0 || n == 0 {
            return Score::default();
        }
        let mut cnt_r: FxHashMap<&str, usize> = FxHashMap::default();
        let mut cnt_c: FxHashMap<&str, usize> = FxHashMap::default();
        for t in refs.iter().flatten() {
            *cnt_r.entry(t).or_insert(0) += 1;
        }
        for t in hyp.iter().flatten() {
            *cnt_c.entry(t).or_insert(0) += 1;
        }
        let mut hits = 0usize;
        for r in refs {
            let mut union: Vec<usize> = hyp
                .iter()
                .flat_map(|c| lcs_ref_indices_table(r, c))
                .collect();
            union.sort_unstable();
            union.dedup();
            for i in union {
                let t = r[i];
                let (Some(cc), Some(cr)) = (cnt_c.get_mut(t), cnt_r.get_mut(t)) else {
                    continue;
                };
                if *cc > 0 && *cr > 0 {
                    hits += 1;
                    *cc -= 1;
                    *cr -= 1;
                }
            }
        }
        Score::from_pr(hits as f64 / n as f64, hits as f64 / m as f64)
    }

    /// Random multi-line texts over a small alphabet: lines of 0..100 words (long enough
    /// for several 64-bit words per bit row), 1..8 lines per side.
    fn random_lines(state: &mut u64, alphabet: u64) -> Vec<Vec<&'static str>> {
        const WORDS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let mut next = || {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state
        };
        let lines = 1 + next() % 8;
        (0..lines)
            .map(|_| {
                let len = next() % 100;
                (0..len)
                    .map(|_| WORDS[(next() % alphabet) as usize])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn linear_memory_lcs_scores_equal_the_quadratic_ones() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for case in 0..120 {
            let alphabet = 1 + case % 8;
            let mut hyp = random_lines(&mut state, alphabet);
            let refs = random_lines(&mut state, alphabet);
            if case % 4 == 0 {
                // Repeated hypothesis lines, and one-word lines.
                hyp.push(hyp[0].clone());
                hyp.insert(0, refs[0].iter().take(1).copied().collect());
                hyp.push(hyp[0].clone());
            }
            let h: Vec<&[&str]> = hyp.iter().map(Vec::as_slice).collect();
            let r: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
            assert_eq!(
                rouge_lsum(&h, &r),
                quadratic_lsum(&hyp, &refs),
                "case {case}"
            );
            let (hf, rf) = (hyp.concat(), refs.concat());
            let want = if hf.is_empty() || rf.is_empty() {
                Score::default()
            } else {
                let lcs = lcs_length(&rf, &hf) as f64;
                Score::from_pr(lcs / hf.len() as f64, lcs / rf.len() as f64)
            };
            assert_eq!(rouge_l(&hf, &rf), want, "case {case}");
            // COCO ROUGE-L: split on single spaces (empty fields included).
            let (hs, rs) = (hf.join(" "), rf.join(" "));
            let (c, t) = (split_on_space(&hs), split_on_space(&rs));
            let lcs = lcs_length(&t, &c) as f64;
            let (p, rc) = (lcs / c.len() as f64, lcs / t.len() as f64);
            let want = if p != 0.0 && rc != 0.0 {
                (1.0 + 1.44) * p * rc / (rc + 1.44 * p)
            } else {
                0.0
            };
            assert_eq!(coco_rouge_l(&hs, &[&rs]).unwrap(), want, "case {case}");
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn docstring_example() {
        // rouge_scorer.py docstring: score('The quick brown fox jumps over the lazy dog',
        //                                  'The quick brown dog jumps on the log.')
        let s = RougeScorer::new(true).score(
            "The quick brown dog jumps on the log.",
            "The quick brown fox jumps over the lazy dog",
        );
        assert!(close(s.rouge1.precision, 6.0 / 8.0));
        assert!(close(s.rouge1.recall, 6.0 / 9.0));
        assert!(close(s.rouge_l.precision, 5.0 / 8.0));
    }

    #[test]
    fn empty_inputs_are_zero() {
        let sc = RougeScorer::new(false);
        for (h, r) in [
            ("", "a b"),
            ("a b", ""),
            ("", ""),
            ("!!", "a"),
            ("北京", "北京"),
        ] {
            assert_eq!(sc.score(h, r), RougeScores::default(), "{h:?} {r:?}");
        }
    }

    #[test]
    fn identical_is_one_and_case_insensitive() {
        let s = RougeScorer::new(false).score("The Cat sat.", "the cat SAT");
        for x in [s.rouge1, s.rouge2, s.rouge_l, s.rouge_lsum] {
            assert!(close(x.f1, 1.0));
        }
    }

    #[test]
    fn lsum_uses_lines() {
        let sc = RougeScorer::new(false);
        let s = sc.score("a b\nc d", "c d\na b");
        assert!(close(s.rouge_lsum.f1, 1.0));
        assert!(close(s.rouge_l.f1, 0.5));
        // Single line: Lsum == L.
        let s = sc.score("a c b d", "a b c d e");
        assert_eq!(s.rouge_l, s.rouge_lsum);
    }

    #[test]
    fn multi_takes_best_f_per_type() {
        let sc = RougeScorer::new(false);
        let m = sc.score_multi("a b c", &["x y z", "a b c", "a b"]).unwrap();
        assert!(close(m.rouge1.f1, 1.0));
        assert!(matches!(
            sc.score_multi::<&str>("a", &[]),
            Err(MetricsError::NoReferences { index: 0 })
        ));
    }

    #[test]
    fn corpus_is_mean_and_checks_lengths() {
        let sc = RougeScorer::new(false);
        let c = sc
            .score_corpus(&["a b", "x"], &[vec!["a b"], vec!["y"]])
            .unwrap();
        assert!(close(c.rouge1.f1, 0.5));
        let empty: [&str; 0] = [];
        let no_refs: [Vec<&str>; 0] = [];
        assert_eq!(
            sc.score_corpus(&empty, &no_refs).unwrap(),
            RougeScores::default()
        );
        assert!(matches!(
            sc.score_corpus(&["a"], &no_refs),
            Err(MetricsError::LengthMismatch { hyps: 1, refs: 0 })
        ));
    }

    #[test]
    fn coco_rouge_edge_cases() {
        assert!(close(coco_rouge_l("", &[""]).unwrap(), 1.0));
        assert!(close(coco_rouge_l("", &["a b"]).unwrap(), 0.0));
        // Case-sensitive, punctuation kept.
        assert!(close(coco_rouge_l("A b", &["a b"]).unwrap(), {
            let (p, r) = (0.5f64, 0.5f64);
            2.44 * p * r / (r + 1.44 * p)
        }));
        // Max P and max R are taken from different references.
        // "a": P=1/2, R=1; "a b c d": P=1, R=1/2 -> P=R=1.
        assert!(close(coco_rouge_l("a b", &["a", "a b c d"]).unwrap(), 1.0));
        assert!(coco_rouge_l::<&str>("a", &[]).is_err());
    }
}
