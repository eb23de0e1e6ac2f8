//! LPLM pre-training through the library: a tiny ELMER (d 64, 2+2 layers, BART vocabulary)
//! trained for a few steps on a few sentences with layer-permutation language modelling
//! (BART corruption, every target token assigned a random exit layer), with a progress
//! callback and checkpoints in a temporary directory. Real runs (a corpus file, presets,
//! resume): `cargo run --release -p elmer-cli -- pretrain --help`.
//!
//! ```text
//! cargo run --release --example pretrain
//! ```

use candle_core::Device;
use elmer::train::Params;
use elmer::train::{split_documents, tokenize_documents, LplmConfig, LplmObjective};
use elmer::train::{TrainConfig, Trainer};
use elmer::{BartTokenizer, ElmerConfig};

const TOKENIZER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tokenizer/bart-base");

const TEXT: &[&str] = &[
    "The Eiffel Tower was completed in 1889. It was the tallest structure in the world for 41 years.",
    "Oxygen is a chemical element with symbol O and atomic number 8. It is a highly reactive nonmetal.",
    "The University of Notre Dame was founded in 1842 by Father Edward Sorin.",
    "Beyonce released her debut album, Dangerously in Love, in 2003. It sold eleven million copies.",
    "The Thames flows through London. It is 346 km long and the longest river entirely in England.",
    "Water boils at 100 degrees Celsius at sea level. At higher altitudes it boils at lower temperatures.",
];

fn main() -> elmer::Result<()> {
    let device = Device::Cpu;
    let tok = BartTokenizer::from_dir(TOKENIZER)?;
    // Documents -> framed token chunks (<s> ... </s>, at most 32 tokens); 2 held out.
    let texts: Vec<String> = TEXT.iter().map(|s| s.to_string()).collect();
    let (train, valid) = split_documents(tokenize_documents(&tok, &texts, 32)?, 2, 1);
    let config = ElmerConfig {
        d_model: 64,
        encoder_layers: 2,
        decoder_layers: 2,
        encoder_attention_heads: 4,
        decoder_attention_heads: 4,
        encoder_ffn_dim: 256,
        decoder_ffn_dim: 256,
        max_position_embeddings: 64,
        ..ElmerConfig::default()
    };
    // Random weights (seed 1), with the soft-exit concat_head.
    let params = Params::init(config, 1, true, &device)?;
    // k: exit-layer assignments per sequence (the paper: 10); BART corruption by default.
    let lplm = LplmConfig {
        batch_size: 4,
        k: 2,
        ..LplmConfig::default()
    };
    let obj = LplmObjective::new(train, valid, lplm, params.config(), 1, &device)?;
    let out = tempfile::tempdir().map_err(|e| elmer::Error::io(std::env::temp_dir(), e))?;
    let tc = TrainConfig {
        steps: 30,
        lr: 3e-3,
        warmup_steps: 5,
        eval_every: 10,
        out_dir: out.path().to_path_buf(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(params, tc)?;
    trainer.set_progress(|p| {
        if let Some(held_out) = p.entry.eval_loss {
            let (step, loss, total) = (p.step, p.entry.loss, p.total_steps);
            println!("step {step}/{total}: loss {loss:.3}, held-out {held_out:.3}");
        }
    });
    let summary = trainer.run(&obj)?; // checkpoints at the last step
    let accuracy = obj.reconstruction_accuracy(trainer.model())?;
    let first = summary.state.initial_eval_loss.unwrap_or(f64::NAN);
    let best = summary.state.best_eval.map_or(f64::NAN, |b| b.1);
    println!(
        "held-out LPLM loss {first:.3} -> {best:.3}; {:.0} tokens/s",
        summary.tokens_per_sec
    );
    println!("held-out reconstruction accuracy per exit layer: {accuracy:.3?}");
    let last = Trainer::latest_checkpoint(out.path()).expect("a checkpoint at the last step");
    println!("last checkpoint (removed on exit): {}", last.display());
    Ok(())
}
