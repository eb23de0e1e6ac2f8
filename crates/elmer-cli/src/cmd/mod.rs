//! One module per subcommand: a `clap::Args` struct and `run`.

pub mod eval;
pub mod export;
pub mod finetune;
pub mod generate;
pub mod init;
pub mod inspect;
pub mod pretrain;
pub mod score;
pub mod tokenize;
pub mod tokenizer;
