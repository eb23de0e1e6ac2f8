//! Fine-tuning with early exit (paper section 3.3): soft exit, hard exit (deep supervision)
//! or the plain last layer, on tokenised (source, target) pairs.
//!
//! - Soft exit: `concat_head` created when the checkpoint lacks it (N(0, 0.02)); during
//!   training each target position feeds the gold label's embedding instead of the off-ramp
//!   prediction with probability `gold_prob` (paper: 0.3); loss = mean of the L off-ramp
//!   cross-entropies, pads ignored ([`super::loss::soft_exit_loss`]).
//! - Hard exit: every off-ramp trained on the plain pass (deep supervision,
//!   [`super::loss::deep_supervision_loss`]) so low layers become confident; the entropy
//!   threshold is chosen afterwards on validation data.
//! - Last layer: plain NAR cross-entropy.
//! - Soft and hard: alternating soft-exit and deep-supervision steps, one model for both.
//!
//! Options that matter for NAR quality: [`FinetuneObjective::with_generation_slot`] trains on
//! the slot generation uses (`[<s>, <mask> x (T-1)]`, every position attended, so the model
//! learns to place `</s>` itself instead of reading the target length off the decoder mask),
//! and [`FinetuneObjective::with_label_smoothing`] smooths the training cross-entropies
//! (validation losses stay unsmoothed).
//!
//! Shapes: sources `[batch, S]` (`S <= max_source_len`), labels `[batch, T]` (`T <= max_len`;
//! `T` = the generation slot with [`FinetuneObjective::with_generation_slot`]).

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;

use super::loss::{deep_supervision_loss, last_layer_loss, soft_exit_loss, Batch};
use super::trainer::{MicroLoss, Objective};
use crate::config::ElmerConfig;
use crate::data::Example;
use crate::error::{Error, Result};
use crate::model::exit::{DecodeOptions, ExitPolicy};
use crate::model::ElmerModel;
use crate::nn::Mode;
use crate::tokenizer::BartTokenizer;

/// Which exit the model is fine-tuned for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FinetuneMode {
    /// Soft exit with gold-label mixing probability `gold_prob`.
    Soft {
        /// Probability of feeding the gold label's embedding (paper: 0.3).
        gold_prob: f64,
    },
    /// Hard exit: deep supervision of every off-ramp.
    Hard,
    /// Plain NAR at the last layer.
    Last,
    /// One model for both exits: optimizer steps alternate between the soft-exit loss (even
    /// `step + micro-batch`) and deep supervision (odd), so the same weights serve soft exit
    /// and hard exit. Validation loss: the mean of the two.
    SoftAndHard {
        /// Probability of feeding the gold label's embedding in the soft-exit turns.
        gold_prob: f64,
    },
}

impl FinetuneMode {
    /// Parses `soft`, `hard`, `last` or `soft+hard` (soft with the paper's 0.3).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "soft" => Ok(FinetuneMode::Soft { gold_prob: 0.3 }),
            "hard" => Ok(FinetuneMode::Hard),
            "last" => Ok(FinetuneMode::Last),
            "soft+hard" => Ok(FinetuneMode::SoftAndHard { gold_prob: 0.3 }),
            other => Err(Error::invalid_arg(
                "mode",
                format!("{other:?} is not soft, hard, last or soft+hard"),
            )),
        }
    }

    /// Whether the mode trains the soft-exit `concat_head`.
    pub fn uses_soft_exit(&self) -> bool {
        matches!(
            self,
            FinetuneMode::Soft { .. } | FinetuneMode::SoftAndHard { .. }
        )
    }
}

/// A tokenised pair: framed source ids and labels (target without `<s>`, ending in `</s>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// `<s> ... </s>`, at most `max_source_len` ids.
    pub source: Vec<u32>,
    /// Target ids without `<s>`, ending in `</s>`, at most `max_len`.
    pub labels: Vec<u32>,
}

/// Tokenises examples: sources truncated to `max_source_len`, targets to `max_len` labels
/// (the last label is always `</s>`).
pub fn tokenize_pairs(
    tok: &BartTokenizer,
    examples: &[Example],
    max_source_len: usize,
    max_len: usize,
) -> Result<Vec<Pair>> {
    if max_len < 2 {
        return Err(Error::invalid_arg("max_len", "must be at least 2"));
    }
    examples
        .iter()
        .map(|e| {
            let source = tok.encode_truncated(&e.source, max_source_len)?;
            let target = tok.encode(&e.target)?;
            let mut labels: Vec<u32> = target[1..].to_vec();
            if labels.len() > max_len {
                labels.truncate(max_len - 1);
                labels.push(tok.eos_id());
            }
            Ok(Pair { source, labels })
        })
        .collect()
}

/// A validation score for model selection: higher is better (e.g. BLEU-4 of text generated
/// for validation sources with the exit policy being fine-tuned).
pub type ValidationScorer = Box<dyn Fn(&ElmerModel) -> Result<f64> + Send + Sync>;

/// The fine-tuning objective.
pub struct FinetuneObjective {
    scorer: Option<ValidationScorer>,
    train: Vec<Pair>,
    valid_pairs: Vec<Pair>,
    eval_batch_size: usize,
    valid: Vec<Batch>,
    mode: FinetuneMode,
    batch_size: usize,
    model_cfg: ElmerConfig,
    device: Device,
    slot_len: Option<usize>,
    label_smoothing: f64,
    pool_factor: usize,
    glance_ratio: f64,
    order_agnostic: f64,
    keep_ends: bool,
    distortion: f64,
    length_loss: f64,
}

impl FinetuneObjective {
    /// Builds the objective; validation pairs are batched once (`eval_batch_size`).
    pub fn new(
        train: Vec<Pair>,
        valid: Vec<Pair>,
        mode: FinetuneMode,
        batch_size: usize,
        eval_batch_size: usize,
        model_cfg: &ElmerConfig,
        device: &Device,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::invalid_arg("train", "no training pairs"));
        }
        if batch_size == 0 || eval_batch_size == 0 {
            return Err(Error::invalid_arg("batch_size", "must be at least 1"));
        }
        if let FinetuneMode::Soft { gold_prob } | FinetuneMode::SoftAndHard { gold_prob } = mode {
            if !(0.0..=1.0).contains(&gold_prob) {
                return Err(Error::invalid_arg("gold_prob", "must be in [0, 1]"));
            }
        }
        let mut obj = Self {
            scorer: None,
            train,
            valid_pairs: valid,
            eval_batch_size,
            valid: Vec::new(),
            mode,
            batch_size,
            model_cfg: model_cfg.clone(),
            device: device.clone(),
            slot_len: None,
            label_smoothing: 0.0,
            pool_factor: 1,
            glance_ratio: 0.0,
            order_agnostic: 0.0,
            keep_ends: false,
            distortion: 0.0,
            length_loss: 0.0,
        };
        obj.valid = obj.batch_valid()?;
        Ok(obj)
    }

    fn batch_valid(&self) -> Result<Vec<Batch>> {
        self.valid_pairs
            .chunks(self.eval_batch_size)
            .map(|c| self.batch_of(c))
            .collect()
    }

    /// Trains and validates on the slot generation uses: `Some(T)` gives every row the slot
    /// `[<s>, <mask> x (T-1)]` with all `T` positions attended and labels padded (ignored)
    /// past `</s>`, so the model must choose the output length itself, as it does when
    /// generating with `max_len = T`. `None` (the default): each row's slot is its target's
    /// length, which tells the model the length through the decoder mask. `T` must cover
    /// the longest label row.
    pub fn with_generation_slot(mut self, slot_len: Option<usize>) -> Result<Self> {
        if let Some(t) = slot_len {
            let longest = self.train.iter().map(|p| p.labels.len()).max().unwrap_or(0);
            if t == 0 || t < longest {
                return Err(Error::invalid_arg(
                    "slot_len",
                    format!("{t} is shorter than the longest label row ({longest})"),
                ));
            }
            if t > self.model_cfg.max_position_embeddings {
                return Err(Error::invalid_arg(
                    "slot_len",
                    format!(
                        "{t} exceeds the decoder position table ({})",
                        self.model_cfg.max_position_embeddings
                    ),
                ));
            }
        }
        self.slot_len = slot_len;
        self.valid = self.batch_valid()?;
        Ok(self)
    }

    /// Label smoothing `eps` of the training cross-entropies (target `(1 - eps) onehot +
    /// eps / V`); validation losses are never smoothed. Default 0.
    pub fn with_label_smoothing(mut self, eps: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&eps) {
            return Err(Error::invalid_arg(
                "label_smoothing",
                format!("{eps} is not in [0, 1)"),
            ));
        }
        self.label_smoothing = eps;
        Ok(self)
    }

    /// Trains the model's target-length predictor alongside the exits: `weight` x the
    /// cross-entropy of the predicted length against each row's target length is added to
    /// every training loss (CMLM uses 0.1; validation losses leave it out). The model must
    /// have a length head ([`super::Params::ensure_length_head`]). Pair it with the default
    /// slot (`with_generation_slot(None)`): the decoder then learns to read the length off
    /// the slot, and generation decodes the predicted length. Default 0.
    pub fn with_length_loss(mut self, weight: f64) -> Result<Self> {
        self.length_loss = non_negative("length_loss", weight)?;
        Ok(self)
    }

    /// Selects `best/` by `scorer` (higher is better) instead of the validation loss: the
    /// [`super::Trainer`] calls it at every evaluation. NAR losses and output quality part
    /// ways (a lower loss can come with more repeated or template tokens), so a task metric
    /// over a validation subset is the better judge.
    pub fn with_validation_scorer(mut self, scorer: ValidationScorer) -> Self {
        self.scorer = Some(scorer);
        self
    }

    /// Length-bucketed batches: each training batch is drawn from a random pool of
    /// `pool_factor x batch_size` pairs sorted by source length, as one of its
    /// `pool_factor` consecutive chunks (picked uniformly), so its sources have similar
    /// lengths and little of the encoder's work is padding. Every pair is still equally
    /// likely to be drawn. `1` (the default): plain random batches.
    pub fn with_length_buckets(mut self, pool_factor: usize) -> Result<Self> {
        if pool_factor == 0 {
            return Err(Error::invalid_arg("pool_factor", "must be at least 1"));
        }
        self.pool_factor = pool_factor;
        Ok(self)
    }

    /// Glancing training (Qian et al. 2021, "Glancing Transformer"): before each training
    /// step the model predicts the batch from the plain `<mask>` slot (last layer, eval mode,
    /// no gradient); for a row with `w` wrong tokens, `ceil(ratio * w)` of its label
    /// positions (drawn uniformly, at most all but one) get the gold token as decoder input
    /// instead of `<mask>`, and those positions leave the loss. The model so learns to fill
    /// the rest of a question around a few known words, which counters the NAR decoder's
    /// pull towards one template answer; generation still starts from `<mask>` only.
    /// The prediction costs one extra forward pass (encoder and decoder, without dropout)
    /// per micro-batch. `0` (the default): off. The paper's soft exit mixes gold tokens in a
    /// similar way, but only through the `concat_head` from layer 2 up.
    pub fn with_glancing(mut self, ratio: f64) -> Result<Self> {
        self.glance_ratio = fraction("glance_ratio", ratio)?;
        Ok(self)
    }

    /// Applies glancing to `batch` (see [`Self::with_glancing`]): what
    /// [`Objective::train_loss`] trains on when glancing is on. Returns the batch with gold
    /// decoder inputs at the glanced positions and `<pad>` labels there.
    pub fn glance(&self, model: &ElmerModel, batch: Batch, rng: &mut StdRng) -> Result<Batch> {
        let pad = self.model_cfg.pad_token_id;
        let out = eval_pass(model, &batch, DecodeOptions::new(ExitPolicy::LastLayer))?;
        let pred: Vec<Vec<u32>> = out.ids.to_vec2()?;
        let labels: Vec<Vec<u32>> = batch.labels.to_vec2()?;
        let mut dec: Vec<Vec<u32>> = batch.decoder_input_ids.to_vec2()?;
        let mut lab = labels.clone();
        for (i, row) in labels.iter().enumerate() {
            let pos: Vec<usize> = (0..row.len()).filter(|&j| row[j] != pad).collect();
            let wrong = pos.iter().filter(|&&j| pred[i][j] != row[j]).count();
            let k = ((self.glance_ratio * wrong as f64).ceil() as usize)
                .min(pos.len().saturating_sub(1));
            for &j in pos.choose_multiple(rng, k) {
                dec[i][j] = row[j];
                lab[i][j] = pad;
            }
        }
        let (b, t) = batch.labels.dims2()?;
        let dev = &self.device;
        let flat = |v: Vec<Vec<u32>>| Tensor::from_vec(v.concat(), (b, t), dev);
        let num_target_tokens = lab.iter().flatten().filter(|&&y| y != pad).count();
        Ok(Batch {
            decoder_input_ids: flat(dec)?,
            labels: flat(lab)?,
            num_target_tokens,
            ..batch
        })
    }

    /// Order-agnostic cross-entropy (OAXE, Du et al. 2021; see
    /// `train::order_agnostic`): before each training step, in a share `share` of the
    /// rows (drawn per row), the content labels (all but `</s>` and `<pad>`) are reordered
    /// to the one-to-one assignment of label tokens to slot positions that the model's last
    /// layer finds most likely (eval mode, no gradient); every off-ramp's cross-entropy then
    /// uses the reordered labels. The other rows keep the gold order, so the loss is in
    /// expectation `share x OAXE + (1 - share) x XE`: the ordered part still teaches the
    /// positions that are predictable (the question word first, `?` last). A right word at
    /// a shifted position is not penalised in the reordered rows, which keeps the NAR
    /// decoder from averaging over word orders into one template answer. Costs one extra
    /// forward pass per micro-batch (with glancing on, a second one: the reordering sees the
    /// glanced inputs). Validation losses stay the plain, ordered ones. `0` (the default):
    /// off; `1`: every row reordered.
    pub fn with_order_agnostic(mut self, share: f64) -> Result<Self> {
        self.order_agnostic = fraction("order_agnostic", share)?;
        Ok(self)
    }

    /// With order-agnostic training on, also keeps each row's first and last content labels
    /// in place (for questions: the question word and the `?`), so only the words between
    /// them are matched to positions. Where a task's outputs have fixed ends, this keeps
    /// their positions learnt by the plain cross-entropy. Default: off (every content label
    /// may move).
    pub fn with_order_agnostic_fixed_ends(mut self, on: bool) -> Self {
        self.keep_ends = on;
        self
    }

    /// With order-agnostic training on, charges `nats` per place a label moves from its
    /// gold order (among the movable labels) when matching labels to positions: 0 (the
    /// default) is plain OAXE, large values give the gold order back. Between the two, a
    /// word moves only where the model is confident enough to pay for it, which keeps more of
    /// the target's word order (what ROUGE-L's longest common subsequence rewards).
    pub fn with_order_agnostic_distortion(mut self, nats: f64) -> Result<Self> {
        self.distortion = non_negative("order_agnostic_distortion", nats)?;
        Ok(self)
    }

    /// Applies the order-agnostic reordering to `batch` (see
    /// [`Self::with_order_agnostic`]): returns the batch with each row's content labels
    /// permuted among their own positions; inputs, `</s>` and `<pad>` labels are unchanged.
    pub fn align_labels(&self, model: &ElmerModel, batch: Batch) -> Result<Batch> {
        let pad = self.model_cfg.pad_token_id;
        let eos = self.model_cfg.eos_token_id;
        // The last layer's states, projected below onto each row's own label tokens only:
        // the matching needs logit[position, label token], not the whole vocabulary (the
        // log-normaliser of a position adds the same constant to every assignment).
        let mut opts = DecodeOptions::new(ExitPolicy::LastLayer);
        opts.output_layer_hidden = true;
        let out = eval_pass(model, &batch, opts)?;
        let h = out
            .layer_hidden
            .and_then(|mut states| states.pop())
            .ok_or_else(|| Error::invalid_arg("layer_hidden", "the decoder returned no states"))?;
        let (w, bias) = model
            .decoder()
            .offramps()
            .projection(model.num_decoder_layers())?;
        let labels: Vec<Vec<u32>> = batch.labels.to_vec2()?;
        let dev = h.device().clone();
        let mut aligned = Vec::with_capacity(labels.len());
        for (i, row) in labels.iter().enumerate() {
            let mut positions: Vec<usize> = (0..row.len())
                .filter(|&j| row[j] != pad && row[j] != eos)
                .collect();
            if self.keep_ends && positions.len() >= 2 {
                positions.pop();
                positions.remove(0);
            }
            if positions.len() < 2 {
                aligned.push(row.clone());
                continue;
            }
            let m = positions.len();
            let pos_ids = Tensor::from_vec(positions.iter().map(|&j| j as u32).collect(), m, &dev)?;
            let tok_ids = Tensor::from_vec(positions.iter().map(|&j| row[j]).collect(), m, &dev)?;
            // [m positions, d] x [d, m tokens] + the tokens' biases.
            let scores = h
                .get(i)?
                .index_select(&pos_ids, 0)?
                .matmul(&w.index_select(&tok_ids, 0)?.t()?)?
                .broadcast_add(&bias.index_select(&tok_ids, 0)?)?
                .to_dtype(DType::F32)?;
            let scores: Vec<f32> = scores.flatten_all()?.to_vec1()?;
            aligned.push(super::order_agnostic::align_row(
                row,
                &positions,
                &scores,
                self.distortion,
            )?);
        }
        let (b, t) = batch.labels.dims2()?;
        Ok(Batch {
            labels: Tensor::from_vec(aligned.concat(), (b, t), &self.device)?,
            ..batch
        })
    }

    /// The training pairs of one micro-batch, drawn from `rng` (what
    /// [`Objective::train_loss`] trains on).
    pub fn sample_batch(&self, rng: &mut StdRng) -> Vec<Pair> {
        let b = self.batch_size.min(self.train.len());
        let pool = (b * self.pool_factor).min(self.train.len());
        let mut chosen: Vec<&Pair> = self.train.choose_multiple(rng, pool).collect();
        if pool > b {
            chosen.sort_by_key(|p| p.source.len());
            let chunks = pool / b;
            let k = rng.random_range(0..chunks);
            chosen = chosen[k * b..(k + 1) * b].to_vec();
        }
        chosen.into_iter().cloned().collect()
    }

    fn batch_of(&self, pairs: &[Pair]) -> Result<Batch> {
        let s: Vec<Vec<u32>> = pairs.iter().map(|p| p.source.clone()).collect();
        let l: Vec<Vec<u32>> = pairs.iter().map(|p| p.labels.clone()).collect();
        Batch::from_ids_in_slot(&s, &l, self.slot_len, &self.model_cfg, &self.device)
    }

    fn loss(
        &self,
        model: &ElmerModel,
        batch: &Batch,
        rng: Option<&mut StdRng>,
        mode: Mode,
        hard_turn: bool,
    ) -> Result<Tensor> {
        let soft = |gold_prob: f64, rng: Option<&mut StdRng>| -> Result<Tensor> {
            let (b, t) = batch.labels.dims2()?;
            let use_gold: Vec<u8> = match rng {
                Some(rng) => (0..b * t)
                    .map(|_| (rng.random::<f64>() < gold_prob) as u8)
                    .collect(),
                None => vec![0; b * t],
            };
            let use_gold = Tensor::from_vec(use_gold, (b, t), &self.device)?;
            soft_exit_loss(model, batch, &use_gold, mode)
        };
        match self.mode {
            FinetuneMode::Soft { gold_prob } => soft(gold_prob, rng),
            FinetuneMode::Hard => deep_supervision_loss(model, batch, mode),
            FinetuneMode::Last => last_layer_loss(model, batch, mode),
            FinetuneMode::SoftAndHard { .. } if hard_turn => {
                deep_supervision_loss(model, batch, mode)
            }
            FinetuneMode::SoftAndHard { gold_prob } => soft(gold_prob, rng),
        }
    }
}

/// `x` when it is in `[0, 1]`, else an argument error naming `name`.
fn fraction(name: &str, x: f64) -> Result<f64> {
    if (0.0..=1.0).contains(&x) {
        Ok(x)
    } else {
        Err(Error::invalid_arg(name, format!("{x} is not in [0, 1]")))
    }
}

/// `x` when it is finite and `>= 0`, else an argument error naming `name`.
fn non_negative(name: &str, x: f64) -> Result<f64> {
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(Error::invalid_arg(
            name,
            format!("{x} is not a finite value >= 0"),
        ))
    }
}

/// One pass over `batch` in eval mode (no dropout, no gradient wanted): what glancing and
/// the order-agnostic alignment look at before a training step.
fn eval_pass(
    model: &ElmerModel,
    batch: &Batch,
    opts: DecodeOptions,
) -> Result<crate::model::exit::DecoderOutput> {
    let enc = model.encode_with_mode(&batch.input_ids, Some(&batch.attention_mask), Mode::Eval)?;
    model.decode_with_mode(
        &enc,
        &batch.decoder_input_ids,
        Some(&batch.decoder_attention_mask),
        &opts,
        Mode::Eval,
    )
}

impl Objective for FinetuneObjective {
    fn train_loss(
        &self,
        model: &ElmerModel,
        step: usize,
        micro: usize,
        rng: &mut StdRng,
        mode: Mode,
    ) -> Result<MicroLoss> {
        let pairs = self.sample_batch(rng);
        let mut batch = self.batch_of(&pairs)?;
        let tokens = batch.num_source_tokens + batch.num_target_tokens;
        if self.glance_ratio > 0.0 {
            batch = self.glance(model, batch, rng)?;
        }
        if self.order_agnostic > 0.0 {
            let aligned = self.align_labels(model, batch.clone())?;
            batch.labels = if self.order_agnostic >= 1.0 {
                aligned.labels
            } else {
                // Per row: the reordered labels with probability `share`, else the gold order.
                let (b, t) = batch.labels.dims2()?;
                let take: Vec<u8> = (0..b)
                    .flat_map(|_| {
                        let r = (rng.random::<f64>() < self.order_agnostic) as u8;
                        std::iter::repeat_n(r, t)
                    })
                    .collect();
                Tensor::from_vec(take, (b, t), &self.device)?
                    .where_cond(&aligned.labels, &batch.labels)?
            };
        }
        batch.label_smoothing = self.label_smoothing;
        batch.length_loss = self.length_loss;
        let loss = self.loss(model, &batch, Some(rng), mode, (step + micro) % 2 == 1)?;
        Ok(MicroLoss { loss, tokens })
    }

    fn eval_loss(&self, model: &ElmerModel) -> Result<f64> {
        let mut sum = 0.0;
        let mut n = 0usize;
        for b in &self.valid {
            let mut l = self
                .loss(model, b, None, Mode::Eval, false)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if matches!(self.mode, FinetuneMode::SoftAndHard { .. }) {
                let hard = self.loss(model, b, None, Mode::Eval, true)?;
                l = 0.5 * (l + hard.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            }
            sum += l * b.num_target_tokens as f64;
            n += b.num_target_tokens;
        }
        Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
    }

    fn eval_score(&self, model: &ElmerModel) -> Result<Option<f64>> {
        self.scorer.as_ref().map(|f| f(model)).transpose()
    }
}
