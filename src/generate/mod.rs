//! Batched NAR generation (paper section 3): sources in, one result per source out.
//!
//! Each source is encoded as `<s> ... </s>` (truncated to the encoder's position table or a
//! user limit), sources are sorted by length and cut into batches to waste little padding,
//! every batch is encoded once and decoded in one parallel pass over a slot of
//! `[<s>, <mask> x (max_len - 1)]`, and results are restored to input order. Position t of the
//! slot predicts target token t+1, so the output is read from position 0 and ends at the
//! first `</s>` (exclusive); the slot length is a maximum, never taken from a reference.
//! A model with a length head can instead decode a slot of its own predicted length per
//! source ([`TargetLength`]), or several of its most likely lengths, keeping the most probable
//! output ([`GenerationConfig::length_candidates`], a length beam).
//! The text can drop orphan subword pieces, continuation pieces the parallel decoder glued
//! onto an unrelated word ([`GenerationConfig::drop_orphan_pieces`]).
//!
//! Results do not depend on the batch size or order (each example's computation is masked
//! from the others'), and per-layer exit statistics accumulate over a whole run.

use std::time::Instant;

use candle_core::DType;

mod autoregressive;
mod orphan_pieces;
mod stats;

pub use autoregressive::{generate_greedy, generate_greedy_with, GreedyOptions};
pub use stats::ExitStats;

use crate::batch::PaddedBatch;
use crate::error::{Error, Result};
use crate::model::exit::{DecodeOptions, ExitPolicy};
use crate::model::ElmerModel;
use crate::tokenizer::BartTokenizer;

/// How long each source's decoder slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetLength {
    /// `Predicted` when the model has a length head ([`ElmerModel::has_length_head`]), else
    /// `Slot`.
    #[default]
    Auto,
    /// The paper's way: every source gets the full slot of `max_len` positions, all attended,
    /// and its output ends at the first `</s>`.
    Slot,
    /// The model's length head predicts each source's slot length T in `2..=max_len`
    /// ([`ElmerModel::predict_lengths`], plus [`GenerationConfig::length_offset`]); the
    /// decoder attends only those T positions, and the output is read from the first T - 1
    /// (position T - 1 is the `</s>` position), up to the first `</s>` there. Needs a
    /// length head.
    Predicted,
}

/// Options for [`Generator`].
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Length of the output slot T (tokens, including the `</s>` position); default 64.
    pub max_len: usize,
    /// Exit policy: [`ExitPolicy::LastLayer`], [`ExitPolicy::Hard`] or [`ExitPolicy::Soft`].
    /// `None` (the default): the policy recorded in the model's config
    /// ([`ElmerModel::recorded_policy`], the one it was fine-tuned for), else the last layer.
    pub policy: Option<ExitPolicy>,
    /// Sources per model call; default 16.
    pub batch_size: usize,
    /// Longest source in tokens (with `<s>`/`</s>`); `None` means the encoder's position table.
    pub max_source_len: Option<usize>,
    /// The authors' post-processing: collapse consecutive repeated words in the text
    /// (ids and exit layers are left as generated). Off by default.
    pub collapse_repeats: bool,
    /// Most tokens per model call on either side: batch x longest source, and batch x
    /// `max_len` (the decoder slot). A batch of `batch_size` sources over this budget runs as
    /// several calls, so peak memory is bounded by the budget, not by `batch_size`. Results do
    /// not change (they never depend on the batch). Default 2048.
    pub max_batch_tokens: usize,
    /// Full slot or predicted length per source; default [`TargetLength::Auto`].
    pub length: TargetLength,
    /// Tokens added to every predicted length (then kept in `2..=max_len`); `None`: the
    /// model's recorded `elmer_length_offset` (chosen on validation data), else 0. Unused
    /// with the full slot.
    pub length_offset: Option<i64>,
    /// Length beam (Mask-Predict's length candidates): with a predicted length, decode the
    /// `k` most likely lengths of the length head (each plus the offset) in one batch and keep,
    /// per source, the output with the highest mean log-probability of its tokens (including
    /// `</s>`) at their exit layers. `None`: the model's recorded `elmer_length_candidates`,
    /// else 1 (one length, no scoring). Costs about `k` times the decoder work. Unused with
    /// the full slot.
    pub length_candidates: Option<usize>,
    /// Drop orphan subword pieces from the text: a word glued from pieces that the parallel
    /// decoder filled independently (`what` + `ther` → `whatther`) is kept only when it is
    /// a word of the source; otherwise only its first piece is kept. Changes the text only
    /// (ids and exit layers stay as generated); needs a tokenizer. `None`: the model's
    /// recorded `elmer_drop_orphan_pieces` (chosen on validation data), else off.
    pub drop_orphan_pieces: Option<bool>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_len: 64,
            policy: None,
            batch_size: 16,
            max_source_len: None,
            collapse_repeats: false,
            max_batch_tokens: 2048,
            length: TargetLength::Auto,
            length_offset: None,
            length_candidates: None,
            drop_orphan_pieces: None,
        }
    }
}

/// One generated output.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Decoded text (special tokens dropped; orphan subword pieces dropped and repeated words
    /// collapsed when [`GenerationConfig`] or the model's config asks); empty when generating
    /// from ids without a tokenizer.
    pub text: String,
    /// Generated ids before the first `</s>` (exclusive).
    pub ids: Vec<u32>,
    /// Exit layer (1..=L) of each id in `ids`.
    pub exit_layers: Vec<u32>,
    /// Number of tokens before `</s>` (= `ids.len()`); when no `</s>` came, `max_len` (full
    /// slot) or the predicted length minus one ([`TargetLength::Predicted`]).
    pub num_tokens: usize,
    /// Whether a `</s>` was generated inside the slot.
    pub ended: bool,
    /// Whether the source was longer than [`Generator::max_source_len`] and cut (text input
    /// only; callers that pass ids cut them themselves).
    pub source_truncated: bool,
    /// Model time (encode + decode, device synchronised) of this source's batch divided by
    /// the batch size, in milliseconds.
    pub latency_ms: f64,
}

/// The authors' post-processing: drop a word equal to the word before it.
pub fn collapse_repeated_words(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for w in text.split_whitespace() {
        if out.last() != Some(&w) {
            out.push(w);
        }
    }
    out.join(" ")
}

/// Per-source rows of ids or exit layers.
type Rows = Vec<Vec<u32>>;

/// Generates text with an [`ElmerModel`] (and, for text in/out, a [`BartTokenizer`]).
pub struct Generator<'a> {
    model: &'a ElmerModel,
    tokenizer: Option<&'a BartTokenizer>,
    config: GenerationConfig,
    policy: ExitPolicy,
    predict_length: bool,
    length_offset: i64,
    length_candidates: usize,
    drop_orphan_pieces: bool,
    /// Word boundaries of the tokenizer's ids, when orphan pieces are dropped.
    pieces: Option<orphan_pieces::WordPieces<'a>>,
    stats: ExitStats,
}

impl<'a> Generator<'a> {
    /// A generator over `model` with `config`; validates the options.
    pub fn new(model: &'a ElmerModel, config: GenerationConfig) -> Result<Self> {
        if config.max_len == 0 {
            return Err(Error::invalid_arg("max_len", "must be at least 1"));
        }
        if config.max_len > model.max_target_len() {
            return Err(Error::invalid_arg(
                "max_len",
                format!(
                    "{} exceeds the decoder position table ({})",
                    config.max_len,
                    model.max_target_len()
                ),
            ));
        }
        if config.batch_size == 0 {
            return Err(Error::invalid_arg("batch_size", "must be at least 1"));
        }
        if config.max_batch_tokens == 0 {
            return Err(Error::invalid_arg("max_batch_tokens", "must be at least 1"));
        }
        if let Some(m) = config.max_source_len {
            if m < 2 {
                return Err(Error::invalid_arg(
                    "max_source_len",
                    "must leave room for <s> and </s>",
                ));
            }
        }
        let policy = config
            .policy
            .clone()
            .or_else(|| model.recorded_policy().cloned())
            .unwrap_or(ExitPolicy::LastLayer);
        match &policy {
            ExitPolicy::Fixed(_) => {
                return Err(Error::invalid_arg(
                    "policy",
                    "fixed exit layers are a training policy; generate with last, hard or soft",
                ))
            }
            ExitPolicy::Soft if !model.has_concat_head() => {
                return Err(Error::Unsupported(
                    "soft exit needs a `concat_head.weight` in the checkpoint".into(),
                ))
            }
            _ => policy.validate()?,
        }
        let predict_length = match config.length {
            TargetLength::Auto => model.has_length_head(),
            TargetLength::Slot => false,
            TargetLength::Predicted if !model.has_length_head() => {
                return Err(Error::Unsupported(
                    "predicted target lengths need a `length_head` in the checkpoint".into(),
                ))
            }
            TargetLength::Predicted => true,
        };
        let length_offset = config
            .length_offset
            .or(model.config().elmer_length_offset)
            .unwrap_or(0);
        let length_candidates = config
            .length_candidates
            .or(model.config().elmer_length_candidates)
            .unwrap_or(1);
        if length_candidates == 0 {
            return Err(Error::invalid_arg(
                "length_candidates",
                "must be at least 1",
            ));
        }
        let drop_orphan_pieces = config
            .drop_orphan_pieces
            .or(model.config().elmer_drop_orphan_pieces)
            .unwrap_or(false);
        Ok(Self {
            stats: ExitStats::new(model.num_decoder_layers()),
            model,
            tokenizer: None,
            config,
            policy,
            predict_length,
            length_offset,
            length_candidates,
            drop_orphan_pieces,
            pieces: None,
        })
    }

    /// Uses `tokenizer` for text input and output.
    pub fn with_tokenizer(mut self, tokenizer: &'a BartTokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self.pieces = self
            .drop_orphan_pieces
            .then(|| orphan_pieces::WordPieces::new(tokenizer));
        self
    }

    /// The options.
    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// The exit policy in use: the configured one, else the model's recorded one, else the
    /// last layer.
    pub fn policy(&self) -> &ExitPolicy {
        &self.policy
    }

    /// Whether each source's slot length is predicted by the model's length head (see
    /// [`TargetLength`]).
    pub fn predicts_length(&self) -> bool {
        self.predict_length
    }

    /// Predicted lengths tried per source (see [`GenerationConfig::length_candidates`]); 1
    /// when lengths are not predicted.
    pub fn length_candidates(&self) -> usize {
        if self.predict_length {
            self.length_candidates
        } else {
            1
        }
    }

    /// Whether orphan subword pieces are dropped from the text (see
    /// [`GenerationConfig::drop_orphan_pieces`]).
    pub fn drops_orphan_pieces(&self) -> bool {
        self.drop_orphan_pieces
    }

    /// Tokens added to every predicted length (see [`GenerationConfig::length_offset`]).
    pub fn length_offset(&self) -> i64 {
        self.length_offset
    }

    /// Exit statistics of everything generated so far.
    pub fn stats(&self) -> &ExitStats {
        &self.stats
    }

    /// Longest source accepted, in tokens.
    pub fn max_source_len(&self) -> usize {
        let table = self.model.max_source_len();
        self.config.max_source_len.map_or(table, |m| m.min(table))
    }

    /// Generates from texts: one [`Generation`] per text, in input order.
    pub fn generate(&mut self, texts: &[&str]) -> Result<Vec<Generation>> {
        let (ids, truncated) = self.encode_texts(texts)?;
        let mut out = self.generate_ids(&ids)?;
        for (g, t) in out.iter_mut().zip(truncated) {
            g.source_truncated = t;
        }
        Ok(out)
    }

    /// Generates for a stream of texts of any length with bounded memory: texts are read in
    /// windows of `16 x batch_size`, each window is generated (sorted by length inside the
    /// window) and `sink(index, generation)` is called in input order before the next window
    /// is read, so output can be written as it is produced and a killed run keeps what was
    /// done. Returns the number of texts. Stops at the first error of `texts`, the model or
    /// `sink`.
    pub fn generate_each<S, I>(
        &mut self,
        texts: I,
        mut sink: impl FnMut(usize, Generation) -> Result<()>,
    ) -> Result<usize>
    where
        S: AsRef<str>,
        I: IntoIterator<Item = Result<S>>,
    {
        let window = self.config.batch_size.saturating_mul(16).max(64);
        let mut texts = texts.into_iter();
        let mut done = 0usize;
        loop {
            let mut chunk: Vec<S> = Vec::with_capacity(window);
            for t in texts.by_ref().take(window) {
                chunk.push(t?);
            }
            if chunk.is_empty() {
                return Ok(done);
            }
            let refs: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
            for g in self.generate(&refs)? {
                sink(done, g)?;
                done += 1;
            }
        }
    }

    /// Framed, truncated ids of `texts` and whether each was cut.
    fn encode_texts(&self, texts: &[&str]) -> Result<(Vec<Vec<u32>>, Vec<bool>)> {
        let tok = self.tokenizer.ok_or_else(|| {
            Error::invalid_arg(
                "tokenizer",
                "text generation needs a tokenizer (with_tokenizer)",
            )
        })?;
        let max = self.max_source_len();
        let mut ids = Vec::with_capacity(texts.len());
        let mut truncated = Vec::with_capacity(texts.len());
        for t in texts {
            let full = tok.encode(t)?;
            truncated.push(full.len() > max);
            ids.push(if full.len() > max {
                tok.encode_truncated(t, max)?
            } else {
                full
            });
        }
        Ok((ids, truncated))
    }

    /// Generates from framed source ids (`<s> ... </s>`, each at most
    /// [`max_source_len`](Self::max_source_len)); `text` is filled when a tokenizer is set.
    pub fn generate_ids(&mut self, sources: &[Vec<u32>]) -> Result<Vec<Generation>> {
        let max = self.max_source_len();
        let vocab = self.model.config().vocab_size;
        for (i, s) in sources.iter().enumerate() {
            if s.is_empty() {
                return Err(Error::invalid_arg(
                    "sources",
                    format!("source {i} is empty (expected at least <s> </s>)"),
                ));
            }
            if s.len() > max {
                return Err(Error::invalid_arg(
                    "sources",
                    format!(
                        "source {i} has {} tokens, more than the limit {max}",
                        s.len()
                    ),
                ));
            }
            if let Some(&bad) = s.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::invalid_arg(
                    "sources",
                    format!("source {i} has id {bad}, outside the vocabulary ({vocab})"),
                ));
            }
        }
        // Longest first, so each batch holds sources of similar length.
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by(|&a, &b| sources[b].len().cmp(&sources[a].len()).then(a.cmp(&b)));
        let mut results: Vec<Option<Generation>> = vec![None; sources.len()];
        for chunk in order.chunks(self.config.batch_size) {
            // Cut the batch so no model call holds more than `max_batch_tokens` padded source
            // or slot tokens (sorted longest first: the first source sets the padding).
            let mut rest = chunk;
            while !rest.is_empty() {
                let slot_tokens = self.config.max_len * self.length_candidates();
                let longest = sources[rest[0]].len().max(slot_tokens).max(1);
                let n = (self.config.max_batch_tokens / longest).clamp(1, rest.len());
                let (part, tail) = rest.split_at(n);
                rest = tail;
                let batch: Vec<&[u32]> = part.iter().map(|&i| sources[i].as_slice()).collect();
                let outs = self.run_batch(&batch)?;
                for (&i, g) in part.iter().zip(outs) {
                    self.stats.add(&g.exit_layers);
                    results[i] = Some(g);
                }
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    fn run_batch(&self, batch: &[&[u32]]) -> Result<Vec<Generation>> {
        let model = self.model;
        let dev = model.device();
        let pad = model.config().pad_token_id;
        let eos = model.config().eos_token_id;
        let b = batch.len();
        let padded = PaddedBatch::new(batch, pad);
        let start = Instant::now();
        let (ids, mask) = padded.to_tensors(dev)?;
        let enc = model.encode(&ids, Some(&mask))?;
        // Per source: its output ids and exit layers over the slot, and the slot length
        // (`None`: the full slot).
        let (rows_ids, rows_exits, lengths): (Rows, Rows, Option<Vec<usize>>) =
            if self.predict_length {
                let (ids, exits, lengths) = self.decode_predicted(&enc)?;
                (ids, exits, Some(lengths))
            } else {
                let out = model.decode_slot(&enc, self.config.max_len, self.policy.clone())?;
                (
                    out.ids.to_dtype(DType::U32)?.to_vec2()?,
                    out.exit_layers.to_dtype(DType::U32)?.to_vec2()?,
                    None,
                )
            };
        dev.synchronize()?;
        let latency_ms = start.elapsed().as_secs_f64() * 1000.0 / b as f64;
        let mut res = Vec::with_capacity(b);
        for (i, (row, exits)) in rows_ids.into_iter().zip(rows_exits).enumerate() {
            // Predicted length T: positions 0..T-1 hold the words, T-1 is the `</s>` position.
            let (limit, fallback) = match &lengths {
                Some(l) => (l[i], l[i] - 1),
                None => (row.len(), row.len()),
            };
            let end = row[..limit].iter().position(|&id| id == eos);
            let n = end.unwrap_or(fallback);
            let ids = row[..n].to_vec();
            let text = match self.tokenizer {
                Some(t) => {
                    let text = match &self.pieces {
                        Some(p) => t.decode(&p.drop_orphans(&ids, &p.source_words(batch[i])?)?)?,
                        None => t.decode(&ids)?,
                    };
                    if self.config.collapse_repeats {
                        collapse_repeated_words(&text)
                    } else {
                        text
                    }
                }
                None => String::new(),
            };
            res.push(Generation {
                text,
                exit_layers: exits[..n].to_vec(),
                num_tokens: n,
                ended: end.is_some(),
                source_truncated: false,
                ids,
                latency_ms,
            });
        }
        Ok(res)
    }

    /// Decodes each row of `enc` with a slot of its predicted length (plus the offset), or
    /// with the best of its length candidates; returns per source the ids and exit layers
    /// over its slot and the slot length.
    fn decode_predicted(
        &self,
        enc: &crate::model::EncoderOutput,
    ) -> Result<(Rows, Rows, Vec<usize>)> {
        let model = self.model;
        let max = self.config.max_len;
        let eos = model.config().eos_token_id;
        let fit = |n: usize| {
            (n as i64 + self.length_offset).clamp(2.min(max as i64), max as i64) as usize
        };
        if self.length_candidates <= 1 {
            let lengths: Vec<usize> = model
                .predict_lengths(enc, max)?
                .into_iter()
                .map(fit)
                .collect();
            let (slot, keep) = model.slot_input_with_lengths(&lengths)?;
            let opts = DecodeOptions::new(self.policy.clone());
            let out = model.decode(enc, &slot, Some(&keep), &opts)?;
            return Ok((
                out.ids.to_dtype(DType::U32)?.to_vec2()?,
                out.exit_layers.to_dtype(DType::U32)?.to_vec2()?,
                lengths,
            ));
        }
        // One decoder row per distinct candidate length of each source.
        let candidates = model.predict_length_candidates(enc, max, self.length_candidates)?;
        let mut owner: Vec<u32> = Vec::new();
        let mut lengths: Vec<usize> = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            let first = lengths.len();
            for &n in c {
                let n = fit(n);
                if !lengths[first..].contains(&n) {
                    owner.push(i as u32);
                    lengths.push(n);
                }
            }
        }
        let enc_rows = enc.select_rows(&owner)?;
        let (slot, keep) = model.slot_input_with_lengths(&lengths)?;
        let opts = DecodeOptions::new(self.policy.clone()).with_logits();
        let out = model.decode(&enc_rows, &slot, Some(&keep), &opts)?;
        let logits = out.logits.as_ref().ok_or_else(|| {
            Error::Unsupported("the decoder returned no logits for the length beam".into())
        })?;
        // log p(id) = logit(id) - logsumexp(logits): no `[rows, T, vocab]` log-softmax.
        let logits = logits.to_dtype(DType::F32)?;
        let ids_t = out.ids.to_dtype(DType::U32)?;
        let chosen: Vec<Vec<f32>> = logits
            .gather(&ids_t.unsqueeze(2)?, 2)?
            .squeeze(2)?
            .sub(&logits.log_sum_exp(2)?)?
            .to_vec2()?;
        let ids: Vec<Vec<u32>> = ids_t.to_vec2()?;
        let exits: Vec<Vec<u32>> = out.exit_layers.to_dtype(DType::U32)?.to_vec2()?;
        // Mean log-probability of the tokens read (up to and including `</s>`, or the whole
        // slot without one); the most likely length wins ties.
        let mut best: Vec<Option<(usize, f32)>> = vec![None; candidates.len()];
        for (r, (&i, &n)) in owner.iter().zip(&lengths).enumerate() {
            let read = ids[r][..n]
                .iter()
                .position(|&id| id == eos)
                .map_or(n, |e| e + 1);
            let score = chosen[r][..read].iter().sum::<f32>() / read.max(1) as f32;
            let slot = &mut best[i as usize];
            if slot.is_none_or(|(_, s)| score > s) {
                *slot = Some((r, score));
            }
        }
        let mut out_ids = Vec::with_capacity(best.len());
        let mut out_exits = Vec::with_capacity(best.len());
        let mut out_lengths = Vec::with_capacity(best.len());
        for b in best {
            let (r, _) =
                b.ok_or_else(|| Error::Unsupported("a source got no length candidate".into()))?;
            out_ids.push(ids[r].clone());
            out_exits.push(exits[r].clone());
            out_lengths.push(lengths[r]);
        }
        Ok((out_ids, out_exits, out_lengths))
    }
}
