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
//!
//! Shapes: sources `[batch, S]` (`S <= max_source_len`), labels `[batch, T]` (`T <= max_len`).

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;

use super::loss::{deep_supervision_loss, last_layer_loss, soft_exit_loss, Batch};
use super::trainer::{MicroLoss, Objective};
use crate::config::ElmerConfig;
use crate::data::Example;
use crate::error::{Error, Result};
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
}

impl FinetuneMode {
    /// Parses `soft`, `hard` or `last` (soft with the paper's 0.3).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "soft" => Ok(FinetuneMode::Soft { gold_prob: 0.3 }),
            "hard" => Ok(FinetuneMode::Hard),
            "last" => Ok(FinetuneMode::Last),
            other => Err(Error::invalid_arg(
                "mode",
                format!("{other:?} is not soft, hard or last"),
            )),
        }
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

/// The fine-tuning objective.
pub struct FinetuneObjective {
    train: Vec<Pair>,
    valid: Vec<Batch>,
    mode: FinetuneMode,
    batch_size: usize,
    model_cfg: ElmerConfig,
    device: Device,
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
        if let FinetuneMode::Soft { gold_prob } = mode {
            if !(0.0..=1.0).contains(&gold_prob) {
                return Err(Error::invalid_arg("gold_prob", "must be in [0, 1]"));
            }
        }
        let valid = valid
            .chunks(eval_batch_size)
            .map(|c| Self::batch_of(c, model_cfg, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            train,
            valid,
            mode,
            batch_size,
            model_cfg: model_cfg.clone(),
            device: device.clone(),
        })
    }

    fn batch_of(pairs: &[Pair], cfg: &ElmerConfig, dev: &Device) -> Result<Batch> {
        let s: Vec<Vec<u32>> = pairs.iter().map(|p| p.source.clone()).collect();
        let l: Vec<Vec<u32>> = pairs.iter().map(|p| p.labels.clone()).collect();
        Batch::from_ids(&s, &l, cfg, dev)
    }

    fn loss(
        &self,
        model: &ElmerModel,
        batch: &Batch,
        rng: Option<&mut StdRng>,
        mode: Mode,
    ) -> Result<Tensor> {
        match self.mode {
            FinetuneMode::Soft { gold_prob } => {
                let (b, t) = batch.labels.dims2()?;
                let use_gold: Vec<u8> = match rng {
                    Some(rng) => (0..b * t)
                        .map(|_| (rng.random::<f64>() < gold_prob) as u8)
                        .collect(),
                    None => vec![0; b * t],
                };
                let use_gold = Tensor::from_vec(use_gold, (b, t), &self.device)?;
                soft_exit_loss(model, batch, &use_gold, mode)
            }
            FinetuneMode::Hard => deep_supervision_loss(model, batch, mode),
            FinetuneMode::Last => last_layer_loss(model, batch, mode),
        }
    }
}

impl Objective for FinetuneObjective {
    fn train_loss(
        &self,
        model: &ElmerModel,
        _step: usize,
        _micro: usize,
        rng: &mut StdRng,
        mode: Mode,
    ) -> Result<MicroLoss> {
        let pairs: Vec<Pair> = self
            .train
            .choose_multiple(rng, self.batch_size.min(self.train.len()))
            .cloned()
            .collect();
        let batch = Self::batch_of(&pairs, &self.model_cfg, &self.device)?;
        let loss = self.loss(model, &batch, Some(rng), mode)?;
        Ok(MicroLoss {
            loss,
            tokens: batch.num_source_tokens + batch.num_target_tokens,
        })
    }

    fn eval_loss(&self, model: &ElmerModel) -> Result<f64> {
        let mut sum = 0.0;
        let mut n = 0usize;
        for b in &self.valid {
            let l = self.loss(model, b, None, Mode::Eval)?;
            sum += l.to_dtype(DType::F64)?.to_scalar::<f64>()? * b.num_target_tokens as f64;
            n += b.num_target_tokens;
        }
        Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
    }
}
