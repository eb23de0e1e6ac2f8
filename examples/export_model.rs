//! Exports a checkpoint as a self-contained model directory with f16 weights:
//! `config.json`, `model.safetensors` (f16, transformers layout), `vocab.json`, `merges.txt`.
//!
//! ```text
//! cargo run --release --example export_model -- runs/squad-soft/best models/elmer-small-squadqg
//! ```

use candle_core::Device;
use elmer::train::params::Params;
use elmer::Error;

fn main() -> elmer::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, dst] = args.as_slice() else {
        return Err(Error::invalid_arg(
            "args",
            "usage: export_model <checkpoint dir> <output dir>",
        ));
    };
    let params = Params::from_dir(src, &Device::Cpu)?;
    params.save_f16(dst)?;
    let has_tok = ["tokenizer.json", "vocab.json"]
        .iter()
        .any(|f| std::path::Path::new(src).join(f).is_file());
    let tok_src = if has_tok {
        src.clone()
    } else {
        "assets/tokenizer/bart-base".to_string()
    };
    for f in ["vocab.json", "merges.txt"] {
        let from = std::path::Path::new(&tok_src).join(f);
        let to = std::path::Path::new(dst).join(f);
        std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
    }
    let size = std::fs::metadata(std::path::Path::new(dst).join("model.safetensors"))
        .map_err(|e| Error::io(dst, e))?
        .len();
    println!(
        "exported {} parameters ({:.1} MB f16) to {dst}",
        params.num_parameters(),
        size as f64 / 1e6
    );
    Ok(())
}
