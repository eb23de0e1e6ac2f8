//! Text infilling: the maskable units of a document, Poisson span lengths, and their
//! placement without overlap and without crossing a special token.

use rand::Rng;
use rand_distr::Distribution;

use super::Corruptor;

impl Corruptor {
    /// Maskable units of the (shuffled) document: single non-special tokens,
    /// or whole words when `whole_word` is set. Units never contain specials.
    pub(super) fn units(&self, ids: &[u32], word_start: Option<&[bool]>) -> Vec<Unit> {
        let mut units: Vec<Unit> = Vec::new();
        let mut segment = 0;
        let mut prev_special = true;
        for (i, &id) in ids.iter().enumerate().take(ids.len() - 1).skip(1) {
            if self.is_special(id) {
                segment += 1;
                prev_special = true;
                continue;
            }
            let starts_word = match (self.cfg.whole_word, word_start) {
                (true, Some(ws)) => ws[i] || prev_special,
                _ => true,
            };
            match units.last_mut() {
                Some(last) if !starts_word => last.len += 1,
                _ => units.push(Unit {
                    start: i,
                    len: 1,
                    segment,
                }),
            }
            prev_special = false;
        }
        units
    }

    /// Draws Poisson span lengths until they reach `budget` (the last one is
    /// truncated). Returns the positive lengths in draw order and the number
    /// of zero-length draws.
    pub(super) fn sample_span_lengths<R: Rng + ?Sized>(
        &self,
        budget: usize,
        rng: &mut R,
    ) -> (Vec<usize>, usize) {
        let mut lengths = Vec::new();
        let mut num_zero: usize = 0;
        let mut total = 0;
        while total < budget {
            let zeros = self.zeros.sample(rng);
            num_zero = num_zero.saturating_add(usize::try_from(zeros).unwrap_or(usize::MAX));
            let len = self.sample_positive(rng).min(budget - total);
            lengths.push(len);
            total += len;
        }
        (lengths, num_zero)
    }

    /// One draw of `Poisson(lambda)` conditioned on being `>= 1`.
    pub(super) fn sample_positive<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let lambda = self.cfg.poisson_lambda;
        if lambda >= 1.0 {
            // Acceptance probability 1 - exp(-lambda) >= 0.63.
            loop {
                let k = self.poisson.sample(rng);
                if k >= 1.0 {
                    return k as usize;
                }
            }
        }
        // Inversion: P(k) = lambda^k / k! / (exp(lambda) - 1), k >= 1.
        let u = rng.random::<f64>() * lambda.exp_m1();
        let mut k = 1;
        let mut term = lambda;
        let mut cumulative = term;
        while cumulative < u && k < 1_000 {
            k += 1;
            term *= lambda / k as f64;
            cumulative += term;
        }
        k
    }
}

/// A maskable unit: `len` consecutive tokens starting at `start`, all in the
/// same `segment` (runs of content between special tokens).
#[derive(Debug, Clone, Copy)]
pub(super) struct Unit {
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) segment: usize,
}

/// Places spans of the given lengths (in units) without overlap and without
/// crossing segments. Returns `(first_unit, unit_count)` pairs.
pub(super) fn place_spans<R: Rng + ?Sized>(
    units: &[Unit],
    mut lengths: Vec<usize>,
    rng: &mut R,
) -> Vec<(usize, usize)> {
    // Free runs of units as (first, count), each within one segment.
    let mut free: Vec<(usize, usize)> = Vec::new();
    for (i, u) in units.iter().enumerate() {
        match free.last_mut() {
            Some((first, count)) if units[*first].segment == u.segment => *count += 1,
            _ => free.push((i, 1)),
        }
    }
    // Longest first packs best; stable so equal lengths keep draw order.
    lengths.sort_by(|a, b| b.cmp(a));
    let mut pending: Vec<usize> = lengths.into_iter().rev().collect();
    let mut placed = Vec::new();
    while let Some(len) = pending.pop() {
        let fits: usize = free
            .iter()
            .filter(|&&(_, c)| c >= len)
            .map(|&(_, c)| c - len + 1)
            .sum();
        if fits == 0 {
            // No free run is long enough: fill the longest one and place the rest later.
            let Some((idx, &(first, count))) =
                free.iter().enumerate().max_by_key(|&(_, &(_, c))| c)
            else {
                break; // nothing free left; unreachable since budget <= #units
            };
            free.remove(idx);
            placed.push((first, count));
            pending.insert(0, len - count);
            continue;
        }
        let mut r = rng.random_range(0..fits);
        for idx in 0..free.len() {
            let (first, count) = free[idx];
            if count < len {
                continue;
            }
            let choices = count - len + 1;
            if r < choices {
                let start = first + r;
                placed.push((start, len));
                let left = (first, r);
                let right = (start + len, count - r - len);
                free.remove(idx);
                if right.1 > 0 {
                    free.insert(idx, right);
                }
                if left.1 > 0 {
                    free.insert(idx, left);
                }
                break;
            }
            r -= choices;
        }
    }
    placed
}
