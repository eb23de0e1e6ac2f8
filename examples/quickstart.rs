//! Quickstart: generate questions with the small ELMER model that ships with the crate
//! (`models/elmer-small-squadqg`), with each exit policy, and show exit statistics and
//! per-sample latency. No download needed.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use elmer::{BartTokenizer, ElmerModel, ExitPolicy, LoadOptions};
use elmer::{GenerationConfig, Generator};

const SENTENCES: &[&str] = &[
    "the eiffel tower was completed in 1889 and was the tallest man-made structure in the world for 41 years .",
    "oxygen is a chemical element with symbol o and atomic number 8 .",
    "the university of notre dame was founded in 1842 by father edward sorin .",
    "beyonce released her debut album , dangerously in love , in 2003 .",
];

/// The small model that ships with the repository.
const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/elmer-small-squadqg");

fn main() -> elmer::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| MODEL.to_string());
    let model = ElmerModel::from_dir(&dir, &LoadOptions::default())?;
    let tok = BartTokenizer::from_dir(&dir)?;
    println!(
        "model {dir}: {} decoder layers (exit layers 1..={})",
        model.num_decoder_layers(),
        model.num_decoder_layers()
    );
    for policy in [
        ExitPolicy::Soft,
        ExitPolicy::Hard { threshold: 1.0 },
        ExitPolicy::LastLayer,
    ] {
        let cfg = GenerationConfig {
            max_len: 24,
            policy: Some(policy.clone()),
            batch_size: 1,
            collapse_repeats: true,
            ..GenerationConfig::default()
        };
        let mut gen = Generator::new(&model, cfg)?.with_tokenizer(&tok);
        // Warm-up so the timings below are steady.
        gen.generate(&SENTENCES[..1])?;
        let mut gen = Generator::new(&model, gen.config().clone())?.with_tokenizer(&tok);
        let outs = gen.generate(SENTENCES)?;
        println!("\nexit {}:", policy.name());
        for (s, g) in SENTENCES.iter().zip(&outs) {
            println!(
                "  {s}\n    -> {}   (exit layers {:?}, {:.1} ms)",
                g.text, g.exit_layers, g.latency_ms
            );
        }
        let ms: f64 = outs.iter().map(|g| g.latency_ms).sum::<f64>() / outs.len() as f64;
        println!("  exits: {}; {ms:.1} ms/sample at batch 1", gen.stats());
    }
    Ok(())
}
