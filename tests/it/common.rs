//! Helpers shared by the integration tests: fixture paths, reference tensors, comparisons.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("model").join(name)
}

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let p = fixtures()
        .join("model")
        .join(format!("{name}_reference.safetensors"));
    candle_core::safetensors::load(&p, &Device::Cpu).expect("reference fixture")
}

pub fn ids(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let b = b
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[track_caller]
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) -> f32 {
    let d = max_abs_diff(a, b);
    eprintln!("{what}: max abs diff {d:.3e}");
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
    d
}

pub fn to_u32_vec2(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::U32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec2()
        .unwrap()
}
