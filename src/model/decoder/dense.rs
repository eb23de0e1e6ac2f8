//! The dense decoder passes: every layer runs on every token (last-layer exit, soft exit,
//! and the differentiable fixed-exit pass of LPLM training).

use candle_core::{DType, Tensor, D};

use super::{Decoder, EncoderSide};
use crate::config::OffRampKind;
use crate::error::{Error, Result};
use crate::model::exit::{DecodeOptions, DecoderOutput, SoftTeacher};
use crate::model::offramp::offramp_decisions;
use crate::nn::Mode;

impl Decoder {
    pub(super) fn forward_last(
        &self,
        mut h: Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        opts: &DecodeOptions,
        mode: Mode,
    ) -> Result<DecoderOutput> {
        let n = self.num_layers();
        if opts.output_layer_hidden {
            let mut states = Vec::with_capacity(n);
            for i in 0..n {
                h = self.layer(i, &h, &h, self_mask, enc, mode)?;
                states.push(h.clone());
            }
            let ids = self.argmax_ids(n, &h.detach())?;
            let (b, t) = ids.dims2()?;
            return Ok(DecoderOutput {
                exit_layers: Self::full_layers(b, t, n, h.device())?,
                ids,
                logits: None,
                offramp_logits: None,
                layer_hidden: Some(states),
            });
        }
        let mut ramps = Vec::new();
        for i in 0..n {
            h = self.layer(i, &h, &h, self_mask, enc, mode)?;
            if opts.output_offramp_logits && i + 1 < n {
                ramps.push(self.offramps.logits(i + 1, &h)?);
            }
        }
        let (b, t, _) = h.dims3()?;
        let exit_layers = Self::full_layers(b, t, n, h.device())?;
        if !opts.output_logits && !opts.output_offramp_logits {
            // Generation: only the argmax is needed.
            let ids = self.argmax_ids(n, &h)?;
            return Ok(DecoderOutput {
                ids,
                exit_layers,
                logits: None,
                offramp_logits: None,
                layer_hidden: None,
            });
        }
        let logits = self.offramps.logits(n, &h)?;
        let ids = logits.argmax(D::Minus1)?;
        let offramp_logits = opts.output_offramp_logits.then(|| {
            ramps.push(logits.clone());
            ramps
        });
        Ok(DecoderOutput {
            ids,
            exit_layers,
            logits: opts.output_logits.then_some(logits),
            offramp_logits,
            layer_hidden: None,
        })
    }

    /// Argmax ids `[batch, T]` of the off-ramp after `layer` for states `h` `[batch, T, d]`.
    fn argmax_ids(&self, layer: usize, h: &Tensor) -> Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let (ids, _) = offramp_decisions(&self.offramps, layer, &h.reshape((b * t, d))?, false)?;
        Ok(ids.reshape((b, t))?)
    }

    pub(super) fn forward_soft(
        &self,
        mut h: Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        opts: &DecodeOptions,
        mode: Mode,
    ) -> Result<DecoderOutput> {
        let concat = self.concat_head.as_ref().ok_or_else(|| {
            Error::Unsupported(
                "soft exit needs `concat_head.weight` [d_model, 2*d_model], which this checkpoint \
                 lacks; fine-tune with soft exit first (it initialises the head)"
                    .into(),
            )
        })?;
        let n = self.num_layers();
        // Logits are materialised only when asked for; otherwise the fed-back predictions
        // and the output need argmaxes only (fused kernel, no biased logits).
        let want_logits = opts.output_logits || opts.output_offramp_logits;
        let mut ramps = Vec::new();
        let mut states = Vec::new();
        let mut prev_logits: Option<Tensor> = None;
        for i in 0..n {
            if i > 0 {
                let pred = match prev_logits.take() {
                    Some(logits) => {
                        let pred = logits.argmax(D::Minus1)?;
                        if opts.output_offramp_logits {
                            ramps.push(logits);
                        }
                        pred
                    }
                    None => self.argmax_ids(i, &h.detach())?,
                };
                let pred = match (&opts.soft_teacher, mode.is_train()) {
                    (Some(SoftTeacher { gold, use_gold }), true) => {
                        use_gold.where_cond(&gold.to_dtype(DType::U32)?, &pred)?
                    }
                    _ => pred,
                };
                let e = self.embeddings.lookup(&pred)?;
                h = concat.forward(&Tensor::cat(&[&h, &e], D::Minus1)?)?;
            }
            h = self.layer(i, &h, &h, self_mask, enc, mode)?;
            if opts.output_layer_hidden {
                states.push(h.clone());
            }
            if want_logits {
                prev_logits = Some(self.offramps.logits(i + 1, &h)?);
            }
        }
        let (ids, logits) = match prev_logits {
            Some(logits) => (logits.argmax(D::Minus1)?, Some(logits)),
            None => (self.argmax_ids(n, &h.detach())?, None),
        };
        let (b, t) = ids.dims2()?;
        let offramp_logits = match (&logits, opts.output_offramp_logits) {
            (Some(l), true) => {
                ramps.push(l.clone());
                Some(ramps)
            }
            _ => None,
        };
        Ok(DecoderOutput {
            exit_layers: Self::full_layers(b, t, n, h.device())?,
            ids,
            logits: if opts.output_logits { logits } else { None },
            offramp_logits,
            layer_hidden: opts.output_layer_hidden.then_some(states),
        })
    }

    /// Fixed-exit pass: each token's state at its exit layer `[batch, T, d]`, plus the
    /// (copied) states after every layer when `keep_layers`. Differentiable; the copies are
    /// detached in training when configured. With `keep_layers` every layer runs on every
    /// token (dense); without, on the CPU, the layers above the first run only on the tokens
    /// that have not exited ([`Self::gathered_layer`]; the same states, about a third less
    /// work in LPLM's upper layers).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fixed_exit_states(
        &self,
        mut h: Tensor,
        exits: &Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        keep_layers: bool,
        mode: Mode,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let n = self.num_layers();
        let (b, t, d) = h.dims3()?;
        let detach = self.detach_copied && mode.is_train();
        let mut exit_state: Option<Tensor> = None;
        let mut layers = Vec::new();
        // The exit layers on the host, for the gathered layers below: on the CPU only (a
        // copy there; on a GPU it would be a read-back in the middle of the forward pass).
        let host_exits: Option<Vec<Vec<u32>>> = if keep_layers || !exits.device().is_cpu() {
            None
        } else {
            Some(exits.to_vec2()?)
        };
        for i in 0..n {
            let l = (i + 1) as u32;
            // Tokens that exited below layer l enter it as copies of their exit state,
            // detached when configured (no layer above the exit layer sends gradient back).
            let keep = exits.ge(l)?.unsqueeze(2)?.broadcast_as((b, t, d))?;
            let h_in = if detach {
                keep.where_cond(&h, &h.detach())?
            } else {
                h
            };
            if let (Some(ex), true) = (&host_exits, i > 0) {
                let state = exit_state
                    .take()
                    .ok_or_else(|| Error::config("decoder_layers", "is zero"))?;
                let (next, state) =
                    self.gathered_layer(i, (h_in, state), ex, enc, self_mask, mode)?;
                h = next;
                exit_state = Some(state);
                continue;
            }
            let new = self.layer(i, &h_in, &h_in, self_mask, enc, mode)?;
            // Tokens with exit >= l take the new state; the others keep their copied state.
            h = keep.where_cond(&new, &h_in)?;
            // The (non-detached) state at each token's exit layer, for its prediction.
            exit_state = Some(match exit_state {
                None => new,
                Some(s) => exits
                    .eq(l)?
                    .unsqueeze(2)?
                    .broadcast_as((b, t, d))?
                    .where_cond(&new, &s)?,
            });
            if keep_layers {
                layers.push(h.clone());
            }
        }
        let state = exit_state.ok_or_else(|| Error::config("decoder_layers", "is zero"))?;
        Ok((state, layers))
    }

    /// Layer `i` (above the first) of a fixed-exit pass for the active tokens only (exit
    /// layer > `i`): their rows of `h_in` `[batch, T, d]` are gathered into queries
    /// `[batch, A, d]` (A = the most active tokens of any batch row; shorter rows repeat a row
    /// of their own, whose result is dropped), the layer attends over every token of `h_in`
    /// (exited tokens still serve as keys and values), and the results are put back by one
    /// gather from `[h_in; new]`. Returns the states after the layer and the exit states with
    /// the tokens exiting here updated. Equal to the dense pass, which computes every token
    /// and keeps the active ones (queries, layer norms and the feed-forward block are
    /// row-wise); differentiable through the gathers.
    fn gathered_layer(
        &self,
        i: usize,
        (h_in, state): (Tensor, Tensor),
        exits: &[Vec<u32>],
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        let l = (i + 1) as u32;
        let (b, t, d) = h_in.dims3()?;
        if exits.len() != b || exits.iter().any(|r| r.len() != t) {
            return Err(Error::invalid_arg(
                "exit_layers",
                format!("not [{b}, {t}] like the decoder states"),
            ));
        }
        let active: Vec<Vec<usize>> = exits
            .iter()
            .map(|r| (0..t).filter(|&j| r[j] >= l).collect())
            .collect();
        let a = active.iter().map(Vec::len).max().unwrap_or(0);
        if a == 0 {
            // No token reaches this layer: states and exit states stay as they are.
            return Ok((h_in, state));
        }
        let dev = h_in.device().clone();
        let mut sel = Vec::with_capacity(b * a);
        // Row p of the result: p (kept) or b * t + slot (new), for the states and for the
        // exit states.
        let mut take_h: Vec<u32> = (0..(b * t) as u32).collect();
        let mut take_s = take_h.clone();
        for (bi, row) in active.iter().enumerate() {
            for k in 0..a {
                let j = row.get(k).copied().unwrap_or(0);
                sel.push((bi * t + j) as u32);
                if k < row.len() {
                    let slot = (b * t + bi * a + k) as u32;
                    take_h[bi * t + j] = slot;
                    if exits[bi][j] == l {
                        take_s[bi * t + j] = slot;
                    }
                }
            }
        }
        let flat = h_in.reshape((b * t, d))?;
        let x_q = flat
            .index_select(&Tensor::from_vec(sel, b * a, &dev)?, 0)?
            .reshape((b, a, d))?;
        let new = self
            .layer(i, &x_q, &h_in, self_mask, enc, mode)?
            .reshape((b * a, d))?;
        let put = |base: &Tensor, take: Vec<u32>| -> Result<Tensor> {
            Ok(Tensor::cat(&[base, &new], 0)?
                .index_select(&Tensor::from_vec(take, b * t, &dev)?, 0)?
                .reshape((b, t, d))?)
        };
        let h = put(&flat, take_h)?;
        let state = put(&state.reshape((b * t, d))?, take_s)?;
        Ok((h, state))
    }

    pub(super) fn forward_fixed_dense(
        &self,
        h: Tensor,
        exits: &Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        opts: &DecodeOptions,
        mode: Mode,
    ) -> Result<DecoderOutput> {
        let n = self.num_layers();
        let (b, t, _) = h.dims3()?;
        let exits = exits.to_dtype(DType::U32)?.to_device(h.device())?;
        let (state, layers) =
            self.fixed_exit_states(h, &exits, enc, self_mask, opts.output_offramp_logits, mode)?;
        let ramps = layers
            .iter()
            .enumerate()
            .map(|(i, h)| self.offramps.logits(i + 1, h))
            .collect::<Result<Vec<_>>>()?;
        let logits = match self.offramps.kind() {
            OffRampKind::Shared => self.offramps.logits(1, &state)?,
            OffRampKind::PerLayer => {
                let mut acc: Option<Tensor> = None;
                for l in 1..=n {
                    let lg = self.offramps.logits(l, &state)?;
                    let v = lg.dim(D::Minus1)?;
                    acc = Some(match acc {
                        None => lg,
                        Some(a) => exits
                            .eq(l as u32)?
                            .unsqueeze(2)?
                            .broadcast_as((b, t, v))?
                            .where_cond(&lg, &a)?,
                    });
                }
                acc.ok_or_else(|| Error::config("decoder_layers", "is zero"))?
            }
        };
        let ids = logits.argmax(D::Minus1)?;
        Ok(DecoderOutput {
            ids,
            exit_layers: exits,
            logits: opts.output_logits.then_some(logits),
            offramp_logits: opts.output_offramp_logits.then_some(ramps),
            layer_hidden: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Params;
    use candle_core::{Device, Var};

    /// The gathered layers (`keep_layers` off, what LPLM trains with) give the dense pass's
    /// exit states and gradients, also where a batch row has no active token at a layer and
    /// where no token reaches the top layer.
    #[test]
    fn gathered_layers_match_the_dense_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model/cg");
        let mut p = Params::from_dir(&dir, &Device::Cpu).unwrap();
        let c = p.config_mut();
        c.elmer_detach_copied_states = true;
        // No dropout: the two passes draw different numbers of masks.
        (c.dropout, c.attention_dropout, c.activation_dropout) = (0.0, 0.0, 0.0);
        let model = p.model().unwrap();
        let dec = model.decoder();
        let n = dec.num_layers() as u32;
        assert!(n >= 2, "the fixture needs two decoder layers");
        let d = model.config().d_model;
        let (b, t, s) = (3usize, 7usize, 5usize);
        let data = |len: usize, seed: usize| crate::ops::test_data(len, seed, 1.0);
        let enc_h = Tensor::from_vec(data(b * s * d, 1), (b, s, d), &Device::Cpu).unwrap();
        let cross = model.cross_kv(&enc_h).unwrap();
        let side = EncoderSide {
            mask: None,
            cross: &cross,
        };
        let patterns: [Vec<u32>; 2] = [
            // Row 0 leaves at layer 1 everywhere (nothing active above), rows 1-2 mixed.
            (0..b * t)
                .map(|k| if k < t { 1 } else { 1 + (k as u32 * 7 + 3) % n })
                .collect(),
            // Nobody reaches the top layer.
            (0..b * t).map(|k| 1 + (k as u32) % (n - 1)).collect(),
        ];
        for exits in patterns {
            let exits = Tensor::from_vec(exits, (b, t), &Device::Cpu).unwrap();
            let h0 = Var::from_vec(data(b * t * d, 2), (b, t, d), &Device::Cpu).unwrap();
            let probe = Tensor::from_vec(data(b * t * d, 3), (b, t, d), &Device::Cpu).unwrap();
            let rng = std::cell::RefCell::new(
                <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0),
            );
            let mode = Mode::Train { rng: &rng };
            let run = |keep_layers: bool| {
                let (state, _) = dec
                    .fixed_exit_states(
                        h0.as_tensor().clone(),
                        &exits,
                        &side,
                        None,
                        keep_layers,
                        mode,
                    )
                    .unwrap();
                let grads = (&state * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                (state, grads.get(&h0).unwrap().clone())
            };
            let (dense, g_dense) = run(true);
            let (gathered, g_gathered) = run(false);
            let diff = crate::ops::max_abs_diff(&dense, &gathered);
            assert!(diff < 1e-5, "exit states differ by {diff}");
            // Relative: the gathers sum the gradient in another order.
            let scale = g_dense
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = crate::ops::max_abs_diff(&g_dense, &g_gathered) / scale;
            assert!(
                diff < 1e-5,
                "gradients differ by {diff} of their largest value"
            );
        }
    }
}
