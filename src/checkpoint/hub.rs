//! Model-hub downloads (feature `hub`): fetches a repository's `config.json`, weights and
//! tokenizer files into the local Hugging Face cache (`HF_HOME`, default
//! `~/.cache/huggingface`) and returns the snapshot directory, which then loads like any
//! local checkpoint. Files already in the cache are not downloaded again.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Tokenizer files fetched when the repository has them.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Shard file names listed in a `*.index.json` weight map.
pub fn shard_names(index_json: &str) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_str(index_json).map_err(|e| Error::Hub(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Hub("index has no weight_map".into()))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Downloads (or finds in the cache) the checkpoint `repo_id`, optionally `repo_id@revision`.
pub fn download(repo_id: &str) -> Result<PathBuf> {
    use hf_hub::api::sync::Api;
    use hf_hub::{Repo, RepoType};
    let (id, revision) = match repo_id.split_once('@') {
        Some((i, r)) => (i.to_string(), r.to_string()),
        None => (repo_id.to_string(), "main".to_string()),
    };
    let api = Api::new().map_err(|e| Error::Hub(e.to_string()))?;
    let repo = api.repo(Repo::with_revision(id.clone(), RepoType::Model, revision));
    let hub = |e: hf_hub::api::sync::ApiError| Error::Hub(format!("{id}: {e}"));
    let config = repo.get("config.json").map_err(hub)?;
    let weights_ok = repo.get("model.safetensors").is_ok()
        || match repo.get("model.safetensors.index.json") {
            Ok(idx) => {
                let text = std::fs::read_to_string(&idx).map_err(|e| Error::io(&idx, e))?;
                for s in shard_names(&text)? {
                    repo.get(&s).map_err(hub)?;
                }
                true
            }
            Err(_) => false,
        }
        || repo.get("pytorch_model.bin").is_ok();
    if !weights_ok {
        return Err(Error::Hub(format!(
            "{id}: no model.safetensors, sharded safetensors or pytorch_model.bin"
        )));
    }
    for f in TOKENIZER_FILES {
        let _ = repo.get(f);
    }
    config
        .parent()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| Error::Hub(format!("{id}: cache path has no parent")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_deduplicated() {
        let idx = r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-1.safetensors"}}"#;
        assert_eq!(
            shard_names(idx).unwrap(),
            vec!["m-1.safetensors", "m-2.safetensors"]
        );
        assert!(shard_names("{}").is_err());
    }
}
