//! One module per subcommand: a `clap::Args` struct and `run`.

pub mod calibrate;
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
pub mod validation;

/// Says how a data-parallel run splits its batches (nothing in a single process).
pub(crate) fn log_data_parallel(
    comm: &dyn elmer::train::Collective,
    batch_size: usize,
    grad_accum: usize,
) {
    let world = comm.world_size();
    if world > 1 {
        tracing::info!(
            "data-parallel over {}: {world} ranks x {grad_accum} micro-batches of {batch_size} \
             = {} examples per step (the same steps as one process with --grad-accum {})",
            comm.name(),
            world * grad_accum * batch_size,
            world * grad_accum
        );
    }
}
