//! Training: LPLM pre-training (paper section 3.3 / 4.2) and exit fine-tuning.
//!
//! - [`corruption`]: BART-style sentence shuffling and Poisson-span text infilling.

pub mod corruption;
