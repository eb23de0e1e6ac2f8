//! The crate's error type.
//!
//! Every fallible public function returns [`Result<T>`](crate::Result). Variants name the
//! file, tensor, field or argument at fault, so a user can act on the message alone.

use std::path::PathBuf;

/// Everything that can go wrong in `elmer`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its contents could not be parsed (JSON, safetensors, pickle, ...).
    #[error("{path}: cannot parse: {message}")]
    Parse { path: PathBuf, message: String },

    /// A configuration field holds an invalid value.
    #[error("invalid config field `{field}`: {message}")]
    Config { field: String, message: String },

    /// A checkpoint directory is unusable as a whole (no weights, no config, ...).
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// An expected tensor is absent from the checkpoint.
    #[error("checkpoint is missing tensor `{name}`{}", .hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    MissingTensor { name: String, hint: Option<String> },

    /// A tensor is present but has the wrong shape.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// A function argument is invalid (empty batch, id out of vocabulary, zero length, ...).
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument { name: String, message: String },

    /// The model cannot do what was asked (e.g. soft exit without a `concat_head`).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// Tokenizer files missing or unusable, or a tokenizer failure.
    #[error("tokenizer{}: {message}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        path: Option<PathBuf>,
        message: String,
    },

    /// A collective operation of data-parallel training failed or timed out (a rank died,
    /// hangs, or the engine reported an error).
    #[error("{engine} {op} on rank {rank}: {message}")]
    Collective {
        engine: String,
        op: String,
        rank: usize,
        message: String,
    },

    /// Model hub access failed (feature `hub`).
    #[error("model hub: {0}")]
    Hub(String),

    /// Metric inputs of mismatched lengths or without references (feature `metrics`).
    #[cfg(feature = "metrics")]
    #[error(transparent)]
    Metrics(#[from] elmer_metrics::MetricsError),

    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid_arg(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            message: message.into(),
        }
    }

    /// The same error reported against argument `name` (e.g. a command-line flag) when it is
    /// an [`Error::InvalidArgument`]; other errors are returned unchanged.
    pub fn for_argument(self, name: impl Into<String>) -> Self {
        match self {
            Error::InvalidArgument { message, .. } => Error::InvalidArgument {
                name: name.into(),
                message,
            },
            other => other,
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
