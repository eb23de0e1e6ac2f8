//! Data-parallel training under `mpirun -np 2` (feature `mpi`; needs Open MPI's `mpirun`,
//! which `.ci/run` installs):
//! - 2 ranks with per-rank batch B follow 1 process with batch B and 2-step accumulation
//!   (LPLM pre-training and soft-exit fine-tuning): the same losses and the same weights;
//! - a 2-rank run stopped mid-way and relaunched resumes on the same trajectory;
//! - a rank that is killed fails the job; a rank that hangs fails it within the collective
//!   timeout, with a message naming the timeout.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde_json::Value;

const TINY: &str = "tests/fixtures/tiny-random-bart";

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .unwrap()
}

/// `mpirun -np <np>` of the binary (as root if need be, oversubscribed, shared memory
/// without the single-copy mechanism containers lack), or the binary alone when `np` is 0.
fn command(np: usize, args: &[String], tag: &str) -> Command {
    let bin = env!("CARGO_BIN_EXE_elmer");
    let mut cmd = if np == 0 {
        Command::new(bin)
    } else {
        let mut c = Command::new("mpirun");
        c.args(["-np", &np.to_string(), "--oversubscribe", bin]);
        c
    };
    cmd.args(args)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("ELMER_TEST_TAG", tag)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(np: usize, args: &[String]) -> Output {
    let o = command(np, args, "run").output().expect("run mpirun");
    assert!(
        o.status.success(),
        "np {np} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    o
}

fn corpus(dir: &Path) -> String {
    let docs = [
        "the eiffel tower was completed in 1889 and was the tallest structure in the world .",
        "oxygen is a chemical element with symbol o and atomic number 8 .",
        "the university of notre dame was founded in 1842 by father edward sorin .",
        "beyonce released her debut album , dangerously in love , in 2003 .",
        "the thames flows through london and is 346 km long .",
        "water boils at 100 degrees at sea level .",
        "the moon orbits the earth about every 27 days .",
        "mount everest is the highest mountain above sea level .",
    ];
    let p = dir.join("corpus.txt");
    std::fs::write(&p, docs.join("\n\n") + "\n").unwrap();
    p.display().to_string()
}

fn squad_data(dir: &Path) -> String {
    let src = [
        "the eiffel tower was completed in 1889 .",
        "oxygen is a chemical element with symbol o .",
        "notre dame was founded in 1842 .",
        "beyonce released her debut album in 2003 .",
        "the thames flows through london .",
        "water boils at 100 degrees .",
        "the moon orbits the earth .",
        "everest is the highest mountain .",
    ];
    let tgt = [
        "when was the eiffel tower completed ?",
        "what is the symbol of oxygen ?",
        "when was notre dame founded ?",
        "when did beyonce release her debut album ?",
        "which river flows through london ?",
        "at what temperature does water boil ?",
        "what orbits the earth ?",
        "which mountain is the highest ?",
    ];
    let d = dir.join("squad");
    std::fs::create_dir_all(&d).unwrap();
    for (split, r) in [("train", 0..8), ("valid", 0..2), ("test", 5..8)] {
        let w = |ext: &str, xs: &[&str]| {
            std::fs::write(d.join(format!("{split}.{ext}")), xs.join("\n") + "\n").unwrap()
        };
        w("src", &src[r.clone()]);
        w("tgt", &tgt[r]);
    }
    d.display().to_string()
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// `pretrain` arguments: per-rank batch 2, `accum` micro-batches, `steps` steps.
fn pretrain_args(corpus: &str, out: &Path, accum: usize, steps: usize) -> Vec<String> {
    let mut v = strings(&[
        "pretrain",
        "--corpus",
        corpus,
        "--init-from",
        TINY,
        "--tokenizer",
        TINY,
        "--batch-size",
        "2",
        "--k",
        "2",
        "--max-len",
        "16",
        "--valid-docs",
        "2",
        "--eval-every",
        "2",
        "--save-every",
        "2",
    ]);
    v.extend(strings(&[
        "--grad-accum",
        &accum.to_string(),
        "--steps",
        &steps.to_string(),
        "--out",
        &out.display().to_string(),
    ]));
    v
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut m: Vec<(String, Tensor)> =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    m.sort_by(|a, b| a.0.cmp(&b.0));
    m.into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn losses(out: &Path, step: usize) -> Vec<f64> {
    let name = format!("checkpoint-{step:07}");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join(name).join("trainer_state.json")).unwrap(),
    )
    .unwrap();
    let mut v: Vec<f64> = state["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["loss"].as_f64().unwrap())
        .collect();
    v.extend(state["initial_eval_loss"].as_f64());
    v
}

#[track_caller]
fn same_run(a: &Path, b: &Path, step: usize) {
    let (la, lb) = (losses(a, step), losses(b, step));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-5, "losses {la:?} vs {lb:?}");
    }
    let name = format!("checkpoint-{step:07}");
    let (wa, wb) = (weights(&a.join(&name)), weights(&b.join(&name)));
    assert_eq!(wa.len(), wb.len());
    for ((ka, xa), (kb, xb)) in wa.iter().zip(&wb) {
        assert_eq!(ka, kb);
        let diff = xa
            .iter()
            .zip(xb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-5, "{ka}: weights differ by {diff}");
    }
}

#[test]
fn two_ranks_follow_one_process_with_twice_the_accumulation() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run(0, &pretrain_args(&c, &one, 2, 4));
    let o = run(2, &pretrain_args(&c, &two, 1, 4));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("data-parallel over MPI") && err.contains("2 ranks"),
        "{err}"
    );
    assert_eq!(
        err.matches("step 4/4").count(),
        1,
        "only rank 0 logs: {err}"
    );
    same_run(&one, &two, 4);
    // The unreduced run differs: the check above can fail.
    let alone = tmp.path().join("alone");
    run(0, &pretrain_args(&c, &alone, 1, 4));
    assert_ne!(losses(&alone, 4), losses(&two, 4));

    // Soft-exit fine-tuning, with the validation score choosing best/ on rank 0.
    let d = squad_data(tmp.path());
    let ft = |out: &Path, accum: usize| {
        strings(&[
            "finetune",
            "--task",
            "squad",
            "--data",
            &d,
            "--pretrained",
            TINY,
            "--batch-size",
            "2",
            "--grad-accum",
            &accum.to_string(),
            "--steps",
            "3",
            "--eval-every",
            "3",
            "--latency-samples",
            "1",
            "--out",
            &out.display().to_string(),
        ])
    };
    let (f1, f2) = (tmp.path().join("ft1"), tmp.path().join("ft2"));
    run(0, &ft(&f1, 2));
    let o = run(2, &ft(&f2, 1));
    same_run(&f1, &f2, 3);
    // Rank 0 alone evaluated and reported the test table.
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("| soft |").count(), 1, "{out}");
    assert!(f2.join("best/config.json").is_file());
}

#[test]
fn a_stopped_two_rank_run_resumes_on_the_same_trajectory() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    run(2, &pretrain_args(&c, &whole, 1, 6));
    let mut first = pretrain_args(&c, &parts, 1, 6);
    first.extend(strings(&["--stop-at", "2"]));
    run(2, &first);
    assert!(parts.join("checkpoint-0000002").is_dir());
    assert!(!parts.join("checkpoint-0000004").exists());
    let o = run(2, &pretrain_args(&c, &parts, 1, 6));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resumed from step 2"), "{err}");
    same_run(&whole, &parts, 6);
}

/// Pids of this test's `elmer` processes running as `rank`.
fn rank_pids(tag: &str, rank: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        let has = |kv: &str| vars.contains(&kv.as_bytes());
        if has(&format!("ELMER_TEST_TAG={tag}")) && has(&format!("OMPI_COMM_WORLD_RANK={rank}")) {
            pids.push(pid);
        }
    }
    pids
}

/// Starts a long 2-rank run, waits for its first checkpoint, sends `signal` to rank 1 and
/// returns the job's output and how long it took to end after the signal.
fn fault(signal: &str, tag: &str) -> (Output, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let out = tmp.path().join("run");
    let mut cmd = command(2, &pretrain_args(&c, &out, 1, 1_000_000), tag);
    cmd.env("ELMER_COLLECTIVE_TIMEOUT", "3");
    let child: Child = cmd.spawn().unwrap();
    let start = Instant::now();
    while !out.join("checkpoint-0000002").is_dir() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = rank_pids(tag, 1);
    assert_eq!(pids.len(), 1, "rank 1 pids {pids:?}");
    let hit = Instant::now();
    let st = Command::new("kill")
        .args([signal, &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // Fail the test rather than hang if the job never ends.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let o = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the job hung after a rank failed")
        .unwrap();
    if signal == "-STOP" {
        for p in rank_pids(tag, 1) {
            let _ = Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .status();
        }
    }
    (o, hit.elapsed())
}

#[test]
fn a_dead_or_hung_rank_fails_the_job_instead_of_hanging() {
    let (o, took) = fault("-KILL", "dead");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("signal 9") || err.contains("Killed"), "{err}");
    assert!(took < Duration::from_secs(60), "{took:?}");

    let (o, took) = fault("-STOP", "hung");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("did not complete within 3 s") && err.contains("rank 0"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn a_forced_one_rank_mpi_engine_equals_a_plain_run() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let (plain, forced) = (tmp.path().join("plain"), tmp.path().join("forced"));
    run(0, &pretrain_args(&c, &plain, 1, 2));
    let o = command(0, &pretrain_args(&c, &forced, 1, 2), "forced")
        .env("ELMER_COLLECTIVE", "mpi")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_run(&plain, &forced, 2);
}
