//! Model selection on a task's validation split: the score of generated text (the task's
//! metrics, as `elmer eval` reports them), and the generation settings chosen with it (the
//! length offset of a length head, the hard-exit entropy threshold), shared by `finetune`
//! and `calibrate`.

use elmer::data::Example;
use elmer::train::ValidationScorer;
use elmer::{BartTokenizer, ElmerModel, ExitPolicy, GenerationConfig, Result};

use super::eval::generate_texts;
use crate::tasks::{postprocess, Task};

/// What generation on the validation split needs: sources, references and options.
#[derive(Clone)]
pub(crate) struct Validation {
    task: &'static Task,
    tok: BartTokenizer,
    sources: Vec<String>,
    refs: Vec<String>,
    max_len: usize,
    max_src: usize,
    batch_size: usize,
    length_offset: Option<i64>,
    length_candidates: Option<usize>,
    /// `--orphan-pieces` (`None`: the model's recorded choice).
    drop_orphan_pieces: Option<bool>,
    /// Full slot or predicted lengths, as `--length` says.
    length: elmer::TargetLength,
}

impl Validation {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        task: &'static Task,
        tok: &BartTokenizer,
        valid: &[Example],
        max_len: usize,
        max_src: usize,
        batch_size: usize,
        length_offset: Option<i64>,
        length_candidates: Option<usize>,
        drop_orphan_pieces: Option<bool>,
        length: elmer::TargetLength,
    ) -> Self {
        Self {
            task,
            tok: tok.clone(),
            sources: valid.iter().map(|e| e.source.clone()).collect(),
            refs: valid.iter().map(|e| postprocess(&e.target)).collect(),
            max_len,
            max_src,
            batch_size,
            length_offset,
            length_candidates,
            drop_orphan_pieces,
            length,
        }
    }

    /// Selection score and exit fractions of `model` under `policy`.
    pub(crate) fn score(&self, model: &ElmerModel, policy: &ExitPolicy) -> Result<(f64, Vec<f64>)> {
        self.score_with(model, policy, self.length_offset, self.drop_orphan_pieces)
    }

    /// [`score`](Self::score) with an explicit length offset and orphan-piece choice (`None`:
    /// the model's own).
    pub(crate) fn score_with(
        &self,
        model: &ElmerModel,
        policy: &ExitPolicy,
        length_offset: Option<i64>,
        drop_orphan_pieces: Option<bool>,
    ) -> Result<(f64, Vec<f64>)> {
        let cfg = GenerationConfig {
            max_len: self.max_len,
            policy: Some(policy.clone()),
            batch_size: self.batch_size,
            max_source_len: Some(self.max_src),
            length_offset,
            length_candidates: self.length_candidates,
            drop_orphan_pieces,
            length: self.length,
            ..GenerationConfig::default()
        };
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        let (hyps, stats) = generate_texts(model, &self.tok, &sources, cfg)?;
        let scores = self.task.score(&hyps, &self.refs)?;
        Ok((self.task.selection_score(&scores), stats.fractions()))
    }

    pub(crate) fn scorer(self, policy: ExitPolicy) -> ValidationScorer {
        Box::new(move |model: &ElmerModel| Ok(self.score(model, &policy)?.0))
    }

    /// The offset added to predicted lengths (-2..=6 tokens) with the best validation score
    /// under `policy`, for a model with a length head.
    pub(crate) fn choose_length_offset(
        &self,
        model: &ElmerModel,
        policy: &ExitPolicy,
    ) -> Result<i64> {
        let mut best = (0i64, f64::NEG_INFINITY);
        for off in -2i64..=6 {
            let (s, _) = self.score_with(model, policy, Some(off), self.drop_orphan_pieces)?;
            tracing::info!("length offset {off:+}: score {s:.3}");
            if s > best.1 {
                best = (off, s);
            }
        }
        Ok(best.0)
    }

    /// Whether dropping orphan subword pieces (`GenerationConfig::drop_orphan_pieces`) gives
    /// a higher validation score under `policy` than keeping them, with length offset
    /// `length_offset` (`None`: `--length-offset`, else the model's recorded one). Ties keep.
    pub(crate) fn choose_orphan_pieces(
        &self,
        model: &ElmerModel,
        policy: &ExitPolicy,
        length_offset: Option<i64>,
    ) -> Result<bool> {
        let offset = length_offset.or(self.length_offset);
        let (keep, _) = self.score_with(model, policy, offset, Some(false))?;
        let (drop, _) = self.score_with(model, policy, offset, Some(true))?;
        tracing::info!("orphan subword pieces: kept {keep:.3}, dropped {drop:.3}");
        Ok(drop > keep)
    }

    /// The largest entropy threshold whose score stays within `max_loss` (a fraction) of the
    /// last layer's; `None` when none does.
    pub(crate) fn choose_threshold(
        &self,
        model: &ElmerModel,
        max_loss: f64,
    ) -> Result<Option<f64>> {
        // With the model's recorded length offset (chosen just before).
        let (last, _) = self.score_with(model, &ExitPolicy::LastLayer, None, None)?;
        tracing::info!("threshold choice on validation: last layer score {last:.3}");
        let mut chosen = None;
        // Entropies in nats: up to ln(V), where a uniform off-ramp sits.
        let max_entropy = (model.config().vocab_size as f64).ln();
        let grid = [
            0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0,
        ];
        for t in grid.into_iter().take_while(|&t| t < max_entropy) {
            let (s, fractions) =
                self.score_with(model, &ExitPolicy::Hard { threshold: t }, None, None)?;
            let early = 1.0 - fractions.last().copied().unwrap_or(1.0);
            tracing::info!(
                "hard:{t}: score {s:.3}, {:.1}% of tokens exit before the last layer",
                100.0 * early
            );
            if s >= (1.0 - max_loss) * last {
                chosen = Some(t);
            }
        }
        Ok(chosen)
    }

    /// The hard-exit policy to record: `hard:<t>` at the threshold
    /// [`choose_threshold`](Self::choose_threshold) picks, else `last` (with a warning).
    pub(crate) fn hard_policy(&self, model: &ElmerModel, max_loss: f64) -> Result<String> {
        Ok(match self.choose_threshold(model, max_loss)? {
            Some(t) => format!("hard:{t}"),
            None => {
                tracing::warn!(
                    "no hard-exit threshold keeps the validation score within {:.0}% of the \
                     last layer's; recording last",
                    100.0 * max_loss
                );
                "last".to_string()
            }
        })
    }
}
