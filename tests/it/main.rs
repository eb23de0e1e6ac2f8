//! The integration tests, linked as one binary (`cargo test --test it`): every module is one
//! area of the library, checked against committed fixtures (made by `scripts/fixtures/*.py`
//! from PyTorch / transformers; no Python is needed to run them).

mod common;

mod ar_parity;
mod bad_inputs;
mod config;
mod corruption_properties;
mod data_readers;
mod finetune;
mod fuzz;
mod generate;
mod length_head;
mod model_parity;
mod precision;
mod tokenizer_parity;
mod train_parity;
mod trainer;
