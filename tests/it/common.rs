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

/// The device of the parity tests: `ELMER_TEST_DEVICE` (`cpu`, the default, or `cuda:N` /
/// `cuda` in a build with the `cuda` feature), so `scripts/gpu_check.sh` runs the same
/// fixtures on a GPU.
pub fn test_device() -> Device {
    match std::env::var("ELMER_TEST_DEVICE").as_deref() {
        Err(_) | Ok("") | Ok("cpu") => Device::Cpu,
        Ok(s) => {
            let n = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().ok(),
                None if s == "cuda" => Some(0),
                None => None,
            }
            .unwrap_or_else(|| panic!("ELMER_TEST_DEVICE={s}: expected cpu or cuda:N"));
            Device::new_cuda(n).unwrap_or_else(|e| panic!("ELMER_TEST_DEVICE={s}: {e}"))
        }
    }
}

/// `tol` on CPU; on a GPU at least 1e-3 (different reduction orders, TF32 off).
pub fn device_tol(tol: f32) -> f32 {
    if test_device().is_cpu() {
        tol
    } else {
        tol.max(1e-3)
    }
}

/// [`ids`] on the [`test_device`].
pub fn dev_ids(t: &Tensor) -> Tensor {
    ids(t).to_device(&test_device()).unwrap()
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

/// A copy task over the cg fixture's vocabulary whose target length follows from the source:
/// `n` pairs (seeded), content of `lens` tokens in 5..40, the target the content reversed.
pub fn reversal_pairs(
    n: usize,
    seed: u64,
    lens: std::ops::Range<usize>,
) -> Vec<elmer::train::Pair> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(lens.clone());
            let content: Vec<u32> = (0..len).map(|_| rng.random_range(5..40)).collect();
            let mut source = vec![0];
            source.extend(&content);
            source.push(2);
            let mut labels: Vec<u32> = content.iter().rev().copied().collect();
            labels.push(2);
            elmer::train::Pair { source, labels }
        })
        .collect()
}
