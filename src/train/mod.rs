//! Training: LPLM pre-training (paper sections 3.3 and 4.2) and exit fine-tuning.
//!
//! - [`corruption`]: BART-style sentence shuffling and Poisson-span text infilling;
//! - [`loss`]: LPLM, soft-exit, deep-supervision and last-layer losses (pads ignored);
//! - [`params`]: trainable parameters (initialisation, loading, saving);
//! - [`optim`]: AdamW with linear warm-up/decay and global-norm clipping;
//! - [`trainer`]: the training loop (accumulation, validation, atomic checkpoints, resume);
//! - [`lplm`]: the pre-training corpus and objective;
//! - [`finetune`]: soft / hard / last-layer fine-tuning on (source, target) pairs.

pub mod corruption;
pub mod finetune;
pub mod loss;
pub mod lplm;
pub mod optim;
pub mod params;
pub mod trainer;
