//! The special-token ids every part of the crate agrees on ([`SpecialTokens`]): the decoder
//! slot (`<s>` then `<mask>`s), padding, the `</s>` that ends an output, and the ids BART
//! corruption never touches.

/// Ids of BART's special tokens.
///
/// One value comes from the model's config ([`crate::ElmerConfig::special_tokens`]), one from
/// the tokenizer ([`crate::BartTokenizer::special_tokens`]); for a consistent model directory
/// the two agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence, `<s>` (0 in BART).
    pub bos: u32,
    /// Padding, `<pad>` (1).
    pub pad: u32,
    /// End of sequence, `</s>` (2).
    pub eos: u32,
    /// Unknown token, `<unk>` (3), when the vocabulary has one.
    pub unk: Option<u32>,
    /// The mask token filling the NAR decoder slot and BART's noised spans, `<mask>`
    /// (50264 in bart-base; *not* always `vocab_size - 1`).
    pub mask: u32,
}

impl SpecialTokens {
    /// BART's ids (`facebook/bart-base`): `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>`
    /// 50264.
    pub const fn bart() -> Self {
        Self {
            bos: 0,
            pad: 1,
            eos: 2,
            unk: Some(3),
            mask: 50264,
        }
    }

    /// Every special id, sorted and deduplicated.
    pub fn ids(&self) -> Vec<u32> {
        let mut v = vec![self.bos, self.pad, self.eos, self.mask];
        v.extend(self.unk);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether `id` is one of these special ids.
    pub fn contains(&self, id: u32) -> bool {
        [self.bos, self.pad, self.eos, self.mask].contains(&id) || self.unk == Some(id)
    }
}
