//! Longest common subsequences in linear memory, for ROUGE-L, ROUGE-Lsum and COCO ROUGE-L.
//!
//! The textbook dynamic programme fills the `(n+1)·(m+1)` table
//! `t[i][j] = LCS(a[..i], b[..j])`; `rouge-score` keeps all of it to backtrack one LCS
//! (`_lcs_table` + `_backtrack_norec`), which takes 4·n·m bytes (3.6 GB for a 30,000-word
//! pair). Here:
//!
//! * tokens are first mapped to dense `u32` ids ([`Interner`]), so cells compare integers;
//! * a row of the table is kept as an `m`-bit vector of its increments (bit `j` is 0 iff
//!   `t[i][j+1] = t[i][j] + 1`), and the next row follows from it with a few word
//!   operations per 64 columns (Allison–Dix / Hyyrö's bit-parallel LCS:
//!   `U = V & M[a_i]; V = (V + U) | (V - U)`), so the LCS **length** costs `n·⌈m/64⌉`
//!   word steps and `O(n + m)` memory ([`lcs_len`]);
//! * the **backtrace** ([`lcs_ref_indices`], the LCS that `rouge-score`'s backtracking
//!   picks, needed by ROUGE-Lsum) keeps every `k`-th row (`k = ⌈√n⌉`) on the forward pass
//!   and recomputes one block of `k` rows at a time while walking back from `(n, m)`:
//!   about `2·√n` bit rows in memory (7.9 MB for 100,000 × 100,000 words), two forward
//!   passes of time.
//!
//! Both give exactly the values of the full table (checked against it on random inputs by
//! the tests below); time stays `O(n·m)` cell updates, done 64 at a time.

use std::hash::Hash;

use crate::tokenize::FxHashMap;

/// Maps tokens to dense ids `0..len()` in order of first appearance.
pub(crate) struct Interner<'a, T: Eq + Hash + ?Sized> {
    ids: FxHashMap<&'a T, u32>,
}

impl<'a, T: Eq + Hash + ?Sized> Interner<'a, T> {
    pub(crate) fn new() -> Self {
        Interner {
            ids: FxHashMap::default(),
        }
    }

    pub(crate) fn id(&mut self, t: &'a T) -> u32 {
        let n = self.ids.len() as u32;
        *self.ids.entry(t).or_insert(n)
    }

    pub(crate) fn ids<I: IntoIterator<Item = &'a T>>(&mut self, tokens: I) -> Vec<u32> {
        tokens.into_iter().map(|t| self.id(t)).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// A symbol with at least this many positions in the column string gets a dense match
/// mask (at most `m / DENSE_MIN` of them, so at most `m² / 4096` bytes); rarer symbols
/// set their few bits in a scratch mask and clear them again.
const DENSE_MIN: usize = 64;

/// An id that matches nothing (a row symbol absent from the column string).
pub(crate) const NO_MATCH: u32 = u32::MAX;

/// Match masks of the column string `b` (`M[s]` = the positions of symbol `s` in `b`),
/// for ids `0..symbols`.
pub(crate) struct Masks {
    words: usize,
    /// Per symbol id: `(start, end)` into `pos` (sparse) or `(usize::MAX, row)` (dense).
    index: Vec<(usize, usize)>,
    pos: Vec<u32>,
    dense: Vec<u64>,
    scratch: Vec<u64>,
}

impl Masks {
    /// Masks of `b`, whose ids are all `< symbols`.
    pub(crate) fn new(b: &[u32], symbols: usize) -> Self {
        let words = b.len().div_ceil(64);
        let mut count = vec![0usize; symbols + 1];
        for &s in b {
            count[s as usize + 1] += 1;
        }
        for s in 0..symbols {
            count[s + 1] += count[s];
        }
        let mut pos = vec![0u32; b.len()];
        let mut fill = count.clone();
        for (j, &s) in b.iter().enumerate() {
            pos[fill[s as usize]] = j as u32;
            fill[s as usize] += 1;
        }
        let mut index = Vec::with_capacity(symbols);
        let mut dense = Vec::new();
        for s in 0..symbols {
            let (lo, hi) = (count[s], count[s + 1]);
            if hi - lo >= DENSE_MIN {
                let row = dense.len() / words;
                dense.resize(dense.len() + words, 0);
                let m = &mut dense[row * words..(row + 1) * words];
                for &j in &pos[lo..hi] {
                    m[j as usize / 64] |= 1 << (j % 64);
                }
                index.push((usize::MAX, row));
            } else {
                index.push((lo, hi));
            }
        }
        Masks {
            words,
            index,
            pos,
            dense,
            scratch: vec![0; words],
        }
    }

    /// Advances the bit row `v` by one symbol `s` of the row string (ids outside
    /// `0..symbols`, e.g. [`NO_MATCH`], leave it unchanged).
    #[inline]
    fn step(&mut self, v: &mut [u64], s: u32) {
        let Some(&(lo, hi)) = self.index.get(s as usize) else {
            return;
        };
        if lo == usize::MAX {
            let row = hi;
            step_words(v, &self.dense[row * self.words..(row + 1) * self.words], 0);
        } else if hi > lo {
            let ps = &self.pos[lo..hi];
            for &j in ps {
                self.scratch[j as usize / 64] |= 1 << (j % 64);
            }
            step_words(v, &self.scratch, ps[0] as usize / 64);
            for &j in ps {
                self.scratch[j as usize / 64] = 0;
            }
        }
    }
}

/// `U = V & M; V = (V + U) | (V - U)` on multi-word bit vectors (`V - U = V & !U` since
/// `U ⊆ V`), starting at word `from` (all lower words of `M` are zero, so nothing changes
/// below it and no carry comes out of them).
#[inline]
fn step_words(v: &mut [u64], m: &[u64], from: usize) {
    let mut carry = false;
    for (x, &mk) in v[from..].iter_mut().zip(&m[from..]) {
        let u = *x & mk;
        let (s1, c1) = x.overflowing_add(u);
        let (s2, c2) = s1.overflowing_add(carry as u64);
        carry = c1 | c2;
        *x = s2 | (*x & !u);
    }
}

/// `t[i][j]` from bit row `v` of row `i`: the number of increments (zero bits) among its
/// first `j` columns.
fn prefix_value(v: &[u64], j: usize) -> usize {
    let full = j / 64;
    let mut ones: usize = v[..full].iter().map(|w| w.count_ones() as usize).sum();
    let rest = j % 64;
    if rest > 0 {
        ones += (v[full] & ((1u64 << rest) - 1)).count_ones() as usize;
    }
    j - ones
}

/// Whether `t[i][j+1] = t[i][j] + 1` in bit row `v`.
#[inline]
fn increment_at(v: &[u64], j: usize) -> bool {
    v[j / 64] & (1 << (j % 64)) == 0
}

/// Length of the longest common subsequence of the id strings `a` and `b` (ids
/// `< symbols`): `O(|a|·⌈|b|/64⌉)` time after swapping so that `b` is the shorter,
/// `O(|a| + |b| + symbols)` memory.
pub(crate) fn lcs_len(a: &[u32], b: &[u32], symbols: usize) -> usize {
    let (a, b) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if b.is_empty() {
        return 0;
    }
    let mut masks = Masks::new(b, symbols);
    let mut v = vec![!0u64; masks.words];
    for &s in a {
        masks.step(&mut v, s);
    }
    prefix_value(&v, b.len())
}

/// Indices into `reference` of the LCS of `reference` and `cand` that
/// `rouge_score.rouge_scorer._backtrack_norec` returns from the full table: walking back
/// from `(|reference|, |cand|)`, a match moves diagonally, otherwise it moves left in
/// `cand` only if `t[i][j-1] > t[i-1][j]`, else up in `reference`. Ascending.
///
/// Memory: about `2·√|reference|` bit rows of `⌈|cand|/64⌉` words.
#[cfg(test)]
pub(crate) fn lcs_ref_indices(reference: &[u32], cand: &[u32], symbols: usize) -> Vec<usize> {
    let mut masks = Masks::new(cand, symbols);
    let mut out = Vec::new();
    lcs_ref_indices_with(
        reference,
        cand,
        &mut masks,
        &mut LcsScratch::default(),
        &mut out,
    );
    out
}

/// Buffers of [`lcs_ref_indices_with`], reused across calls.
#[derive(Default)]
pub(crate) struct LcsScratch {
    block: Vec<u64>,
    checkpoints: Vec<u64>,
    row: Vec<u64>,
}

/// All rows are kept (no recomputation) when they fit in this many words (512 KiB).
const KEEP_ALL_ROWS_WORDS: usize = 1 << 16;

/// [`lcs_ref_indices`] into `out` (cleared first), with the match masks of `cand` built
/// once by the caller (`Masks::new(cand, symbols)`), for scoring one candidate against
/// many references. `reference` ids outside `0..symbols` (e.g. [`NO_MATCH`]) match
/// nothing.
pub(crate) fn lcs_ref_indices_with(
    reference: &[u32],
    cand: &[u32],
    masks: &mut Masks,
    scratch: &mut LcsScratch,
    out: &mut Vec<usize>,
) {
    out.clear();
    let (rows, cols) = (reference.len(), cand.len());
    if rows == 0 || cols == 0 {
        return;
    }
    let w = masks.words;
    // Rows are kept every `k` rows on the forward pass; a block of `k + 1` rows is
    // recomputed from its checkpoint during the walk back.
    let k = if (rows + 1) * w <= KEEP_ALL_ROWS_WORDS {
        rows
    } else {
        rows.isqrt().max(1)
    };
    // The block in memory holds rows `lo..=hi` (row r at `(r - lo)·w`).
    let LcsScratch {
        block,
        checkpoints,
        row: v,
    } = scratch;
    block.clear();
    block.resize((k + 1) * w, !0);
    let mut lo = usize::MAX;
    if k == rows {
        // One block: the forward pass fills it directly.
        for (i, &s) in reference.iter().enumerate() {
            let (done, next) = block.split_at_mut((i + 1) * w);
            next[..w].copy_from_slice(&done[i * w..]);
            masks.step(&mut next[..w], s);
        }
        lo = 0;
    } else {
        // Checkpoint c holds row c·k.
        checkpoints.clear();
        checkpoints.resize((rows / k + 1) * w, !0);
        v.clear();
        v.resize(w, !0);
        for (i, &s) in reference.iter().enumerate() {
            masks.step(v, s);
            if (i + 1) % k == 0 {
                let c = (i + 1) / k;
                checkpoints[c * w..(c + 1) * w].copy_from_slice(v);
            }
        }
    }
    let load = |lo_row: usize, block: &mut Vec<u64>, masks: &mut Masks| {
        let c = lo_row / k;
        block[..w].copy_from_slice(&checkpoints[c * w..(c + 1) * w]);
        let hi = (lo_row + k).min(rows);
        for r in lo_row + 1..=hi {
            let (done, next) = block.split_at_mut((r - lo_row) * w);
            next[..w].copy_from_slice(&done[(r - 1 - lo_row) * w..]);
            masks.step(&mut next[..w], reference[r - 1]);
        }
    };
    let (mut i, mut j) = (rows, cols);
    // `t[i][j]` and `t[i-1][j]` for the current cell, refreshed after every move up.
    let (mut here, mut up) = (0usize, 0usize);
    let mut stale = true;
    while i > 0 && j > 0 {
        if lo == usize::MAX || i - 1 < lo {
            lo = ((i - 1) / k) * k;
            load(lo, block, masks);
        }
        let row = |r: usize| &block[(r - lo) * w..(r - lo + 1) * w];
        if stale {
            here = prefix_value(row(i), j);
            up = prefix_value(row(i - 1), j);
            stale = false;
        }
        if reference[i - 1] == cand[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
            stale = true;
        } else {
            let left = here - increment_at(row(i), j - 1) as usize;
            if left > up {
                up -= increment_at(row(i - 1), j - 1) as usize;
                here = left;
                j -= 1;
            } else {
                i -= 1;
                stale = true;
            }
        }
    }
    out.reverse();
}

/// The full-table LCS backtrace of `rouge-score` (`_lcs_table` + `_backtrack_norec`), as
/// this crate computed it before: the quadratic-memory reference of the tests.
#[cfg(test)]
pub(crate) fn lcs_ref_indices_table<T: PartialEq>(reference: &[T], cand: &[T]) -> Vec<usize> {
    let rows = reference.len();
    let cols = cand.len();
    let w = cols + 1;
    let mut t = vec![0u32; (rows + 1) * w];
    for i in 1..=rows {
        for j in 1..=cols {
            t[i * w + j] = if reference[i - 1] == cand[j - 1] {
                t[(i - 1) * w + j - 1] + 1
            } else {
                t[(i - 1) * w + j].max(t[i * w + j - 1])
            };
        }
    }
    let (mut i, mut j) = (rows, cols);
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if reference[i - 1] == cand[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i * w + j - 1] > t[(i - 1) * w + j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64
    fn rng(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn naive_len(a: &[u32], b: &[u32]) -> usize {
        let w = b.len() + 1;
        let mut t = vec![0usize; (a.len() + 1) * w];
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                t[i * w + j] = if a[i - 1] == b[j - 1] {
                    t[(i - 1) * w + j - 1] + 1
                } else {
                    t[(i - 1) * w + j].max(t[i * w + j - 1])
                };
            }
        }
        t[a.len() * w + b.len()]
    }

    fn random(state: &mut u64, len: usize, alphabet: u32) -> Vec<u32> {
        (0..len)
            .map(|_| (rng(state) % alphabet as u64) as u32)
            .collect()
    }

    /// Linear-memory length and backtrace == the quadratic table on many seeded random
    /// pairs (lengths 0..300, alphabets of 1..8 symbols, so that ties and long runs of
    /// equal tokens are common; lengths around multiples of 64 included).
    #[test]
    fn bit_parallel_equals_full_table_on_random_pairs() {
        let mut state = 0x5EED_u64;
        for case in 0..300 {
            let alphabet = 1 + (rng(&mut state) % 8) as u32;
            let (n, m) = if case % 10 == 0 {
                (63 + case % 4, 127 + case % 3)
            } else {
                (
                    (rng(&mut state) % 300) as usize,
                    (rng(&mut state) % 300) as usize,
                )
            };
            let a = random(&mut state, n, alphabet);
            let b = random(&mut state, m, alphabet);
            let want = naive_len(&a, &b);
            assert_eq!(lcs_len(&a, &b, alphabet as usize), want, "case {case}");
            assert_eq!(
                lcs_len(&b, &a, alphabet as usize),
                want,
                "case {case} swapped"
            );
            let ind = lcs_ref_indices(&a, &b, alphabet as usize);
            assert_eq!(ind, lcs_ref_indices_table(&a, &b), "case {case}");
            assert_eq!(ind.len(), want);
        }
    }

    /// Dense masks (symbols occurring >= DENSE_MIN times) and ids absent from one side.
    #[test]
    fn dense_masks_and_absent_symbols() {
        let mut state = 7u64;
        for case in 0..20 {
            let a = random(&mut state, 400 + case * 13, 3);
            let mut b = random(&mut state, 300 + case * 7, 2);
            b.push(5); // symbol 5 never occurs in `a`
            let want = naive_len(&a, &b);
            assert_eq!(lcs_len(&a, &b, 6), want);
            assert_eq!(lcs_ref_indices(&a, &b, 6), lcs_ref_indices_table(&a, &b));
            assert_eq!(lcs_ref_indices(&b, &a, 6), lcs_ref_indices_table(&b, &a));
            // Row ids that match nothing.
            let mut c = a.clone();
            c[0] = NO_MATCH;
            assert_eq!(lcs_ref_indices(&c, &b, 6), lcs_ref_indices_table(&c, &b));
        }
        assert_eq!(lcs_len(&[], &[1], 2), 0);
        assert!(lcs_ref_indices(&[1], &[], 2).is_empty());
        assert_eq!(lcs_ref_indices(&[0, 1, 0], &[1, 0], 2), vec![1, 2]);
    }

    #[test]
    fn interner_is_dense_in_first_appearance_order() {
        let mut i = Interner::new();
        assert_eq!(i.ids(["b", "a", "b"].iter().copied()), vec![0, 1, 0]);
        assert_eq!(i.id("c"), 2);
        assert_eq!(i.len(), 3);
    }
}
