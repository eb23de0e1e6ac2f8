//! Model arguments to local directories: a path, or (feature `hub`) a model-hub id.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Resolves a model argument to a local directory: an existing directory is used as is;
/// otherwise, with the `hub` feature, `id` is a model-hub repository (e.g. `RUCAIBox/elmer`)
/// fetched into the local Hugging Face cache.
pub fn resolve_model_dir(id: &str) -> Result<PathBuf> {
    let p = Path::new(id);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    #[cfg(feature = "hub")]
    {
        super::hub::download(id)
    }
    #[cfg(not(feature = "hub"))]
    {
        Err(Error::Checkpoint {
            path: p.to_path_buf(),
            message:
                "not a local directory (build with the `hub` feature to download model-hub ids)"
                    .into(),
        })
    }
}
