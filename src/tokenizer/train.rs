//! Training a byte-level BPE vocabulary sized for the model, with BART's special tokens and
//! framing (the vocabulary of a small ELMER need not be BART's 50,265 words: the off-ramp
//! projection `[d, vocab]` runs after every decoder layer, so its size sets most of a small
//! model's arithmetic).
//!
//! The result behaves exactly like a BART tokenizer with another vocabulary: GPT-2's
//! pre-tokenization regex without prefix space, byte-level alphabet (nothing is ever
//! unknown), `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3, `<mask>` = the last id (with
//! `lstrip`), `<s> … </s>` framing. It is trained with the `tokenizers` crate's BPE trainer
//! and saved as `tokenizer.json` plus `vocab.json` / `merges.txt`, so every loader in this
//! crate and transformers' `BartTokenizerFast` read it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BpeTrainer, Vocab, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::{tok_err, BartTokenizer, BOS_TOKEN, EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, UNK_TOKEN};
use crate::error::{Error, Result};

/// Smallest vocabulary [`BartTokenizer::train`] accepts: the five special tokens and the
/// 256 byte symbols, plus at least one merge.
pub const MIN_TRAINED_VOCAB: usize = 5 + 256 + 1;
/// Largest vocabulary [`BartTokenizer::train`] accepts (ids are `u32`, but an off-ramp of
/// more than a million rows is certainly a typo).
pub const MAX_TRAINED_VOCAB: usize = 1 << 20;

/// Options of [`BartTokenizer::train`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerTrainConfig {
    /// Number of ids including the five special tokens and the 256 byte symbols (e.g. 8,192).
    /// The trainer stops earlier when the corpus has no pair left to merge; the trained
    /// tokenizer's [`BartTokenizer::vocab_size`] says what it reached.
    pub vocab_size: usize,
    /// A pair is merged only if it occurs at least this often (default 2).
    pub min_frequency: u64,
    /// Lowercase every corpus line before training (for lowercased tasks such as the Du et
    /// al. SQuAD split; the tokenizer itself does not lowercase its input).
    pub lowercase: bool,
}

impl Default for TokenizerTrainConfig {
    fn default() -> Self {
        Self {
            vocab_size: 8192,
            min_frequency: 2,
            lowercase: false,
        }
    }
}

impl BartTokenizer {
    /// Trains a byte-level BPE vocabulary of at most `cfg.vocab_size` ids on the lines of
    /// `files` (UTF-8 text; every line is one training sequence, empty lines are skipped).
    ///
    /// Ids: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then the 256 byte symbols, then the
    /// merges in the order learnt, and `<mask>` last. Deterministic for the same files and
    /// options. Save it with [`BartTokenizer::save_dir`].
    ///
    /// Errors: [`Error::InvalidArgument`] for no file or a vocabulary size outside
    /// 262..=1,048,576; [`Error::Io`] / [`Error::Parse`] naming
    /// the corpus file that cannot be read or is not UTF-8; [`Error::Tokenizer`] if the
    /// corpus holds no text.
    ///
    /// ```no_run
    /// use elmer::{BartTokenizer, TokenizerTrainConfig};
    /// let cfg = TokenizerTrainConfig { vocab_size: 8192, ..Default::default() };
    /// let tok = BartTokenizer::train(&["corpus.txt"], &cfg)?;
    /// tok.save_dir("models/my-model")?;
    /// # Ok::<(), elmer::Error>(())
    /// ```
    pub fn train(files: &[impl AsRef<Path>], cfg: &TokenizerTrainConfig) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::invalid_arg("files", "no corpus file given"));
        }
        if !(MIN_TRAINED_VOCAB..=MAX_TRAINED_VOCAB).contains(&cfg.vocab_size) {
            return Err(Error::invalid_arg(
                "vocab_size",
                format!(
                    "{} is outside {MIN_TRAINED_VOCAB}..={MAX_TRAINED_VOCAB}",
                    cfg.vocab_size
                ),
            ));
        }
        let mut lines = Vec::new();
        for f in files {
            let path = f.as_ref();
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            for line in crate::fs::lines(std::io::BufReader::new(file), path) {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                lines.push(if cfg.lowercase {
                    line.to_lowercase()
                } else {
                    line
                });
            }
        }
        let first: Option<PathBuf> = files.first().map(|f| f.as_ref().to_path_buf());
        if lines.is_empty() {
            return Err(tok_err(first.as_deref(), "the corpus holds no text"));
        }
        let specials: Vec<AddedToken> = [BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
            .into_iter()
            .map(|t| AddedToken::from(t, true))
            .collect();
        let trainer = BpeTrainer::builder()
            // `<mask>` is appended after training, as BART has it last.
            .vocab_size(cfg.vocab_size - 1)
            .min_frequency(cfg.min_frequency)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .show_progress(false)
            .build();
        let mut trainer = TrainerWrapper::from(trainer);
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer
            .train(&mut trainer, lines.into_iter())
            .map_err(|e| tok_err(first.as_deref(), format!("BPE training failed: {e}")))?;
        let (mut vocab, merges) = bpe_parts(&tokenizer)?;
        let mask = vocab.len() as u32;
        vocab.insert(MASK_TOKEN.to_string(), mask);
        for (i, t) in [BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
            .iter()
            .enumerate()
        {
            if vocab.get(*t) != Some(&(i as u32)) {
                return Err(tok_err(
                    None,
                    format!("trainer did not give `{t}` id {i} (tokenizers changed?)"),
                ));
            }
        }
        Self::from_vocab_merges(vocab, merges, None)
    }

    /// Writes `tokenizer.json`, `vocab.json` and `merges.txt` into `dir` (created if
    /// missing), each file atomically. [`BartTokenizer::from_dir`] reads them back to the
    /// same tokenizer, as does transformers' `BartTokenizerFast.from_pretrained(dir)`.
    ///
    /// Errors: [`Error::Io`] naming the file that cannot be written; [`Error::Tokenizer`] if
    /// the model is not BPE.
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (vocab, merges) = bpe_parts(&self.inner)?;
        let by_id: BTreeMap<u32, &String> = vocab.iter().map(|(t, i)| (*i, t)).collect();
        let mut vocab_json = String::from("{");
        for (n, (id, tok)) in by_id.iter().enumerate() {
            if n > 0 {
                vocab_json.push(',');
            }
            let key = serde_json::to_string(tok).map_err(|e| tok_err(None, e.to_string()))?;
            vocab_json.push_str(&format!("{key}:{id}"));
        }
        vocab_json.push('}');
        let mut merges_txt = String::from("#version: 0.2\n");
        for (a, b) in &merges {
            merges_txt.push_str(a);
            merges_txt.push(' ');
            merges_txt.push_str(b);
            merges_txt.push('\n');
        }
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| tok_err(None, format!("cannot serialise: {e}")))?;
        crate::fs::write_atomic(&dir.join("vocab.json"), vocab_json.as_bytes())?;
        crate::fs::write_atomic(&dir.join("merges.txt"), merges_txt.as_bytes())?;
        crate::fs::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        Ok(())
    }
}

/// The vocabulary (added tokens included) and ranked merges of a BPE tokenizer.
fn bpe_parts(tokenizer: &Tokenizer) -> Result<(Vocab, Vec<(String, String)>)> {
    let model = serde_json::to_value(tokenizer.get_model())
        .map_err(|e| tok_err(None, format!("cannot serialise the model: {e}")))?;
    if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
        return Err(tok_err(None, "not a BPE tokenizer"));
    }
    let vocab: Vocab = tokenizer.get_vocab(true).into_iter().collect();
    let merges = model
        .get("merges")
        .and_then(|m| m.as_array())
        .ok_or_else(|| tok_err(None, "BPE model without merges"))?
        .iter()
        .map(|m| match m {
            serde_json::Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                _ => None,
            },
            serde_json::Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| tok_err(None, "malformed BPE merges"))?;
    Ok((vocab, merges))
}
