//! Bad checkpoints and bad inputs give clear errors, never panics.

use std::path::Path;

use crate::common::*;
use candle_core::{Device, Tensor};
use elmer::{DecodeOptions, ElmerModel, Error, ExitPolicy, LoadOptions};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> Error {
    ElmerModel::from_dir(dir, &LoadOptions::default()).unwrap_err()
}

#[test]
fn empty_or_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(dir.path());
    assert!(e.to_string().contains("no config.json"), "{e}");
    std::fs::copy(
        model_dir("cg").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.to_string().contains("no weights found"), "{e}");
    let e = load_err(&dir.path().join("nope"));
    assert!(e.to_string().contains("not a directory"), "{e}");
}

/// Load errors give the real cause: a symlink loop, a FIFO or a directory where a file should
/// be, an unreadable directory (these used to read "no config.json" / "no weights found").
#[cfg(unix)]
#[test]
fn load_errors_name_the_real_cause() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    // Symlink loop.
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    symlink(&a, &b).unwrap();
    symlink(&b, &a).unwrap();
    let e = load_err(&a).to_string();
    assert!(e.contains("symbolic links") || e.contains("symlink"), "{e}");
    // A directory named model.safetensors.
    let dir = tmp.path().join("m");
    copy_dir(&model_dir("cg"), &dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::create_dir(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a regular file"),
        "{e}"
    );
    // A FIFO as config.json (never opened for reading, so nothing blocks).
    let fifo_dir = tmp.path().join("f");
    copy_dir(&model_dir("cg"), &fifo_dir);
    std::fs::remove_file(fifo_dir.join("config.json")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(fifo_dir.join("config.json"))
        .status();
    if made.is_ok_and(|s| s.success()) {
        let e = load_err(&fifo_dir).to_string();
        assert!(
            e.contains("config.json") && e.contains("not a regular file"),
            "{e}"
        );
    }
    // An unreadable directory (root reads it anyway: then there is nothing to check).
    let locked = tmp.path().join("locked");
    copy_dir(&model_dir("cg"), &locked);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read_dir(&locked).is_err() {
        let e = load_err(&locked).to_string();
        assert!(e.contains("ermission denied"), "{e}");
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn truncated_weight_files_name_the_file() {
    for (src, file) in [("cg", "model.safetensors"), ("cg_bin", "pytorch_model.bin")] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&model_dir(src), dir.path());
        let p = dir.path().join(file);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_err(dir.path());
        assert!(matches!(e, Error::Parse { .. }), "{file}: {e:?}");
        assert!(e.to_string().contains(file), "{e}");
    }
}

#[test]
fn corrupt_safetensors_headers_are_reported() {
    let original = std::fs::read(model_dir("cg").join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "trailing bytes",
            [original.clone(), vec![0u8; 3]].concat(),
            "truncated or corrupt",
        ),
        (
            "header longer than the file",
            {
                let mut b = original.clone();
                b[..8].copy_from_slice(&(original.len() as u64).to_le_bytes());
                b
            },
            "does not fit",
        ),
        (
            "header not JSON",
            {
                let mut b = original.clone();
                b[8] = b'#';
                b
            },
            "safetensors header",
        ),
        (
            "shorter than 8 bytes",
            original[..5].to_vec(),
            "not a safetensors file",
        ),
        (
            "header only",
            original[..8 + n].to_vec(),
            "truncated or corrupt",
        ),
    ];
    for (what, bytes, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&model_dir("cg"), dir.path());
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        let e = load_err(dir.path());
        assert!(matches!(e, Error::Parse { .. }), "{what}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("model.safetensors") && msg.contains(needle),
            "{what}: {msg}"
        );
    }
}

#[test]
fn missing_shard_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("cg_sharded"), dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.to_string().contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

fn rewrite(dir: &Path, edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let p = dir.join("model.safetensors");
    let mut map = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    edit(&mut map);
    candle_core::safetensors::save(&map, &p).unwrap();
}

#[test]
fn wrong_shape_and_missing_tensor_are_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("cg"), dir.path());
    rewrite(dir.path(), |m| {
        m.insert(
            "model.decoder.layers.1.fc1.weight".into(),
            Tensor::zeros((63, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    match load_err(dir.path()) {
        Error::TensorShape {
            name,
            expected,
            actual,
        } => {
            assert_eq!(name, "model.decoder.layers.1.fc1.weight");
            assert_eq!(expected, vec![64, 32]);
            assert_eq!(actual, vec![63, 32]);
        }
        e => panic!("{e:?}"),
    }
    rewrite(dir.path(), |m| {
        m.remove("model.decoder.layers.1.fc1.weight");
    });
    match load_err(dir.path()) {
        Error::MissingTensor { name, .. } => assert_eq!(name, "model.decoder.layers.1.fc1.weight"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn config_weights_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("cg"), dir.path());
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"encoder_ffn_dim\": 64", "\"encoder_ffn_dim\": 128");
    std::fs::write(&p, text).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, Error::TensorShape { ref name, .. } if name.contains("encoder.layers.0.fc1")),
        "{e:?}"
    );
    // More decoder layers than the weights have.
    copy_dir(&model_dir("cg"), dir.path());
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"decoder_layers\": 3", "\"decoder_layers\": 4");
    std::fs::write(&p, text).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, Error::MissingTensor { ref name, .. } if name.starts_with("model.decoder.layers.3.")),
        "{e:?}"
    );
}

#[test]
fn extra_tensors_are_reported_and_strict_refuses() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("cg"), dir.path());
    rewrite(dir.path(), |m| {
        m.insert(
            "model.decoder.mystery.weight".into(),
            Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let (_, report) =
        ElmerModel::from_dir_with_report(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(
        report.extra,
        vec!["model.decoder.mystery.weight".to_string()]
    );
    let strict = LoadOptions {
        strict: true,
        ..LoadOptions::default()
    };
    let e = ElmerModel::from_dir(dir.path(), &strict).unwrap_err();
    assert!(
        e.to_string().contains("model.decoder.mystery.weight"),
        "{e}"
    );
}

/// NaN/Inf weights used to load and generate an empty all-`<s>` output with exit 0.
#[test]
fn non_finite_weights_are_refused_unless_allowed() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&model_dir("cg"), dir.path());
        rewrite(dir.path(), |m| {
            let name = "model.decoder.layers.1.fc1.weight";
            let t = &m[name];
            let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v[7] = bad;
            let t = Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap();
            m.insert(name.into(), t);
        });
        let e = load_err(dir.path());
        assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("model.decoder.layers.1.fc1.weight"), "{msg}");
        assert!(
            msg.contains("model.safetensors") && msg.contains("NaN"),
            "{msg}"
        );
        let allow = LoadOptions {
            allow_non_finite: true,
            ..LoadOptions::default()
        };
        ElmerModel::from_dir(dir.path(), &allow).unwrap();
    }
}

#[test]
fn bad_model_inputs() {
    let model = ElmerModel::from_dir(model_dir("cg"), &LoadOptions::default()).unwrap();
    let dev = Device::Cpu;
    // Id beyond the vocabulary (128).
    let bad = Tensor::new(&[[0u32, 5, 128, 2]], &dev).unwrap();
    let e = model.encode(&bad, None).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { ref name, .. } if name == "input_ids"),
        "{e:?}"
    );
    assert!(e.to_string().contains("128"), "{e}");
    // Source longer than the position table (64).
    let long = Tensor::ones((1, 65), candle_core::DType::U32, &dev).unwrap();
    let e = model.encode(&long, None).unwrap_err();
    assert!(e.to_string().contains("position table"), "{e}");
    // Empty input.
    let empty = Tensor::zeros((1, 0), candle_core::DType::U32, &dev).unwrap();
    assert!(model.encode(&empty, None).is_err());
    // Mask of the wrong shape.
    let ok = Tensor::new(&[[0u32, 5, 6, 2]], &dev).unwrap();
    let m = Tensor::new(&[[1u32, 1, 1]], &dev).unwrap();
    assert!(matches!(
        model.encode(&ok, Some(&m)).unwrap_err(),
        Error::InvalidArgument { .. }
    ));
    let enc = model.encode(&ok, None).unwrap();
    // Target length 0 and too long.
    let e = model
        .decode_slot(&enc, 0, ExitPolicy::LastLayer)
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { ref name, .. } if name == "target_len"),
        "{e:?}"
    );
    assert!(model.decode_slot(&enc, 65, ExitPolicy::LastLayer).is_err());
    // Batch mismatch between encoder and decoder.
    let slot = model.slot_input(2, 4).unwrap();
    assert!(model
        .decode(
            &enc,
            &slot,
            None,
            &DecodeOptions::new(ExitPolicy::LastLayer)
        )
        .is_err());
    // Fixed exits out of range or misshapen.
    let slot = model.slot_input(1, 4).unwrap();
    for exits in [
        Tensor::new(&[[1u32, 2, 3, 4]], &dev).unwrap(),
        Tensor::new(&[[0u32, 1, 1, 1]], &dev).unwrap(),
        Tensor::new(&[[1u32, 1]], &dev).unwrap(),
    ] {
        let e = model
            .decode(
                &enc,
                &slot,
                None,
                &DecodeOptions::new(ExitPolicy::Fixed(exits)),
            )
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { ref name, .. } if name == "exit_layers"),
            "{e:?}"
        );
    }
    // Negative / NaN threshold.
    for t in [-1.0, f64::NAN] {
        assert!(model
            .decode(
                &enc,
                &slot,
                None,
                &DecodeOptions::new(ExitPolicy::Hard { threshold: t })
            )
            .is_err());
    }
}

#[test]
fn hard_exit_extremes() {
    let model = ElmerModel::from_dir(model_dir("cg"), &LoadOptions::default()).unwrap();
    let r = reference("cg");
    let enc = model
        .encode(&ids(&r["input_ids"]), Some(&ids(&r["attention_mask"])))
        .unwrap();
    // Threshold 0: nothing exits early, identical to the last layer.
    let last = model.decode_slot(&enc, 8, ExitPolicy::LastLayer).unwrap();
    let h0 = model
        .decode_slot(&enc, 8, ExitPolicy::Hard { threshold: 0.0 })
        .unwrap();
    assert_eq!(to_u32_vec2(&last.ids), to_u32_vec2(&h0.ids));
    assert!(to_u32_vec2(&h0.exit_layers)
        .iter()
        .flatten()
        .all(|&e| e == 3));
    // Huge threshold: everything exits at layer 1.
    let h = model
        .decode_slot(&enc, 8, ExitPolicy::Hard { threshold: 1e9 })
        .unwrap();
    assert!(to_u32_vec2(&h.exit_layers)
        .iter()
        .flatten()
        .all(|&e| e == 1));
    let fixed1 = Tensor::ones((3, 8), candle_core::DType::U32, &Device::Cpu).unwrap();
    let f = model
        .decode_slot(&enc, 8, ExitPolicy::Fixed(fixed1))
        .unwrap();
    assert_eq!(to_u32_vec2(&h.ids), to_u32_vec2(&f.ids));
}
