//! The sparse decoder pass (paper section 3.2, hard early exit): each layer computes queries,
//! cross-attention and the FFN only for the tokens still active (keys and values still come
//! from every token, exited ones keeping their exit-layer state), and each token's off-ramp
//! is evaluated only while it is active (hard exit) or at its exit layer (a fixed schedule at
//! inference). Exit decisions need the entropies on the host: one small read-back per layer.

use candle_core::{Tensor, D};

use super::{Decoder, EncoderSide};
use crate::config::OffRampKind;
use crate::error::Result;
use crate::model::exit::{DecodeOptions, DecoderOutput};
use crate::model::offramp::{entropy, offramp_decisions};
use crate::nn::Mode;

/// How the sparse path decides exits.
pub(super) enum ExitRule {
    /// Exit when the off-ramp entropy is below the threshold.
    Entropy(f64),
    /// Exit layer per token, row-major `[batch * T]`, values in 1..=L.
    Schedule(Vec<u32>),
}

impl Decoder {
    /// Early exit computing only what active tokens need.
    pub(super) fn forward_sparse(
        &self,
        mut h: Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        rule: ExitRule,
        opts: &DecodeOptions,
    ) -> Result<DecoderOutput> {
        let mode = Mode::Eval;
        let n = self.num_layers();
        let (b, t, d) = h.dims3()?;
        let dev = h.device().clone();
        let mut active: Vec<Vec<u32>> = vec![(0..t as u32).collect(); b];
        let mut ids = vec![0u32; b * t];
        let mut exits = vec![0u32; b * t];
        let mut logits_out = if opts.output_logits {
            Some(Tensor::zeros((b * t, self.vocab_size), h.dtype(), &dev)?)
        } else {
            None
        };
        for i in 0..n {
            let layer = i + 1;
            let n_active: usize = active.iter().map(Vec::len).sum();
            if n_active == 0 {
                break;
            }
            // Destination rows (flat index into [b*t]) of the active tokens, in order.
            let dst: Vec<u32> = active
                .iter()
                .enumerate()
                .flat_map(|(bi, row)| row.iter().map(move |&p| (bi * t) as u32 + p))
                .collect();
            let rows = if n_active == b * t {
                h = self.layer(i, &h, &h, self_mask, enc, mode)?;
                h.reshape((b * t, d))?
            } else {
                let a_max = active.iter().map(Vec::len).max().unwrap_or(0);
                let mut q_idx = Vec::with_capacity(b * a_max);
                let mut sel = Vec::with_capacity(n_active);
                for (bi, row) in active.iter().enumerate() {
                    let filler = row.first().copied().unwrap_or(0);
                    for j in 0..a_max {
                        let p = row.get(j).copied().unwrap_or(filler);
                        q_idx.push((bi * t) as u32 + p);
                        if j < row.len() {
                            sel.push((bi * a_max + j) as u32);
                        }
                    }
                }
                let h_flat = h.reshape((b * t, d))?;
                let q_idx = Tensor::from_vec(q_idx, b * a_max, &dev)?;
                let x_q = h_flat.index_select(&q_idx, 0)?.reshape((b, a_max, d))?;
                let out = self.layer(i, &x_q, &h, self_mask, enc, mode)?;
                let out = out.reshape((b * a_max, d))?;
                let rows = if sel.len() == b * a_max {
                    out
                } else {
                    out.index_select(&Tensor::from_vec(sel, n_active, &dev)?, 0)?
                };
                let dst_t = Tensor::from_vec(dst.clone(), (n_active, 1), &dev)?
                    .broadcast_as((n_active, d))?
                    .contiguous()?;
                h = h_flat.scatter(&dst_t, &rows, 0)?.reshape((b, t, d))?;
                rows
            };
            // Which active rows exit here, and their off-ramp logits.
            let last = layer == n;
            let (exiting, logits, row_ids): (Vec<usize>, Option<Tensor>, Vec<u32>) = match &rule {
                ExitRule::Entropy(th) if logits_out.is_none() => {
                    let (am, ent) = offramp_decisions(&self.offramps, layer, &rows, !last)?;
                    let am: Vec<u32> = am.to_vec1()?;
                    let exiting: Vec<usize> = match ent {
                        Some(ent) if !last => {
                            let ent: Vec<f32> = ent.to_vec1()?;
                            (0..n_active).filter(|&k| (ent[k] as f64) < *th).collect()
                        }
                        _ => (0..n_active).collect(),
                    };
                    let ids_k = exiting.iter().map(|&k| am[k]).collect();
                    (exiting, None, ids_k)
                }
                ExitRule::Entropy(th) => {
                    let lg = self.offramps.logits(layer, &rows)?;
                    let am: Vec<u32> = lg.argmax(D::Minus1)?.to_vec1()?;
                    let exiting: Vec<usize> = if last {
                        (0..n_active).collect()
                    } else {
                        let ent: Vec<f32> = entropy(&lg)?.to_vec1()?;
                        (0..n_active).filter(|&k| (ent[k] as f64) < *th).collect()
                    };
                    let ids_k = exiting.iter().map(|&k| am[k]).collect();
                    let lg = if exiting.is_empty() {
                        None
                    } else if exiting.len() == n_active {
                        Some(lg)
                    } else if logits_out.is_some() {
                        let idx: Vec<u32> = exiting.iter().map(|&k| k as u32).collect();
                        let idx = Tensor::from_vec(idx, exiting.len(), &dev)?;
                        Some(lg.index_select(&idx, 0)?)
                    } else {
                        None
                    };
                    (exiting, lg, ids_k)
                }
                ExitRule::Schedule(s) if logits_out.is_none() => {
                    // Ids are read off after the last layer (below): an exited token's row of
                    // `h` keeps its exit-layer state, and nothing above reads its id.
                    let exiting: Vec<usize> = (0..n_active)
                        .filter(|&k| last || s[dst[k] as usize] as usize == layer)
                        .collect();
                    (exiting, None, Vec::new())
                }
                ExitRule::Schedule(s) => {
                    let exiting: Vec<usize> = (0..n_active)
                        .filter(|&k| last || s[dst[k] as usize] as usize == layer)
                        .collect();
                    if exiting.is_empty() {
                        (exiting, None, Vec::new())
                    } else {
                        let sub = if exiting.len() == n_active {
                            rows.clone()
                        } else {
                            let idx: Vec<u32> = exiting.iter().map(|&k| k as u32).collect();
                            let idx = Tensor::from_vec(idx, exiting.len(), &dev)?;
                            rows.index_select(&idx, 0)?
                        };
                        if logits_out.is_none() {
                            let (am, _) = offramp_decisions(&self.offramps, layer, &sub, false)?;
                            (exiting, None, am.to_vec1()?)
                        } else {
                            let lg = self.offramps.logits(layer, &sub)?;
                            let am: Vec<u32> = lg.argmax(D::Minus1)?.to_vec1()?;
                            (exiting, Some(lg), am)
                        }
                    }
                }
            };
            if exiting.is_empty() {
                continue;
            }
            let mut gone = vec![false; b * t];
            for (j, &k) in exiting.iter().enumerate() {
                let flat = dst[k] as usize;
                if let Some(&id) = row_ids.get(j) {
                    ids[flat] = id;
                }
                exits[flat] = layer as u32;
                gone[flat] = true;
            }
            if let (Some(out), Some(lg)) = (logits_out.as_mut(), logits) {
                let v = self.vocab_size;
                let rows_dst: Vec<u32> = exiting.iter().map(|&k| dst[k]).collect();
                let m = rows_dst.len();
                let idx = Tensor::from_vec(rows_dst, (m, 1), &dev)?
                    .broadcast_as((m, v))?
                    .contiguous()?;
                *out = out.scatter(&idx, &lg.contiguous()?, 0)?;
            }
            for (bi, row) in active.iter_mut().enumerate() {
                row.retain(|&p| !gone[bi * t + p as usize]);
            }
        }
        if matches!(rule, ExitRule::Schedule(_)) && logits_out.is_none() {
            // Deferred off-ramps of a fixed schedule: one vocabulary pass over every token's
            // exit-layer state (shared off-ramp), or one per exit layer (per-layer off-ramps),
            // instead of one pass per layer that has exiting tokens.
            let h_flat = h.reshape((b * t, d))?;
            match self.offramps.kind() {
                OffRampKind::Shared => {
                    let (am, _) = offramp_decisions(&self.offramps, n, &h_flat, false)?;
                    ids = am.to_vec1()?;
                }
                OffRampKind::PerLayer => {
                    for layer in 1..=n {
                        let rows: Vec<u32> = (0..b * t)
                            .filter(|&f| exits[f] as usize == layer)
                            .map(|f| f as u32)
                            .collect();
                        if rows.is_empty() {
                            continue;
                        }
                        let idx = Tensor::from_vec(rows.clone(), rows.len(), &dev)?;
                        let sub = h_flat.index_select(&idx, 0)?;
                        let (am, _) = offramp_decisions(&self.offramps, layer, &sub, false)?;
                        for (&f, id) in rows.iter().zip(am.to_vec1::<u32>()?) {
                            ids[f as usize] = id;
                        }
                    }
                }
            }
        }
        Ok(DecoderOutput {
            ids: Tensor::from_vec(ids, (b, t), &dev)?,
            exit_layers: Tensor::from_vec(exits, (b, t), &dev)?,
            logits: match logits_out {
                Some(l) => Some(l.reshape((b, t, self.vocab_size))?),
                None => None,
            },
            offramp_logits: None,
            layer_hidden: None,
        })
    }
}
