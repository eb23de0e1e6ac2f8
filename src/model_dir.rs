//! A checkpoint directory on disk ([`ModelDir`]): where its config, weights and tokenizer files
//! are, found once. Loading the model ([`crate::checkpoint::load_dir`],
//! [`crate::ElmerModel::from_dir`]), the tokenizer ([`crate::BartTokenizer::from_dir`]) and the
//! command line all look files up through it.
//!
//! Layout (Hugging Face): `config.json`; weights as `model.safetensors`,
//! `model.safetensors.index.json` + shards, `pytorch_model.bin` or
//! `pytorch_model.bin.index.json` + shards (first found, in that order); tokenizer as
//! `tokenizer.json` or `vocab.json` + `merges.txt`.

use std::path::{Path, PathBuf};

use crate::checkpoint::{LoadOptions, WeightFormat};
use crate::config::ElmerConfig;
use crate::error::{Error, Result};
use crate::model::ElmerModel;
use crate::tokenizer::BartTokenizer;

/// Weight files looked for, in order of preference.
const WEIGHT_FILES: [(&str, WeightFormat); 4] = [
    ("model.safetensors", WeightFormat::Safetensors),
    (
        "model.safetensors.index.json",
        WeightFormat::ShardedSafetensors,
    ),
    ("pytorch_model.bin", WeightFormat::PytorchBin),
    (
        "pytorch_model.bin.index.json",
        WeightFormat::ShardedPytorchBin,
    ),
];

/// Where a directory's tokenizer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerFiles {
    /// A `tokenizer.json` (the `tokenizers` serialisation).
    Json(PathBuf),
    /// GPT-2 style `vocab.json` + `merges.txt`.
    VocabMerges {
        /// `vocab.json`.
        vocab: PathBuf,
        /// `merges.txt`.
        merges: PathBuf,
    },
}

impl TokenizerFiles {
    /// The tokenizer files in `dir`: `tokenizer.json` if present, else `vocab.json` +
    /// `merges.txt` when both are; `None` otherwise.
    pub fn find(dir: &Path) -> Option<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Some(Self::Json(json));
        }
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        (vocab.is_file() && merges.is_file()).then_some(Self::VocabMerges { vocab, merges })
    }
}

/// A checkpoint directory whose files have been located.
#[derive(Debug, Clone)]
pub struct ModelDir {
    path: PathBuf,
    config: PathBuf,
    weights: PathBuf,
    format: WeightFormat,
    tokenizer: Option<TokenizerFiles>,
}

impl ModelDir {
    /// Locates the files of the checkpoint directory `path`. Fails with
    /// [`Error::Checkpoint`] naming the directory when it is not a directory, has no
    /// `config.json` or no weights.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let err = |message: &str| Error::Checkpoint {
            path: path.to_path_buf(),
            message: message.into(),
        };
        // The real cause (permission denied, too many symlinks, ...) rather than a guess.
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(err("not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(err("not a directory (it does not exist)"))
            }
            Err(e) => return Err(Error::io(path, e)),
        }
        // Listing the directory fails early, and clearly, when it is unreadable.
        std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
        let config = path.join("config.json");
        if !regular_file(&config)? {
            return Err(err("no config.json"));
        }
        let mut found = None;
        for (name, f) in WEIGHT_FILES {
            let p = path.join(name);
            if regular_file(&p)? {
                found = Some((p, f));
                break;
            }
        }
        let (weights, format) = found.ok_or_else(|| {
            err(
                "no weights found (expected model.safetensors, model.safetensors.index.json, \
                 pytorch_model.bin or pytorch_model.bin.index.json)",
            )
        })?;
        Ok(Self {
            tokenizer: TokenizerFiles::find(path),
            path: path.to_path_buf(),
            config,
            weights,
            format,
        })
    }

    /// [`open`](Self::open) for a command-line style model argument: an existing directory, or
    /// (feature `hub`) a model-hub id fetched into the local Hugging Face cache.
    pub fn resolve(id: &str) -> Result<Self> {
        Self::open(crate::checkpoint::resolve_model_dir(id)?)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `config.json`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The weight file (for sharded checkpoints, the index).
    pub fn weights_path(&self) -> &Path {
        &self.weights
    }

    /// Format of the weights.
    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// The tokenizer files, if the directory has them.
    pub fn tokenizer_files(&self) -> Option<&TokenizerFiles> {
        self.tokenizer.as_ref()
    }

    /// Reads the config; an absent `elmer_mask_token_id` is taken from the tokenizer's
    /// `<mask>` when the directory has tokenizer files.
    pub fn load_config(&self) -> Result<ElmerConfig> {
        let mut cfg = ElmerConfig::from_file(&self.config)?;
        if cfg.elmer_mask_token_id.is_none() {
            if let Some(id) = self
                .tokenizer
                .as_ref()
                .and_then(mask_id_from_tokenizer_files)
            {
                if (id as usize) < cfg.vocab_size {
                    cfg.elmer_mask_token_id = Some(id);
                }
            }
        }
        Ok(cfg)
    }

    /// Loads the model (see [`ElmerModel::from_dir`]).
    pub fn load_model(&self, opts: &LoadOptions) -> Result<ElmerModel> {
        ElmerModel::from_dir(&self.path, opts)
    }

    /// Loads the directory's own tokenizer. Fails with [`Error::Tokenizer`] naming the
    /// directory when it has no tokenizer files.
    pub fn load_tokenizer(&self) -> Result<BartTokenizer> {
        match &self.tokenizer {
            Some(files) => BartTokenizer::from_files_found(files),
            None => Err(Error::Tokenizer {
                path: Some(self.path.clone()),
                message: "the model directory has no tokenizer files (tokenizer.json, or \
                          vocab.json + merges.txt)"
                    .into(),
            }),
        }
    }
}

/// Whether `p` is a regular file (following symlinks): `false` when absent; an error naming
/// `p` when it exists but is not a regular file (a directory, a FIFO, a device) or cannot be
/// inspected (permission denied, a symlink loop).
fn regular_file(p: &Path) -> Result<bool> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(_) => Err(Error::Checkpoint {
            path: p.to_path_buf(),
            message: "exists but is not a regular file".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// Reads `<mask>`'s id from tokenizer files (`tokenizer.json` or `vocab.json`).
pub(crate) fn mask_id_from_tokenizer_files(files: &TokenizerFiles) -> Option<u32> {
    let as_id = |v: &serde_json::Value| v.as_u64().and_then(|i| u32::try_from(i).ok());
    match files {
        TokenizerFiles::Json(tj) => {
            let text = std::fs::read_to_string(tj).ok()?;
            let v = serde_json::from_str::<serde_json::Value>(&text).ok()?;
            if let Some(added) = v.get("added_tokens").and_then(|a| a.as_array()) {
                for t in added {
                    if t.get("content").and_then(|c| c.as_str()) == Some("<mask>") {
                        return t.get("id").and_then(as_id);
                    }
                }
            }
            v.pointer("/model/vocab/<mask>").and_then(as_id)
        }
        TokenizerFiles::VocabMerges { vocab, .. } => {
            let text = std::fs::read_to_string(vocab).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v.get("<mask>").and_then(as_id)
        }
    }
}
