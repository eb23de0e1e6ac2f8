//! `ElmerConfig`: real config files parse, round trips are lossless, bad fields are named.

use crate::common::fixtures;
use elmer::{ElmerConfig, Error, OffRampKind};

fn parse(json: &str) -> ElmerConfig {
    ElmerConfig::from_json_str(json).unwrap()
}

#[test]
fn real_configs_parse() {
    let base = ElmerConfig::from_file(fixtures().join("configs/elmer-base-config.json")).unwrap();
    assert_eq!(
        (base.d_model, base.encoder_layers, base.decoder_layers),
        (768, 6, 6)
    );
    assert_eq!(base.vocab_size, 50265);
    assert_eq!(base.mask_token_id(), 50264);
    assert_eq!(base.activation_function, "gelu");
    assert_eq!(base.elmer_offramps, OffRampKind::Shared);
    assert!(base.elmer_detach_copied_states);
    ElmerConfig::from_file(fixtures().join("configs/bart-base-config.json")).unwrap();
    let tiny = ElmerConfig::from_file(fixtures().join("tiny-random-bart/config.json")).unwrap();
    assert_eq!(
        (tiny.d_model, tiny.vocab_size, tiny.max_position_embeddings),
        (16, 1000, 100)
    );
}

#[test]
fn missing_fields_take_transformers_defaults() {
    let c = parse("{}");
    assert_eq!(c.d_model, 1024);
    assert_eq!(c.encoder_layers, 12);
    assert_eq!(c.encoder_attention_heads, 16);
    assert_eq!(c.attention_dropout, 0.0);
    assert_eq!(c.dropout, 0.1);
    assert_eq!(c.pad_token_id, 1);
    assert!(!c.scale_embedding);
    c.validate().unwrap();
}

#[test]
fn save_load_round_trip_keeps_everything() {
    let mut c = ElmerConfig::from_file(fixtures().join("configs/elmer-base-config.json")).unwrap();
    c.elmer_offramps = OffRampKind::PerLayer;
    c.elmer_detach_copied_states = false;
    c.elmer_mask_token_id = Some(50000);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    c.save(&p).unwrap();
    let back = ElmerConfig::from_file(&p).unwrap();
    assert_eq!(back, c);
    // Fields this crate does not use survive too.
    assert_eq!(
        back.extra["task_specific_params"]["summarization_xsum"]["num_beams"],
        6
    );
    assert_eq!(
        back.extra["_name_or_path"],
        "./pretrained_model/nar/NAR-PLM/80000"
    );
}

fn config_err(json: &str) -> (String, String) {
    match parse(json).validate() {
        Err(Error::Config { field, message }) => (field, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn invalid_fields_are_named() {
    let (f, m) = config_err(r#"{"d_model": 30, "encoder_attention_heads": 4}"#);
    assert_eq!(f, "encoder_attention_heads");
    assert!(m.contains("divisible"), "{m}");
    let (f, _) = config_err(
        r#"{"d_model": 32, "encoder_attention_heads": 4, "decoder_attention_heads": 5}"#,
    );
    assert_eq!(f, "decoder_attention_heads");
    let (f, m) = config_err(r#"{"activation_function": "gelu_magic"}"#);
    assert_eq!(f, "activation_function");
    assert!(m.contains("gelu_magic"));
    let (f, _) = config_err(r#"{"decoder_layers": 0}"#);
    assert_eq!(f, "decoder_layers");
    let (f, _) = config_err(r#"{"encoder_layers": 0}"#);
    assert_eq!(f, "encoder_layers");
    let (f, m) = config_err(r#"{"vocab_size": 2}"#);
    assert_eq!(f, "vocab_size");
    assert!(m.contains("too small"), "{m}");
    let (f, _) = config_err(r#"{"vocab_size": 100, "elmer_mask_token_id": 100}"#);
    assert_eq!(f, "vocab_size");
    let (f, m) = config_err(r#"{"normalize_before": true}"#);
    assert_eq!(f, "normalize_before");
    assert!(m.contains("pre-norm"));
    let (f, _) = config_err(r#"{"dropout": 1.5}"#);
    assert_eq!(f, "dropout");
    let (f, _) = config_err(r#"{"model_type": "t5"}"#);
    assert_eq!(f, "model_type");
}

/// Absurd sizes are refused by name before anything is allocated (a config.json with
/// `encoder_layers` = 10^6 used to cost gigabytes and seconds before a "missing tensor" error;
/// `max_position_embeddings` = 2^64-1 wrapped).
#[test]
fn absurd_sizes_are_refused_by_name() {
    for (json, field) in [
        (r#"{"encoder_layers": 1000000}"#, "encoder_layers"),
        (r#"{"decoder_layers": 100000}"#, "decoder_layers"),
        (
            r#"{"max_position_embeddings": 18446744073709551615}"#,
            "max_position_embeddings",
        ),
        (r#"{"vocab_size": 4000000000}"#, "vocab_size"),
        (
            r#"{"d_model": 1048576, "encoder_attention_heads": 1, "decoder_attention_heads": 1}"#,
            "d_model",
        ),
        (r#"{"encoder_ffn_dim": 100000000}"#, "encoder_ffn_dim"),
        (
            r#"{"decoder_attention_heads": 1048576, "d_model": 1048576}"#,
            "d_model",
        ),
    ] {
        let (f, m) = config_err(json);
        assert_eq!(f, field, "{json}: {m}");
        assert!(m.contains("sanity bound"), "{json}: {m}");
    }
    // A whole directory with such a config fails fast with the field named.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"encoder_layers": 1000000}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    let e = elmer::ElmerModel::from_dir(dir.path(), &elmer::LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("encoder_layers"), "{e}");
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    std::fs::write(&p, "{ not json").unwrap();
    let e = ElmerConfig::from_file(&p).unwrap_err();
    assert!(matches!(e, Error::Parse { .. }));
    assert!(e.to_string().contains("config.json"), "{e}");
    std::fs::write(&p, r#"{"d_model": 30, "encoder_attention_heads": 4}"#).unwrap();
    let e = ElmerConfig::from_file(&p).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    assert!(ElmerConfig::from_file(dir.path().join("absent.json")).is_err());
}
