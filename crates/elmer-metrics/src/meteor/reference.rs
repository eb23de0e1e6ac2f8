//! The direct port of `Aligner.align` / `Aligner.resolve` that this crate used before the
//! bounded, linear-memory search of [`super::align`]: every (reference word, hypothesis
//! word) pair is compared, and every partial alignment of the beam carries full copies of
//! its match and used-word arrays (quadratic memory and worse than quadratic time on long
//! segments). Kept, for the tests only, as the reference that the new search must equal
//! whenever its candidate cap does not apply.

#![allow(clippy::needless_range_loop)]

use std::collections::HashSet;

use super::{Meteor, EXACT, PARAPHRASE, SEARCH_WEIGHTS, STEM, SYNONYM};
use crate::porter_meteor::stem;

pub(super) fn align(meteor: &Meteor, w1: &[String], w2: &[String]) -> Vec<Option<super::Match>> {
    let (n1, n2) = (w1.len(), w2.len());
    let mut cand: Vec<Vec<Match>> = vec![Vec::new(); n2];
    let mut cov1 = vec![0u32; n1];
    let mut cov2 = vec![0u32; n2];
    let mut add = |m: Match, cand: &mut Vec<Vec<Match>>| {
        for k in 0..m.match_len {
            cov1[m.match_start + k] += 1;
        }
        for k in 0..m.len {
            cov2[m.start + k] += 1;
        }
        cand[m.start].push(m);
    };
    let one = |module, j, i| Match {
        module,
        start: j,
        len: 1,
        match_start: i,
        match_len: 1,
    };

    let identical = w1 == w2;
    // exact
    for j in 0..n2 {
        for i in 0..n1 {
            if w1[i] == w2[j] {
                add(one(EXACT, j, i), &mut cand);
            }
        }
    }
    if !identical {
        // stem
        let s1: Vec<String> = w1.iter().map(|w| stem(w)).collect();
        let s2: Vec<String> = w2.iter().map(|w| stem(w)).collect();
        for j in 0..n2 {
            for i in 0..n1 {
                if s1[i] == s2[j] && w1[i] != w2[j] {
                    add(one(STEM, j, i), &mut cand);
                }
            }
        }
        // synonym
        if let Some(syn) = &meteor.synonyms {
            let y1: Vec<HashSet<u32>> = w1.iter().map(|w| syn.all_synsets(w)).collect();
            let y2: Vec<HashSet<u32>> = w2.iter().map(|w| syn.all_synsets(w)).collect();
            for j in 0..n2 {
                for i in 0..n1 {
                    if w1[i] != w2[j] && !y1[i].is_disjoint(&y2[j]) {
                        add(one(SYNONYM, j, i), &mut cand);
                    }
                }
            }
        }
        // paraphrase
        if let Some(pt) = &meteor.paraphrase {
            let l1: Vec<Option<u32>> = w1.iter().map(|w| pt.translate(w)).collect();
            let l2: Vec<Option<u32>> = w2.iter().map(|w| pt.translate(w)).collect();
            let occurs = |line: &[Option<u32>], at: usize, words: &[u32]| {
                at + words.len() <= line.len()
                    && words
                        .iter()
                        .enumerate()
                        .all(|(k, w)| line[at + k] == Some(*w))
            };
            // paraphrases (in line1) of reference phrases of line2
            for j in 0..n2 {
                for (len, idx) in pt.paths(&l2, j) {
                    let words = &pt.paraphrases[idx as usize];
                    for i in 0..n1 {
                        if occurs(&l1, i, words) {
                            let m = Match {
                                module: PARAPHRASE,
                                start: j,
                                len,
                                match_start: i,
                                match_len: words.len(),
                            };
                            add(m, &mut cand);
                        }
                    }
                }
            }
            // paraphrases (in line2) of reference phrases of line1
            for i in 0..n1 {
                for (len, idx) in pt.paths(&l1, i) {
                    let words = &pt.paraphrases[idx as usize];
                    for j in 0..n2 {
                        if occurs(&l2, j, words) {
                            let m = Match {
                                module: PARAPHRASE,
                                start: j,
                                len: words.len(),
                                match_start: i,
                                match_len: len,
                            };
                            add(m, &mut cand);
                        }
                    }
                }
            }
        }
    }

    // Fix one-to-one, non-overlapping matches.
    let mut start = Partial {
        matches: vec![None; n2],
        m1: 0,
        m2: 0,
        chunks: 0,
        idx: 0,
        last_match_end: -1,
        distance: 0,
        used1: vec![false; n1],
        used2: vec![false; n2],
    };
    for (i, c) in cand.iter().enumerate() {
        if let [m] = c.as_slice() {
            let overlap = (0..m.len).any(|k| cov2[i + k] != 1)
                || (0..m.match_len).any(|k| cov1[m.match_start + k] != 1);
            if !overlap {
                start.matches[i] = Some(*m);
                start.set_used(m);
            }
        }
    }
    resolve(meteor.params.beam_size, &cand, start)
        .matches
        .into_iter()
        .map(|m| {
            m.map(|m| super::Match {
                module: m.module as u8,
                start: m.start as u32,
                len: m.len as u32,
                match_start: m.match_start as u32,
                match_len: m.match_len as u32,
            })
        })
        .collect()
}

/// The old candidate match (`usize` fields).
#[derive(Debug, Clone, Copy)]
struct Match {
    module: usize,
    start: usize,
    len: usize,
    match_start: usize,
    match_len: usize,
}

#[derive(Debug, Clone)]
struct Partial {
    matches: Vec<Option<Match>>,
    m1: i64,
    m2: i64,
    chunks: i64,
    idx: usize,
    last_match_end: i64,
    distance: i64,
    used1: Vec<bool>,
    used2: Vec<bool>,
}

impl Partial {
    fn is_used(&self, m: &Match) -> bool {
        (0..m.len).any(|k| self.used2[m.start + k])
            || (0..m.match_len).any(|k| self.used1[m.match_start + k])
    }
    fn set_used(&mut self, m: &Match) {
        for k in 0..m.len {
            self.used2[m.start + k] = true;
        }
        for k in 0..m.match_len {
            self.used1[m.match_start + k] = true;
        }
    }
    /// Java: `path.matches1 += m.matchLength * w` on an `int` field.
    fn add_counts(&mut self, m: &Match) {
        let w = SEARCH_WEIGHTS[m.module];
        self.m1 = (self.m1 as f64 + m.match_len as f64 * w) as i64;
        self.m2 = (self.m2 as f64 + m.len as f64 * w) as i64;
    }
}

/// `Constants.PARTIAL_COMPARE_TOTAL`.
fn compare(x: &Partial, y: &Partial) -> std::cmp::Ordering {
    ((y.m1 + y.m2).cmp(&(x.m1 + x.m2)))
        .then(x.chunks.cmp(&y.chunks))
        .then(x.distance.cmp(&y.distance))
}

/// `Aligner.resolve`: beam search for the best alignment.
#[allow(clippy::needless_range_loop)]
fn resolve(beam: usize, cand: &[Vec<Match>], start: Partial) -> Partial {
    let n2 = cand.len();
    let beam = beam.max(1);
    let mut next = vec![start];
    for current in 0..=n2 {
        let mut paths = std::mem::take(&mut next);
        paths.sort_by(compare);
        let first = paths[0].clone();
        for mut path in paths.into_iter().take(beam) {
            if current == n2 {
                if path.last_match_end != -1 {
                    path.chunks += 1;
                }
                next.push(path);
                continue;
            }
            if path.used2[current] {
                if current < path.idx {
                    next.push(path);
                } else if let Some(m) = path.matches.get(path.idx).copied().flatten() {
                    path.add_counts(&m);
                    if path.last_match_end != -1 && m.match_start as i64 != path.last_match_end {
                        path.chunks += 1;
                    }
                    path.idx = m.start + m.len;
                    path.last_match_end = (m.match_start + m.match_len) as i64;
                    path.distance += (m.start as i64 - m.match_start as i64).abs();
                    next.push(path);
                }
                continue;
            }
            for m in &cand[current] {
                if path.is_used(m) {
                    continue;
                }
                let mut np = path.clone();
                np.set_used(m);
                np.matches[current] = Some(*m);
                np.add_counts(m);
                if np.last_match_end != -1 && m.match_start as i64 != np.last_match_end {
                    np.chunks += 1;
                }
                np.idx = m.start + m.len;
                np.last_match_end = (m.match_start + m.match_len) as i64;
                // Jar quirk: the distance is added to the parent path.
                path.distance += (m.start as i64 - m.match_start as i64).abs();
                next.push(np);
            }
            if path.last_match_end != -1 {
                path.chunks += 1;
                path.last_match_end = -1;
            }
            path.idx += 1;
            next.push(path);
        }
        if next.is_empty() {
            next.push(first);
        }
    }
    next.sort_by(compare);
    next.swap_remove(0)
}
