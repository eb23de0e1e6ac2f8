//! The training loop: gradient accumulation, global-norm clipping, AdamW with linear
//! warm-up/decay, dropout on in training only, a progress line (loss, learning rate, tokens
//! per second), periodic validation, atomic checkpoints and exact resume.
//!
//! What to optimise comes from an [`Objective`] (LPLM pre-training, soft-exit or
//! deep-supervision fine-tuning). All randomness of optimizer step `s` (batch sampling,
//! corruption, exit layers, dropout) is drawn from RNGs seeded by `(seed, s)`, so a run
//! killed and resumed from its last checkpoint follows the same trajectory as one that was
//! never interrupted: the "RNG state" of a checkpoint is its step.
//!
//! Checkpoint layout (`out_dir/checkpoint-{step}/`, written to a temporary directory and
//! renamed into place, then `out_dir/latest` updated atomically):
//! `config.json` + `model.safetensors` (Hugging Face `BartForConditionalGeneration` layout,
//! loadable by transformers), `optimizer.safetensors` (AdamW moments) and
//! `trainer_state.json` (step, config, history). The best checkpoint by validation loss is
//! also kept in `out_dir/best/`.
//!
//! Data-parallel runs ([`Trainer::set_collective`], see [`super::distributed`]): rank r
//! computes micro-batches `r * grad_accum ..`, gradients are summed across ranks before
//! clipping, rank 0 validates, logs and writes checkpoints.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fs::write_atomic;
use crate::model::ElmerModel;
use crate::nn::Mode;
use crate::train::distributed::{
    all_reduce_gradients, Collective, SingleProcess, DEFAULT_BUCKET_BYTES,
};
use crate::train::optim::{clip_grad_norm, AdamW, AdamWConfig, LinearSchedule};
use crate::train::params::Params;

/// Loss of one micro-batch.
pub struct MicroLoss {
    /// Scalar loss (differentiable).
    pub loss: Tensor,
    /// Tokens processed (source + target, non-pad), for throughput.
    pub tokens: usize,
}

/// What a training run optimises. `Sync`, so that the micro-batches of a step can run on
/// several threads ([`Trainer::set_micro_batch_threads`]).
pub trait Objective: Sync {
    /// Loss of micro-batch `micro` of optimizer step `step`. `rng` is seeded by
    /// `(seed, step, micro)`: draw batches, corruption and exits from it.
    fn train_loss(
        &self,
        model: &ElmerModel,
        step: usize,
        micro: usize,
        rng: &mut StdRng,
        mode: Mode,
    ) -> Result<MicroLoss>;

    /// Validation loss (deterministic, eval mode).
    fn eval_loss(&self, model: &ElmerModel) -> Result<f64>;

    /// A validation score to select `best/` on, higher is better (e.g. BLEU-4 of text
    /// generated for validation sources). `None` (the default): `best/` is the checkpoint
    /// with the lowest [`Objective::eval_loss`].
    fn eval_score(&self, _model: &ElmerModel) -> Result<Option<f64>> {
        Ok(None)
    }
}

/// Training-loop settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup_steps: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global-norm clipping threshold (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Seed of every random draw.
    pub seed: u64,
    /// Validate every this many steps (0: only at the start and the end).
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub save_every: usize,
    /// Print a progress line every this many steps.
    pub log_every: usize,
    /// Checkpoints to keep (older ones are deleted; `best/` is kept apart).
    pub keep_checkpoints: usize,
    /// Also train `final_logits_bias` (transformers keeps it as a fixed buffer).
    pub train_final_logits_bias: bool,
    /// Output directory.
    pub out_dir: PathBuf,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            lr: 2e-4,
            warmup_steps: 100,
            grad_accum: 1,
            max_grad_norm: Some(2.0),
            adamw: AdamWConfig::default(),
            seed: 42,
            eval_every: 100,
            save_every: 500,
            log_every: 10,
            keep_checkpoints: 2,
            train_final_logits_bias: false,
            out_dir: PathBuf::from("runs/elmer"),
        }
    }
}

/// One line of the training history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    /// Optimizer step (1-based: after this many updates).
    pub step: usize,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens per second over this step (all ranks together).
    pub tokens_per_sec: f64,
    /// Milliseconds this step spent summing gradients across ranks (0 in one process).
    #[serde(default)]
    pub allreduce_ms: f64,
    /// Validation loss, when evaluated at this step.
    pub eval_loss: Option<f64>,
    /// Validation score ([`Objective::eval_score`]), when evaluated at this step and the
    /// objective has one.
    #[serde(default)]
    pub eval_score: Option<f64>,
}

/// Persistent trainer state stored with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The settings of the run.
    pub config: TrainConfig,
    /// Validation loss at step 0 (before training).
    pub initial_eval_loss: Option<f64>,
    /// Best validation loss so far and its step.
    pub best_eval: Option<(usize, f64)>,
    /// Best validation score so far and its step, when the objective has a score (then
    /// `best/` holds that step's weights rather than the lowest-loss ones).
    #[serde(default)]
    pub best_score: Option<(usize, f64)>,
    /// Every logged step so far.
    pub history: Vec<LogEntry>,
    /// Seconds spent training so far.
    pub elapsed_secs: f64,
}

/// Summary returned by [`Trainer::run`].
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The final state.
    pub state: TrainerState,
    /// Step the run started from (0, or the resumed checkpoint's step).
    pub resumed_from: usize,
    /// Mean tokens per second over this run's steps.
    pub tokens_per_sec: f64,
}

fn step_seed(seed: u64, step: usize, micro: usize, stream: u64) -> u64 {
    // SplitMix64-style mixing so nearby (step, micro) pairs get unrelated streams.
    let mut z = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ stream.wrapping_mul(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs an [`Objective`] over [`Params`].
pub struct Trainer {
    params: Params,
    model: ElmerModel,
    optimizer: AdamW,
    config: TrainConfig,
    state: TrainerState,
    /// Emit progress as `tracing` events (target `elmer::train`): evaluations and the run's
    /// summary at `INFO`, every `log_every`-th step at `DEBUG`. Nothing is printed unless the
    /// program installs a `tracing` subscriber.
    pub verbose: bool,
    progress: Option<ProgressFn>,
    comm: Box<dyn Collective>,
    bucket_bytes: usize,
    /// One single-threaded rayon pool per concurrent micro-batch (empty: one at a time on
    /// the calling thread).
    micro_pools: Vec<rayon::ThreadPool>,
}

/// One micro-batch's loss value, tokens and gradients (trainable parameters, by name).
type MicroGrads = (f64, usize, Vec<(String, Tensor)>);

/// The progress callback of a [`Trainer`].
type ProgressFn = Box<dyn FnMut(&StepProgress<'_>)>;

/// What a [`Trainer`] reports to its [progress callback](Trainer::set_progress) after every
/// optimizer step.
#[derive(Debug)]
pub struct StepProgress<'a> {
    /// Steps done (1-based: this step's number).
    pub step: usize,
    /// Steps the run is configured for.
    pub total_steps: usize,
    /// Step this run started (or resumed) from.
    pub resumed_from: usize,
    /// The step's record (loss, learning rate, gradient norm, tokens/s, validation loss).
    pub entry: &'a LogEntry,
    /// Seconds spent training so far, over all resumed runs.
    pub elapsed_secs: f64,
    /// Estimated seconds to `total_steps` at this run's mean speed.
    pub eta_secs: f64,
}

/// What one micro-batch of a step needs, shareable between threads.
struct MicroContext<'a> {
    model: &'a ElmerModel,
    trainable: &'a [(String, candle_core::Var)],
    seed: u64,
    step: usize,
    /// The loss is divided by this (micro-batches per step x ranks) before the backward.
    scale: f64,
    /// Fail on a non-finite loss here (one process; with several ranks the summed loss is
    /// checked by every rank instead).
    check_finite: bool,
}

impl MicroContext<'_> {
    /// Loss, backward pass and gradients of micro-batch `micro` (its random draws seeded by
    /// `(seed, step, micro)`).
    fn run(&self, obj: &dyn Objective, micro: usize) -> Result<MicroGrads> {
        let mut rng = StdRng::seed_from_u64(step_seed(self.seed, self.step, micro, 1));
        let drop_rng = RefCell::new(StdRng::seed_from_u64(step_seed(
            self.seed, self.step, micro, 2,
        )));
        let m = obj.train_loss(
            self.model,
            self.step,
            micro,
            &mut rng,
            Mode::Train { rng: &drop_rng },
        )?;
        let value = m
            .loss
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        if !value.is_finite() && self.check_finite {
            return Err(Error::invalid_arg(
                "loss",
                format!("non-finite training loss {value} at step {}", self.step + 1),
            ));
        }
        let g = (m.loss / self.scale)?.backward()?;
        let grads = self
            .trainable
            .iter()
            .filter_map(|(name, var)| g.get(var.as_tensor()).map(|gv| (name.clone(), gv.detach())))
            .collect();
        Ok((value, m.tokens, grads))
    }
}

fn checkpoint_name(step: usize) -> String {
    format!("checkpoint-{step:07}")
}

impl Trainer {
    /// A trainer starting from `params`. When `config.out_dir/latest` names a checkpoint,
    /// call [`resume`](Self::resume) to continue from it.
    pub fn new(params: Params, config: TrainConfig) -> Result<Self> {
        if config.steps == 0 {
            return Err(Error::invalid_arg("steps", "must be at least 1"));
        }
        if config.grad_accum == 0 {
            return Err(Error::invalid_arg("grad_accum", "must be at least 1"));
        }
        if !(config.lr.is_finite() && config.lr > 0.0) {
            return Err(Error::invalid_arg("lr", "must be finite and > 0"));
        }
        let model = params.model()?;
        Ok(Self {
            optimizer: AdamW::new(config.adamw),
            state: TrainerState {
                step: 0,
                config: config.clone(),
                initial_eval_loss: None,
                best_eval: None,
                best_score: None,
                history: Vec::new(),
                elapsed_secs: 0.0,
            },
            params,
            model,
            config,
            verbose: true,
            progress: None,
            comm: Box::new(SingleProcess),
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            micro_pools: Vec::new(),
        })
    }

    /// Runs up to `threads` micro-batches of a step at the same time, each on a thread of its
    /// own whose kernels run single-threaded (a one-thread rayon pool), instead of one after
    /// the other with every kernel on all cores. The same micro-batches, random draws and
    /// gradient sums as one at a time (summed in micro-batch order; rounding may differ in the
    /// last bits). On a machine with few cores this avoids most of the synchronisation of
    /// multi-threaded small kernels, as data parallelism over processes does; it needs
    /// `grad_accum >= 2` to have anything to overlap, and candle's elementwise pool should
    /// then be single-threaded (`CANDLE_NUM_THREADS=1`, set before the first tensor
    /// operation; the `elmer` binary does this for `--micro-threads`). `1` (the default): off.
    pub fn set_micro_batch_threads(&mut self, threads: usize) -> Result<()> {
        if threads == 0 {
            return Err(Error::invalid_arg(
                "micro_batch_threads",
                "must be at least 1",
            ));
        }
        self.micro_pools = if threads == 1 {
            Vec::new()
        } else {
            (0..threads)
                .map(|i| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(move |_| format!("elmer-micro-{i}"))
                        .build()
                        .map_err(|e| Error::invalid_arg("micro_batch_threads", e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(())
    }

    /// Trains data-parallel over `comm` (see [`super::distributed`]): this process is rank
    /// `comm.rank()` of `comm.world_size()`. Call before [`resume`](Self::resume) and
    /// [`run`](Self::run), with the same settings on every rank.
    pub fn set_collective(&mut self, comm: Box<dyn Collective>) {
        self.comm = comm;
    }

    /// The collective engine (a [`SingleProcess`] unless set).
    pub fn collective(&self) -> &dyn Collective {
        self.comm.as_ref()
    }

    /// Bytes per gradient all-reduce call (default [`DEFAULT_BUCKET_BYTES`]); at least 1.
    pub fn set_bucket_bytes(&mut self, bytes: usize) {
        self.bucket_bytes = bytes.max(1);
    }

    /// Whether this process writes files and logs (rank 0).
    fn is_main(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Calls `f` after every optimizer step (e.g. to drive a progress bar).
    pub fn set_progress(&mut self, f: impl FnMut(&StepProgress<'_>) + 'static) {
        self.progress = Some(Box::new(f));
    }

    /// The parameters being trained.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The model view of the parameters.
    pub fn model(&self) -> &ElmerModel {
        &self.model
    }

    /// Current state.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The checkpoint `out_dir/latest` points to, if any.
    pub fn latest_checkpoint(out_dir: &Path) -> Option<PathBuf> {
        let name = std::fs::read_to_string(out_dir.join("latest")).ok()?;
        let p = out_dir.join(name.trim());
        p.is_dir().then_some(p)
    }

    /// Restores weights, optimizer moments and state from `out_dir/latest` when present;
    /// returns the step resumed from (0 when there is no checkpoint).
    pub fn resume(&mut self) -> Result<usize> {
        self.clean_out_dir()?;
        // Every rank reads what rank 0 left after cleaning.
        self.comm.barrier()?;
        let Some(dir) = Self::latest_checkpoint(&self.config.out_dir) else {
            return Ok(0);
        };
        let device = self.params.device().clone();
        let loaded = Params::from_dir(&dir, &device)?;
        for (name, var) in self.params.vars() {
            let t = loaded
                .vars()
                .get(name)
                .ok_or_else(|| Error::MissingTensor {
                    name: name.clone(),
                    hint: Some(format!("resuming from {}", dir.display())),
                })?;
            var.set(t.as_tensor())?;
        }
        let state_path = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: state_path.clone(),
            message: e.to_string(),
        })?;
        let opt_path = dir.join("optimizer.safetensors");
        let moments =
            candle_core::safetensors::load(&opt_path, &Device::Cpu).map_err(|e| Error::Parse {
                path: opt_path.clone(),
                message: e.to_string(),
            })?;
        self.optimizer
            .load_state(moments, state.step as u64, &device)?;
        self.state = TrainerState {
            config: self.config.clone(),
            ..state
        };
        Ok(self.state.step)
    }

    fn trainable(&self, name: &str) -> bool {
        name != "final_logits_bias" || self.config.train_final_logits_bias
    }

    /// Writes a checkpoint of the current step atomically and updates `latest` (rank 0
    /// only; other ranks return the path rank 0 writes).
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let out = &self.config.out_dir;
        if !self.is_main() {
            return Ok(out.join(checkpoint_name(self.state.step)));
        }
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let name = checkpoint_name(self.state.step);
        let tmp = out.join(format!(".tmp-{name}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        self.params.save(&tmp)?;
        let moments = self.optimizer.state_tensors()?;
        candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors")).map_err(
            |e| Error::Parse {
                path: tmp.join("optimizer.safetensors"),
                message: e.to_string(),
            },
        )?;
        let state = serde_json::to_string_pretty(&self.state).map_err(|e| Error::Parse {
            path: tmp.join("trainer_state.json"),
            message: e.to_string(),
        })?;
        write_atomic(&tmp.join("trainer_state.json"), state.as_bytes())?;
        let dst = out.join(&name);
        crate::fs::replace_dir(&tmp, &dst)?;
        write_atomic(&out.join("latest"), name.as_bytes())?;
        self.prune_checkpoints()?;
        Ok(dst)
    }

    fn prune_checkpoints(&self) -> Result<()> {
        let out = &self.config.out_dir;
        let mut ckpts: Vec<PathBuf> = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("checkpoint-"))
            })
            .collect();
        ckpts.sort();
        let keep = self.config.keep_checkpoints.max(1);
        if ckpts.len() > keep {
            for p in &ckpts[..ckpts.len() - keep] {
                std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
            }
        }
        Ok(())
    }

    fn save_best(&self) -> Result<()> {
        let out = &self.config.out_dir;
        if !self.is_main() {
            return Ok(());
        }
        let tmp = out.join(".tmp-best");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        self.params.save(&tmp)?;
        crate::fs::replace_dir(&tmp, &out.join("best"))
    }

    /// Cleans `out_dir` after an interrupted run: temporary checkpoint directories
    /// (`.tmp-*`) are deleted and a half-replaced `best/` or checkpoint is restored.
    fn clean_out_dir(&self) -> Result<()> {
        let out = &self.config.out_dir;
        if !self.is_main() {
            return Ok(());
        }
        let Ok(entries) = std::fs::read_dir(out) else {
            return Ok(()); // not created yet
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(out, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        for name in &names {
            let p = out.join(name);
            if name.starts_with(".tmp-") && p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
            } else if let Some(orig) = name.strip_prefix(".old-") {
                crate::fs::recover_dir(&out.join(orig))?;
            }
        }
        Ok(())
    }

    /// Validation loss and score; saves `best/` when the step is the best so far (by score
    /// when the objective has one, else by loss).
    fn evaluate(&mut self, obj: &dyn Objective) -> Result<(f64, Option<f64>)> {
        // Rank 0 validates; the others receive its results (their weights are the same).
        let (mut l, mut score) = (0.0, None);
        if self.is_main() {
            l = obj.eval_loss(&self.model)?;
            score = obj.eval_score(&self.model)?;
        }
        if self.comm.world_size() > 1 {
            let mut v = [
                l,
                score.unwrap_or(0.0),
                f64::from(u8::from(score.is_some())),
            ];
            self.comm.all_reduce_sum_f64(&mut v)?;
            l = v[0];
            score = (v[2] > 0.0).then_some(v[1]);
        }
        let step = self.state.step;
        let better_loss = self.state.best_eval.is_none_or(|(_, b)| l < b);
        if better_loss {
            self.state.best_eval = Some((step, l));
        }
        // By score, ties go to the later (longer trained) checkpoint, and the step-0 weights
        // are saved too: they may stay the best.
        let better = match score {
            Some(sc) => {
                let b = self.state.best_score.is_none_or(|(_, b)| sc >= b);
                if b {
                    self.state.best_score = Some((step, sc));
                }
                b
            }
            None => better_loss,
        };
        if better && (step > 0 || score.is_some()) {
            self.save_best()?;
        }
        Ok((l, score))
    }

    /// One optimizer step: accumulate micro-batch gradients, clip, update. Returns the entry.
    fn train_step(&mut self, obj: &dyn Objective, schedule: &LinearSchedule) -> Result<LogEntry> {
        let step = self.state.step;
        let start = Instant::now();
        let accum = self.config.grad_accum;
        let world = self.comm.world_size();
        let first_micro = self.comm.rank() * accum;
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let trainable: Vec<(String, candle_core::Var)> = self
            .params
            .vars()
            .iter()
            .filter(|(name, _)| self.trainable(name))
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        let ctx = MicroContext {
            model: &self.model,
            trainable: &trainable,
            seed: self.config.seed,
            step,
            scale: (accum * world) as f64,
            check_finite: world == 1,
        };
        let micros: Vec<usize> = (first_micro..first_micro + accum).collect();
        let results: Vec<MicroGrads> = if self.micro_pools.len() > 1 && accum > 1 {
            let mut out = Vec::with_capacity(accum);
            for chunk in micros.chunks(self.micro_pools.len()) {
                let part = std::thread::scope(|scope| {
                    let handles: Vec<_> = chunk
                        .iter()
                        .zip(&self.micro_pools)
                        .map(|(&micro, pool)| {
                            let ctx = &ctx;
                            scope.spawn(move || pool.install(|| ctx.run(obj, micro)))
                        })
                        .collect();
                    handles
                        .into_iter()
                        // A panic is a bug: raise it again on this thread.
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect::<Vec<_>>()
                });
                for r in part {
                    out.push(r?);
                }
            }
            out
        } else {
            micros
                .iter()
                .map(|&micro| ctx.run(obj, micro))
                .collect::<Result<Vec<_>>>()?
        };
        for (value, n, micro_grads) in results {
            loss_sum += value;
            tokens += n;
            for (name, gv) in micro_grads {
                let e = grads.remove(&name);
                grads.insert(
                    name,
                    match e {
                        Some(prev) => (prev + gv)?,
                        None => gv,
                    },
                );
            }
        }
        let mut allreduce_ms = 0.0;
        if world > 1 {
            // Every rank checks the summed loss, so all stop together on a bad step.
            let mut totals = [loss_sum, tokens as f64];
            self.comm.all_reduce_sum_f64(&mut totals)?;
            if !totals[0].is_finite() {
                return Err(Error::invalid_arg(
                    "loss",
                    format!(
                        "non-finite training loss (summed over {world} ranks) at step {}",
                        step + 1
                    ),
                ));
            }
            loss_sum = totals[0];
            tokens = totals[1] as usize;
            let names: Vec<(String, Vec<usize>)> = self
                .params
                .vars()
                .iter()
                .filter(|(n, _)| self.trainable(n))
                .map(|(n, v)| (n.clone(), v.as_tensor().dims().to_vec()))
                .collect();
            let st = all_reduce_gradients(
                self.comm.as_ref(),
                &names,
                &mut grads,
                self.bucket_bytes,
                self.params.device(),
            )?;
            allreduce_ms = st.secs * 1000.0;
        }
        let grad_norm = match self.config.max_grad_norm {
            Some(max) => clip_grad_norm(&mut grads, max)?,
            None => crate::train::optim::global_norm(&grads)?,
        };
        let lr = schedule.lr(step);
        self.optimizer.step(&self.params, &grads, lr)?;
        self.state.step += 1;
        let secs = start.elapsed().as_secs_f64();
        self.state.elapsed_secs += secs;
        Ok(LogEntry {
            step: self.state.step,
            loss: loss_sum / (accum * world) as f64,
            lr,
            grad_norm,
            tokens_per_sec: tokens as f64 / secs.max(1e-9),
            allreduce_ms,
            eval_loss: None,
            eval_score: None,
        })
    }

    /// Trains up to `config.steps`, validating, logging and checkpointing on the way.
    pub fn run(&mut self, obj: &dyn Objective) -> Result<TrainSummary> {
        self.run_until(obj, self.config.steps)
    }

    /// Like [`run`](Self::run) but returns once `stop` steps are done (as if the process were
    /// stopped there; only the periodic checkpoints are written).
    pub fn run_until(&mut self, obj: &dyn Objective, stop: usize) -> Result<TrainSummary> {
        let stop = stop.min(self.config.steps);
        let resumed_from = self.state.step;
        self.clean_out_dir()?;
        let schedule = LinearSchedule {
            peak: self.config.lr,
            warmup: self.config.warmup_steps,
            total: self.config.steps,
        };
        if self.state.step == 0 && self.state.initial_eval_loss.is_none() {
            let (l, score) = self.evaluate(obj)?;
            self.state.initial_eval_loss = Some(l);
            let score = score
                .map(|s| format!(" | score {s:.4}"))
                .unwrap_or_default();
            self.log(
                &format!("step 0/{} | eval loss {l:.4}{score}", self.config.steps),
                true,
            );
        }
        let mut tok_time = (0.0f64, 0.0f64);
        while self.state.step < stop {
            let mut entry = self.train_step(obj, &schedule)?;
            tok_time.0 += entry.tokens_per_sec * 1.0;
            tok_time.1 += 1.0;
            let step = self.state.step;
            let last = step == self.config.steps;
            if (self.config.eval_every > 0 && step.is_multiple_of(self.config.eval_every)) || last {
                let (l, score) = self.evaluate(obj)?;
                entry.eval_loss = Some(l);
                entry.eval_score = score;
            }
            let remaining = (self.config.steps - step) as f64 * self.state.elapsed_secs
                / (step - resumed_from).max(1) as f64;
            let show = step.is_multiple_of(self.config.log_every.max(1))
                || last
                || entry.eval_loss.is_some();
            if show {
                let eval = entry
                    .eval_loss
                    .map(|l| format!(" | eval {l:.4}"))
                    .unwrap_or_default()
                    + &entry
                        .eval_score
                        .map(|s| format!(" | score {s:.4}"))
                        .unwrap_or_default();
                let comm = if self.comm.world_size() > 1 {
                    format!(" | all-reduce {:.1} ms", entry.allreduce_ms)
                } else {
                    String::new()
                };
                self.log(
                    &format!(
                        "step {step}/{} | loss {:.4} | lr {:.2e} | grad {:.2} | {:.0} tok/s{comm} | eta {:.0}s{eval}",
                        self.config.steps, entry.loss, entry.lr, entry.grad_norm, entry.tokens_per_sec, remaining
                    ),
                    entry.eval_loss.is_some() || last,
                );
            }
            if let Some(f) = self.progress.as_mut() {
                f(&StepProgress {
                    step,
                    total_steps: self.config.steps,
                    resumed_from,
                    entry: &entry,
                    elapsed_secs: self.state.elapsed_secs,
                    eta_secs: remaining,
                });
            }
            self.state.history.push(entry);
            if (self.config.save_every > 0 && step.is_multiple_of(self.config.save_every)) || last {
                self.save_checkpoint()?;
            }
        }
        let tps = if tok_time.1 > 0.0 {
            tok_time.0 / tok_time.1
        } else {
            0.0
        };
        if self.verbose && self.is_main() {
            let first = self.state.initial_eval_loss.unwrap_or(f64::NAN);
            let last = self
                .state
                .history
                .iter()
                .rev()
                .find_map(|e| e.eval_loss)
                .unwrap_or(f64::NAN);
            tracing::info!(
                target: "elmer::train",
                "trained {} steps in {:.1}s ({tps:.0} tok/s); eval loss {first:.4} -> {last:.4}; best {:?}",
                self.state.step, self.state.elapsed_secs, self.state.best_eval
            );
        }
        Ok(TrainSummary {
            state: self.state.clone(),
            resumed_from,
            tokens_per_sec: tps,
        })
    }

    /// A progress line: `INFO` when `important` (evaluations, the last step), else `DEBUG`.
    fn log(&self, line: &str, important: bool) {
        if !self.verbose || !self.is_main() {
            return;
        }
        if important {
            tracing::info!(target: "elmer::train", "{line}");
        } else {
            tracing::debug!(target: "elmer::train", "{line}");
        }
    }
}
