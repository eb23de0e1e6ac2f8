//! LPLM pre-training data and objective (paper section 4.2).
//!
//! A corpus is read as documents (one per line, or blank-line separated paragraphs; WikiText
//! `= Heading =` lines are dropped), tokenised with the BART tokenizer and cut into chunks of
//! at most `max_len` tokens framed as `<s> ... </s>`. Each training example corrupts a chunk
//! (sentence shuffling + Poisson-span infilling, [`super::corruption`]); the target is the
//! original chunk. Every target token gets an exit layer drawn uniformly from 1..=L, `k`
//! assignments per sequence sharing one encoder pass ([`super::loss::lplm_loss`]).
//!
//! Shapes: sources `[batch, S]`, labels and exits `[batch, T]` with `S, T <= max_len`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::corruption::{word_starts_from_tokens, CorruptionConfig, Corruptor};
use super::loss::{lplm_loss, Batch};
use super::trainer::{MicroLoss, Objective};
use crate::error::{Error, Result};
use crate::model::exit::{DecodeOptions, ExitPolicy};
use crate::model::ElmerModel;
use crate::nn::Mode;
use crate::tokenizer::BartTokenizer;
use crate::SpecialTokens;

/// One tokenised chunk: framed ids and word-start flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `<s> ... </s>` ids.
    pub ids: Vec<u32>,
    /// Whether each token begins a word.
    pub word_start: Vec<bool>,
}

/// Reads documents from a text file: blank-line separated paragraphs when the file has blank
/// lines (lines of a paragraph joined by a space), else one document per line. WikiText
/// headings (`= ... =`) and empty documents are dropped.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.replace("\r\n", "\n");
    let is_heading = |l: &str| {
        let t = l.trim();
        t.len() >= 2 && t.starts_with('=') && t.ends_with('=')
    };
    let docs: Vec<String> = if text.lines().any(|l| l.trim().is_empty()) {
        text.split("\n\n")
            .flat_map(|block| {
                // A block may itself hold blank-line runs; keep non-heading lines together.
                let lines: Vec<&str> = block
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !is_heading(l))
                    .collect();
                (!lines.is_empty()).then(|| lines.join(" "))
            })
            .collect()
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !is_heading(l))
            .map(String::from)
            .collect()
    };
    Ok(docs)
}

/// Tokenises documents and cuts them into framed chunks of at most `max_len` tokens.
pub fn tokenize_documents(
    tok: &BartTokenizer,
    docs: &[String],
    max_len: usize,
) -> Result<Vec<Document>> {
    if max_len < 4 {
        return Err(Error::invalid_arg("max_len", "must be at least 4"));
    }
    let mut out = Vec::new();
    for d in docs {
        let enc = tok
            .inner()
            .encode(d.as_str(), false)
            .map_err(|e| Error::Tokenizer {
                path: None,
                message: e.to_string(),
            })?;
        let ids = enc.get_ids();
        let tokens: Vec<&str> = enc.get_tokens().iter().map(String::as_str).collect();
        let starts = word_starts_from_tokens(&tokens);
        for (c_ids, c_starts) in ids.chunks(max_len - 2).zip(starts.chunks(max_len - 2)) {
            if c_ids.len() < 2 {
                continue;
            }
            let mut ids = Vec::with_capacity(c_ids.len() + 2);
            ids.push(tok.bos_id());
            ids.extend_from_slice(c_ids);
            ids.push(tok.eos_id());
            let mut ws = Vec::with_capacity(ids.len());
            ws.push(true);
            ws.extend_from_slice(c_starts);
            // A chunk starts a word even when it was cut mid-word.
            if ws.len() > 1 {
                ws[1] = true;
            }
            ws.push(true);
            out.push(Document {
                ids,
                word_start: ws,
            });
        }
    }
    Ok(out)
}

/// LPLM settings.
#[derive(Debug, Clone)]
pub struct LplmConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Exit-layer assignments per sequence (paper: 10).
    pub k: usize,
    /// Corruption settings.
    pub corruption: CorruptionConfig,
    /// Exit assignments per sequence in validation.
    pub eval_k: usize,
    /// Validation sequences per batch.
    pub eval_batch_size: usize,
}

impl Default for LplmConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            k: 10,
            corruption: CorruptionConfig::default(),
            eval_k: 2,
            eval_batch_size: 16,
        }
    }
}

/// The LPLM objective over a tokenised corpus.
pub struct LplmObjective {
    train: Vec<Document>,
    corruptor: Corruptor,
    cfg: LplmConfig,
    num_layers: usize,
    model_cfg: crate::ElmerConfig,
    device: Device,
    eval: Vec<(Batch, Vec<Tensor>)>,
}

fn random_exits(
    rng: &mut StdRng,
    b: usize,
    t: usize,
    layers: usize,
    dev: &Device,
) -> Result<Tensor> {
    let data: Vec<u32> = (0..b * t)
        .map(|_| rng.random_range(1..=layers as u32))
        .collect();
    Ok(Tensor::from_vec(data, (b, t), dev)?)
}

impl LplmObjective {
    /// Builds the objective; `valid` documents form fixed validation batches (corruption and
    /// exits drawn once from `seed`).
    pub fn new(
        train: Vec<Document>,
        valid: Vec<Document>,
        cfg: LplmConfig,
        model_cfg: &crate::ElmerConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::invalid_arg("train", "no training documents"));
        }
        if cfg.batch_size == 0 || cfg.k == 0 || cfg.eval_k == 0 || cfg.eval_batch_size == 0 {
            return Err(Error::invalid_arg(
                "batch_size",
                "batch sizes and k must be at least 1",
            ));
        }
        let special = SpecialTokens {
            unk: Some(3),
            ..model_cfg.special_tokens()
        };
        let corruptor = Corruptor::new(
            cfg.corruption.clone(),
            special,
            model_cfg.vocab_size,
            vec![4, 479],
        )?;
        let mut obj = Self {
            train,
            corruptor,
            num_layers: model_cfg.decoder_layers,
            model_cfg: model_cfg.clone(),
            device: device.clone(),
            eval: Vec::new(),
            cfg,
        };
        let mut rng = StdRng::seed_from_u64(seed ^ 0xE7A1);
        let mut eval = Vec::new();
        for chunk in valid.chunks(obj.cfg.eval_batch_size) {
            let batch = obj.make_batch(chunk, &mut rng)?;
            let (b, t) = batch.labels.dims2()?;
            let exits = (0..obj.cfg.eval_k)
                .map(|_| random_exits(&mut rng, b, t, obj.num_layers, device))
                .collect::<Result<Vec<_>>>()?;
            eval.push((batch, exits));
        }
        obj.eval = eval;
        Ok(obj)
    }

    /// Corrupts `docs` into a batch (targets are the original documents without `<s>`).
    pub fn make_batch(&self, docs: &[Document], rng: &mut StdRng) -> Result<Batch> {
        let mut sources = Vec::with_capacity(docs.len());
        let mut labels = Vec::with_capacity(docs.len());
        for d in docs {
            let ws = self
                .cfg
                .corruption
                .whole_word
                .then_some(d.word_start.as_slice());
            let c = self.corruptor.corrupt(&d.ids, ws, rng)?;
            let mut src = c.source;
            let max = d.ids.len().max(4);
            if src.len() > max {
                src.truncate(max - 1);
                src.push(self.model_cfg.eos_token_id);
            }
            sources.push(src);
            labels.push(d.ids[1..].to_vec());
        }
        Batch::from_ids(&sources, &labels, &self.model_cfg, &self.device)
    }

    /// Training documents.
    pub fn num_train_documents(&self) -> usize {
        self.train.len()
    }

    /// Validation batches.
    pub fn eval_batches(&self) -> &[(Batch, Vec<Tensor>)] {
        &self.eval
    }

    /// Reconstruction accuracy at each exit layer on the validation set: every token exits
    /// at layer l; fraction of non-pad labels predicted exactly. `[L]` values in 0..=1.
    pub fn reconstruction_accuracy(&self, model: &ElmerModel) -> Result<Vec<f64>> {
        let pad = self.model_cfg.pad_token_id;
        let mut correct = vec![0usize; self.num_layers];
        let mut total = 0usize;
        for (batch, _) in &self.eval {
            let mut enc = model.encode(&batch.input_ids, Some(&batch.attention_mask))?;
            model.cache_cross_attention(&mut enc)?;
            let labels: Vec<Vec<u32>> = batch.labels.to_vec2()?;
            total += labels.iter().flatten().filter(|&&x| x != pad).count();
            for (l, c) in correct.iter_mut().enumerate() {
                let exits = Tensor::full((l + 1) as u32, batch.labels.dims2()?, &self.device)?;
                let out = model.decode(
                    &enc,
                    &batch.decoder_input_ids,
                    Some(&batch.decoder_attention_mask),
                    &DecodeOptions::new(ExitPolicy::Fixed(exits)),
                )?;
                let ids: Vec<Vec<u32>> = out.ids.to_dtype(DType::U32)?.to_vec2()?;
                *c += ids
                    .iter()
                    .zip(&labels)
                    .flat_map(|(a, b)| a.iter().zip(b))
                    .filter(|(p, y)| **y != pad && p == y)
                    .count();
            }
        }
        Ok(correct
            .into_iter()
            .map(|c| c as f64 / total.max(1) as f64)
            .collect())
    }
}

impl Objective for LplmObjective {
    fn train_loss(
        &self,
        model: &ElmerModel,
        _step: usize,
        _micro: usize,
        rng: &mut StdRng,
        mode: Mode,
    ) -> Result<MicroLoss> {
        let docs: Vec<Document> = self
            .train
            .choose_multiple(rng, self.cfg.batch_size.min(self.train.len()))
            .cloned()
            .collect();
        let batch = self.make_batch(&docs, rng)?;
        let (b, t) = batch.labels.dims2()?;
        let exits = (0..self.cfg.k)
            .map(|_| random_exits(rng, b, t, self.num_layers, &self.device))
            .collect::<Result<Vec<_>>>()?;
        let loss = lplm_loss(model, &batch, &exits, mode)?;
        Ok(MicroLoss {
            loss,
            tokens: batch.num_source_tokens + batch.num_target_tokens,
        })
    }

    fn eval_loss(&self, model: &ElmerModel) -> Result<f64> {
        if self.eval.is_empty() {
            return Ok(f64::NAN);
        }
        let mut sum = 0.0;
        let mut n = 0usize;
        for (batch, exits) in &self.eval {
            let l = lplm_loss(model, batch, exits, Mode::Eval)?;
            let w = batch.num_target_tokens;
            sum += l.to_dtype(DType::F64)?.to_scalar::<f64>()? * w as f64;
            n += w;
        }
        Ok(sum / n.max(1) as f64)
    }
}

/// Splits documents into (train, valid) with a seeded shuffle; `valid_count` documents held out.
pub fn split_documents(
    mut docs: Vec<Document>,
    valid_count: usize,
    seed: u64,
) -> (Vec<Document>, Vec<Document>) {
    let mut rng = StdRng::seed_from_u64(seed);
    docs.shuffle(&mut rng);
    let v = valid_count.min(docs.len() / 2);
    let valid = docs.split_off(docs.len() - v);
    (docs, valid)
}
