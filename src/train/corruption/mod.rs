//! BART-style input corruption for LPLM pre-training (ELMER paper, section 4.2).
//!
//! ELMER is pre-trained as a denoising auto-encoder: the encoder reads a
//! corrupted document and the (non-autoregressive) decoder reconstructs the
//! original. The corruption follows BART (fairseq's `DenoisingDataset`):
//!
//! 1. **Sentence permutation** ([`CorruptionConfig::sentence_shuffle`]): the
//!    content between `<s>` and `</s>` is split after full-stop tokens and the
//!    sentences are permuted uniformly at random.
//! 2. **Text infilling**: `round(mask_ratio * n)` units are masked, where a unit
//!    is one non-special content token (or one whole word when
//!    [`CorruptionConfig::whole_word`] is set) and `n` is the number of such
//!    units. Span lengths (in units) are drawn from `Poisson(poisson_lambda)`
//!    until they add up to the budget, the last one being truncated. Each span
//!    of length `k >= 1` is replaced by a **single** `<mask>`; each span of
//!    length 0 inserts a `<mask>` without removing anything. A share
//!    `random_token_ratio` of the spans (zero-length ones included) gets a
//!    uniformly drawn non-special token instead of `<mask>`.
//! 3. **Random insertion** (optional, [`CorruptionConfig::insert_ratio`]):
//!    `round(insert_ratio * m)` extra `<mask>`/random tokens are inserted at
//!    uniformly random content positions, `m` being the content length of the
//!    source after infilling.
//!
//! Everything operates on token ids of **one** framed document
//! `[<s>, t_1, ..., t_n, </s>]` (a `&[u32]`, no batch dimension, no padding).
//! The returned [`Corrupted::source`] is framed the same way and is usually
//! shorter than the input; [`Corrupted::target`] is the original, unshuffled
//! document (as in BART). All randomness comes from the `rng` argument, so a
//! seeded generator gives reproducible output.
//!
//! # Semantic choices (differences from fairseq)
//!
//! * Spans never overlap and never cross a special token. They are placed one
//!   after the other (longest first), each at a start drawn uniformly among
//!   the positions where it still fits. Two spans may be **adjacent**; they are
//!   *not* merged, so the number of replacement tokens in the source always
//!   equals the number of spans (adjacent spans produce adjacent `<mask>`s).
//!   In the rare case where no free run is long enough, the span fills the
//!   longest free run and the remainder is placed as a further span, so the
//!   budget is always met exactly.
//! * Zero-length spans are placed at distinct gaps that do not split a word
//!   or a masked span (before a unit, or before a special token including the
//!   final `</s>`); fairseq instead inserts them anywhere in the noised
//!   sequence. If there are more zero-length spans than gaps, the excess is
//!   dropped (only possible for tiny `poisson_lambda`).
//! * The Poisson draws are made by splitting the i.i.d. sequence into runs of
//!   zeros (geometric) and positive values (zero-truncated Poisson). This is
//!   exactly the same distribution as drawing Poisson values one by one, but
//!   it terminates quickly even for a tiny `poisson_lambda`.
//! * Special tokens (`<s>`, `</s>`, `<pad>`, `<mask>` and any extra special id)
//!   are never masked or replaced; they may move with their sentence when
//!   sentences are shuffled. Random replacement tokens are never special.
//! * With `whole_word`, the budget and the span lengths are counted in
//!   **words** (as in fairseq's `add_whole_word_mask`), so the share of masked
//!   *tokens* only approximately equals `mask_ratio`.
//! * Word-start flags travel with their tokens when sentences are shuffled; a
//!   token that directly follows a special token (or is the first content
//!   token) always starts a word.
mod config;
mod spans;
mod words;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Geometric, Poisson};

use crate::error::Result;
use crate::SpecialTokens;
use config::invalid;
pub use config::CorruptionConfig;
use spans::place_spans;
pub use words::word_starts_from_tokens;

/// Output of [`Corruptor::corrupt`]. Token sequences are framed
/// `[<s>, ..., </s>]`; positions and lengths are counted in tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupted {
    /// Corrupted document (encoder input), framed.
    pub source: Vec<u32>,
    /// The original document, unshuffled and unmasked (decoder target).
    pub target: Vec<u32>,
    /// The document after sentence shuffling, before infilling (equal to
    /// `target` when shuffling is off or there is a single sentence). The
    /// coordinates of [`spans`](Self::spans) refer to this sequence.
    pub shuffled: Vec<u32>,
    /// Number of tokens of `shuffled` removed by text infilling (sum of the
    /// span lengths).
    pub num_masked_tokens: usize,
    /// Infilling spans as `(start, len)`: `shuffled[start..start + len]` was
    /// replaced by one `<mask>` (or random token). `len == 0` marks an
    /// insertion before `shuffled[start]`. Sorted by `(start, len)`; spans do
    /// not overlap but may be adjacent. Each span yields exactly one token of
    /// `source`, in this order.
    pub spans: Vec<(usize, usize)>,
    /// Number of tokens added by the extra insertion noise
    /// ([`CorruptionConfig::insert_ratio`]); not part of `spans`.
    pub num_inserted: usize,
}

/// Applies BART-style noising to framed documents of token ids.
#[derive(Debug, Clone)]
pub struct Corruptor {
    cfg: CorruptionConfig,
    mask_id: u32,
    bos_id: u32,
    eos_id: u32,
    vocab_size: usize,
    full_stop_ids: Vec<u32>,
    special: SpecialTokens,
    /// Sorted, deduplicated: bos, eos, pad, mask and unk.
    special_ids: Vec<u32>,
    poisson: Poisson<f64>,
    /// Number of zero draws before a positive draw of `Poisson(lambda)`.
    zeros: Geometric,
}

impl Corruptor {
    /// Builds a corruptor.
    ///
    /// * `vocab_size`: ids are `0..vocab_size`; random replacement tokens are
    ///   drawn uniformly from the non-special ids of that range.
    /// * `full_stop_ids`: ids that end a sentence (for BART's byte-level BPE,
    ///   at least `"."` = 4 and `"Ġ."` = 479). A run of consecutive full stops
    ///   ends a sentence after its last token.
    pub fn new(
        cfg: CorruptionConfig,
        special: SpecialTokens,
        vocab_size: usize,
        full_stop_ids: Vec<u32>,
    ) -> Result<Self> {
        cfg.validate()?;
        if vocab_size == 0 || vocab_size > u32::MAX as usize {
            return Err(invalid(
                "vocab_size",
                format!("must be in 1..=u32::MAX, got {vocab_size}"),
            ));
        }
        let named = [
            ("bos", special.bos),
            ("eos", special.eos),
            ("pad", special.pad),
            ("mask", special.mask),
        ];
        for (name, id) in named {
            if id as usize >= vocab_size {
                return Err(invalid(
                    name,
                    format!("id {id} is outside the vocabulary (size {vocab_size})"),
                ));
            }
        }
        if special.bos == special.eos {
            return Err(invalid("eos", "must differ from bos"));
        }
        let special_ids = special.ids();
        if special_ids.len() >= vocab_size {
            return Err(invalid(
                "vocab_size",
                "the vocabulary has no non-special token to sample",
            ));
        }
        let mut full_stop_ids = full_stop_ids;
        full_stop_ids.sort_unstable();
        full_stop_ids.dedup();
        let lambda = cfg.poisson_lambda;
        let poisson = Poisson::new(lambda)
            .map_err(|e| invalid("poisson_lambda", format!("{e} (got {lambda})")))?;
        let zeros = Geometric::new(-(-lambda).exp_m1())
            .map_err(|e| invalid("poisson_lambda", format!("{e} (got {lambda})")))?;
        Ok(Self {
            cfg,
            mask_id: special.mask,
            bos_id: special.bos,
            eos_id: special.eos,
            vocab_size,
            full_stop_ids,
            special_ids,
            special,
            poisson,
            zeros,
        })
    }

    /// A corruptor for the BART vocabulary: [`SpecialTokens::bart`],
    /// `vocab_size` 50265 and full stops `"."` (4) and `"Ġ."` (479).
    pub fn bart(cfg: CorruptionConfig) -> Result<Self> {
        Self::new(cfg, SpecialTokens::bart(), 50265, vec![4, 479])
    }

    /// The configuration.
    pub fn config(&self) -> &CorruptionConfig {
        &self.cfg
    }

    /// The special-token ids (never corrupted, never sampled).
    pub fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    /// Vocabulary size (ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Sentence-ending ids, sorted and deduplicated.
    pub fn full_stop_ids(&self) -> &[u32] {
        &self.full_stop_ids
    }

    /// All special ids (bos, eos, pad, mask and extras), sorted and deduplicated.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// Whether `id` is a special token (never corrupted, never sampled).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    fn is_full_stop(&self, id: u32) -> bool {
        self.full_stop_ids.binary_search(&id).is_ok()
    }

    /// Corrupts one framed document.
    ///
    /// * `ids`: `[<s>, t_1, ..., t_n, </s>]` with `n >= 0`, all ids below
    ///   `vocab_size`.
    /// * `word_start`: same length as `ids`; `word_start[i]` tells whether token
    ///   `i` begins a word (see [`word_starts_from_tokens`]). Required when
    ///   [`CorruptionConfig::whole_word`] is set, ignored otherwise.
    /// * `rng`: the only source of randomness.
    ///
    /// Documents too short to mask anything (e.g. `<s></s>`, or one content
    /// token at `mask_ratio` 0.15) come back unchanged apart from shuffling
    /// and insertion noise.
    pub fn corrupt<R: Rng + ?Sized>(
        &self,
        ids: &[u32],
        word_start: Option<&[bool]>,
        rng: &mut R,
    ) -> Result<Corrupted> {
        self.check_input(ids, word_start)?;
        let n = ids.len();

        // 1. Sentence permutation.
        let (shuffled, shuffled_ws) = if self.cfg.sentence_shuffle {
            self.permute_sentences(ids, word_start, rng)
        } else {
            (ids.to_vec(), word_start.map(<[bool]>::to_vec))
        };

        // 2. Text infilling.
        let units = self.units(&shuffled, shuffled_ws.as_deref());
        let budget = ((self.cfg.mask_ratio * units.len() as f64).round() as usize).min(units.len());
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut num_masked_tokens = 0;
        if budget > 0 {
            let (lengths, num_zero) = self.sample_span_lengths(budget, rng);
            let placed = place_spans(&units, lengths, rng);
            let mut interior = vec![false; units.len()];
            for &(first, count) in &placed {
                for flag in &mut interior[first + 1..first + count] {
                    *flag = true;
                }
                let start = units[first].start;
                let last = &units[first + count - 1];
                let len = last.start + last.len - start;
                num_masked_tokens += len;
                spans.push((start, len));
            }
            if num_zero > 0 {
                // Gaps that split neither a word nor a span: before a unit that
                // is not inside a span, or before a special token (incl. `</s>`).
                let mut gaps: Vec<usize> = units
                    .iter()
                    .zip(&interior)
                    .filter(|&(_, &inside)| !inside)
                    .map(|(u, _)| u.start)
                    .collect();
                gaps.extend((1..n).filter(|&i| self.is_special(shuffled[i])));
                gaps.sort_unstable();
                let take = num_zero.min(gaps.len());
                for k in rand::seq::index::sample(rng, gaps.len(), take) {
                    spans.push((gaps[k], 0));
                }
            }
            spans.sort_unstable();
        }

        let mut source = Vec::with_capacity(n + spans.len());
        let mut pos = 0;
        for &(start, len) in &spans {
            source.extend_from_slice(&shuffled[pos..start]);
            source.push(self.noise_token(rng));
            pos = start + len;
        }
        source.extend_from_slice(&shuffled[pos..]);

        // 3. Optional random insertion.
        let mut num_inserted = 0;
        if self.cfg.insert_ratio > 0.0 {
            let content = source.len() - 2;
            let m = (self.cfg.insert_ratio * content as f64).round() as usize;
            if m > 0 {
                let mut is_noise = vec![false; content + m];
                for k in rand::seq::index::sample(rng, content + m, m) {
                    is_noise[k] = true;
                }
                let mut out = Vec::with_capacity(source.len() + m);
                out.push(source[0]);
                let mut kept = source[1..source.len() - 1].iter();
                for noise in is_noise {
                    if noise {
                        out.push(self.noise_token(rng));
                    } else if let Some(&t) = kept.next() {
                        out.push(t);
                    }
                }
                out.push(self.eos_id);
                source = out;
                num_inserted = m;
            }
        }

        Ok(Corrupted {
            source,
            target: ids.to_vec(),
            shuffled,
            num_masked_tokens,
            spans,
            num_inserted,
        })
    }

    fn check_input(&self, ids: &[u32], word_start: Option<&[bool]>) -> Result<()> {
        if ids.len() < 2 || ids[0] != self.bos_id || ids[ids.len() - 1] != self.eos_id {
            return Err(invalid(
                "ids",
                format!(
                    "must be a framed document [<s>={}, ..., </s>={}] of length >= 2",
                    self.bos_id, self.eos_id
                ),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(invalid(
                "ids",
                format!(
                    "id {bad} is outside the vocabulary (size {})",
                    self.vocab_size
                ),
            ));
        }
        match word_start {
            Some(ws) if ws.len() != ids.len() => Err(invalid(
                "word_start",
                format!("has length {} but ids has length {}", ws.len(), ids.len()),
            )),
            None if self.cfg.whole_word => Err(invalid(
                "word_start",
                "is required when whole_word is enabled",
            )),
            _ => Ok(()),
        }
    }

    /// Splits the content after runs of full stops and permutes the sentences.
    fn permute_sentences<R: Rng + ?Sized>(
        &self,
        ids: &[u32],
        word_start: Option<&[bool]>,
        rng: &mut R,
    ) -> (Vec<u32>, Option<Vec<bool>>) {
        let end = ids.len() - 1;
        let mut sentences = Vec::new();
        let mut begin = 1;
        for i in 1..end {
            let stop_here =
                self.is_full_stop(ids[i]) && (i + 1 == end || !self.is_full_stop(ids[i + 1]));
            if stop_here {
                sentences.push(begin..i + 1);
                begin = i + 1;
            }
        }
        if begin < end {
            sentences.push(begin..end);
        }
        if sentences.len() < 2 {
            return (ids.to_vec(), word_start.map(<[bool]>::to_vec));
        }
        sentences.shuffle(rng);
        let mut out = Vec::with_capacity(ids.len());
        let mut out_ws = word_start.map(|_| Vec::with_capacity(ids.len()));
        out.push(ids[0]);
        if let (Some(o), Some(ws)) = (out_ws.as_mut(), word_start) {
            o.push(ws[0]);
        }
        for s in sentences {
            out.extend_from_slice(&ids[s.clone()]);
            if let (Some(o), Some(ws)) = (out_ws.as_mut(), word_start) {
                o.extend_from_slice(&ws[s]);
            }
        }
        out.push(ids[end]);
        if let (Some(o), Some(ws)) = (out_ws.as_mut(), word_start) {
            o.push(ws[end]);
        }
        (out, out_ws)
    }

    /// `<mask>`, or with probability `random_token_ratio` a random
    /// non-special token.
    fn noise_token<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let ratio = self.cfg.random_token_ratio;
        if ratio > 0.0 && rng.random_bool(ratio) {
            self.random_token(rng)
        } else {
            self.mask_id
        }
    }

    /// A uniformly drawn non-special id (rejection sampling; `new` ensures
    /// one exists).
    fn random_token<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let upper = self.vocab_size as u64;
        loop {
            let id = rng.random_range(0..upper) as u32;
            if !self.is_special(id) {
                return id;
            }
        }
    }
}

/// Units of a document as `(start, len)` token ranges (test helper).
#[cfg(test)]
fn split_units_for_test(c: &Corruptor, ids: &[u32], ws: Option<&[bool]>) -> Vec<(usize, usize)> {
    c.units(ids, ws).iter().map(|u| (u.start, u.len)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    // Small vocabulary: 0 <s>, 1 <pad>, 2 </s>, 3 <unk>, 4 ".", 99 <mask>.
    fn corruptor(cfg: CorruptionConfig) -> Corruptor {
        let special = SpecialTokens {
            bos: 0,
            eos: 2,
            pad: 1,
            mask: 99,
            unk: Some(3),
        };
        Corruptor::new(cfg, special, 100, vec![4]).expect("valid corruptor")
    }

    fn doc(content: &[u32]) -> Vec<u32> {
        let mut v = vec![0];
        v.extend_from_slice(content);
        v.push(2);
        v
    }

    #[test]
    fn validate_names_the_field() {
        let cases: Vec<(CorruptionConfig, &str)> = vec![
            (
                CorruptionConfig {
                    mask_ratio: 1.5,
                    ..Default::default()
                },
                "mask_ratio",
            ),
            (
                CorruptionConfig {
                    mask_ratio: f64::NAN,
                    ..Default::default()
                },
                "mask_ratio",
            ),
            (
                CorruptionConfig {
                    poisson_lambda: 0.0,
                    ..Default::default()
                },
                "poisson_lambda",
            ),
            (
                CorruptionConfig {
                    poisson_lambda: f64::INFINITY,
                    ..Default::default()
                },
                "poisson_lambda",
            ),
            (
                CorruptionConfig {
                    random_token_ratio: -0.1,
                    ..Default::default()
                },
                "random_token_ratio",
            ),
            (
                CorruptionConfig {
                    insert_ratio: 2.0,
                    ..Default::default()
                },
                "insert_ratio",
            ),
        ];
        for (cfg, field) in cases {
            match cfg.validate() {
                Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, field),
                other => panic!("expected error for {field}, got {other:?}"),
            }
        }
        assert!(CorruptionConfig::default().validate().is_ok());
    }

    #[test]
    fn constructor_rejects_bad_ids() {
        let cfg = CorruptionConfig::default();
        let mut s = SpecialTokens::bart();
        s.mask = 60000;
        assert!(matches!(
            Corruptor::new(cfg.clone(), s, 50265, vec![4]),
            Err(Error::InvalidArgument { name, .. }) if name == "mask"
        ));
        let s = SpecialTokens {
            bos: 0,
            eos: 1,
            pad: 1,
            mask: 0,
            unk: None,
        };
        assert!(Corruptor::new(cfg.clone(), s, 2, vec![]).is_err());
        assert!(Corruptor::bart(cfg).is_ok());
    }

    #[test]
    fn input_errors_are_reported() {
        let c = corruptor(CorruptionConfig::default());
        let mut rng = StdRng::seed_from_u64(0);
        for bad in [
            vec![],
            vec![0],
            vec![5, 6, 2],
            vec![0, 5, 6],
            vec![0, 100, 2],
        ] {
            assert!(matches!(
                c.corrupt(&bad, None, &mut rng),
                Err(Error::InvalidArgument { name, .. }) if name == "ids"
            ));
        }
        let ids = doc(&[5, 6, 7]);
        assert!(matches!(
            c.corrupt(&ids, Some(&[true, true]), &mut rng),
            Err(Error::InvalidArgument { name, .. }) if name == "word_start"
        ));
        let ww = corruptor(CorruptionConfig {
            whole_word: true,
            ..Default::default()
        });
        assert!(matches!(
            ww.corrupt(&ids, None, &mut rng),
            Err(Error::InvalidArgument { name, .. }) if name == "word_start"
        ));
    }

    #[test]
    fn degenerate_documents() {
        let cfg = CorruptionConfig {
            mask_ratio: 0.5,
            insert_ratio: 0.5,
            random_token_ratio: 0.5,
            ..Default::default()
        };
        let c = corruptor(cfg);
        let mut rng = StdRng::seed_from_u64(1);
        for content in [&[][..], &[5], &[4], &[4, 4, 4], &[4, 5, 4], &[99, 99], &[3]] {
            let ids = doc(content);
            let ws = vec![true; ids.len()];
            for seed in 0..20 {
                let mut r = StdRng::seed_from_u64(seed);
                let out = c.corrupt(&ids, Some(&ws), &mut r).expect("ok");
                assert_eq!(out.source[0], 0);
                assert_eq!(*out.source.last().expect("non-empty"), 2);
                assert_eq!(out.target, ids);
            }
            let _ = c.corrupt(&ids, None, &mut rng).expect("ok");
        }
        let empty = c.corrupt(&doc(&[]), None, &mut rng).expect("ok");
        assert_eq!(empty.source, doc(&[]));
        assert!(empty.spans.is_empty());
    }

    #[test]
    fn one_token_with_default_ratio_is_unchanged() {
        let c = corruptor(CorruptionConfig::default());
        let mut rng = StdRng::seed_from_u64(3);
        let out = c.corrupt(&doc(&[7]), None, &mut rng).expect("ok");
        assert_eq!(out.source, doc(&[7]));
        assert_eq!(out.num_masked_tokens, 0);
    }

    #[test]
    fn full_mask_replaces_every_token() {
        let cfg = CorruptionConfig {
            mask_ratio: 1.0,
            sentence_shuffle: false,
            ..Default::default()
        };
        let c = corruptor(cfg);
        let ids = doc(&(5..45).collect::<Vec<_>>());
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let out = c.corrupt(&ids, None, &mut rng).expect("ok");
            assert_eq!(out.num_masked_tokens, 40);
            assert!(out.source[1..out.source.len() - 1].iter().all(|&t| t == 99));
            assert_eq!(out.source.len() - 2, out.spans.len());
        }
    }

    #[test]
    fn specials_inside_content_are_barriers() {
        let cfg = CorruptionConfig {
            mask_ratio: 1.0,
            sentence_shuffle: false,
            ..Default::default()
        };
        let c = corruptor(cfg);
        let ids = doc(&[5, 6, 3, 7, 99, 8, 9, 1, 10]);
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let out = c.corrupt(&ids, None, &mut rng).expect("ok");
            assert_eq!(out.num_masked_tokens, 6);
            for &(s, l) in &out.spans {
                assert!(ids[s..s + l].iter().all(|&t| !c.is_special(t)));
            }
            let specials: Vec<u32> = out
                .source
                .iter()
                .copied()
                .filter(|&t| t == 3 || t == 1)
                .collect();
            assert_eq!(specials, vec![3, 1]);
        }
    }

    #[test]
    fn whole_word_units() {
        let c = corruptor(CorruptionConfig {
            whole_word: true,
            ..Default::default()
        });
        let ids = doc(&[5, 6, 7, 3, 8, 9, 10]);
        let ws = [true, true, false, true, true, false, true, false, true];
        let units = split_units_for_test(&c, &ids, Some(&ws));
        // [5 6] [7] | [8] [9 10]  (8 follows a special -> starts a word)
        assert_eq!(units, vec![(1, 2), (3, 1), (5, 1), (6, 2)]);
        let t = corruptor(CorruptionConfig::default());
        assert_eq!(split_units_for_test(&t, &ids, Some(&ws)).len(), 6);
    }

    #[test]
    fn sentences_split_after_runs_of_full_stops() {
        let c = corruptor(CorruptionConfig {
            mask_ratio: 0.0,
            ..Default::default()
        });
        let ids = doc(&[5, 4, 4, 6, 7, 4, 8]);
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let out = c.corrupt(&ids, None, &mut rng).expect("ok");
            seen.insert(out.source.clone());
            assert_eq!(out.source, out.shuffled);
        }
        // 3 sentences [5 4 4] [6 7 4] [8] -> 3! orders.
        assert_eq!(seen.len(), 6);
        assert!(seen.contains(&doc(&[8, 6, 7, 4, 5, 4, 4])));
    }

    #[test]
    fn zero_truncated_poisson_has_the_right_mean() {
        for lambda in [0.001, 0.5, 3.0] {
            let c = corruptor(CorruptionConfig {
                poisson_lambda: lambda,
                ..Default::default()
            });
            let mut rng = StdRng::seed_from_u64(11);
            let n = 200_000;
            let sum: usize = (0..n).map(|_| c.sample_positive(&mut rng)).sum();
            let mean = sum as f64 / n as f64;
            let expected = lambda / (-(-lambda).exp_m1());
            assert!(
                (mean - expected).abs() < 0.02 * expected,
                "lambda {lambda}: {mean} vs {expected}"
            );
        }
    }

    #[test]
    fn tiny_lambda_terminates_and_caps_insertions() {
        let c = corruptor(CorruptionConfig {
            poisson_lambda: 1e-9,
            mask_ratio: 0.5,
            sentence_shuffle: false,
            ..Default::default()
        });
        let ids = doc(&(5..25).collect::<Vec<_>>());
        let mut rng = StdRng::seed_from_u64(5);
        let out = c.corrupt(&ids, None, &mut rng).expect("ok");
        assert_eq!(out.num_masked_tokens, 10);
        // At most one insertion per gap.
        let inserts: BTreeSet<usize> = out.spans.iter().filter(|s| s.1 == 0).map(|s| s.0).collect();
        assert_eq!(inserts.len(), out.spans.iter().filter(|s| s.1 == 0).count());
    }

    #[test]
    fn insertion_noise_adds_tokens() {
        let c = corruptor(CorruptionConfig {
            mask_ratio: 0.0,
            insert_ratio: 0.2,
            sentence_shuffle: false,
            ..Default::default()
        });
        let ids = doc(&(5..55).collect::<Vec<_>>());
        let mut rng = StdRng::seed_from_u64(9);
        let out = c.corrupt(&ids, None, &mut rng).expect("ok");
        assert_eq!(out.num_inserted, 10);
        assert_eq!(out.source.len(), ids.len() + 10);
        let kept: Vec<u32> = out.source.iter().copied().filter(|&t| t != 99).collect();
        assert_eq!(kept, ids);
    }

    #[test]
    fn word_starts_from_byte_level_tokens() {
        let toks = ["<s>", "Hello", "Ġwor", "ld", "Ġ.", "</s>", "x"];
        assert_eq!(
            word_starts_from_tokens(&toks),
            vec![true, true, true, false, true, true, true]
        );
        assert_eq!(word_starts_from_tokens(&["ab", "cd"]), vec![true, false]);
        assert!(word_starts_from_tokens(&[]).is_empty());
    }
}
