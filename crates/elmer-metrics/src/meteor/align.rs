//! METEOR alignment (`Aligner.align` + `Aligner.resolve` of the jar) with work and memory
//! bounded on long segments.
//!
//! # What was quadratic, and what is done instead
//!
//! The jar (and this crate's first port, kept as `reference.rs` for the tests) compares
//! every hypothesis word with every reference word in each matcher, keeps every candidate
//! match, and runs a left-to-right beam search (beam 40, `MeteorParams::beam_size`) over the
//! reference positions in which **each** new partial alignment is a full copy of its
//! parent's arrays (`Match[] matches`, `boolean[] line1UsedWords`, `line2UsedWords`: O(n)
//! per copy, up to `beam × candidates` copies per position). On a 3,000-word pair that
//! took 151 s and 4 GB; 10,000 words passed 22 GB.
//!
//! Here, with identical results whenever the candidate cap below does not apply:
//!
//! * **Candidates** come from per-word indices instead of the `n1 × n2` loops: the positions
//!   of every distinct hypothesis word, the hypothesis words sharing a stem or a synset
//!   with each distinct reference word, and the positions of each paraphrase-table word.
//!   Candidate order within a reference position is the jar's (module by module, then
//!   hypothesis position, and for paraphrases table order), which matters because the
//!   search's sort is stable.
//! * **Partial alignments** share structure: the matches chosen by the search are a
//!   persistent linked list, the hypothesis words in use a persistent bit trie
//!   (O(log n) per update, O(1) per copy), and the reference words in use are the fixed
//!   matches' (shared by all paths) plus the span of the path's last chosen match (the only
//!   chosen match that can reach past the current position).
//! * **Only survivors are built**: a new partial alignment is ranked from its scalar
//!   statistics alone and built only if it makes the beam; one that cannot (there are
//!   already `beam` earlier ones that rank no worse) is dropped at once, and so is a
//!   parent none of whose extensions can; the used-word check of a candidate whose
//!   extension is rejected anyway is deferred until its effect on the parent's distance
//!   (the jar's quirk) matters. Which alignments survive, and in which order, is exactly
//!   the jar's.
//!
//! # The bound
//!
//! A word that occurs thousands of times on both sides (`the`, `,`) still gives thousands
//! of candidates per reference position, quadratically many in all, and the work per
//! position is `beam × candidates`. So when a segment has more than
//! [`FULL_SEARCH_CANDIDATES`](super::FULL_SEARCH_CANDIDATES) candidate matches, each
//! matcher proposes, for each reference word, at most
//! [`MAX_CANDIDATES_PER_WORD`](super::MAX_CANDIDATES_PER_WORD) matches: the ones whose
//! hypothesis position is nearest to the reference position scaled to the hypothesis
//! length (`|i·n2 − j·n1|`, ties to the earlier position), listed in the jar's order.
//! The paraphrase matcher's two directions count separately and look at most at
//! `4 × MAX_CANDIDATES_PER_WORD` occurrences of a paraphrase's first word per phrase
//! (nearest first). Below `FULL_SEARCH_CANDIDATES` (which every segment of the parity
//! fixtures is, and natural text up to ~5,000 words) nothing is capped and the alignment
//! is the jar's. The jar itself bounds only the search (its beam), not the candidates,
//! and on long segments runs out of time and memory instead.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use super::{
    Match, Meteor, EXACT, FULL_SEARCH_CANDIDATES, MAX_CANDIDATES_PER_WORD, PARAPHRASE,
    SEARCH_WEIGHTS, STEM, SYNONYM,
};
use crate::porter_meteor::stem;

/// Occurrences of a paraphrase's first word examined per phrase.
const PARAPHRASE_PROBES: usize = 4 * MAX_CANDIDATES_PER_WORD;

/// `|x·n2 − j·n1|`: distance of hypothesis position `x` from the diagonal at reference
/// position `j` (scaled by `n2`; symmetric in the two roles).
#[inline]
fn diag(i: usize, j: usize, n1: usize, n2: usize) -> u64 {
    (i as i64 * n2 as i64 - j as i64 * n1 as i64).unsigned_abs()
}

/// Visits the ascending positions `xs` nearest-first by `dist` (a V-shaped function of the
/// position, smallest around the target; ties to the smaller position), calling `accept` on
/// each; stops once `cap` are accepted or `probes` visited. Returns the accepted positions.
fn nearest(
    xs: &[u32],
    dist: impl Fn(u32) -> u64,
    left_of_target: impl Fn(u32) -> bool,
    cap: usize,
    probes: usize,
    mut accept: impl FnMut(u32) -> bool,
    out: &mut Vec<u32>,
) {
    out.clear();
    if xs.len() <= cap.min(probes) {
        out.extend(xs.iter().copied().filter(|&x| accept(x)));
        return;
    }
    let split = xs.partition_point(|&x| left_of_target(x));
    let (mut l, mut r) = (split, split);
    let mut seen = 0;
    while out.len() < cap && seen < probes && (l > 0 || r < xs.len()) {
        let take_left = match (l > 0, r < xs.len()) {
            (true, true) => dist(xs[l - 1]) <= dist(xs[r]),
            (true, false) => true,
            _ => false,
        };
        let x = if take_left {
            l -= 1;
            xs[l]
        } else {
            r += 1;
            xs[r - 1]
        };
        seen += 1;
        if accept(x) {
            out.push(x);
        }
    }
    out.sort_unstable();
}

/// Positions of each id: `positions(id)` ascending.
struct Index {
    start: Vec<usize>,
    pos: Vec<u32>,
}

impl Index {
    fn new(ids: &[u32], n_ids: usize) -> Self {
        let mut start = vec![0usize; n_ids + 1];
        for &x in ids {
            start[x as usize + 1] += 1;
        }
        for k in 0..n_ids {
            start[k + 1] += start[k];
        }
        let mut fill = start.clone();
        let mut pos = vec![0u32; ids.len()];
        for (i, &x) in ids.iter().enumerate() {
            pos[fill[x as usize]] = i as u32;
            fill[x as usize] += 1;
        }
        Index { start, pos }
    }

    fn positions(&self, id: u32) -> &[u32] {
        match self.start.get(id as usize..id as usize + 2) {
            Some(&[lo, hi]) => &self.pos[lo..hi],
            _ => &[],
        }
    }
}

/// The hypothesis positions of the words `words` (distinct words, so disjoint position
/// lists) nearest to the diagonal at reference position `j`, at most `cap`, ascending.
fn nearest_of_words(
    words: &[u32],
    index: &Index,
    j: usize,
    (n1, n2): (usize, usize),
    cap: usize,
    out: &mut Vec<u32>,
) {
    out.clear();
    let total: usize = words.iter().map(|&w| index.positions(w).len()).sum();
    if total <= cap {
        for &w in words {
            out.extend_from_slice(index.positions(w));
        }
        out.sort_unstable();
        return;
    }
    let dist = |x: u32| diag(x as usize, j, n1, n2);
    let left = |x: u32| (x as u64) * (n2 as u64) < (j as u64) * (n1 as u64);
    let mut all: Vec<(u64, u32)> = Vec::new();
    let mut one = Vec::new();
    for &w in words {
        nearest(
            index.positions(w),
            dist,
            left,
            cap,
            usize::MAX,
            |_| true,
            &mut one,
        );
        all.extend(one.iter().map(|&x| (dist(x), x)));
    }
    all.sort_unstable();
    all.truncate(cap);
    out.extend(all.iter().map(|&(_, x)| x));
    out.sort_unstable();
}

/// Keeps the `cap` entries of `items` (in the jar's order) nearest to the diagonal,
/// preserving order; `dist` gives an entry's distance.
fn keep_nearest<T>(items: &mut Vec<T>, cap: usize, dist: impl Fn(&T) -> u64) {
    if items.len() <= cap {
        return;
    }
    let mut order: Vec<(u64, usize)> = items
        .iter()
        .enumerate()
        .map(|(k, t)| (dist(t), k))
        .collect();
    order.sort_unstable();
    let mut keep = vec![false; items.len()];
    for &(_, k) in &order[..cap] {
        keep[k] = true;
    }
    let mut k = 0;
    items.retain(|_| {
        k += 1;
        keep[k - 1]
    });
}

fn one(module: usize, j: usize, i: u32) -> Match {
    Match {
        module: module as u8,
        start: j as u32,
        len: 1,
        match_start: i,
        match_len: 1,
    }
}

/// What the matchers need, computed once per segment: word ids shared by both sides,
/// hypothesis positions per word, and the hypothesis words each reference word matches.
struct Setup<'a> {
    n1: usize,
    n2: usize,
    ids2: Vec<u32>,
    index1: Index,
    identical: bool,
    /// Per word id: the distinct hypothesis words with the same stem (never itself).
    stem: Vec<Vec<u32>>,
    /// Per word id: the distinct hypothesis words sharing a synset (never itself).
    synonym: Option<Vec<Vec<u32>>>,
    paraphrase: Option<(&'a super::ParaphraseTable, Lines)>,
}

/// Both segments as paraphrase-table word ids, and the positions of each such id.
struct Lines {
    l1: Vec<Option<u32>>,
    l2: Vec<Option<u32>>,
    p1: HashMap<u32, Vec<u32>>,
    p2: HashMap<u32, Vec<u32>>,
}

impl<'a> Setup<'a> {
    fn new(m: &'a Meteor, w1: &[String], w2: &[String]) -> Self {
        fn ids<'w>(
            line: &'w [String],
            vocab: &mut HashMap<&'w str, u32>,
            words: &mut Vec<&'w str>,
        ) -> Vec<u32> {
            line.iter()
                .map(|w| {
                    let n = vocab.len() as u32;
                    let x = *vocab.entry(w.as_str()).or_insert(n);
                    if x == n {
                        words.push(w.as_str());
                    }
                    x
                })
                .collect()
        }
        let (n1, n2) = (w1.len(), w2.len());
        let mut vocab: HashMap<&str, u32> = HashMap::new();
        let mut words: Vec<&str> = Vec::new();
        let ids1 = ids(w1, &mut vocab, &mut words);
        let ids2 = ids(w2, &mut vocab, &mut words);
        drop(vocab);
        let n_ids = words.len();
        let index1 = Index::new(&ids1, n_ids);
        let mut in1 = vec![false; n_ids];
        for &x in &ids1 {
            in1[x as usize] = true;
        }
        let hyp_words: Vec<u32> = (0..n_ids as u32).filter(|&x| in1[x as usize]).collect();
        let mut in2 = vec![false; n_ids];
        let mut ref_words: Vec<u32> = Vec::new();
        for &x in &ids2 {
            if !in2[x as usize] {
                in2[x as usize] = true;
                ref_words.push(x);
            }
        }
        let mut setup = Setup {
            n1,
            n2,
            ids2,
            index1,
            identical: w1 == w2,
            stem: Vec::new(),
            synonym: None,
            paraphrase: None,
        };
        if setup.identical {
            // Identical segments: only the exact module runs (as in the jar).
            return setup;
        }
        // stem: same Snowball stem, different surface word
        let stems: Vec<String> = words.iter().map(|w| stem(w)).collect();
        let mut by_stem: HashMap<&str, Vec<u32>> = HashMap::new();
        for &x in &hyp_words {
            by_stem
                .entry(stems[x as usize].as_str())
                .or_default()
                .push(x);
        }
        setup.stem = vec![Vec::new(); n_ids];
        for &y in &ref_words {
            if let Some(xs) = by_stem.get(stems[y as usize].as_str()) {
                setup.stem[y as usize] = xs.iter().copied().filter(|&x| x != y).collect();
            }
        }
        // synonym: a shared synset, different surface word
        if let Some(syn) = &m.synonyms {
            let synsets: Vec<Option<HashSet<u32>>> = (0..n_ids)
                .map(|x| (in1[x] || in2[x]).then(|| syn.all_synsets(words[x])))
                .collect();
            let mut by_synset: HashMap<u32, Vec<u32>> = HashMap::new();
            for &x in &hyp_words {
                for &s in synsets[x as usize].iter().flatten() {
                    by_synset.entry(s).or_default().push(x);
                }
            }
            let mut matched = vec![Vec::new(); n_ids];
            for &y in &ref_words {
                let mut xs: Vec<u32> = synsets[y as usize]
                    .iter()
                    .flatten()
                    .filter_map(|s| by_synset.get(s))
                    .flatten()
                    .copied()
                    .filter(|&x| x != y)
                    .collect();
                xs.sort_unstable();
                xs.dedup();
                matched[y as usize] = xs;
            }
            setup.synonym = Some(matched);
        }
        // paraphrase: the segments in table ids
        if let Some(pt) = &m.paraphrase {
            let tr: Vec<Option<u32>> = words.iter().map(|w| pt.translate(w)).collect();
            let l1: Vec<Option<u32>> = ids1.iter().map(|&x| tr[x as usize]).collect();
            let l2: Vec<Option<u32>> = setup.ids2.iter().map(|&x| tr[x as usize]).collect();
            let positions_of = |line: &[Option<u32>]| {
                let mut p: HashMap<u32, Vec<u32>> = HashMap::new();
                for (i, w) in line.iter().enumerate() {
                    if let Some(w) = w {
                        p.entry(*w).or_default().push(i as u32);
                    }
                }
                p
            };
            let (p1, p2) = (positions_of(&l1), positions_of(&l2));
            setup.paraphrase = Some((pt, Lines { l1, l2, p1, p2 }));
        }
        setup
    }

    /// The number of exact, stem and synonym candidates without a cap.
    fn word_candidates(&self) -> usize {
        let c1 = |x: u32| self.index1.positions(x).len();
        let mut total: usize = self.ids2.iter().map(|&y| c1(y)).sum();
        for matched in [Some(&self.stem), self.synonym.as_ref()]
            .into_iter()
            .flatten()
        {
            let per_word: Vec<usize> = matched
                .iter()
                .map(|xs| xs.iter().map(|&x| c1(x)).sum())
                .collect();
            total += self
                .ids2
                .iter()
                .map(|&y| per_word.get(y as usize).copied().unwrap_or(0))
                .sum::<usize>();
        }
        total
    }

    /// The candidate matches of each reference position, in the jar's order: at most
    /// `cap` per reference word and matcher (nearest the diagonal), at most `probes`
    /// occurrences examined per paraphrase. `None` if `limit` is given and more than
    /// `limit` candidates are found or more than `8 · limit` occurrences examined.
    fn generate(&self, cap: usize, probes: usize, limit: Option<usize>) -> Option<Vec<Vec<Match>>> {
        let (n1, n2) = (self.n1, self.n2);
        let limit = limit.unwrap_or(usize::MAX);
        let (mut total, mut examined) = (0usize, 0usize);
        let mut cand: Vec<Vec<Match>> = vec![Vec::new(); n2];
        let mut buf = Vec::new();
        // exact
        for (j, &x) in self.ids2.iter().enumerate() {
            nearest_of_words(&[x], &self.index1, j, (n1, n2), cap, &mut buf);
            cand[j].extend(buf.iter().map(|&i| one(EXACT, j, i)));
            total += buf.len();
        }
        if self.identical {
            return (total <= limit).then_some(cand);
        }
        // stem, synonym: whole-word matchers
        let modules = [(STEM, Some(&self.stem)), (SYNONYM, self.synonym.as_ref())];
        for (module, matched) in modules {
            let Some(matched) = matched else { continue };
            for (j, &y) in self.ids2.iter().enumerate() {
                let ws = &matched[y as usize];
                if ws.is_empty() {
                    continue;
                }
                nearest_of_words(ws, &self.index1, j, (n1, n2), cap, &mut buf);
                cand[j].extend(buf.iter().map(|&i| one(module, j, i)));
                total += buf.len();
            }
        }
        if total > limit {
            return None;
        }
        let Some((pt, lines)) = &self.paraphrase else {
            return Some(cand);
        };
        let Lines { l1, l2, p1, p2 } = lines;
        let all1: Vec<u32> = (0..n1 as u32).collect();
        let all2: Vec<u32> = (0..n2 as u32).collect();
        let occurs = |line: &[Option<u32>], at: usize, words: &[u32]| {
            at + words.len() <= line.len()
                && words
                    .iter()
                    .enumerate()
                    .all(|(k, w)| line[at + k] == Some(*w))
        };
        let probe_limit = limit.saturating_mul(8);
        // Paraphrases (in the hypothesis) of reference phrases starting at j: the jar's
        // order is table order, then hypothesis position.
        let mut found: Vec<(u64, Match)> = Vec::new();
        for (j, cj) in cand.iter_mut().enumerate() {
            found.clear();
            for (len, idx) in pt.paths(l2, j) {
                let ws = &pt.paraphrases[idx as usize];
                let xs: &[u32] = match ws.first() {
                    None => &all1,
                    Some(w) => p1.get(w).map_or(&[], Vec::as_slice),
                };
                examined += xs.len().min(probes);
                nearest(
                    xs,
                    |x| diag(x as usize, j, n1, n2),
                    |x| (x as u64) * (n2 as u64) < (j as u64) * (n1 as u64),
                    cap,
                    probes,
                    |x| occurs(l1, x as usize, ws),
                    &mut buf,
                );
                found.extend(buf.iter().map(|&i| {
                    let m = Match {
                        module: PARAPHRASE as u8,
                        start: j as u32,
                        len: len as u32,
                        match_start: i,
                        match_len: ws.len() as u32,
                    };
                    (diag(i as usize, j, n1, n2), m)
                }));
            }
            keep_nearest(&mut found, cap, |&(d, _)| d);
            cj.extend(found.iter().map(|&(_, m)| m));
            total += found.len();
            if total > limit || examined > probe_limit {
                return None;
            }
        }
        // Paraphrases (in the reference) of hypothesis phrases starting at i: the jar
        // loops over i, table order, then reference position, appending to cand[j].
        let mut second: Vec<Vec<Match>> = vec![Vec::new(); n2];
        for i in 0..n1 {
            for (len, idx) in pt.paths(l1, i) {
                let ws = &pt.paraphrases[idx as usize];
                let xs: &[u32] = match ws.first() {
                    None => &all2,
                    Some(w) => p2.get(w).map_or(&[], Vec::as_slice),
                };
                examined += xs.len().min(probes);
                nearest(
                    xs,
                    |x| diag(i, x as usize, n1, n2),
                    |x| (x as u64) * (n1 as u64) < (i as u64) * (n2 as u64),
                    cap,
                    probes,
                    |x| occurs(l2, x as usize, ws),
                    &mut buf,
                );
                total += buf.len();
                for &j in buf.iter() {
                    let list = &mut second[j as usize];
                    list.push(Match {
                        module: PARAPHRASE as u8,
                        start: j,
                        len: ws.len() as u32,
                        match_start: i as u32,
                        match_len: len as u32,
                    });
                    if list.len() >= cap.saturating_mul(2) {
                        keep_nearest(list, cap, |m| {
                            diag(m.match_start as usize, j as usize, n1, n2)
                        });
                    }
                }
            }
            if total > limit || examined > probe_limit {
                return None;
            }
        }
        for (j, mut list) in second.into_iter().enumerate() {
            keep_nearest(&mut list, cap, |m| diag(m.match_start as usize, j, n1, n2));
            cand[j].extend(list);
        }
        Some(cand)
    }
}

/// The candidate matches of each reference position, in the jar's order: all of them
/// when there are at most [`FULL_SEARCH_CANDIDATES`] (and the paraphrase matcher
/// examines at most 8 times as many occurrences), else the capped set described in the
/// module docs.
fn candidates(m: &Meteor, w1: &[String], w2: &[String]) -> Vec<Vec<Match>> {
    let setup = Setup::new(m, w1, w2);
    if setup.word_candidates() <= FULL_SEARCH_CANDIDATES {
        if let Some(c) = setup.generate(usize::MAX, usize::MAX, Some(FULL_SEARCH_CANDIDATES)) {
            return c;
        }
    }
    setup
        .generate(MAX_CANDIDATES_PER_WORD, PARAPHRASE_PROBES, None)
        .unwrap_or_else(|| vec![Vec::new(); w2.len()]) // (no limit: always Some)
}

/// A persistent bit set over `0..n`: a trie of 16-way nodes over 64-bit leaves, in which
/// a copy is O(1) and setting a bit copies one root-to-leaf path (O(log n)).
#[derive(Clone)]
enum BitNode {
    /// A word of bits at the bottom level; `Leaf(0)` higher up is an all-zero subtree.
    Leaf(u64),
    Inner(Rc<[BitNode; FAN]>),
}

const FAN_BITS: u32 = 4;
const FAN: usize = 1 << FAN_BITS;

#[derive(Clone)]
struct Bits {
    root: BitNode,
    /// Inner levels above the leaves.
    depth: u32,
}

impl Bits {
    fn new(n: usize) -> Self {
        let mut depth = 0;
        let mut span = 64usize;
        while span < n {
            span = span.saturating_mul(FAN);
            depth += 1;
        }
        Bits {
            root: BitNode::Leaf(0),
            depth,
        }
    }

    /// Bits `64·word .. 64·word + 64`.
    fn word(&self, word: usize) -> u64 {
        let mut node = &self.root;
        let mut level = self.depth;
        loop {
            match node {
                BitNode::Leaf(w) => return if level == 0 { *w } else { 0 },
                BitNode::Inner(ch) => {
                    level -= 1;
                    node = &ch[(word >> (FAN_BITS * level)) & (FAN - 1)];
                }
            }
        }
    }

    #[cfg(test)]
    fn get(&self, i: usize) -> bool {
        (self.word(i / 64) >> (i % 64)) & 1 == 1
    }

    fn set(&mut self, i: usize) {
        let word = i / 64;
        let mut node = &mut self.root;
        let mut level = self.depth;
        while level > 0 {
            if let BitNode::Leaf(_) = node {
                *node = BitNode::Inner(Rc::new(std::array::from_fn(|_| BitNode::Leaf(0))));
            }
            let BitNode::Inner(ch) = node else {
                unreachable!("just made inner")
            };
            level -= 1;
            node = &mut Rc::make_mut(ch)[(word >> (FAN_BITS * level)) & (FAN - 1)];
        }
        if let BitNode::Leaf(w) = node {
            *w |= 1 << (i % 64);
        }
    }
}

/// The matches a path chose during the search, newest first (shared by its descendants).
struct Chosen {
    m: Match,
    prev: Option<Rc<Chosen>>,
}

impl Drop for Chosen {
    // Iterative, so that a list of 100,000 matches does not overflow the stack.
    fn drop(&mut self) {
        let mut next = self.prev.take();
        while let Some(rc) = next {
            match Rc::try_unwrap(rc) {
                Ok(mut c) => next = c.prev.take(),
                Err(_) => break,
            }
        }
    }
}

/// The scalar state of a partial alignment (`PartialAlignment` less its arrays).
#[derive(Clone, Copy, Debug)]
struct Head {
    m1: i64,
    m2: i64,
    chunks: i64,
    idx: usize,
    last_match_end: i64,
    distance: i64,
    /// Reference span `[start, end)` of the last match chosen by the search.
    span2: (usize, usize),
}

impl Head {
    /// `Constants.PARTIAL_COMPARE_TOTAL` as a sort key (smaller ranks first).
    fn key(&self) -> (i64, i64, i64) {
        (-(self.m1 + self.m2), self.chunks, self.distance)
    }

    /// Java: `path.matches1 += m.matchLength * w` on an `int` field.
    fn add_counts(&mut self, m: &Match) {
        let w = SEARCH_WEIGHTS[m.module as usize];
        self.m1 = (self.m1 as f64 + m.match_len as f64 * w) as i64;
        self.m2 = (self.m2 as f64 + m.len as f64 * w) as i64;
    }

    /// Takes match `m` (counts, chunk break, position after it).
    fn take(&mut self, m: &Match) {
        self.add_counts(m);
        if self.last_match_end != -1 && m.match_start as i64 != self.last_match_end {
            self.chunks += 1;
        }
        self.idx = (m.start + m.len) as usize;
        self.last_match_end = (m.match_start + m.match_len) as i64;
    }
}

struct Path {
    head: Head,
    used1: Bits,
    chosen: Option<Rc<Chosen>>,
}

/// A path of the next step, not yet built: its parent and the match it adds.
struct Next {
    head: Head,
    parent: usize,
    add: Option<Match>,
}

/// The next step's paths, keeping only what can still rank in the top `beam` under the
/// stable sort of the jar (ties keep insertion order).
struct Pool {
    beam: usize,
    items: Vec<Next>,
    /// Once `beam` items are known to rank no worse than this key, an item with a key
    /// `>=` it cannot make the beam.
    threshold: Option<(i64, i64, i64)>,
}

impl Pool {
    fn new(beam: usize) -> Self {
        Pool {
            beam,
            items: Vec::with_capacity(2 * beam),
            threshold: None,
        }
    }

    fn admits(&self, key: (i64, i64, i64)) -> bool {
        self.threshold.is_none_or(|t| key < t)
    }

    fn push(&mut self, n: Next) {
        if !self.admits(n.head.key()) {
            return;
        }
        self.items.push(n);
        if self.items.len() >= self.beam + self.beam.div_ceil(4) {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.items.sort_by_key(|n| n.head.key()); // stable
        self.items.truncate(self.beam);
        if self.items.len() == self.beam {
            self.threshold = self.items.last().map(|n| n.head.key());
        }
    }

    /// The top `beam`, best first.
    fn finish(mut self) -> Vec<Next> {
        self.compact();
        self.items
    }
}

/// The best alignment of `w1` (hypothesis) to `w2` (reference): one optional match per
/// reference position (`PartialAlignment.matches` of the jar's best path).
pub(super) fn align(m: &Meteor, w1: &[String], w2: &[String]) -> Vec<Option<Match>> {
    let (n1, n2) = (w1.len(), w2.len());
    let cand = candidates(m, w1, w2);

    // One-to-one matches that are the only candidate for all their words are fixed.
    let mut cov1 = vec![0u32; n1];
    let mut cov2 = vec![0u32; n2];
    for c in cand.iter().flatten() {
        for k in c.match_start..c.match_start + c.match_len {
            cov1[k as usize] += 1;
        }
        for k in c.start..c.start + c.len {
            cov2[k as usize] += 1;
        }
    }
    let mut fixed: Vec<Option<Match>> = vec![None; n2];
    let mut fixed2 = vec![false; n2];
    let mut used1 = Bits::new(n1);
    for (i, c) in cand.iter().enumerate() {
        if let [x] = c.as_slice() {
            let overlap = (x.start..x.start + x.len).any(|k| cov2[k as usize] != 1)
                || (x.match_start..x.match_start + x.match_len).any(|k| cov1[k as usize] != 1);
            if !overlap {
                fixed[i] = Some(*x);
                for k in x.start..x.start + x.len {
                    fixed2[k as usize] = true;
                }
                for k in x.match_start..x.match_start + x.match_len {
                    used1.set(k as usize);
                }
            }
        }
    }
    drop((cov1, cov2));

    // The most a candidate at each position can add to `m1 + m2`.
    let gain = |x: &Match| {
        let w = SEARCH_WEIGHTS[x.module as usize];
        (x.match_len as f64 * w) as i64 + (x.len as f64 * w) as i64
    };
    let max_gain: Vec<i64> = cand
        .iter()
        .map(|c| c.iter().map(gain).max().unwrap_or(0))
        .collect();
    // The words (of 64 hypothesis positions) that the candidates of each position touch,
    // when few enough to be read once per parent instead of once per candidate.
    let windows: Vec<Option<(usize, usize)>> = cand
        .iter()
        .map(|c| {
            let lo = c.iter().map(|x| x.match_start as usize / 64).min()?;
            let hi = c
                .iter()
                .map(|x| (x.match_start + x.match_len).saturating_sub(1) as usize / 64)
                .max()?;
            (hi - lo < c.len() / 2).then_some((lo, hi))
        })
        .collect();
    let mut window_bits: Vec<u64> = Vec::new();

    let beam = m.params.beam_size.max(1);
    let mut paths = vec![Path {
        head: Head {
            m1: 0,
            m2: 0,
            chunks: 0,
            idx: 0,
            last_match_end: -1,
            distance: 0,
            span2: (0, 0),
        },
        used1,
        chosen: None,
    }];
    for current in 0..=n2 {
        let mut pool = Pool::new(beam);
        for (pi, path) in paths.iter().enumerate() {
            let mut h = path.head;
            let next = |head: Head, add: Option<Match>| Next {
                head,
                parent: pi,
                add,
            };
            // Case: path is complete.
            if current == n2 {
                if h.last_match_end != -1 {
                    h.chunks += 1;
                }
                pool.push(next(h, None));
                continue;
            }
            let (span2, fixed2) = (h.span2, &fixed2);
            let used2 = move |p: usize| fixed2[p] || (span2.0 <= p && p < span2.1);
            // Case: current reference word is in use.
            if used2(current) {
                if current < h.idx {
                    // Still inside the last match.
                    pool.push(next(h, None));
                } else if let Some(x) = fixed.get(h.idx).copied().flatten() {
                    // A fixed match. (Every match the search chose starts before
                    // `current <= idx`, so `matches[idx]` can only be a fixed one.)
                    h.take(&x);
                    h.distance += (x.start as i64 - x.match_start as i64).abs();
                    pool.push(next(h, None));
                }
                continue;
            }
            // Case: every candidate starting here, then skipping the word.
            //
            // Keys only grow along this loop (the parent's distance accumulates) and the
            // pool's threshold only falls, so a path the pool rejects now it rejects
            // forever. A child's key is known before its words are checked, up to the
            // distance, which lags while checks are deferred: a candidate whose child is
            // rejected even so is not checked yet (its only effect is on the parent's
            // distance); the deferred ones are checked, in order, as soon as an exact
            // distance is needed. Same paths, far fewer checks.
            let total = h.m1 + h.m2;
            let skip_chunks = h.chunks + (h.last_match_end != -1) as i64;
            if !pool.admits((-(total + max_gain[current]), h.chunks, h.distance))
                && !pool.admits((-total, skip_chunks, h.distance))
            {
                continue; // nothing from this parent can make the beam
            }
            // The hypothesis words in use, read from the trie once per word of the window
            // (or once per candidate without one), on the first check.
            let mut window_read = false;
            let mut in_use = |x: &Match| {
                if (x.start..x.start + x.len).any(|p| used2(p as usize)) {
                    return true;
                }
                let (q0, q1) = (
                    x.match_start as usize,
                    (x.match_start + x.match_len) as usize,
                );
                match windows[current] {
                    Some((lo, hi)) => {
                        if !window_read {
                            window_bits.clear();
                            window_bits.extend((lo..=hi).map(|w| path.used1.word(w)));
                            window_read = true;
                        }
                        (q0..q1).any(|q| (window_bits[q / 64 - lo] >> (q % 64)) & 1 == 1)
                    }
                    None => (q0..q1).any(|q| (path.used1.word(q / 64) >> (q % 64)) & 1 == 1),
                }
            };
            let distance_of = |x: &Match| (x.start as i64 - x.match_start as i64).abs();
            let here = &cand[current];
            let mut deferred = 0; // here[deferred..k] are not checked yet
            for (k, x) in here.iter().enumerate() {
                let breaks = h.last_match_end != -1 && x.match_start as i64 != h.last_match_end;
                let key = (-(total + gain(x)), h.chunks + breaks as i64, h.distance);
                if !pool.admits(key) {
                    continue;
                }
                for y in &here[deferred..k] {
                    if !in_use(y) {
                        h.distance += distance_of(y);
                    }
                }
                deferred = k + 1;
                if in_use(x) {
                    continue;
                }
                let mut nh = h;
                nh.take(x);
                nh.span2 = (x.start as usize, (x.start + x.len) as usize);
                pool.push(next(nh, Some(*x)));
                // Jar quirk: the distance is added to the parent path.
                h.distance += distance_of(x);
            }
            if !pool.admits((-total, skip_chunks, h.distance)) {
                continue;
            }
            for y in &here[deferred..] {
                if !in_use(y) {
                    h.distance += distance_of(y);
                }
            }
            if h.last_match_end != -1 {
                h.chunks += 1;
                h.last_match_end = -1;
            }
            h.idx += 1;
            pool.push(next(h, None));
        }
        let chosen = pool.finish();
        if chosen.is_empty() {
            // Jar: "unexpected conditions - skipping matches until possible to continue"
            // (keeps its best path; cannot happen, see above).
            paths.truncate(1);
            continue;
        }
        paths = chosen
            .into_iter()
            .map(|n| {
                let parent = &paths[n.parent];
                let mut used1 = parent.used1.clone();
                let mut chosen = parent.chosen.clone();
                if let Some(x) = n.add {
                    for q in x.match_start..x.match_start + x.match_len {
                        used1.set(q as usize);
                    }
                    chosen = Some(Rc::new(Chosen { m: x, prev: chosen }));
                }
                Path {
                    head: n.head,
                    used1,
                    chosen,
                }
            })
            .collect();
    }
    let best = paths.swap_remove(0);
    let mut matches = fixed;
    let mut c = best.chosen.as_deref();
    while let Some(node) = c {
        matches[node.m.start as usize] = Some(node.m);
        c = node.prev.as_deref();
    }
    matches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_bits() {
        for n in [1usize, 64, 65, 1000, 70_000] {
            let mut a = Bits::new(n);
            let b = a.clone();
            for i in (0..n).step_by(7) {
                a.set(i);
            }
            let c = a.clone();
            a.set(n - 1);
            for i in 0..n {
                assert_eq!(a.get(i), i % 7 == 0 || i == n - 1, "n {n} i {i}");
                assert!(!b.get(i));
                assert_eq!(c.get(i), i % 7 == 0, "n {n} i {i}");
            }
        }
    }

    #[test]
    fn nearest_first_selection() {
        let xs: Vec<u32> = (0..100).map(|x| x * 2).collect(); // 0, 2, ..., 198
        let mut out = Vec::new();
        // Target 51: nearest are 50, 52, 48, 54, ...
        let d = |x: u32| (x as i64 - 51).unsigned_abs();
        nearest(&xs, d, |x| x < 51, 4, usize::MAX, |_| true, &mut out);
        assert_eq!(out, vec![48, 50, 52, 54]);
        // Ties go left: target 50 -> 50, 48, 52, 46 (48 before 52).
        let d = |x: u32| (x as i64 - 50).unsigned_abs();
        nearest(&xs, d, |x| x < 50, 3, usize::MAX, |_| true, &mut out);
        assert_eq!(out, vec![48, 50, 52]);
        // Probes bound the visits; short lists are taken whole, in order.
        nearest(&xs, d, |x| x < 50, 10, 3, |x| x != 50, &mut out);
        assert_eq!(out, vec![48, 52]);
        nearest(&xs[..3], d, |x| x < 50, 10, 10, |_| true, &mut out);
        assert_eq!(out, vec![0, 2, 4]);
    }

    #[test]
    fn keep_nearest_preserves_order() {
        let mut v = vec![9u64, 1, 5, 1, 7, 0];
        keep_nearest(&mut v, 3, |&x| x);
        assert_eq!(v, vec![1, 1, 0]);
    }
}
