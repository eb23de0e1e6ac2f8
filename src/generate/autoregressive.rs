//! Autoregressive (AR) BART greedy decoding over the same weights as the ELMER model: the
//! baseline the NAR decoder is compared against (paper Table 2, "BART").
//!
//! Each step feeds one token per sequence through the decoder with *causal* self-attention:
//! the self-attention keys/values of earlier steps live in a per-layer cache that grows by one
//! position per step (nothing is recomputed), the cross-attention keys/values of the encoder
//! output are computed once per generation (or taken from
//! [`ElmerModel::cache_cross_attention`]), and only the newest position goes through the
//! vocabulary projection: the last off-ramp, i.e. the tied output projection plus
//! `final_logits_bias`, as in `BartForConditionalGeneration`.
//!
//! Decoding starts from `decoder_start_token_id` (`</s>` = 2 for BART), takes the argmax at
//! every step and stops a sequence at its first `eos_token_id`; finished sequences are fed
//! `pad_token_id` until every sequence has finished or `max_new_tokens` tokens were produced.
//! This matches transformers' `generate(num_beams=1, do_sample=False)` with no repetition
//! constraints and no forced BOS/EOS token.
//!
//! ```no_run
//! use elmer::{generate_greedy, generate_greedy_with, GreedyOptions};
//! use elmer::{ElmerModel, LoadOptions};
//! use candle_core::Tensor;
//!
//! let model = ElmerModel::from_dir("path/to/bart", &LoadOptions::default())?;
//! let ids = Tensor::new(&[[0u32, 31414, 232, 2]], model.device())?;
//! let enc = model.encode(&ids, None)?;
//! let rows = generate_greedy(&model, &enc, 32)?; // [batch] rows of at most 32 ids
//! // Exactly 32 tokens per row (EOS suppressed), e.g. for latency measurements:
//! let fixed = generate_greedy_with(&model, &enc, &GreedyOptions::exact(32))?;
//! assert!(fixed.iter().all(|r| r.len() == 32));
//! # Ok::<(), elmer::Error>(())
//! ```

use candle_core::{DType, Tensor, D};
use candle_nn::kv_cache::KvCache;

use crate::error::{Error, Result};
use crate::model::attention::KeyValue;
use crate::model::{ElmerModel, EncoderOutput};

/// Length limits of greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreedyOptions {
    /// Most tokens generated per sequence (the decoder start token not counted); at least 1
    /// and at most the decoder's position table ([`ElmerModel::max_target_len`]).
    pub max_new_tokens: usize,
    /// EOS is suppressed (its logit set to `-inf`) while fewer than this many tokens have been
    /// generated, as transformers' `min_new_tokens`. `min_new_tokens == max_new_tokens`
    /// forces exactly `max_new_tokens` tokens per sequence. Must not exceed `max_new_tokens`.
    pub min_new_tokens: usize,
}

impl GreedyOptions {
    /// Up to `max_new_tokens` tokens, stopping at EOS.
    pub fn new(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            min_new_tokens: 0,
        }
    }

    /// Exactly `n` tokens per sequence: EOS can never be chosen.
    pub fn exact(n: usize) -> Self {
        Self {
            max_new_tokens: n,
            min_new_tokens: n,
        }
    }
}

/// Greedy AR decoding of every example in `enc` (`hidden` `[batch, S, d]`), at most
/// `max_new_tokens` tokens each, stopping at EOS.
///
/// Returns one row per example: the generated ids (without the decoder start token) up to and
/// including the first EOS, or `max_new_tokens` ids when no EOS came. Rows are not padded.
pub fn generate_greedy(
    model: &ElmerModel,
    enc: &EncoderOutput,
    max_new_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    generate_greedy_with(model, enc, &GreedyOptions::new(max_new_tokens))
}

/// [`generate_greedy`] with explicit [`GreedyOptions`] (e.g. a minimum length).
pub fn generate_greedy_with(
    model: &ElmerModel,
    enc: &EncoderOutput,
    opts: &GreedyOptions,
) -> Result<Vec<Vec<u32>>> {
    let max_new = opts.max_new_tokens;
    if max_new == 0 {
        return Err(Error::invalid_arg("max_new_tokens", "must be at least 1"));
    }
    if max_new > model.max_target_len() {
        return Err(Error::invalid_arg(
            "max_new_tokens",
            format!(
                "{max_new} exceeds the decoder position table ({} positions)",
                model.max_target_len()
            ),
        ));
    }
    if opts.min_new_tokens > max_new {
        return Err(Error::invalid_arg(
            "min_new_tokens",
            format!(
                "{} is larger than max_new_tokens ({max_new})",
                opts.min_new_tokens
            ),
        ));
    }
    let (b, _, d) = enc.hidden.dims3().map_err(|_| {
        Error::invalid_arg(
            "enc",
            format!(
                "encoder states must be [batch, S, d], got {:?}",
                enc.hidden.dims()
            ),
        )
    })?;
    let cfg = model.config();
    if b == 0 || d != cfg.d_model {
        return Err(Error::invalid_arg(
            "enc",
            format!(
                "encoder states {:?} do not fit the model (batch >= 1, d_model {})",
                enc.hidden.dims(),
                cfg.d_model
            ),
        ));
    }
    let (start, eos, pad) = (
        cfg.decoder_start_token_id,
        cfg.eos_token_id,
        cfg.pad_token_id,
    );
    for (name, id) in [
        ("decoder_start_token_id", start),
        ("eos_token_id", eos),
        ("pad_token_id", pad),
    ] {
        if id as usize >= cfg.vocab_size {
            return Err(Error::config(
                name,
                format!("{id} is outside the vocabulary ({})", cfg.vocab_size),
            ));
        }
    }

    let computed;
    let cross: &[KeyValue] = match &enc.cross {
        Some(c) => c.as_slice(),
        None => {
            computed = model.cross_kv(&enc.hidden)?;
            computed.as_slice()
        }
    };
    let mut stepper = Stepper::new(model, enc, cross, max_new)?;
    // Added to the logits while EOS is forbidden: 0 everywhere, -inf at EOS `[vocab]`.
    let no_eos = if opts.min_new_tokens > 0 {
        let mut v = vec![0f32; cfg.vocab_size];
        v[eos as usize] = f32::NEG_INFINITY;
        Some(Tensor::from_vec(v, cfg.vocab_size, model.device())?)
    } else {
        None
    };

    let mut rows: Vec<Vec<u32>> = vec![Vec::with_capacity(max_new); b];
    let mut done = vec![false; b];
    let mut input = vec![start; b];
    for step in 0..max_new {
        let logits = stepper.step(&input)?; // [b, vocab]
        let logits = match &no_eos {
            Some(m) if step < opts.min_new_tokens => logits.broadcast_add(m)?,
            _ => logits,
        };
        let next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        for (i, &tok) in next.iter().enumerate() {
            if done[i] {
                input[i] = pad;
                continue;
            }
            rows[i].push(tok);
            input[i] = tok;
            done[i] = tok == eos;
        }
        if done.iter().all(|&x| x) {
            break;
        }
    }
    Ok(rows)
}

/// One decoder step at a time with a growing self-attention cache.
struct Stepper<'a> {
    model: &'a ElmerModel,
    enc: &'a EncoderOutput,
    cross: &'a [KeyValue],
    /// Per layer: self-attention keys/values `[batch, heads, steps, head_dim]`, preallocated
    /// for `max_new_tokens` positions and filled in place.
    cache: Vec<KvCache>,
    /// Position of the next input token (0 for the decoder start token).
    pos: usize,
}

impl<'a> Stepper<'a> {
    fn new(
        model: &'a ElmerModel,
        enc: &'a EncoderOutput,
        cross: &'a [KeyValue],
        max_steps: usize,
    ) -> Result<Self> {
        let n = model.num_decoder_layers();
        if cross.len() != n {
            return Err(Error::invalid_arg(
                "enc",
                format!(
                    "{} cached cross-attention entries for {n} decoder layers",
                    cross.len()
                ),
            ));
        }
        Ok(Self {
            model,
            enc,
            cross,
            cache: (0..n).map(|_| KvCache::new(2, max_steps)).collect(),
            pos: 0,
        })
    }

    /// Feeds one token per sequence (`ids`, length batch) at the next position and returns
    /// the final off-ramp's logits for it, `[batch, vocab]` f32.
    fn step(&mut self, ids: &[u32]) -> Result<Tensor> {
        let ids_t = Tensor::from_vec(ids.to_vec(), (ids.len(), 1), self.model.device())?;
        let logits = self
            .model
            .ar_step(&ids_t, self.pos, &mut self.cache, self.enc, self.cross)?;
        self.pos += 1;
        Ok(if logits.dtype() == DType::F32 {
            logits
        } else {
            logits.to_dtype(DType::F32)?
        })
    }
}
