//! Tokenisation and counting helpers shared by the metric modules.
//!
//! Each public scorer tokenises differently, and parity depends on copying the
//! exact rule, so the three rules live here side by side:
//!
//! | function | Python equivalent | used by |
//! |---|---|---|
//! | [`python_split_whitespace`] | `str.split()` | coco BLEU (`bleu_scorer.precook`), NLTK BLEU convenience wrappers, Distinct-n |
//! | [`split_on_space`] | `str.split(" ")` | coco ROUGE-L (`pycocoevalcap.rouge.Rouge.calc_score`) |
//! | [`rouge_tokenize`] | `rouge_score.tokenize.tokenize` | Google `rouge-score` ROUGE-1/2/L/Lsum |

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::porter;

/// `true` for exactly the characters for which Python 3's `str.isspace()` is true.
///
/// This is Rust's [`char::is_whitespace`] (Unicode `White_Space`) plus the four
/// ASCII information separators U+001C..=U+001F, which Python also treats as
/// whitespace. The list is written out so the result does not depend on the
/// Unicode version of either language.
pub fn is_python_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{0B}'
            | '\u{0C}'
            | '\r'
            | '\u{1C}'..='\u{1F}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Python `str.split()` with no argument: split on runs of (Python) whitespace,
/// dropping leading/trailing whitespace; `""` and all-whitespace strings give `[]`.
///
/// Case and punctuation are left untouched (tokens are compared byte-for-byte).
pub fn python_split_whitespace(s: &str) -> Vec<&str> {
    s.split(is_python_whitespace)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Python `str.split(" ")`: split on every single U+0020 space, keeping empty
/// fields. `""` gives `[""]` (one empty token), `"a  b"` gives `["a", "", "b"]`,
/// and tabs/newlines stay inside tokens. This is what `pycocoevalcap`'s ROUGE-L
/// does to its (normally PTB-tokenised) input.
pub fn split_on_space(s: &str) -> Vec<&str> {
    s.split(' ').collect()
}

/// Google `rouge-score` 0.1.2 tokenizer (`rouge_score/tokenize.py::tokenize`).
///
/// 1. Unicode lowercase (Python `str.lower()`, which equals Rust's
///    [`str::to_lowercase`] for every character whose lowercase contains ASCII).
/// 2. Every maximal run of characters outside `[a-z0-9]` becomes a token
///    boundary. **All non-ASCII letters and digits are therefore dropped**:
///    `"café"` -> `["caf"]`, `"naïve"` -> `["na", "ve"]`, `"北京"` -> `[]`,
///    `"Straße"` -> `["stra", "e"]`. Two oddities that follow from step 1:
///    the Kelvin sign U+212A lowercases to ASCII `k`, and `"İ"` (U+0130)
///    lowercases to `"i\u{307}"`, i.e. an ASCII `i` followed by a boundary.
/// 3. If `stem` is true, tokens longer than 3 characters go through NLTK's
///    Porter stemmer ([`porter::stem`], `NLTK_EXTENSIONS` mode); shorter tokens
///    are kept as they are.
/// 4. Empty tokens are dropped.
///
/// Apostrophes split words (`"don't"` -> `["don", "t"]`), and case never matters.
pub fn rouge_tokenize(text: &str, stem: bool) -> Vec<String> {
    let mut out = Vec::new();
    rouge_tokenize_into(text, stem, &mut out);
    out
}

/// [`rouge_tokenize`] appending to an existing vector (avoids re-allocating when
/// several lines are tokenised into one token list).
pub fn rouge_tokenize_into(text: &str, stem: bool, out: &mut Vec<String>) {
    let mut cur = String::new();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if cur.is_empty() {
            return;
        }
        // The token is ASCII [a-z0-9], so byte length == Python len().
        if stem && cur.len() > 3 {
            out.push(porter::stem(cur));
        } else {
            out.push(cur.clone());
        }
        cur.clear();
    };
    for c in text.chars() {
        if c.is_ascii() {
            let l = c.to_ascii_lowercase();
            if l.is_ascii_lowercase() || l.is_ascii_digit() {
                cur.push(l);
            } else {
                flush(&mut cur, out);
            }
        } else {
            // Non-ASCII: only its lowercase form can contribute ASCII letters
            // (U+212A KELVIN SIGN -> 'k', U+0130 -> "i\u{307}").
            for l in c.to_lowercase() {
                if l.is_ascii_lowercase() || l.is_ascii_digit() {
                    cur.push(l);
                } else {
                    flush(&mut cur, out);
                }
            }
        }
    }
    flush(&mut cur, out);
}

/// A small, fast, non-cryptographic hasher (the "Fx" hash of rustc/Firefox).
/// Metric inputs are short token strings, for which the default SipHash dominates
/// the run time; hash-flooding resistance is not needed for scoring.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// `HashMap` with [`FxHasher`].
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Counts of the contiguous `n`-grams of `tokens` (keys borrow from `tokens`).
/// Empty when `n == 0` or `tokens.len() < n`.
pub fn ngram_counts<T: Eq + Hash>(tokens: &[T], n: usize) -> FxHashMap<&[T], usize> {
    let mut counts = FxHashMap::default();
    if n == 0 || tokens.len() < n {
        return counts;
    }
    for w in tokens.windows(n) {
        *counts.entry(w).or_insert(0) += 1;
    }
    counts
}

/// Length of the longest common subsequence of `a` and `b` (classic DP keeping two
/// rows: O(|a|·|b|) time, O(min(|a|, |b|)) memory). Same value as `rouge_score`'s
/// `_lcs_table(...)[-1][-1]` and `pycocoevalcap`'s `my_lcs`.
///
/// The scorers of this crate do not call it: they map tokens to integer ids and use a
/// bit-parallel LCS (64 cells per word operation, also linear memory), which gives the
/// same value; this generic version is kept for tokens that are only `PartialEq`.
pub fn lcs_length<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if short.is_empty() {
        return 0;
    }
    let mut prev = vec![0usize; short.len() + 1];
    let mut cur = vec![0usize; short.len() + 1];
    for x in long {
        for (j, y) in short.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[short.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_split_matches_str_split() {
        assert!(python_split_whitespace("").is_empty());
        assert!(python_split_whitespace(" \t\n").is_empty());
        assert_eq!(python_split_whitespace(" a  b\tc\n"), vec!["a", "b", "c"]);
        assert_eq!(python_split_whitespace("a\u{1C}b"), vec!["a", "b"]);
        assert_eq!(
            python_split_whitespace("a\u{A0}b\u{3000}c"),
            vec!["a", "b", "c"]
        );
        assert_eq!(python_split_whitespace("a\u{200B}b"), vec!["a\u{200B}b"]);
        // Case and punctuation are kept.
        assert_eq!(python_split_whitespace("Hi, you!"), vec!["Hi,", "you!"]);
    }

    #[test]
    fn split_on_space_matches_str_split_space() {
        assert_eq!(split_on_space(""), vec![""]);
        assert_eq!(split_on_space("a  b"), vec!["a", "", "b"]);
        assert_eq!(split_on_space(" a\tb "), vec!["", "a\tb", ""]);
    }

    #[test]
    fn rouge_tokenizer_rules() {
        assert_eq!(
            rouge_tokenize("Hello, World!", false),
            vec!["hello", "world"]
        );
        assert_eq!(rouge_tokenize("don't", false), vec!["don", "t"]);
        assert_eq!(rouge_tokenize("café naïve", false), vec!["caf", "na", "ve"]);
        assert!(rouge_tokenize("北京 😀", false).is_empty());
        assert_eq!(rouge_tokenize("\u{212A}elvin", false), vec!["kelvin"]);
        assert_eq!(rouge_tokenize("İstanbul", false), vec!["i", "stanbul"]);
        assert_eq!(rouge_tokenize("ＡＢＣ abc", false), vec!["abc"]);
        assert_eq!(rouge_tokenize("1,000 runs", true), vec!["1", "000", "run"]);
        assert_eq!(rouge_tokenize("the cats", true), vec!["the", "cat"]);
        assert!(rouge_tokenize("", true).is_empty());
    }

    #[test]
    fn lcs() {
        assert_eq!(lcs_length(&[1, 2, 3, 4], &[2, 4, 3]), 2);
        assert_eq!(lcs_length::<u8>(&[], &[1]), 0);
        assert_eq!(lcs_length(&["a", "b"], &["a", "b"]), 2);
    }
}
