//! BART tokenizer: byte-level BPE with `<s> … </s>` framing, matching Hugging Face
//! transformers' `BartTokenizer` / `BartTokenizerFast`.
//!
//! # How BART tokenizes
//!
//! BART (and RoBERTa, whose vocabulary it shares: 50,265 ids for `bart-base`) uses GPT-2's
//! *byte-level* BPE:
//!
//! 1. **Pre-tokenization.** The text is split with GPT-2's regex
//!    (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`), so a
//!    word keeps the single space *before* it. No prefix space is added: `"Hello"` at the start
//!    of a text and `" Hello"` after a space are different tokens (`31414` vs `20920`).
//! 2. **Byte mapping.** Every UTF-8 byte of a piece is mapped to one printable character
//!    (space becomes `Ġ`, newline `Ċ`, …), so any string, emoji and control characters included,
//!    is representable and nothing is ever unknown with the full vocabulary.
//! 3. **BPE.** The merges in `merges.txt` (by rank) are applied to each piece and the resulting
//!    symbols are looked up in `vocab.json`.
//! 4. **Framing.** The post-processor (`RobertaProcessing`) wraps the ids as
//!    `<s> tokens… </s>`, i.e. `[bos_id, …, eos_id]` (`[0, …, 2]` for bart-base).
//!
//! The special tokens `<s>`, `<pad>`, `</s>`, `<unk>` and `<mask>` are matched in the raw text
//! before pre-tokenization. `<mask>` has `lstrip = true`: it swallows the whitespace before
//! it, so `"Hello <mask> world"` is `[0, 31414, 50264, 232, 2]` — the mask stands in for a
//! whole space-prefixed word, as in BART's text-infilling pre-training.
//!
//! Decoding maps ids back to bytes and then to UTF-8 (invalid sequences, e.g. a truncated
//! emoji, become U+FFFD). [`BartTokenizer::decode`] drops special tokens and does **not**
//! apply transformers' `clean_up_tokenization_spaces`: that is the default of `BartTokenizer`
//! in transformers ≥ 4.45 and 5.x (5.x even ignores a request to clean up for BPE
//! tokenizers). [`BartTokenizer::decode_with`] can apply the legacy clean-up.
//!
//! # Thread safety
//!
//! All encoding/decoding methods take `&self`; [`BartTokenizer`] is `Send + Sync` and can be
//! shared across threads (e.g. in an `Arc`). [`BartTokenizer::encode_batch`] encodes the texts
//! in parallel on rayon's global pool (a hard dependency of `tokenizers`, not gated by its
//! default features); `TOKENIZERS_PARALLELISM=false` makes it sequential.

use std::path::Path;

use crate::batch::PaddedBatch;
use crate::model_dir::TokenizerFiles;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, PostProcessor, Tokenizer, TruncationDirection};

use crate::error::{Error, Result};

mod train;
pub use train::TokenizerTrainConfig;

/// Beginning-of-sequence token (also the classifier token).
pub const BOS_TOKEN: &str = "<s>";
/// Padding token.
pub const PAD_TOKEN: &str = "<pad>";
/// End-of-sequence token (also the separator token).
pub const EOS_TOKEN: &str = "</s>";
/// Unknown token.
pub const UNK_TOKEN: &str = "<unk>";
/// Mask token used by BART's text infilling (and ELMER's inputs).
pub const MASK_TOKEN: &str = "<mask>";

/// A BART byte-level BPE tokenizer (wraps a [`tokenizers::Tokenizer`]).
///
/// Build it with [`BartTokenizer::from_dir`], [`BartTokenizer::from_files`] or
/// [`BartTokenizer::from_tokenizer_json`]. The ids of the five special tokens are looked up
/// once at load time; loading fails if any of them is missing from the vocabulary.
#[derive(Clone, Debug)]
pub struct BartTokenizer {
    inner: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    unk_id: u32,
    mask_id: u32,
    /// Number of special tokens the post-processor adds around a single sequence (2).
    n_added: usize,
}

/// The token ids of a batch of texts, unpadded: `ids[i]` is the framed
/// (`<s> … </s>`) encoding of the `i`-th text.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EncodedBatch {
    /// One id sequence per input text, each of its own length.
    pub ids: Vec<Vec<u32>>,
}

impl EncodedBatch {
    /// Number of sequences in the batch.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Length of the longest sequence (0 for an empty batch).
    pub fn max_len(&self) -> usize {
        self.ids.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Right-pads every sequence to [`EncodedBatch::max_len`] with `pad_id`.
    ///
    /// Returns ids and attention mask as flat row-major buffers of shape
    /// `[batch, seq_len]` (`seq_len` = longest sequence). An empty batch gives empty buffers
    /// with `batch = seq_len = 0`.
    pub fn padded(&self, pad_id: u32) -> PaddedBatch {
        PaddedBatch::new(&self.ids, pad_id)
    }
}

fn tok_err(path: Option<&Path>, message: impl Into<String>) -> Error {
    Error::Tokenizer {
        path: path.map(Path::to_path_buf),
        message: message.into(),
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Parses `vocab.json`: a JSON object mapping token strings to non-negative integer ids.
fn parse_vocab(path: &Path, text: &str) -> Result<Vec<(String, u32)>> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            message: "expected a JSON object mapping tokens to ids".into(),
        });
    };
    if map.is_empty() {
        return Err(tok_err(Some(path), "vocabulary is empty"));
    }
    map.into_iter()
        .map(|(token, id)| {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| Error::Parse {
                    path: path.to_path_buf(),
                    message: format!("id of token {token:?} is {id}, not an integer in 0..2^32"),
                })?;
            Ok((token, id))
        })
        .collect()
}

/// Parses `merges.txt`: an optional `#version` header, then one `left right` pair per line.
fn parse_merges(path: &Path, text: &str) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push((a.to_string(), b.to_string()))
            }
            _ => {
                return Err(Error::Parse {
                    path: path.to_path_buf(),
                    message: format!("line {}: expected `left right`, got {line:?}", i + 1),
                })
            }
        }
    }
    Ok(merges)
}

impl BartTokenizer {
    /// Loads the tokenizer in `dir`: `tokenizer.json` if present, otherwise `vocab.json` +
    /// `merges.txt` (see [`BartTokenizer::from_files`]).
    ///
    /// Fails with [`Error::Tokenizer`] naming `dir` if it holds neither.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(tok_err(Some(dir), "tokenizer directory not found"));
        }
        if let Some(files) = TokenizerFiles::find(dir) {
            return Self::from_files_found(&files);
        }
        let missing: Vec<&str> = ["vocab.json", "merges.txt"]
            .into_iter()
            .filter(|n| !dir.join(n).is_file())
            .collect();
        Err(tok_err(
            Some(dir),
            format!(
                "no tokenizer.json, and missing {} (need tokenizer.json, or vocab.json + merges.txt)",
                missing.join(" and ")
            ),
        ))
    }

    /// Loads from files located by [`TokenizerFiles::find`] (or [`crate::ModelDir`]).
    pub fn from_files_found(files: &TokenizerFiles) -> Result<Self> {
        match files {
            TokenizerFiles::Json(json) => Self::from_tokenizer_json(json),
            TokenizerFiles::VocabMerges { vocab, merges } => Self::from_files(vocab, merges),
        }
    }

    /// Builds the tokenizer from a GPT-2 style `vocab.json` and `merges.txt`, exactly as
    /// transformers' `BartTokenizerFast` does: BPE without unknown token or dropout,
    /// byte-level pre-tokenizer without prefix space, byte-level decoder, `RobertaProcessing`
    /// post-processor (`<s> … </s>`, trimmed offsets), special tokens
    /// `<s> <pad> </s> <unk>` and `<mask>` (the latter with `lstrip = true`).
    ///
    /// Errors: [`Error::Io`] if a file cannot be read, [`Error::Parse`] if it is malformed,
    /// [`Error::Tokenizer`] if the merges reference unknown tokens or a special token is
    /// missing from the vocabulary — each naming the file at fault.
    pub fn from_files(vocab: impl AsRef<Path>, merges: impl AsRef<Path>) -> Result<Self> {
        let (vocab_path, merges_path) = (vocab.as_ref(), merges.as_ref());
        let vocab = parse_vocab(vocab_path, &read_to_string(vocab_path)?)?;
        let merges = parse_merges(merges_path, &read_to_string(merges_path)?)?;
        let vocab: Vocab = vocab.into_iter().collect();
        Self::from_vocab_merges_at(vocab, merges, Some(vocab_path), Some(merges_path))
    }

    /// Builds the tokenizer from an in-memory vocabulary and ranked merges, configured as
    /// [`BartTokenizer::from_files`] does. `origin` is named in errors.
    pub(crate) fn from_vocab_merges(
        vocab: Vocab,
        merges: Vec<(String, String)>,
        origin: Option<&Path>,
    ) -> Result<Self> {
        Self::from_vocab_merges_at(vocab, merges, origin, origin)
    }

    fn from_vocab_merges_at(
        vocab: Vocab,
        merges: Vec<(String, String)>,
        vocab_path: Option<&Path>,
        merges_path: Option<&Path>,
    ) -> Result<Self> {
        for special in [BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, MASK_TOKEN] {
            if !vocab.contains_key(special) {
                return Err(tok_err(
                    vocab_path,
                    format!("special token `{special}` is not in the vocabulary"),
                ));
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tok_err(merges_path, e.to_string()))?;

        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        tokenizer.add_special_tokens(&[
            AddedToken::from(BOS_TOKEN, true),
            AddedToken::from(PAD_TOKEN, true),
            AddedToken::from(EOS_TOKEN, true),
            AddedToken::from(UNK_TOKEN, true),
            AddedToken::from(MASK_TOKEN, true).lstrip(true),
        ]);
        let lookup = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| tok_err(vocab_path, format!("special token `{t}` has no id")))
        };
        let (bos, eos) = (lookup(BOS_TOKEN)?, lookup(EOS_TOKEN)?);
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new((EOS_TOKEN.into(), eos), (BOS_TOKEN.into(), bos))
                .trim_offsets(true)
                .add_prefix_space(false),
        ));
        Self::from_tokenizer(tokenizer, vocab_path)
    }

    /// Loads a serialized `tokenizer.json` (as written by `tokenizers` /
    /// `save_pretrained`), then applies [`BartTokenizer::from_tokenizer`].
    ///
    /// Errors: [`Error::Io`] if unreadable, [`Error::Tokenizer`] naming the file if it does not
    /// parse or lacks one of `<s> <pad> </s> <unk> <mask>`.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_to_string(path)?;
        // JSON syntax is checked first: tokenizers 0.22 panics (`expect("Helper")` in the
        // decoder's deserializer) on a syntax error inside the `decoder` section, e.g. a
        // truncated or corrupt file (regression fixtures tests/fixtures/fuzz/tokenizer-*).
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| tok_err(Some(path), format!("cannot load: {e}")))?;
        let tokenizer: Tokenizer = text
            .parse()
            .map_err(|e: tokenizers::Error| tok_err(Some(path), format!("cannot load: {e}")))?;
        Self::from_tokenizer(tokenizer, Some(path))
    }

    /// Wraps an already configured [`tokenizers::Tokenizer`] that knows the five BART special
    /// tokens. `origin` (the file it came from, if any) is named in errors.
    ///
    /// Any truncation or padding configured on `tokenizer` is cleared (this type handles
    /// both); if it has no post-processor, the BART `<s> … </s>` framing
    /// (`RobertaProcessing`) is installed. Fails with [`Error::Tokenizer`] if a special token
    /// is missing.
    pub fn from_tokenizer(mut tokenizer: Tokenizer, origin: Option<&Path>) -> Result<Self> {
        tokenizer
            .with_truncation(None)
            .map_err(|e| tok_err(origin, e.to_string()))?;
        tokenizer.with_padding(None);
        let lookup = |tokenizer: &Tokenizer, t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                tok_err(
                    origin,
                    format!("special token `{t}` is not in the vocabulary"),
                )
            })
        };
        let bos_id = lookup(&tokenizer, BOS_TOKEN)?;
        let eos_id = lookup(&tokenizer, EOS_TOKEN)?;
        let pad_id = lookup(&tokenizer, PAD_TOKEN)?;
        let unk_id = lookup(&tokenizer, UNK_TOKEN)?;
        let mask_id = lookup(&tokenizer, MASK_TOKEN)?;
        if tokenizer.get_post_processor().is_none() {
            tokenizer.with_post_processor(Some(RobertaProcessing::new(
                (EOS_TOKEN.into(), eos_id),
                (BOS_TOKEN.into(), bos_id),
            )));
        }
        let n_added = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        Ok(Self {
            inner: tokenizer,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            mask_id,
            n_added,
        })
    }

    /// The underlying [`tokenizers::Tokenizer`].
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The special-token ids of this vocabulary.
    pub fn special_tokens(&self) -> crate::SpecialTokens {
        crate::SpecialTokens {
            bos: self.bos_id,
            pad: self.pad_id,
            eos: self.eos_id,
            unk: Some(self.unk_id),
            mask: self.mask_id,
        }
    }

    /// Id of `<s>` (0 for bart-base).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of `</s>` (2 for bart-base).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of `<pad>` (1 for bart-base).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of `<unk>` (3 for bart-base).
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Id of `<mask>` (50264 for bart-base; *not* always `vocab_size - 1`).
    pub fn mask_id(&self) -> u32 {
        self.mask_id
    }

    /// Number of ids, special tokens included (50265 for bart-base).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Per id (`[vocab_size]`): whether the token begins a word, i.e. its byte-level form
    /// starts with the space marker `Ġ`, or it is a special token. A word-continuation piece
    /// (`false`) glues onto the token before it when ids are decoded.
    pub(crate) fn word_starts(&self) -> Vec<bool> {
        let special = [
            self.bos_id,
            self.eos_id,
            self.pad_id,
            self.unk_id,
            self.mask_id,
        ];
        (0..self.vocab_size() as u32)
            .map(|id| {
                special.contains(&id)
                    || self
                        .inner
                        .id_to_token(id)
                        .is_none_or(|t| t.starts_with('\u{120}'))
            })
            .collect()
    }

    /// The id of `token`, if it is in the vocabulary (e.g. `"Ġthe"` → 5).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of `id` (byte-level form, e.g. `"Ġthe"`), if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes `text` with framing: `[bos_id, tokens…, eos_id]` (length ≥ 2).
    ///
    /// Same as transformers' `tokenizer(text)["input_ids"]`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| tok_err(None, format!("encoding failed: {e}")))
    }

    fn check_max_len(&self, max_len: usize) -> Result<()> {
        if max_len < self.n_added.max(1) {
            return Err(Error::invalid_arg(
                "max_len",
                format!(
                    "{max_len} is too small: need at least 1 and room for the {} framing ids",
                    self.n_added
                ),
            ));
        }
        Ok(())
    }

    /// Truncates unframed content to fit `max_len` ids with framing, then frames it.
    fn frame(&self, mut content: tokenizers::Encoding, max_len: Option<usize>) -> Result<Vec<u32>> {
        if let Some(max_len) = max_len {
            let content_max = max_len - self.n_added;
            if content.len() > content_max {
                content.truncate(content_max, 0, TruncationDirection::Right);
            }
        }
        self.inner
            .post_process(content, None, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| tok_err(None, format!("post-processing failed: {e}")))
    }

    /// Encodes `text` with framing, keeping at most `max_len` ids in total.
    ///
    /// The content is truncated on the right and `</s>` stays last, like transformers'
    /// `tokenizer(text, truncation=True, max_length=max_len)`. Fails with
    /// [`Error::InvalidArgument`] if `max_len` cannot hold `<s>` and `</s>` (< 2).
    pub fn encode_truncated(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        self.check_max_len(max_len)?;
        let content = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tok_err(None, format!("encoding failed: {e}")))?;
        self.frame(content, Some(max_len))
    }

    /// Encodes every text with framing (see [`BartTokenizer::encode`]); with
    /// `max_len = Some(n)` each is truncated to at most `n` ids, `</s>` kept last (see
    /// [`BartTokenizer::encode_truncated`]).
    ///
    /// The texts are encoded in parallel on rayon's global pool (the `tokenizers` crate's
    /// `encode_batch_fast`; set `TOKENIZERS_PARALLELISM=false` to force one thread). The
    /// result is unpadded; call [`EncodedBatch::padded`] for a `[batch, seq_len]` layout.
    /// Fails with [`Error::InvalidArgument`] on an empty `texts` or a `max_len` below 2.
    pub fn encode_batch(&self, texts: &[&str], max_len: Option<usize>) -> Result<EncodedBatch> {
        if texts.is_empty() {
            return Err(Error::invalid_arg("texts", "batch is empty"));
        }
        if let Some(n) = max_len {
            self.check_max_len(n)?;
        }
        let contents = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| tok_err(None, format!("encoding failed: {e}")))?;
        let ids = contents
            .into_iter()
            .map(|c| self.frame(c, max_len))
            .collect::<Result<Vec<_>>>()?;
        Ok(EncodedBatch { ids })
    }

    /// Decodes `ids` to text, dropping special tokens, without space clean-up.
    ///
    /// Same as transformers 5.x `tokenizer.decode(ids, skip_special_tokens=True)` (whose
    /// default `clean_up_tokenization_spaces` is `False` for BART). Invalid UTF-8 (e.g. half
    /// an emoji) becomes U+FFFD. Fails with [`Error::InvalidArgument`] if an id is outside
    /// the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true, false)
    }

    /// Decodes `ids` to text.
    ///
    /// * `skip_special`: drop `<s> <pad> </s> <unk> <mask>` (else they appear verbatim);
    /// * `clean_up`: apply transformers' legacy `clean_up_tokenization` (see
    ///   `clean_up_tokenization`), as transformers 4.x did with
    ///   `clean_up_tokenization_spaces=True`. It removes the space before `. , ? !` and in
    ///   front of `n't 'm 's 've 're` — also where the text had one, so it can change text.
    pub fn decode_with(&self, ids: &[u32], skip_special: bool, clean_up: bool) -> Result<String> {
        if let Some((pos, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| self.inner.id_to_token(id).is_none())
        {
            return Err(Error::invalid_arg(
                "ids",
                format!(
                    "id {id} at position {pos} is not in the vocabulary (size {})",
                    self.vocab_size()
                ),
            ));
        }
        let text = self
            .inner
            .decode(ids, skip_special)
            .map_err(|e| tok_err(None, format!("decoding failed: {e}")))?;
        Ok(if clean_up {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Decodes each row of `batch` with [`BartTokenizer::decode`].
    pub fn decode_batch(&self, batch: &[Vec<u32>]) -> Result<Vec<String>> {
        batch.iter().map(|ids| self.decode(ids)).collect()
    }
}

/// transformers' `clean_up_tokenization`: removes the space before `.`, `?`, `!`, `,`,
/// collapses `" ' "` to `"'"`, and joins `n't 'm 's 've 're` to the previous word, in that
/// order (plain substring replacements, like the Python original).
pub fn clean_up_tokenization(text: &str) -> String {
    const RULES: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    let mut out = text.to_string();
    for (from, to) in RULES {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("elmer-tok-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        d
    }

    /// A tiny but complete byte-level vocabulary: specials, `Ġ`, `h`, `i`, `Ġh`, `Ġhi`, `hi`.
    const VOCAB: &str = r#"{"<s>":0,"<pad>":1,"</s>":2,"<unk>":3,"h":4,"i":5,"Ġ":6,"Ġh":7,"Ġhi":8,"hi":9,"<mask>":10}"#;
    const MERGES: &str = "#version: 0.2\nĠ h\nĠh i\nh i\n";

    #[test]
    fn tiny_files_roundtrip() {
        let d = temp_dir("tiny");
        let v = write(&d, "vocab.json", VOCAB);
        let m = write(&d, "merges.txt", MERGES);
        let tok = BartTokenizer::from_files(&v, &m).expect("load");
        assert_eq!(tok.mask_id(), 10);
        assert_eq!(tok.vocab_size(), 11);
        assert_eq!(tok.encode("hi hi").expect("enc"), vec![0, 9, 8, 2]);
        assert_eq!(tok.encode("hi <mask>").expect("enc"), vec![0, 9, 10, 2]);
        assert_eq!(tok.encode("").expect("enc"), vec![0, 2]);
        assert_eq!(tok.decode(&[0, 9, 8, 2]).expect("dec"), "hi hi");
        assert_eq!(
            tok.decode_with(&[0, 9, 10, 2], false, false).expect("dec"),
            "<s>hi<mask></s>"
        );
        assert_eq!(
            tok.encode_truncated("hi hi hi hi", 4).expect("enc"),
            vec![0, 9, 8, 2]
        );
        assert_eq!(tok.encode_truncated("hi", 2).expect("enc"), vec![0, 2]);
        assert!(matches!(
            tok.encode_truncated("hi", 1),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            tok.decode(&[0, 11]),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            tok.encode_batch(&[], None),
            Err(Error::InvalidArgument { .. })
        ));
        let from_dir = BartTokenizer::from_dir(&d).expect("from_dir");
        assert_eq!(from_dir.encode("hi hi").expect("enc"), vec![0, 9, 8, 2]);
    }

    #[test]
    fn padded_layout() {
        let b = EncodedBatch {
            ids: vec![vec![0, 5, 2], vec![0, 2], vec![0, 7, 8, 9, 2]],
        };
        let p = b.padded(1);
        assert_eq!((p.batch, p.seq_len), (3, 5));
        assert_eq!(p.ids, vec![0, 5, 2, 1, 1, 0, 2, 1, 1, 1, 0, 7, 8, 9, 2]);
        assert_eq!(
            p.attention_mask,
            vec![1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]
        );
        let e = EncodedBatch::default().padded(1);
        assert_eq!((e.batch, e.seq_len, e.ids.len()), (0, 0, 0));
    }

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("don't . , ? ! i 'm it 's we 've you 're is n't ' x"),
            "don't.,?! i'm it's we've you're isn't'x"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let d = temp_dir("missing");
        let err = BartTokenizer::from_dir(&d).expect_err("empty dir");
        let msg = err.to_string();
        assert!(matches!(err, Error::Tokenizer { .. }), "{msg}");
        assert!(msg.contains("missing vocab.json and merges.txt"), "{msg}");

        write(&d, "vocab.json", VOCAB);
        let msg = BartTokenizer::from_dir(&d)
            .expect_err("no merges")
            .to_string();
        assert!(
            msg.contains("missing merges.txt") && !msg.contains("missing vocab.json"),
            "{msg}"
        );

        let err = BartTokenizer::from_dir(d.join("nope")).expect_err("no dir");
        assert!(err.to_string().contains("nope"), "{err}");

        let err = BartTokenizer::from_files(d.join("vocab.json"), d.join("merges.txt"))
            .expect_err("missing merges");
        assert!(matches!(&err, Error::Io { path, .. } if path.ends_with("merges.txt")));

        let err = BartTokenizer::from_tokenizer_json(d.join("tokenizer.json")).expect_err("json");
        assert!(matches!(&err, Error::Io { path, .. } if path.ends_with("tokenizer.json")));
    }

    #[test]
    fn malformed_files_are_named() {
        let d = temp_dir("malformed");
        let m = write(&d, "merges.txt", MERGES);
        for (bad, what) in [
            ("{not json", "syntax"),
            ("[1, 2]", "array"),
            (r#"{"<s>": "zero"}"#, "string id"),
            (r#"{"<s>": -1}"#, "negative id"),
            ("{}", "empty"),
        ] {
            let v = write(&d, "vocab.json", bad);
            let err = BartTokenizer::from_files(&v, &m).expect_err(what);
            assert!(err.to_string().contains("vocab.json"), "{what}: {err}");
        }
        // Missing special token.
        let v = write(
            &d,
            "vocab.json",
            r#"{"<s>":0,"<pad>":1,"</s>":2,"<unk>":3,"h":4}"#,
        );
        let err = BartTokenizer::from_files(&v, &m).expect_err("no mask");
        let msg = err.to_string();
        assert!(
            msg.contains("<mask>") && msg.contains("vocab.json"),
            "{msg}"
        );

        let v = write(&d, "vocab.json", VOCAB);
        let bad_m = write(&d, "merges.txt", "#version: 0.2\nĠ h extra\n");
        let err = BartTokenizer::from_files(&v, &bad_m).expect_err("3 parts");
        assert!(err.to_string().contains("merges.txt") && err.to_string().contains("line 2"));
        let bad_m = write(&d, "merges.txt", "#version: 0.2\nx y\n");
        let err = BartTokenizer::from_files(&v, &bad_m).expect_err("oov merge");
        assert!(err.to_string().contains("merges.txt"), "{err}");

        let j = write(&d, "tokenizer.json", "{\"version\": \"1.0\"");
        let err = BartTokenizer::from_tokenizer_json(&j).expect_err("bad json");
        assert!(matches!(err, Error::Tokenizer { .. }));
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
        let bare = Tokenizer::new(BPE::default())
            .to_string(false)
            .expect("serialize");
        let j2 = write(&d, "bare.json", &bare);
        let err = BartTokenizer::from_tokenizer_json(&j2).expect_err("no specials");
        assert!(
            err.to_string().contains("bare.json") && err.to_string().contains("<s>"),
            "{err}"
        );
        // from_dir prefers tokenizer.json, so the broken one is reported.
        assert!(BartTokenizer::from_dir(&d).is_err());
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<BartTokenizer>();
    }
}
