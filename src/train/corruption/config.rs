//! The noising hyper-parameters ([`CorruptionConfig`]) and their validation.

use crate::error::{Error, Result};
use rand_distr::Poisson;

pub(super) fn invalid(name: &str, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name: name.to_string(),
        message: message.into(),
    }
}

/// Hyper-parameters of the BART-style noising.
#[derive(Debug, Clone, PartialEq)]
pub struct CorruptionConfig {
    /// Share of the maskable content units (tokens, or words with
    /// [`whole_word`](Self::whole_word)) removed by text infilling, in `[0, 1]`.
    /// Default `0.15`.
    pub mask_ratio: f64,
    /// Mean of the Poisson distribution of span lengths (in units); must be
    /// finite and `> 0`. Default `3.0` (the authors' script used `3.5`).
    pub poisson_lambda: f64,
    /// Spans start at word starts and cover whole words; requires the
    /// `word_start` argument of [`Corruptor::corrupt`](super::Corruptor::corrupt). Default `false`.
    pub whole_word: bool,
    /// Share of spans (and inserted noise tokens) replaced by a random
    /// non-special token instead of `<mask>`, in `[0, 1]`. Default `0.0`.
    pub random_token_ratio: f64,
    /// Permute the sentences before infilling. Default `true`.
    pub sentence_shuffle: bool,
    /// Extra insertion noise: `round(insert_ratio * m)` tokens inserted into
    /// the infilled content of length `m`, in `[0, 1]`. Default `0.0`.
    pub insert_ratio: f64,
}

impl Default for CorruptionConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.15,
            poisson_lambda: 3.0,
            whole_word: false,
            random_token_ratio: 0.0,
            sentence_shuffle: true,
            insert_ratio: 0.0,
        }
    }
}

impl CorruptionConfig {
    /// Checks every field; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let unit = |name: &str, v: f64| -> Result<()> {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(invalid(name, format!("must be in [0, 1], got {v}")))
            }
        };
        unit("mask_ratio", self.mask_ratio)?;
        unit("random_token_ratio", self.random_token_ratio)?;
        unit("insert_ratio", self.insert_ratio)?;
        if !(self.poisson_lambda.is_finite() && self.poisson_lambda > 0.0) {
            return Err(invalid(
                "poisson_lambda",
                format!("must be finite and > 0, got {}", self.poisson_lambda),
            ));
        }
        if self.poisson_lambda > Poisson::<f64>::MAX_LAMBDA {
            return Err(invalid(
                "poisson_lambda",
                format!(
                    "must be at most {}, got {}",
                    Poisson::<f64>::MAX_LAMBDA,
                    self.poisson_lambda
                ),
            ));
        }
        Ok(())
    }
}
