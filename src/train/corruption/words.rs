//! Word boundaries of byte-level BPE tokens, for whole-word masking.

/// Byte-level BPE marker of a leading space (`'Ġ'`, U+0120).
const SPACE_MARKER: char = '\u{0120}';

/// Special-token strings of the BART/RoBERTa vocabulary, used by
/// [`word_starts_from_tokens`].
const BART_SPECIAL_TOKENS: [&str; 5] = ["<s>", "</s>", "<pad>", "<unk>", "<mask>"];

/// Word-start flags for byte-level BPE token strings (BART/RoBERTa/GPT-2).
///
/// A token starts a word when it begins with `'Ġ'` (an encoded leading space),
/// is a special token (`<s>`, `</s>`, `<pad>`, `<unk>`, `<mask>`), follows a
/// special token, or is the first token. The result has the same length as
/// `tokens` and can be passed as `word_start` to [`Corruptor::corrupt`](super::Corruptor::corrupt).
pub fn word_starts_from_tokens(tokens: &[&str]) -> Vec<bool> {
    let mut prev_special = true;
    tokens
        .iter()
        .map(|tok| {
            let special = BART_SPECIAL_TOKENS.contains(tok);
            let start = special || prev_special || tok.starts_with(SPACE_MARKER);
            prev_special = special;
            start
        })
        .collect()
}
