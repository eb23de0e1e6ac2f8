//! Corpus BLEU, two flavours:
//!
//! * [`coco_bleu`]: BLEU-1..4 of the MS-COCO caption toolkit (`pycocoevalcap` 1.2,
//!   `pycocoevalcap.bleu.Bleu(4).compute_score(gts, res)`, i.e.
//!   `BleuScorer.compute_score(option='closest')` in `bleu_scorer.py`).
//! * [`nltk_corpus_bleu`]: `nltk.translate.bleu_score.corpus_bleu` (NLTK 3.x,
//!   checked against 3.10.4) with arbitrary weights and the default "no smoothing"
//!   (`SmoothingFunction().method0`); [`nltk_bleu_1_to_4`] gives BLEU-k with uniform
//!   weights `(1/k, …, 1/k)` over n = 1..k.
//!
//! Scores are fractions in `[0, 1]`. Tokens are compared exactly (case-sensitive,
//! punctuation is part of a token, unicode untouched).

use crate::rouge::check_lengths;
use crate::tokenize::{ngram_counts, python_split_whitespace, FxHashMap};
use crate::MetricsError;

/// Highest n-gram order of [`coco_bleu`].
pub const COCO_BLEU_N: usize = 4;
/// `small` in `bleu_scorer.py`: added to every denominator (n-gram guess counts
/// and the reference length) to avoid division by zero.
pub const COCO_SMALL: f64 = 1e-9;
/// `tiny` in `bleu_scorer.py`: added to every numerator (clipped n-gram matches and
/// the hypothesis length) "so that if guess is 0 still return 0".
pub const COCO_TINY: f64 = 1e-15;

/// Result of [`coco_bleu`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CocoBleu {
    /// Corpus BLEU-1..4 (`score` returned by `Bleu(4).compute_score`).
    pub corpus: [f64; COCO_BLEU_N],
    /// Sentence-level BLEU-1..4 of each pair (`scores`, the toolkit's `bleu_list`,
    /// transposed to one array per pair).
    pub per_pair: Vec<[f64; COCO_BLEU_N]>,
    /// Total hypothesis length in tokens.
    pub hyp_len: usize,
    /// Total effective reference length (closest reference per pair).
    pub ref_len: usize,
}

/// Per-pair sufficient statistics (`cook_test`).
struct Cooked {
    testlen: usize,
    reflen: usize,
    guess: [usize; COCO_BLEU_N],
    correct: [usize; COCO_BLEU_N],
}

fn cook(hyp: &str, refs: &[&str]) -> Cooked {
    let h = python_split_whitespace(hyp);
    let testlen = h.len();
    let ref_toks: Vec<Vec<&str>> = refs.iter().map(|r| python_split_whitespace(r)).collect();
    // Closest reference length; ties go to the shorter one (min over (|l - t|, l)).
    let reflen = ref_toks
        .iter()
        .map(Vec::len)
        .min_by_key(|&l| (l.abs_diff(testlen), l))
        .unwrap_or(0);
    let mut guess = [0usize; COCO_BLEU_N];
    let mut correct = [0usize; COCO_BLEU_N];
    for k in 0..COCO_BLEU_N {
        guess[k] = (testlen + 1).saturating_sub(k + 1);
        let hc = ngram_counts(&h, k + 1);
        if hc.is_empty() {
            continue;
        }
        let mut max_ref: FxHashMap<&[&str], usize> = FxHashMap::default();
        for r in &ref_toks {
            for (g, c) in ngram_counts(r, k + 1) {
                let e = max_ref.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        correct[k] = hc
            .iter()
            .map(|(g, &c)| c.min(max_ref.get(g).copied().unwrap_or(0)))
            .sum();
    }
    Cooked {
        testlen,
        reflen,
        guess,
        correct,
    }
}

/// `bleu_scorer.py`'s score from summed statistics: cumulative products of
/// `(correct_k + tiny)/(guess_k + small)`, k-th root, times the brevity penalty
/// `exp(1 - 1/ratio)` when `ratio = (testlen + tiny)/(reflen + small) < 1`.
fn coco_formula(
    correct: &[usize; COCO_BLEU_N],
    guess: &[usize; COCO_BLEU_N],
    testlen: usize,
    reflen: usize,
) -> [f64; COCO_BLEU_N] {
    let mut out = [0.0; COCO_BLEU_N];
    let mut bleu = 1.0f64;
    for k in 0..COCO_BLEU_N {
        bleu *= (correct[k] as f64 + COCO_TINY) / (guess[k] as f64 + COCO_SMALL);
        out[k] = bleu.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (testlen as f64 + COCO_TINY) / (reflen as f64 + COCO_SMALL);
    if ratio < 1.0 {
        let bp = (1.0 - 1.0 / ratio).exp();
        for x in &mut out {
            *x *= bp;
        }
    }
    out
}

/// MS-COCO caption corpus BLEU-1..4 (`pycocoevalcap` 1.2 `Bleu(4).compute_score`,
/// reference-length option `"closest"`), plus the toolkit's sentence-level values.
///
/// Per pair, on `str.split()` tokens ([`python_split_whitespace`]; the toolkit
/// is normally fed PTB-tokenised lowercased text — this function does **not**
/// run the Java PTB tokenizer, tokenise/lowercase before calling if you want that):
/// `correct_n` = Σ_g min(count_hyp(g), max_ref count_ref(g)) over hypothesis
/// n-grams, `guess_n = max(0, |hyp| - n + 1)`, and the reference length is the
/// reference length closest to `|hyp|` (the shorter one on ties). Corpus BLEU-N sums
/// `correct`, `guess`, `|hyp|` and reference lengths over the corpus, then
/// `BLEU-N = (Π_{k≤N} (correct_k + 1e-15)/(guess_k + 1e-9))^(1/N) · BP` with
/// `BP = exp(1 - 1/ratio)` if `ratio = (|hyp| + 1e-15)/(|ref| + 1e-9) < 1`, else 1.
/// Because of these constants, a zero count gives ~1e-6-sized values instead of
/// an exact 0 (e.g. BLEU-4 of a corpus with matches but no 4-gram matches is
/// small but positive), and empty hypotheses contribute only reference length.
/// An empty reference has length 0. An all-empty-hypothesis corpus scores 0.
///
/// Empty corpus: all zeros (the Python formula would give 1e-6 for everything).
/// Errors if `hyps.len() != refs.len()` or some pair has no reference (the
/// toolkit asserts there).
pub fn coco_bleu<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
) -> Result<CocoBleu, MetricsError> {
    check_lengths(hyps.len(), refs.len())?;
    let mut out = CocoBleu::default();
    if hyps.is_empty() {
        return Ok(out);
    }
    let mut correct = [0usize; COCO_BLEU_N];
    let mut guess = [0usize; COCO_BLEU_N];
    for (i, (h, rs)) in hyps.iter().zip(refs).enumerate() {
        if rs.is_empty() {
            return Err(MetricsError::NoReferences { index: i });
        }
        let rs: Vec<&str> = rs.iter().map(AsRef::as_ref).collect();
        let c = cook(h.as_ref(), &rs);
        out.per_pair
            .push(coco_formula(&c.correct, &c.guess, c.testlen, c.reflen));
        out.hyp_len += c.testlen;
        out.ref_len += c.reflen;
        for k in 0..COCO_BLEU_N {
            correct[k] += c.correct[k];
            guess[k] += c.guess[k];
        }
    }
    out.corpus = coco_formula(&correct, &guess, out.hyp_len, out.ref_len);
    Ok(out)
}

/// `nltk.translate.bleu_score.corpus_bleu(list_of_references, hypotheses, weights)`
/// with `smoothing_function=None` and `auto_reweigh=False`, on token lists.
///
/// `p_n = Σ clipped n-gram matches / Σ max(1, #hyp n-grams)` summed over the corpus
/// (clipping by the max count in any one reference), `BP = 1` if
/// `hyp_len > ref_len`, `0` if `hyp_len == 0`, else `exp(1 - ref_len/hyp_len)`,
/// with `ref_len` the sum of the closest reference lengths (shorter on ties), and
/// `BLEU = BP · exp(Σ_n w_n · ln p_n)` for n = 1..weights.len().
///
/// Zero counts, exactly as NLTK: if there is no unigram match at all the result is
/// `0.0`. If some higher order has zero matches, NLTK warns ("The hypothesis
/// contains 0 counts of n-gram overlaps …") and substitutes `p_n =
/// sys.float_info.min` (= [`f64::MIN_POSITIVE`]), so the score is a positive number
/// around 1e-78 for BLEU-4 — effectively 0; we reproduce that value (without the
/// warning). Empty corpus: `0.0`.
///
/// Tokenisation is the caller's (NLTK takes token lists); [`nltk_corpus_bleu_str`]
/// splits strings with Python's `str.split()`. Errors if the lengths differ or a
/// hypothesis has no reference (NLTK raises `ValueError` from `min()` there).
pub fn nltk_corpus_bleu<H, R, S, T>(
    hyps: &[H],
    refs: &[Vec<R>],
    weights: &[f64],
) -> Result<f64, MetricsError>
where
    H: AsRef<[S]>,
    R: AsRef<[T]>,
    S: AsRef<str>,
    T: AsRef<str>,
{
    Ok(NltkStats::collect(hyps, refs, weights.len())?.bleu(weights))
}

/// Corpus sums behind `corpus_bleu` (`p_numerators`, `p_denominators`,
/// `hyp_lengths`, `ref_lengths`), computed once for all orders up to `max_n`.
struct NltkStats {
    num: Vec<usize>,
    den: Vec<usize>,
    hyp_len: usize,
    ref_len: usize,
}

impl NltkStats {
    fn collect<H, R, S, T>(hyps: &[H], refs: &[Vec<R>], max_n: usize) -> Result<Self, MetricsError>
    where
        H: AsRef<[S]>,
        R: AsRef<[T]>,
        S: AsRef<str>,
        T: AsRef<str>,
    {
        check_lengths(hyps.len(), refs.len())?;
        let mut st = NltkStats {
            num: vec![0; max_n + 1],
            den: vec![0; max_n + 1],
            hyp_len: 0,
            ref_len: 0,
        };
        for (i, (h, rs)) in hyps.iter().zip(refs).enumerate() {
            let h: Vec<&str> = h.as_ref().iter().map(AsRef::as_ref).collect();
            let rs: Vec<Vec<&str>> = rs
                .iter()
                .map(|r| r.as_ref().iter().map(AsRef::as_ref).collect())
                .collect();
            let closest = rs
                .iter()
                .map(Vec::len)
                .min_by_key(|&l| (l.abs_diff(h.len()), l))
                .ok_or(MetricsError::NoReferences { index: i })?;
            for n in 1..=max_n {
                // modified_precision: clip by the max count in any one reference.
                let hc = ngram_counts(&h, n);
                let mut max_ref: FxHashMap<&[&str], usize> = FxHashMap::default();
                for r in &rs {
                    let rc = ngram_counts(r, n);
                    for g in hc.keys() {
                        let c = rc.get(g).copied().unwrap_or(0);
                        let e = max_ref.entry(g).or_insert(0);
                        *e = (*e).max(c);
                    }
                }
                st.num[n] += hc
                    .iter()
                    .map(|(g, &c)| c.min(max_ref.get(g).copied().unwrap_or(0)))
                    .sum::<usize>();
                st.den[n] += hc.values().sum::<usize>().max(1);
            }
            st.hyp_len += h.len();
            st.ref_len += closest;
        }
        Ok(st)
    }

    /// The score for `weights` (orders 1..=weights.len(), which must be <= max_n).
    fn bleu(&self, weights: &[f64]) -> f64 {
        if weights.is_empty() || self.num.get(1).copied().unwrap_or(0) == 0 {
            return 0.0;
        }
        let bp = if self.hyp_len > self.ref_len {
            1.0
        } else if self.hyp_len == 0 {
            0.0
        } else {
            (1.0 - self.ref_len as f64 / self.hyp_len as f64).exp()
        };
        let terms: Vec<f64> = weights
            .iter()
            .enumerate()
            .map(|(k, w)| {
                let n = k + 1;
                // method0: a zero numerator becomes sys.float_info.min.
                let p = if self.num[n] == 0 {
                    f64::MIN_POSITIVE
                } else {
                    self.num[n] as f64 / self.den[n] as f64
                };
                w * p.ln()
            })
            .collect();
        bp * fsum(&terms).exp()
    }
}

fn split_corpus<'a, H: AsRef<str>, R: AsRef<str>>(
    hyps: &'a [H],
    refs: &'a [Vec<R>],
) -> (Vec<Vec<&'a str>>, Vec<Vec<Vec<&'a str>>>) {
    let h = hyps
        .iter()
        .map(|s| python_split_whitespace(s.as_ref()))
        .collect();
    let r = refs
        .iter()
        .map(|rs| {
            rs.iter()
                .map(|s| python_split_whitespace(s.as_ref()))
                .collect()
        })
        .collect();
    (h, r)
}

/// [`nltk_corpus_bleu`] on strings split with Python's `str.split()`
/// ([`python_split_whitespace`]); no lowercasing, no punctuation splitting.
pub fn nltk_corpus_bleu_str<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
    weights: &[f64],
) -> Result<f64, MetricsError> {
    let (h, r) = split_corpus(hyps, refs);
    nltk_corpus_bleu(&h, &r, weights)
}

/// NLTK corpus BLEU-1..4 on `str.split()` tokens: element `k-1` is
/// [`nltk_corpus_bleu_str`] with weights `(1/k, …, 1/k)` (k entries), the usual
/// "BLEU-k" of papers that use NLTK (n-gram statistics are collected once).
pub fn nltk_bleu_1_to_4<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
) -> Result<[f64; 4], MetricsError> {
    let (h, r) = split_corpus(hyps, refs);
    let st = NltkStats::collect(&h, &r, 4)?;
    let mut out = [0.0; 4];
    for (k, o) in out.iter_mut().enumerate() {
        *o = st.bleu(&vec![1.0 / (k + 1) as f64; k + 1]);
    }
    Ok(out)
}

/// Correctly rounded sum (Shewchuk partials, as Python's `math.fsum`).
fn fsum(xs: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &x0 in xs {
        let mut x = x0;
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    partials.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coco_identical_is_one() {
        let b = coco_bleu(&["a b c d e"], &[vec!["a b c d e"]]).unwrap();
        for x in b.corpus {
            assert!((x - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn coco_edge_cases() {
        let empty: [&str; 0] = [];
        let no_refs: [Vec<&str>; 0] = [];
        assert_eq!(coco_bleu(&empty, &no_refs).unwrap().corpus, [0.0; 4]);
        // Empty hypothesis -> 0 (brevity penalty underflows).
        let b = coco_bleu(&[""], &[vec!["a b"]]).unwrap();
        assert_eq!(b.corpus, [0.0; 4]);
        assert!(coco_bleu(&["a"], &[Vec::<&str>::new()]).is_err());
        assert!(coco_bleu(&["a"], &no_refs).is_err());
        // Case-sensitive.
        let b = coco_bleu(&["A b"], &[vec!["a b"]]).unwrap();
        assert!((b.corpus[0] - 0.5).abs() < 1e-9);
    }

    #[test]
    fn nltk_zero_counts() {
        // No unigram match -> exactly 0.
        assert_eq!(
            nltk_corpus_bleu_str(&["x y"], &[vec!["a b"]], &[0.25; 4]).unwrap(),
            0.0
        );
        // Unigram matches but no bigram: tiny positive, like NLTK.
        let s = nltk_corpus_bleu_str(&["a x b"], &[vec!["a y b"]], &[0.5, 0.5]).unwrap();
        assert!(s > 0.0 && s < 1e-100);
        let empty: [&str; 0] = [];
        let no_refs: [Vec<&str>; 0] = [];
        assert_eq!(nltk_bleu_1_to_4(&empty, &no_refs).unwrap(), [0.0; 4]);
        assert!(nltk_corpus_bleu_str(&["a"], &[Vec::<&str>::new()], &[1.0]).is_err());
    }

    #[test]
    fn nltk_docstring_example() {
        // corpus_bleu docstring: 0.5920...
        let hyp1 = "It is a guide to action which ensures that the military always obeys the commands of the party";
        let r11 = "It is a guide to action that ensures that the military will forever heed Party commands";
        let r12 = "It is the guiding principle which guarantees the military forces always being under the command of the Party";
        let r13 =
            "It is the practical guide for the army always to heed the directions of the party";
        let hyp2 = "he read the book because he was interested in world history";
        let r21 = "he was interested in world history because he read the book";
        let s = nltk_corpus_bleu_str(&[hyp1, hyp2], &[vec![r11, r12, r13], vec![r21]], &[0.25; 4])
            .unwrap();
        assert!((s - 0.5920).abs() < 1e-4, "{s}");
    }

    #[test]
    fn fsum_is_exact() {
        assert_eq!(fsum(&[1e100, 1.0, -1e100, 1.0]), 2.0);
        assert_eq!(fsum(&[]), 0.0);
    }
}
