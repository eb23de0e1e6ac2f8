//! The weight files of a checkpoint directory, whatever their format (single or sharded
//! safetensors, single or sharded `pytorch_model.bin`), behind one name -> tensor index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::parse_err;
use super::pickle::PthFile;
use super::safetensors_file::SafeFile;
use super::WeightFormat;
use crate::error::{Error, Result};
use crate::model_dir::ModelDir;

enum Source {
    Safe(SafeFile),
    Pth(PthFile),
}

pub(crate) struct TensorFiles {
    pub(crate) files: Vec<PathBuf>,
    sources: Vec<Source>,
    /// stored name -> (source index, dtype, shape)
    pub(crate) index: BTreeMap<String, (usize, DType, Vec<usize>)>,
    pub(crate) format: WeightFormat,
}

fn read_index(path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| parse_err(path, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| parse_err(path, "no \"weight_map\" object"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for v in map.values() {
        let f = v
            .as_str()
            .ok_or_else(|| parse_err(path, "weight_map values must be file names"))?;
        let p = dir.join(f);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

impl TensorFiles {
    pub(crate) fn open(md: &ModelDir) -> Result<Self> {
        let dir = md.path();
        let main = md.weights_path().to_path_buf();
        let format = md.weight_format();
        let files = match format {
            WeightFormat::Safetensors | WeightFormat::PytorchBin => vec![main],
            _ => read_index(&main)?,
        };
        let mut sources = Vec::new();
        let mut index = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            if !f.is_file() {
                return Err(Error::Checkpoint {
                    path: f.clone(),
                    message: "weight shard listed in the index is missing".into(),
                });
            }
            match format {
                WeightFormat::Safetensors | WeightFormat::ShardedSafetensors => {
                    let st = SafeFile::open(f)?;
                    for (name, dtype, shape) in st.infos(f)? {
                        index.insert(name, (i, dtype, shape));
                    }
                    sources.push(Source::Safe(st));
                }
                _ => {
                    let pth = PthFile::open(f)?;
                    for (name, dtype, shape) in pth.infos() {
                        index.insert(name.to_string(), (i, dtype, shape.to_vec()));
                    }
                    sources.push(Source::Pth(pth));
                }
            }
        }
        if index.is_empty() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("{} holds no tensors", files[0].display()),
            });
        }
        Ok(Self {
            files,
            sources,
            index,
            format,
        })
    }

    pub(crate) fn load(&self, name: &str) -> Result<Tensor> {
        let (i, _, _) = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            hint: None,
        })?;
        let file = &self.files[*i];
        match &self.sources[*i] {
            Source::Safe(st) => st
                .load(name)
                .map_err(|e| parse_err(file, format!("tensor `{name}`: {e}"))),
            // Errors already name the file and the tensor.
            Source::Pth(p) => p.load(name),
        }
    }
}
