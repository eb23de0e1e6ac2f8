//! Training: LPLM pre-training (paper sections 3.3 and 4.2) and exit fine-tuning.
//!
//! - `corruption`: BART-style sentence shuffling and Poisson-span text infilling;
//! - [`loss`]: LPLM, soft-exit, deep-supervision and last-layer losses (pads ignored);
//! - `params`: trainable parameters (initialisation, loading, saving);
//! - `optim`: AdamW with linear warm-up/decay and global-norm clipping;
//! - `trainer`: the training loop (accumulation, validation, atomic checkpoints, resume);
//! - `lplm`: the pre-training corpus and objective;
//! - `finetune`: soft / hard / last-layer fine-tuning on (source, target) pairs;
//! - `order_agnostic`: order-agnostic cross-entropy (OAXE) label alignment (Hungarian);
//! - [`distributed`]: data-parallel training over MPI or NCCL (the [`Collective`] trait).

mod corruption;
pub mod distributed;
mod finetune;
pub mod loss;
mod lplm;
mod optim;
mod order_agnostic;
mod params;
mod trainer;

pub use corruption::{word_starts_from_tokens, Corrupted, CorruptionConfig, Corruptor};
pub use distributed::{Collective, SingleProcess};
pub use finetune::{tokenize_pairs, FinetuneMode, FinetuneObjective, Pair, ValidationScorer};
pub use loss::Batch;
pub use lplm::{
    read_documents, split_documents, tokenize_documents, Document, LplmConfig, LplmObjective,
};
pub use optim::{clip_grad_norm, global_norm, AdamW, AdamWConfig, LinearSchedule};
pub use params::Params;
pub use trainer::{
    LogEntry, MicroLoss, Objective, StepProgress, TrainConfig, TrainSummary, Trainer, TrainerState,
};
