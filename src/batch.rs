//! Right-padded batches of id sequences ([`PaddedBatch`]): the one place that pads sources,
//! labels and generation batches.
//!
//! Shapes: ids and mask `[batch, seq_len]`, row-major; `seq_len` is the longest row.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// A right-padded batch in row-major layout, ready for a `[batch, seq_len]` tensor.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PaddedBatch {
    /// Token ids, flat row-major `[batch, seq_len]`; positions past a row's length hold the
    /// pad id.
    pub ids: Vec<u32>,
    /// Attention mask, flat row-major `[batch, seq_len]`: `1` for real tokens, `0` for padding.
    pub attention_mask: Vec<u32>,
    /// Number of rows.
    pub batch: usize,
    /// Row length: the longest sequence in the batch.
    pub seq_len: usize,
}

impl PaddedBatch {
    /// Right-pads every row to the longest one with `pad_id`; the mask is 1 on real tokens and
    /// 0 on padding. An empty batch gives empty buffers with `batch = seq_len = 0`.
    pub fn new<R: AsRef<[u32]>>(rows: &[R], pad_id: u32) -> Self {
        let batch = rows.len();
        let seq_len = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * seq_len);
        let mut attention_mask = Vec::with_capacity(batch * seq_len);
        for row in rows {
            let row = row.as_ref();
            ids.extend_from_slice(row);
            ids.resize(ids.len() + (seq_len - row.len()), pad_id);
            attention_mask.resize(attention_mask.len() + row.len(), 1);
            attention_mask.resize(attention_mask.len() + (seq_len - row.len()), 0);
        }
        Self {
            ids,
            attention_mask,
            batch,
            seq_len,
        }
    }

    /// The ids and the mask as `[batch, seq_len]` u32 tensors on `device`.
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let shape = (self.batch, self.seq_len);
        Ok((
            Tensor::from_vec(self.ids.clone(), shape, device)?,
            Tensor::from_vec(self.attention_mask.clone(), shape, device)?,
        ))
    }
}
