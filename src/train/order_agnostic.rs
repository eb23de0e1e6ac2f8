//! Order-agnostic cross-entropy (OAXE, Du, Tu and Jiang 2021, "Order-Agnostic Cross Entropy
//! for Non-Autoregressive Machine Translation"): before the loss, each row's label tokens are
//! reordered to the one-to-one assignment of tokens to slot positions that the model's own
//! prediction finds most likely (minimum total negative log-probability, found with the
//! Hungarian algorithm); the cross-entropies are then the plain ones on the reordered labels.
//!
//! Why it matters for ELMER's NAR decoder: with position-wise cross-entropy every position
//! learns the marginal over all plausible outputs, and on a multi-modal task (a sentence has
//! many possible questions) the argmax of those marginals is one template answer for every
//! input. OAXE charges no penalty for a right word at a shifted position, so the positions
//! stop averaging over word orders.
//!
//! Only the content labels move: `</s>` keeps its position (the model still learns where the
//! output ends) and `<pad>` labels (ignored, e.g. glanced positions) stay where they are.
//!
//! Shapes: scores (logits or log-probabilities) `[m, m]` per row (movable slot positions x
//! the row's content tokens, computed for those tokens only);
//! labels `[batch, T]` u32.

use crate::error::{Error, Result};

/// The minimum-cost perfect matching of an `n x n` cost matrix (row-major): `assignment[r]`
/// is the column given to row `r`. The Hungarian algorithm with potentials, `O(n^3)`.
/// Costs must be finite.
pub(crate) fn min_cost_assignment(cost: &[f64], n: usize) -> Result<Vec<usize>> {
    if cost.len() != n * n {
        return Err(Error::invalid_arg(
            "cost",
            format!("{} entries for a {n} x {n} matrix", cost.len()),
        ));
    }
    if cost.iter().any(|c| !c.is_finite()) {
        return Err(Error::invalid_arg("cost", "a non-finite cost"));
    }
    // 1-based potentials u (rows), v (columns); p[j] = the row matched to column j.
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut assignment = vec![0usize; n];
    for j in 1..=n {
        assignment[p[j] - 1] = j - 1;
    }
    Ok(assignment)
}

/// Reorders one label row. `positions` are the slot positions whose labels may move (the
/// content labels, not `</s>` or `<pad>`), in slot order; `score[k * m + c]` (with
/// `m = positions.len()`) is the model's log-probability of content token `c` (the label at
/// `positions[c]`) at position `positions[k]`, or its logit: a per-position constant (the
/// log-normaliser) adds the same amount to every assignment, so both give the same one.
/// `distortion` nats are added to the cost of content token `c` at movable position `k` per
/// place of `|k - c|` (0: plain OAXE; large: the gold order). Returns the row with the
/// content labels placed at the most likely positions.
pub(crate) fn align_row(
    row: &[u32],
    positions: &[usize],
    score: &[f32],
    distortion: f64,
) -> Result<Vec<u32>> {
    let m = positions.len();
    if score.len() != m * m {
        return Err(Error::invalid_arg(
            "score",
            format!("{} entries for {m} movable labels", score.len()),
        ));
    }
    // Clamp -inf scores (an underflowed softmax) to a large finite cost.
    let cost: Vec<f64> = score
        .iter()
        .enumerate()
        .map(|(i, &l)| -(l as f64).max(-1e4) + distortion * (i / m).abs_diff(i % m) as f64)
        .collect();
    let assignment = min_cost_assignment(&cost, m)?;
    let mut out = row.to_vec();
    for (k, &c) in assignment.iter().enumerate() {
        out[positions[k]] = row[positions[c]];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn brute_force(cost: &[f64], n: usize) -> f64 {
        fn rec(cost: &[f64], n: usize, r: usize, used: &mut Vec<bool>, acc: f64, best: &mut f64) {
            if r == n {
                *best = best.min(acc);
                return;
            }
            for c in 0..n {
                if !used[c] {
                    used[c] = true;
                    rec(cost, n, r + 1, used, acc + cost[r * n + c], best);
                    used[c] = false;
                }
            }
        }
        let mut best = f64::INFINITY;
        rec(cost, n, 0, &mut vec![false; n], 0.0, &mut best);
        best
    }

    #[test]
    fn distortion_moves_labels_only_where_it_pays() {
        // Position 0 prefers token 1 by 2 nats, position 1 prefers token 0 by 2 nats.
        let row = [10u32, 11];
        let score = [0.0f32, 2.0, 2.0, 0.0];
        assert_eq!(align_row(&row, &[0, 1], &score, 0.0).unwrap(), [11, 10]);
        // Swapping moves both labels one place: 2 x 1.5 nats < 4 nats gained.
        assert_eq!(align_row(&row, &[0, 1], &score, 1.5).unwrap(), [11, 10]);
        // 2 x 2.5 nats > 4: the gold order stays.
        assert_eq!(align_row(&row, &[0, 1], &score, 2.5).unwrap(), [10, 11]);
    }

    #[test]
    fn hungarian_matches_brute_force() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for n in 1..=7 {
            for _ in 0..20 {
                let cost: Vec<f64> = (0..n * n).map(|_| rng.random_range(0.0..10.0)).collect();
                let a = min_cost_assignment(&cost, n).unwrap();
                let mut seen = a.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "a permutation");
                let total: f64 = a.iter().enumerate().map(|(r, &c)| cost[r * n + c]).sum();
                assert!((total - brute_force(&cost, n)).abs() < 1e-9, "n={n}");
            }
        }
        assert_eq!(min_cost_assignment(&[], 0).unwrap(), Vec::<usize>::new());
        assert!(min_cost_assignment(&[1.0, 2.0], 2).is_err());
        assert!(min_cost_assignment(&[f64::NAN], 1).is_err());
    }

    #[test]
    fn align_row_moves_only_the_listed_positions() {
        // Row: a b c </s> pad; the model prefers c at 0, a at 1, b at 2.
        let row = [10, 11, 12, 2, 1];
        let positions = [0, 1, 2];
        // logp[k][c]: position k, token c (a, b, c).
        let logp = [
            -5.0, -5.0, -0.1, // position 0: c
            -0.1, -5.0, -5.0, // position 1: a
            -5.0, -0.1, -5.0, // position 2: b
        ];
        assert_eq!(
            align_row(&row, &positions, &logp, 0.0).unwrap(),
            vec![12, 10, 11, 2, 1]
        );
        // -inf log-probabilities still give an assignment.
        let logp = [f32::NEG_INFINITY; 9];
        let out = align_row(&row, &positions, &logp, 0.0).unwrap();
        assert_eq!(&out[3..], &[2, 1]);
        assert!(align_row(&row, &positions, &[0.0; 4], 0.0).is_err());
    }
}
