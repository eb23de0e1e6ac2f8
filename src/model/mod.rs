//! The ELMER model (paper section 3): a BART encoder and a non-autoregressive decoder with an
//! off-ramp after every layer.
//!
//! ```no_run
//! use elmer::{ElmerModel, ExitPolicy, LoadOptions};
//! use candle_core::Tensor;
//!
//! let model = ElmerModel::from_dir("path/to/elmer", &LoadOptions::default())?;
//! let ids = Tensor::new(&[[0u32, 31414, 232, 2]], model.device())?;
//! let enc = model.encode(&ids, None)?; // encode once ...
//! for policy in [ExitPolicy::LastLayer, ExitPolicy::Hard { threshold: 0.5 }] {
//!     // ... decode many times: [batch, 32] ids and exit layers
//!     let out = model.decode_slot(&enc, 32, policy)?;
//!     println!("{:?} {:?}", out.ids.to_vec2::<u32>()?, out.exit_layers.to_vec2::<u32>()?);
//! }
//! # Ok::<(), elmer::Error>(())
//! ```
//!
//! Shapes: source ids `[batch, S]` u32 with mask `[batch, S]` (1 keep, 0 pad), encoder states
//! `[batch, S, d]`, target slot `[batch, T]`, logits `[batch, T, vocab]`.

pub(crate) mod attention;
pub(crate) mod decoder;
pub(crate) mod embedding;
pub(crate) mod encoder;
pub(crate) mod exit;
pub(crate) mod feed_forward;
pub(crate) mod length;
pub(crate) mod offramp;

use std::borrow::Cow;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::Weights;
use crate::config::ElmerConfig;
use crate::error::{Error, Result};
use crate::nn::{additive_padding_mask, Mode};
use attention::KeyValue;
use decoder::{Decoder, EncoderSide};
use encoder::Encoder;
use exit::{DecodeOptions, DecoderOutput, ExitPolicy};
use length::LengthHead;

/// The encoder's output, reusable across decoder calls ("encode once, decode many").
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// Encoder states `[batch, S, d]`.
    pub hidden: Tensor,
    /// Additive source mask `[batch, 1, 1, S]`, `None` when nothing is padding.
    pub mask: Option<Tensor>,
    /// Cross-attention keys/values per decoder layer, when cached with
    /// [`ElmerModel::cache_cross_attention`].
    pub(crate) cross: Option<Vec<KeyValue>>,
}

impl EncoderOutput {
    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.hidden.dims()[0]
    }

    /// Whether the cross-attention keys/values are cached.
    pub fn has_cross_attention_cache(&self) -> bool {
        self.cross.is_some()
    }

    /// The rows `rows` (indices into the batch, repeats allowed) as a new output, e.g. to
    /// decode several slots per source without encoding it again.
    pub fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        let b = self.batch_size();
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= b) {
            return Err(Error::invalid_arg(
                "rows",
                format!("row {bad} is outside the batch of {b}"),
            ));
        }
        let idx = Tensor::new(rows, self.hidden.device())?;
        let pick = |t: &Tensor| t.index_select(&idx, 0);
        Ok(Self {
            hidden: pick(&self.hidden)?,
            mask: self.mask.as_ref().map(pick).transpose()?,
            cross: self
                .cross
                .as_ref()
                .map(|kvs| {
                    kvs.iter()
                        .map(|kv| {
                            Ok(KeyValue {
                                merged: kv.merged,
                                k: pick(&kv.k)?,
                                v: pick(&kv.v)?,
                            })
                        })
                        .collect::<candle_core::Result<Vec<_>>>()
                })
                .transpose()?,
        })
    }
}

/// An ELMER encoder-decoder with off-ramps, ready to run.
#[derive(Debug, Clone)]
pub struct ElmerModel {
    config: ElmerConfig,
    encoder: Encoder,
    decoder: Decoder,
    length_head: Option<LengthHead>,
    device: Device,
    dtype: DType,
    recorded_policy: Option<ExitPolicy>,
}

impl ElmerModel {
    /// Builds the model from validated, canonically named tensors (see [`crate::checkpoint`]).
    pub fn from_weights(config: ElmerConfig, weights: &Weights) -> Result<Self> {
        config.validate()?;
        let recorded_policy = Self::parse_recorded_policy(&config)?;
        let shared = weights.get("shared.weight")?;
        let output = if config.tie_word_embeddings {
            shared.clone()
        } else {
            weights
                .get_opt("lm_head.weight")
                .unwrap_or_else(|| shared.clone())
        };
        let encoder = Encoder::load(weights, &config, shared.clone())?;
        let decoder = Decoder::load(weights, &config, shared.clone(), output)?;
        let length_head = LengthHead::load(weights)?;
        if matches!(recorded_policy, Some(ExitPolicy::Soft)) && !decoder.has_concat_head() {
            return Err(Error::config(
                "elmer_exit_policy",
                "\"soft\" is recorded but the checkpoint has no concat_head.weight",
            ));
        }
        Ok(Self {
            device: shared.device().clone(),
            dtype: shared.dtype(),
            config,
            encoder,
            decoder,
            length_head,
            recorded_policy,
        })
    }

    fn parse_recorded_policy(config: &ElmerConfig) -> Result<Option<ExitPolicy>> {
        config
            .elmer_exit_policy
            .as_deref()
            .map(|s| {
                s.parse::<ExitPolicy>()
                    .map_err(|e| Error::config("elmer_exit_policy", e.to_string()))
            })
            .transpose()
    }

    /// The exit policy the model was fine-tuned for (`elmer_exit_policy` in its config:
    /// soft, last, or hard exit with the entropy threshold chosen on validation data), if
    /// recorded. [`crate::Generator`] uses it when [`crate::GenerationConfig::policy`] is
    /// `None`.
    pub fn recorded_policy(&self) -> Option<&ExitPolicy> {
        self.recorded_policy.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &ElmerConfig {
        &self.config
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute dtype (the weights' dtype).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of decoder layers L (exit layers are 1..=L).
    pub fn num_decoder_layers(&self) -> usize {
        self.decoder.num_layers()
    }

    /// Whether soft exit is available (`concat_head` loaded).
    pub fn has_concat_head(&self) -> bool {
        self.decoder.has_concat_head()
    }

    /// Whether the model has a target-length predictor (`length_head.*`, see
    /// [`predict_lengths`](Self::predict_lengths)).
    pub fn has_length_head(&self) -> bool {
        self.length_head.is_some()
    }

    /// Predicted target length of each row of `enc`, in decoder positions counting the
    /// `</s>` position (the slot length to decode with), in `2..=max_len`; needs a length
    /// head ([`has_length_head`](Self::has_length_head)).
    pub fn predict_lengths(&self, enc: &EncoderOutput, max_len: usize) -> Result<Vec<usize>> {
        let head = self.length_head.as_ref().ok_or_else(|| {
            Error::Unsupported("length prediction needs `length_head.*` in the checkpoint".into())
        })?;
        head.predict(&enc.hidden, enc.mask.as_ref(), 2.min(max_len), max_len)
    }

    /// The `k` most likely target lengths of each row of `enc` (same units and range as
    /// [`predict_lengths`](Self::predict_lengths)), most likely first: the candidates of a
    /// length beam (Mask-Predict's "length candidates"). Needs a length head.
    pub fn predict_length_candidates(
        &self,
        enc: &EncoderOutput,
        max_len: usize,
        k: usize,
    ) -> Result<Vec<Vec<usize>>> {
        let head = self.length_head.as_ref().ok_or_else(|| {
            Error::Unsupported("length prediction needs `length_head.*` in the checkpoint".into())
        })?;
        if k == 0 {
            return Err(Error::invalid_arg(
                "k",
                "need at least one length candidate",
            ));
        }
        head.top_k(&enc.hidden, enc.mask.as_ref(), 2.min(max_len), max_len, k)
    }

    /// Training helper: length logits `[batch, max_target_len + 1]` (differentiable); `None`
    /// without a length head. Not part of the supported API.
    #[doc(hidden)]
    pub fn length_logits(&self, enc: &EncoderOutput) -> Result<Option<Tensor>> {
        self.length_head
            .as_ref()
            .map(|h| h.logits(&enc.hidden, enc.mask.as_ref()))
            .transpose()
    }

    /// The decoder input and mask for per-row slot lengths `lengths` (each in
    /// `1..=max_target_len`): row i is `[<s>, <mask> x (lengths[i] - 1)]`, then `<pad>` up to
    /// the longest, with mask 1 on its first `lengths[i]` positions; `[batch, max]` u32 each.
    pub fn slot_input_with_lengths(&self, lengths: &[usize]) -> Result<(Tensor, Tensor)> {
        if lengths.is_empty() {
            return Err(Error::invalid_arg("lengths", "need at least one row"));
        }
        for &n in lengths {
            self.check_slot_len("lengths", n)?;
        }
        let t = lengths.iter().copied().max().unwrap_or(0);
        let (bos, mask, pad) = (
            self.config.bos_token_id,
            self.config.mask_token_id(),
            self.config.pad_token_id,
        );
        let mut ids = Vec::with_capacity(lengths.len() * t);
        let mut keep = Vec::with_capacity(lengths.len() * t);
        for &n in lengths {
            for j in 0..t {
                ids.push(match j {
                    0 => bos,
                    j if j < n => mask,
                    _ => pad,
                });
                keep.push(u32::from(j < n));
            }
        }
        let shape = (lengths.len(), t);
        Ok((
            Tensor::from_vec(ids, shape, &self.device)?,
            Tensor::from_vec(keep, shape, &self.device)?,
        ))
    }

    /// The decoder's layers and off-ramps, for the stage breakdown of `benches/latency.rs`;
    /// not part of the supported API.
    #[doc(hidden)]
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Longest source the encoder's position table covers.
    pub fn max_source_len(&self) -> usize {
        self.encoder.max_len()
    }

    /// Longest target slot the decoder's position table covers.
    pub fn max_target_len(&self) -> usize {
        self.decoder.max_len()
    }

    fn check_ids(&self, ids: &Tensor, name: &str) -> Result<Tensor> {
        let (b, s) = ids.dims2().map_err(|_| {
            Error::invalid_arg(
                name,
                format!("expected [batch, len], got shape {:?}", ids.dims()),
            )
        })?;
        if b == 0 || s == 0 {
            return Err(Error::invalid_arg(
                name,
                format!("empty batch or sequence (shape [{b}, {s}])"),
            ));
        }
        let ids = match ids.dtype() {
            DType::U32 => ids.clone(),
            DType::I64 | DType::U8 => ids.to_dtype(DType::U32)?,
            other => {
                return Err(Error::invalid_arg(
                    name,
                    format!("token ids must be u32 or i64, got {other:?}"),
                ))
            }
        };
        let ids = ids.to_device(&self.device)?;
        let max = ids.max_all()?.to_scalar::<u32>()?;
        if max as usize >= self.config.vocab_size {
            return Err(Error::invalid_arg(
                name,
                format!(
                    "token id {max} is outside the vocabulary (vocab_size {})",
                    self.config.vocab_size
                ),
            ));
        }
        Ok(ids)
    }

    fn check_mask(
        &self,
        mask: Option<&Tensor>,
        ids: &Tensor,
        name: &str,
    ) -> Result<Option<Tensor>> {
        match mask {
            None => Ok(None),
            Some(m) => {
                if m.dims() != ids.dims() {
                    return Err(Error::invalid_arg(
                        name,
                        format!(
                            "shape {:?} differs from the ids' {:?}",
                            m.dims(),
                            ids.dims()
                        ),
                    ));
                }
                Ok(additive_padding_mask(
                    &m.to_device(&self.device)?,
                    self.dtype,
                )?)
            }
        }
    }

    /// Encodes `input_ids` `[batch, S]` (u32 or i64) with an optional padding mask `[batch, S]`
    /// (1 keep, 0 pad).
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<EncoderOutput> {
        self.encode_with_mode(input_ids, attention_mask, Mode::Eval)
    }

    /// [`encode`](Self::encode) in an explicit [`Mode`] (training enables dropout): what the
    /// losses of [`crate::train`] call. Not part of the supported API.
    #[doc(hidden)]
    pub fn encode_with_mode(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<EncoderOutput> {
        let ids = self.check_ids(input_ids, "input_ids")?;
        let mask = self.check_mask(attention_mask, &ids, "attention_mask")?;
        let hidden = self.encoder.forward(&ids, mask.as_ref(), mode)?;
        Ok(EncoderOutput {
            hidden,
            mask,
            cross: None,
        })
    }

    /// Computes and stores the cross-attention keys/values of every decoder layer in `enc`,
    /// so repeated decoder calls on the same encoder output skip that work.
    pub fn cache_cross_attention(&self, enc: &mut EncoderOutput) -> Result<()> {
        enc.cross = Some(self.cross_kv(&enc.hidden)?);
        Ok(())
    }

    pub(crate) fn cross_kv(&self, hidden: &Tensor) -> Result<Vec<KeyValue>> {
        Ok(self
            .decoder
            .layers()
            .iter()
            .map(|l| l.cross_key_value(hidden))
            .collect::<candle_core::Result<Vec<_>>>()?)
    }

    /// A slot length `t` (argument `name`) in `1..=max_target_len`.
    fn check_slot_len(&self, name: &str, t: usize) -> Result<()> {
        if t == 0 {
            return Err(Error::invalid_arg(name, "must be at least 1"));
        }
        if t > self.max_target_len() {
            return Err(Error::invalid_arg(
                name,
                format!(
                    "{t} exceeds the decoder position table ({})",
                    self.max_target_len()
                ),
            ));
        }
        Ok(())
    }

    /// The NAR decoder input for a slot of `target_len`: `[<s>, <mask>, ..., <mask>]`,
    /// `[batch, target_len]` u32.
    pub fn slot_input(&self, batch: usize, target_len: usize) -> Result<Tensor> {
        self.check_slot_len("target_len", target_len)?;
        let mask = self.config.mask_token_id();
        let mut row = vec![mask; target_len];
        row[0] = self.config.bos_token_id;
        let data: Vec<u32> = (0..batch).flat_map(|_| row.iter().copied()).collect();
        Ok(Tensor::from_vec(data, (batch, target_len), &self.device)?)
    }

    /// Runs the NAR decoder over `decoder_input_ids` `[batch, T]` with an optional target
    /// padding mask `[batch, T]`.
    pub fn decode(
        &self,
        enc: &EncoderOutput,
        decoder_input_ids: &Tensor,
        decoder_attention_mask: Option<&Tensor>,
        opts: &DecodeOptions,
    ) -> Result<DecoderOutput> {
        self.decode_with_mode(
            enc,
            decoder_input_ids,
            decoder_attention_mask,
            opts,
            Mode::Eval,
        )
    }

    /// Validates decoder inputs against `enc` and resolves the cross-attention keys/values
    /// (cached in `enc`, or computed now): (ids, additive self-attention mask, cross K/V).
    fn prepare_decode<'e>(
        &self,
        enc: &'e EncoderOutput,
        decoder_input_ids: &Tensor,
        decoder_attention_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>, Cow<'e, [KeyValue]>)> {
        let ids = self.check_ids(decoder_input_ids, "decoder_input_ids")?;
        let (b, _) = ids.dims2()?;
        if b != enc.batch_size() {
            return Err(Error::invalid_arg(
                "decoder_input_ids",
                format!(
                    "batch {b} differs from the encoder batch {}",
                    enc.batch_size()
                ),
            ));
        }
        let self_mask = self.check_mask(decoder_attention_mask, &ids, "decoder_attention_mask")?;
        let cross = match &enc.cross {
            Some(c) => Cow::Borrowed(c.as_slice()),
            None => Cow::Owned(self.cross_kv(&enc.hidden)?),
        };
        Ok((ids, self_mask, cross))
    }

    /// [`decode`](Self::decode) in an explicit [`Mode`]: what the losses of [`crate::train`]
    /// call. Not part of the supported API.
    #[doc(hidden)]
    pub fn decode_with_mode(
        &self,
        enc: &EncoderOutput,
        decoder_input_ids: &Tensor,
        decoder_attention_mask: Option<&Tensor>,
        opts: &DecodeOptions,
        mode: Mode,
    ) -> Result<DecoderOutput> {
        let (ids, self_mask, cross) =
            self.prepare_decode(enc, decoder_input_ids, decoder_attention_mask)?;
        let side = EncoderSide {
            mask: enc.mask.as_ref(),
            cross: &cross,
        };
        self.decoder
            .forward(&side, &ids, self_mask.as_ref(), opts, mode)
    }

    /// Training helper: each token's decoder state at its fixed exit layer, `[batch, T, d]`
    /// (the dense LPLM pass, differentiable; copies detached when configured). Used by the
    /// LPLM loss; not part of the supported API.
    #[doc(hidden)]
    pub fn fixed_exit_hidden(
        &self,
        enc: &EncoderOutput,
        decoder_input_ids: &Tensor,
        decoder_attention_mask: Option<&Tensor>,
        exits: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let (ids, self_mask, cross) =
            self.prepare_decode(enc, decoder_input_ids, decoder_attention_mask)?;
        let side = EncoderSide {
            mask: enc.mask.as_ref(),
            cross: &cross,
        };
        let exits = exits.to_dtype(DType::U32)?.to_device(&self.device)?;
        if exits.dims() != ids.dims() {
            return Err(Error::invalid_arg(
                "exit_layers",
                format!("shape {:?}, expected {:?}", exits.dims(), ids.dims()),
            ));
        }
        let h0 = self.decoder.embed(&ids, mode)?;
        Ok(self
            .decoder
            .fixed_exit_states(h0, &exits, &side, self_mask.as_ref(), false, mode)?
            .0)
    }

    /// One step of the autoregressive baseline ([`crate::generate_greedy`]): `ids`
    /// `[batch, 1]` at position `pos`, causal self-attention over `cache` (one per layer,
    /// grown by one position), cross-attention over `cross`. Returns logits `[batch, vocab]`.
    pub(crate) fn ar_step(
        &self,
        ids: &Tensor,
        pos: usize,
        cache: &mut [candle_nn::kv_cache::KvCache],
        enc: &EncoderOutput,
        cross: &[KeyValue],
    ) -> Result<Tensor> {
        let side = EncoderSide {
            mask: enc.mask.as_ref(),
            cross,
        };
        self.decoder.ar_step(ids, pos, cache, &side)
    }

    /// Decodes a fresh slot of `target_len` (`[<s>, <mask>...]`) for every example of `enc`
    /// with `policy`, returning ids and exit layers `[batch, target_len]`.
    pub fn decode_slot(
        &self,
        enc: &EncoderOutput,
        target_len: usize,
        policy: ExitPolicy,
    ) -> Result<DecoderOutput> {
        let slot = self.slot_input(enc.batch_size(), target_len)?;
        self.decode(enc, &slot, None, &DecodeOptions::new(policy))
    }
}
