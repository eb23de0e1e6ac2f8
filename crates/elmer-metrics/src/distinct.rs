//! Distinct-n (Li et al., 2016, "A Diversity-Promoting Objective Function for
//! Neural Conversation Models"): the share of distinct n-grams among all n-grams
//! of the generated corpus, in percent.
//!
//! There is no single reference package; this matches the common definition
//! `len(set(ngrams)) / len(ngrams) * 100` over all hypotheses, with tokens from
//! Python's `str.split()` ([`python_split_whitespace`]) and n-grams taken inside each
//! hypothesis (never across two of them), as in `scripts/fixtures/make_metric_fixtures.py`.
//! Tokens are compared exactly: case-sensitive, punctuation kept, unicode untouched.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use crate::tokenize::{python_split_whitespace, FxHasher};

/// Distinct-n in percent (0..=100) over the whole corpus of hypotheses.
///
/// Returns `0.0` when there is no n-gram at all: empty corpus, all hypotheses
/// shorter than `n` tokens, or `n == 0`.
pub fn distinct_n<S: AsRef<str>>(hyps: &[S], n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let mut total = 0usize;
    let mut seen: HashSet<Vec<&str>, BuildHasherDefault<FxHasher>> = HashSet::default();
    for h in hyps {
        let toks = python_split_whitespace(h.as_ref());
        for w in toks.windows(n) {
            total += 1;
            if !seen.contains(w) {
                seen.insert(w.to_vec());
            }
        }
    }
    if total == 0 {
        0.0
    } else {
        seen.len() as f64 / total as f64 * 100.0
    }
}

/// Distinct-1 in percent ([`distinct_n`] with n = 1).
pub fn distinct_1<S: AsRef<str>>(hyps: &[S]) -> f64 {
    distinct_n(hyps, 1)
}

/// Distinct-2 in percent ([`distinct_n`] with n = 2).
pub fn distinct_2<S: AsRef<str>>(hyps: &[S]) -> f64 {
    distinct_n(hyps, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_edge_cases() {
        let empty: [&str; 0] = [];
        assert_eq!(distinct_1(&empty), 0.0);
        assert_eq!(distinct_2(&["a", ""]), 0.0);
        assert_eq!(distinct_n(&["a b"], 0), 0.0);
        assert_eq!(distinct_1(&["a a b b"]), 50.0);
        // n-grams do not cross hypotheses.
        assert_eq!(distinct_2(&["a b", "a b"]), 50.0);
        assert_eq!(distinct_1(&["A a"]), 100.0);
    }
}
