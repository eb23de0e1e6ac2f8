//! Training losses (paper sections 3.3 and 4.2), all ignoring `<pad>` labels.
//!
//! - [`lplm_loss`]: layer-permutation language modelling: each target token t is predicted at
//!   its assigned exit layer `l_t`; `k` assignments per sequence share one encoder pass;
//!   loss = mean NLL over all (assignment, non-pad token) pairs.
//! - [`soft_exit_loss`]: soft early exit with teacher forcing; mean of the L off-ramp CEs.
//! - [`deep_supervision_loss`]: every off-ramp trained on the plain NAR pass (hard-exit
//!   fine-tuning); mean of the L off-ramp CEs.
//! - [`last_layer_loss`]: plain NAR cross-entropy at layer L.
//!
//! Shapes: logits `[batch, T, vocab]`, labels `[batch, T]` u32 (the target ids without the
//! leading `<s>`, ending in `</s>`, padded with `<pad>`), exits `[batch, T]` u32 in 1..=L.
//! Every op here is differentiable (no fused softmax).

use candle_core::{DType, Tensor, D};

use crate::batch::PaddedBatch;
use crate::error::{Error, Result};
use crate::model::exit::{DecodeOptions, ExitPolicy, SoftTeacher};
use crate::model::{ElmerModel, EncoderOutput};
use crate::nn::Mode;

/// One training batch: sources, decoder slots and labels, all right-padded.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Source ids `[batch, S]` u32.
    pub input_ids: Tensor,
    /// Source mask `[batch, S]` u32 (1 keep, 0 pad).
    pub attention_mask: Tensor,
    /// Decoder input `[batch, T]` u32: `[<s>, <mask>, ...]`, padded with `<pad>`.
    pub decoder_input_ids: Tensor,
    /// Decoder mask `[batch, T]` u32 (1 for the first `len_i` positions).
    pub decoder_attention_mask: Tensor,
    /// Labels `[batch, T]` u32, `<pad>` where ignored.
    pub labels: Tensor,
    /// Number of non-pad labels.
    pub num_target_tokens: usize,
    /// Number of non-pad source tokens.
    pub num_source_tokens: usize,
    /// Label smoothing of the off-ramp cross-entropies on this batch (0: none; e.g. 0.1
    /// for training batches, 0 for validation so that losses stay comparable).
    pub label_smoothing: f64,
    /// Target length of each row `[batch]` u32: its number of labels up to and including
    /// `</s>` (what a length head predicts; glancing may later pad some labels, not this).
    pub target_lengths: Tensor,
    /// Weight of the target-length cross-entropy ([`length_loss`]) added to the off-ramp
    /// losses on this batch (0: none; needs a model with a length head).
    pub length_loss: f64,
}

impl Batch {
    /// Builds a batch from framed sources (`<s> ... </s>`) and label sequences (target ids
    /// without `<s>`, ending in `</s>`). Decoder slot i has `labels[i].len()` positions (the
    /// decoder mask tells the model the target length: right for LPLM, where the length of
    /// the original text is given, but not what generation sees; see
    /// [`Batch::from_ids_in_slot`]).
    pub fn from_ids(
        sources: &[Vec<u32>],
        labels: &[Vec<u32>],
        model_cfg: &crate::ElmerConfig,
        device: &candle_core::Device,
    ) -> Result<Self> {
        Self::from_ids_in_slot(sources, labels, None, model_cfg, device)
    }

    /// As [`Batch::from_ids`], but with `slot_len = Some(T)` every row gets the slot that
    /// generation uses: `[<s>, <mask> x (T-1)]`, all `T` positions attended, labels padded
    /// with `<pad>` (ignored by the losses) past each row's `</s>`. The model then has to
    /// choose the length itself by where it puts `</s>`, as it must when generating with
    /// `max_len = T`. `T` is raised to the longest label row if that is longer.
    pub fn from_ids_in_slot(
        sources: &[Vec<u32>],
        labels: &[Vec<u32>],
        slot_len: Option<usize>,
        model_cfg: &crate::ElmerConfig,
        device: &candle_core::Device,
    ) -> Result<Self> {
        if sources.is_empty() || sources.len() != labels.len() {
            return Err(Error::invalid_arg(
                "labels",
                format!(
                    "{} sources but {} label sequences (need the same, at least 1)",
                    sources.len(),
                    labels.len()
                ),
            ));
        }
        let pad = model_cfg.pad_token_id;
        let b = sources.len();
        let s = sources.iter().map(Vec::len).max().unwrap_or(0);
        let t = labels.iter().map(Vec::len).max().unwrap_or(0);
        if s == 0 || t == 0 || sources.iter().any(Vec::is_empty) || labels.iter().any(Vec::is_empty)
        {
            return Err(Error::invalid_arg(
                "sources",
                "empty source or label sequence",
            ));
        }
        let src = PaddedBatch::new(sources, pad);
        let t = slot_len.map_or(t, |n| n.max(t));
        let lab = if t > labels.iter().map(Vec::len).max().unwrap_or(0) {
            let padded: Vec<Vec<u32>> = labels
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    l.resize(t, pad);
                    l
                })
                .collect();
            PaddedBatch::new(&padded, pad)
        } else {
            PaddedBatch::new(labels, pad)
        };
        // Decoder slot: `<s>` then `<mask>`s over each label row, `<pad>` past it.
        let slot = |j: usize| {
            if j == 0 {
                model_cfg.bos_token_id
            } else {
                model_cfg.mask_token_id()
            }
        };
        let fixed = slot_len.is_some();
        let dec: Vec<u32> = lab
            .attention_mask
            .iter()
            .enumerate()
            .map(|(k, &real)| if real == 1 || fixed { slot(k % t) } else { pad })
            .collect();
        let n_src: usize = sources.iter().map(Vec::len).sum();
        let n_tgt = labels.iter().flatten().filter(|&&x| x != pad).count();
        let (input_ids, attention_mask) = src.to_tensors(device)?;
        let (labels_t, mut decoder_attention_mask) = lab.to_tensors(device)?;
        if fixed {
            decoder_attention_mask = Tensor::ones((b, t), DType::U32, device)?;
        }
        Ok(Self {
            input_ids,
            attention_mask,
            decoder_input_ids: Tensor::from_vec(dec, (b, t), device)?,
            decoder_attention_mask,
            labels: labels_t,
            target_lengths: Tensor::from_vec(
                labels.iter().map(|l| l.len() as u32).collect::<Vec<_>>(),
                b,
                device,
            )?,
            num_target_tokens: n_tgt,
            num_source_tokens: n_src,
            label_smoothing: 0.0,
            length_loss: 0.0,
        })
    }

    /// Batch size.
    pub fn len(&self) -> usize {
        self.labels.dims()[0]
    }

    /// Whether the batch holds no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sum of the NLL of `labels` under `logits` over non-pad positions, and their count.
/// `logits` `[batch, T, vocab]`, `labels` `[batch, T]`. Returns (scalar sum, count).
pub fn masked_nll_sum(logits: &Tensor, labels: &Tensor, pad_id: u32) -> Result<(Tensor, usize)> {
    let labels = labels.to_dtype(DType::U32)?;
    let (b, t, v) = logits.dims3()?;
    // Fused CPU kernel (one pass per row, all cores); composed ops elsewhere.
    if let Some(nll) = crate::ops::cross_entropy::cross_entropy_rows(
        &logits.reshape((b * t, v))?,
        &labels.flatten_all()?,
        pad_id,
    )? {
        let count = labels
            .ne(pad_id)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
        return Ok((nll.sum_all()?, count));
    }
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&labels.unsqueeze(2)?, 2)?.squeeze(2)?; // [B, T]
    let keep = labels.ne(pad_id)?.to_dtype(DType::F32)?;
    let count = keep.sum_all()?.to_scalar::<f32>()? as usize;
    let sum = (picked * keep)?.sum_all()?.neg()?;
    Ok((sum, count))
}

/// Mean NLL over non-pad positions (cross-entropy with pads ignored).
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor, pad_id: u32) -> Result<Tensor> {
    let (sum, count) = masked_nll_sum(logits, labels, pad_id)?;
    if count == 0 {
        return Err(Error::invalid_arg("labels", "every label is <pad>"));
    }
    Ok((sum / count as f64)?)
}

/// Non-pad label positions of a batch: flat indices into `[batch * T]`, and their labels
/// repeated `repeat` times.
fn packed_labels(
    batch: &Batch,
    pad: u32,
    repeat: usize,
    dev: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let labels: Vec<u32> = batch.labels.flatten_all()?.to_vec1()?;
    let keep: Vec<u32> = labels
        .iter()
        .enumerate()
        .filter(|(_, &y)| y != pad)
        .map(|(i, _)| i as u32)
        .collect();
    if keep.is_empty() {
        return Err(Error::invalid_arg("labels", "every label is <pad>"));
    }
    let y: Vec<u32> = (0..repeat)
        .flat_map(|_| keep.iter().map(|&i| labels[i as usize]))
        .collect();
    let n = keep.len();
    Ok((
        Tensor::from_vec(keep, n, dev)?,
        Tensor::from_vec(y, n * repeat, dev)?,
    ))
}

/// Rows of `h` `[batch, T, d]` at the packed positions, `[rows, d]`.
fn pack_rows(h: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let (b, t, d) = h.dims3()?;
    Ok(h.reshape((b * t, d))?.index_select(keep, 0)?)
}

/// Mean NLL of `y` under the off-ramp after `layer` applied to `rows` `[rows, d]`: one matmul,
/// then the fused CPU cross-entropy with the bias folded in (candle ops elsewhere).
fn offramp_nll_mean(
    model: &ElmerModel,
    layer: usize,
    rows: &Tensor,
    y: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    let pad = model.config().pad_token_id;
    let (w, bias) = model.decoder().offramps().projection(layer)?;
    // One graph node for the product on the CPU (the transposed view and its gradient's
    // copy otherwise).
    let logits = match crate::ops::training::linear(rows, w, None)? {
        Some(l) => l,
        None => rows.matmul(&w.t()?)?,
    };
    let n = rows.dim(0)? as f64;
    let fused = crate::ops::cross_entropy::cross_entropy_rows_with_bias(
        &logits,
        y,
        bias,
        pad,
        smoothing as f32,
    )?;
    let nll = match fused {
        Some(nll) => nll,
        None => {
            let logp = candle_nn::ops::log_softmax(
                &logits.broadcast_add(bias)?.to_dtype(DType::F32)?,
                D::Minus1,
            )?;
            let nll = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
            if smoothing == 0.0 {
                nll
            } else {
                let uniform = logp.mean(D::Minus1)?.neg()?;
                ((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?
            }
        }
    };
    Ok((nll.sum_all()? / n)?)
}

fn encode(model: &ElmerModel, batch: &Batch, mode: Mode) -> Result<EncoderOutput> {
    let mut enc = model.encode_with_mode(&batch.input_ids, Some(&batch.attention_mask), mode)?;
    // The cross-attention keys/values are shared by every decoder pass on this batch.
    model.cache_cross_attention(&mut enc)?;
    Ok(enc)
}

/// LPLM loss for exit assignments `exits` (k tensors `[batch, T]`, values 1..=L): the encoder
/// runs once, the decoder once per assignment; mean NLL over all assignments and non-pad tokens.
///
/// With the shared off-ramp, the exit states of all assignments are packed (non-pad rows
/// only) into one `[rows, d]` matrix, projected once and scored with the fused CPU
/// cross-entropy (bias folded in), so no padded logits are materialised.
pub fn lplm_loss(
    model: &ElmerModel,
    batch: &Batch,
    exits: &[Tensor],
    mode: Mode,
) -> Result<Tensor> {
    if exits.is_empty() {
        return Err(Error::invalid_arg(
            "exits",
            "need at least one exit assignment",
        ));
    }
    let pad = model.config().pad_token_id;
    let enc = encode(model, batch, mode)?;
    if model.config().elmer_offramps == crate::config::OffRampKind::PerLayer {
        return lplm_loss_per_layer(model, &enc, batch, exits, mode);
    }
    let (keep, y) = packed_labels(batch, pad, exits.len(), model.device())?;
    let mut rows = Vec::with_capacity(exits.len());
    for e in exits {
        let h = model.fixed_exit_hidden(
            &enc,
            &batch.decoder_input_ids,
            Some(&batch.decoder_attention_mask),
            e,
            mode,
        )?;
        rows.push(pack_rows(&h, &keep)?);
    }
    let rows = Tensor::cat(&rows, 0)?;
    offramp_nll_mean(model, 1, &rows, &y, batch.label_smoothing)
}

fn lplm_loss_per_layer(
    model: &ElmerModel,
    enc: &EncoderOutput,
    batch: &Batch,
    exits: &[Tensor],
    mode: Mode,
) -> Result<Tensor> {
    let pad = model.config().pad_token_id;
    let mut total: Option<Tensor> = None;
    let mut count = 0;
    for e in exits {
        let opts = DecodeOptions::new(ExitPolicy::Fixed(e.clone())).with_logits();
        let out = model.decode_with_mode(
            enc,
            &batch.decoder_input_ids,
            Some(&batch.decoder_attention_mask),
            &opts,
            mode,
        )?;
        let logits = out
            .logits
            .ok_or_else(|| Error::Unsupported("no logits".into()))?;
        let (s, c) = masked_nll_sum(&logits, &batch.labels, pad)?;
        count += c;
        total = Some(match total {
            None => s,
            Some(t) => (t + s)?,
        });
    }
    let total = total.ok_or_else(|| Error::invalid_arg("exits", "empty"))?;
    if count == 0 {
        return Err(Error::invalid_arg("labels", "every label is <pad>"));
    }
    Ok((total / count as f64)?)
}

fn mean_offramp_ce(
    model: &ElmerModel,
    batch: &Batch,
    mut opts: DecodeOptions,
    mode: Mode,
    last_only: bool,
) -> Result<Tensor> {
    let pad = model.config().pad_token_id;
    let enc = encode(model, batch, mode)?;
    opts.output_layer_hidden = true;
    let out = model.decode_with_mode(
        &enc,
        &batch.decoder_input_ids,
        Some(&batch.decoder_attention_mask),
        &opts,
        mode,
    )?;
    let states = out
        .layer_hidden
        .ok_or_else(|| Error::Unsupported("no per-layer states".into()))?;
    let (keep, y) = packed_labels(batch, pad, 1, model.device())?;
    let n = states.len();
    let first = if last_only { n.saturating_sub(1) } else { 0 };
    let mut acc: Option<Tensor> = None;
    for (i, h) in states.iter().enumerate().skip(first) {
        let ce = offramp_nll_mean(
            model,
            i + 1,
            &pack_rows(h, &keep)?,
            &y,
            batch.label_smoothing,
        )?;
        acc = Some(match acc {
            None => ce,
            Some(a) => (a + ce)?,
        });
    }
    let acc = acc.ok_or_else(|| Error::config("decoder_layers", "is zero"))?;
    let loss = (acc / (n - first) as f64)?;
    if batch.length_loss > 0.0 {
        Ok((loss + (length_loss(model, &enc, batch)? * batch.length_loss)?)?)
    } else {
        Ok(loss)
    }
}

/// Mean cross-entropy of the length head's prediction against each row's target length
/// ([`Batch::target_lengths`]); an error when the model has no length head.
pub fn length_loss(model: &ElmerModel, enc: &EncoderOutput, batch: &Batch) -> Result<Tensor> {
    let logits = model.length_logits(enc)?.ok_or_else(|| {
        Error::Unsupported("a length loss needs a length head (`length_head.*`)".into())
    })?;
    let (b, classes) = logits.dims2()?;
    let lengths = batch
        .target_lengths
        .to_dtype(DType::U32)?
        .clamp(0u32, (classes - 1) as u32)?;
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&lengths.unsqueeze(1)?, 1)?; // [b, 1]
    Ok((picked.sum_all()?.neg()? / b as f64)?)
}

/// Soft-exit loss: teacher forcing where `use_gold` (`[batch, T]` u8) is 1 and the label is
/// not `<pad>`; mean of the L off-ramp cross-entropies (the L-1 fed-back ones and the final).
pub fn soft_exit_loss(
    model: &ElmerModel,
    batch: &Batch,
    use_gold: &Tensor,
    mode: Mode,
) -> Result<Tensor> {
    let pad = model.config().pad_token_id;
    let use_gold = (use_gold.to_dtype(DType::U8)? * batch.labels.ne(pad)?)?;
    let mut opts = DecodeOptions::new(ExitPolicy::Soft);
    opts.soft_teacher = Some(SoftTeacher {
        gold: batch.labels.clone(),
        use_gold,
    });
    mean_offramp_ce(model, batch, opts, mode, false)
}

/// Deep supervision for hard exit: mean of every off-ramp's cross-entropy on the plain pass.
pub fn deep_supervision_loss(model: &ElmerModel, batch: &Batch, mode: Mode) -> Result<Tensor> {
    mean_offramp_ce(
        model,
        batch,
        DecodeOptions::new(ExitPolicy::LastLayer),
        mode,
        false,
    )
}

/// Plain NAR cross-entropy at the last layer (off-ramp L on non-pad rows only).
pub fn last_layer_loss(model: &ElmerModel, batch: &Batch, mode: Mode) -> Result<Tensor> {
    mean_offramp_ce(
        model,
        batch,
        DecodeOptions::new(ExitPolicy::LastLayer),
        mode,
        true,
    )
}
