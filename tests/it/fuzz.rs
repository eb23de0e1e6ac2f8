//! Hostile inputs: one test per reported case (pickles built here, wrapped in a torch-style
//! zip built here), a replay of the saved crashers in `tests/fixtures/fuzz/`, and a bounded,
//! seeded mutation loop over the committed fixtures that must load or fail with `Err`, never
//! panic, abort, hang or allocate absurdly.
//!
//! The loop runs [`DEFAULT_ITERS`] inputs by default, about 5-9 ms each in the debug test
//! profile (8-14 s on 2 cores). Every input must finish within [`MAX_TIME`] and make no
//! single allocation over [`MAX_ALLOCATION`] on the loading thread (a counting global
//! allocator for this test binary records the largest request per thread; the fixtures are
//! under 400 KB, so a larger request means a length or shape taken from the file unchecked).
//!
//! Environment variables: `ELMER_FUZZ_ITERS` (number of inputs, e.g. 100000 for a long local
//! search), `ELMER_FUZZ_SEED` (first seed; input `i` uses seed + `i`), `ELMER_FUZZ_LOG=1`
//! (print each input before loading it, which names an input that aborts the process where
//! `catch_unwind` cannot report it, and a per-target summary at the end).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;
use elmer::{BartTokenizer, ElmerConfig, ElmerModel, Error, LoadOptions};

/// Inputs per run of [`mutated_fixtures_load_or_fail_cleanly`].
const DEFAULT_ITERS: u64 = 1500;
/// Largest single allocation any input may make on the loading thread.
const MAX_ALLOCATION: usize = 64 << 20;
/// Longest any input may take to load.
const MAX_TIME: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Allocation watch: the largest request made by the current thread (a thread-local `Cell`
// with a `const` initialiser: no allocation and no destructor inside the allocator).

struct WatchedAllocator;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

// SAFETY: forwards to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for WatchedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: WatchedAllocator = WatchedAllocator;

/// Runs `f`, returning its result and the largest allocation it made on this thread.
fn watched<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LARGEST.with(|l| l.replace(0));
    let out = f();
    let largest = LARGEST.with(|l| l.replace(before.max(l.get())));
    (out, largest)
}

// ---------------------------------------------------------------------------------------
// Zip archives as torch writes them (entries STORED), and reading the fixture's entries.

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A zip of STORED entries (local headers with sizes, central directory, end record).
fn write_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let size = (data.len() as u32).to_le_bytes();
        let name_len = (name.len() as u16).to_le_bytes();
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(crc.to_le_bytes());
        out.extend(size);
        out.extend(size);
        out.extend(name_len);
        out.extend([0, 0]);
        out.extend(name.as_bytes());
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(crc.to_le_bytes());
        central.extend(size);
        central.extend(size);
        central.extend(name_len);
        central.extend([0u8; 12]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend([0, 0]);
    out
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

/// The entries of a (small, trusted) zip, in central-directory order.
fn read_zip(b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let eocd = (0..b.len() - 21)
        .rev()
        .find(|&i| b[i..i + 4] == 0x0605_4b50u32.to_le_bytes())
        .expect("end record");
    let n = u16_at(b, eocd + 10);
    let mut p = u32_at(b, eocd + 16);
    let mut out = Vec::new();
    for _ in 0..n {
        let size = u32_at(b, p + 24);
        let (nl, xl, cl) = (u16_at(b, p + 28), u16_at(b, p + 30), u16_at(b, p + 32));
        let local = u32_at(b, p + 42);
        let name = String::from_utf8(b[p + 46..p + 46 + nl].to_vec()).unwrap();
        let start = local + 30 + u16_at(b, local + 26) + u16_at(b, local + 28);
        out.push((name, b[start..start + size].to_vec()));
        p += 46 + nl + xl + cl;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Pickles, opcode by opcode.

struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    fn int(mut self, v: i64) -> Self {
        if (0..256).contains(&v) {
            self.0.extend([b'K', v as u8]);
        } else {
            self.0.extend([0x8a, 8]);
            self.0.extend(v.to_le_bytes());
        }
        self
    }
    fn str(mut self, s: &str) -> Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn global(mut self, module: &str, name: &str) -> Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn ints(self, v: &[i64]) -> Self {
        v.iter().fold(self.op(b'('), |p, &x| p.int(x)).op(b't')
    }
    fn storage_id(self, key: &str, numel: i64) -> Self {
        self.op(b'(')
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b't')
    }
    fn done(self) -> Vec<u8> {
        self.op(b'.').0
    }
}

/// `{name: _rebuild_tensor_v2(<args built by `args`>)}`.
fn state_dict_with(name: &str, args: impl FnOnce(Pickle) -> Pickle) -> Vec<u8> {
    let p = Pickle::new()
        .op(b'}')
        .str(name)
        .global("torch._utils", "_rebuild_tensor_v2");
    args(p).op(b'R').op(b's').done()
}

/// A checkpoint directory (cg_bin's config) whose `pytorch_model.bin` holds `pkl` as
/// `archive/data.pkl` and the given storages.
fn bin_dir(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        model_dir("cg_bin").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let mut entries = vec![("archive/data.pkl".to_string(), pkl.to_vec())];
    for (k, v) in storages {
        entries.push((format!("archive/data/{k}"), v.clone()));
    }
    std::fs::write(dir.path().join("pytorch_model.bin"), write_zip(&entries)).unwrap();
    dir
}

/// Loads `pkl` through `ElmerModel::from_dir` and returns the error, which must be a parse
/// error naming `pytorch_model.bin`.
#[track_caller]
fn bin_err(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> String {
    let dir = bin_dir(pkl, storages);
    let Err(e) = ElmerModel::from_dir(dir.path(), &LoadOptions::default()) else {
        panic!("hostile checkpoint loaded");
    };
    assert!(matches!(e, Error::Parse { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("pytorch_model.bin"), "{msg}");
    msg
}

// ---------------------------------------------------------------------------------------
// The reported cases.

#[test]
fn a_million_nested_lists_or_tuples_is_an_error_not_a_crash() {
    const N: usize = 1_000_000;
    let cases: [(&str, Vec<u8>); 4] = [
        // `]` * N, then `a` * (N-1): every list appended into the one below.
        ("lists by APPEND", {
            let mut b = vec![0x80, 2];
            b.extend(std::iter::repeat_n(b']', N));
            b.extend(std::iter::repeat_n(b'a', N - 1));
            b.push(b'.');
            b
        }),
        // `(` * N, `]`, then `l` * N: LIST pops to each MARK.
        ("lists by MARK/LIST", {
            let mut b = vec![0x80, 2];
            b.extend(std::iter::repeat_n(b'(', N));
            b.push(b']');
            b.extend(std::iter::repeat_n(b'l', N));
            b.push(b'.');
            b
        }),
        // `)`, then TUPLE1 * N: one value on the stack, nested N deep.
        ("tuples by TUPLE1", {
            let mut b = vec![0x80, 2, b')'];
            b.extend(std::iter::repeat_n(0x85, N));
            b.push(b'.');
            b
        }),
        // `(` * N, `)`, then `t` * N.
        ("tuples by MARK/TUPLE", {
            let mut b = vec![0x80, 2];
            b.extend(std::iter::repeat_n(b'(', N));
            b.push(b')');
            b.extend(std::iter::repeat_n(b't', N));
            b.push(b'.');
            b
        }),
    ];
    for (what, pkl) in cases {
        let msg = bin_err(&pkl, &[]);
        assert!(
            msg.contains("nested deeper") || msg.contains("stack grows") || msg.contains("MARKs"),
            "{what}: {msg}"
        );
    }
}

#[test]
fn rebuild_tensor_v2_with_two_arguments_is_an_error() {
    let pkl = state_dict_with("final_logits_bias", |p| {
        p.storage_id("0", 128).op(b'Q').int(0).op(0x86)
    });
    let msg = bin_err(&pkl, &[("0", vec![0u8; 512])]);
    assert!(
        msg.contains("_rebuild_tensor_v2 takes") && msg.contains("got 2 arguments"),
        "{msg}"
    );
}

#[test]
fn persistent_id_with_two_elements_is_an_error() {
    let pkl = state_dict_with("final_logits_bias", |p| {
        p.op(b'(')
            .str("storage")
            .str("0")
            .op(0x86)
            .op(b'Q')
            .int(0)
            .ints(&[1, 128])
            .ints(&[128, 1])
            .op(0x89)
            .op(b'N')
            .op(b't')
    });
    let msg = bin_err(&pkl, &[("0", vec![0u8; 512])]);
    assert!(
        msg.contains("persistent id") && msg.contains("2 elements"),
        "{msg}"
    );
}

#[test]
fn storage_offset_of_2_pow_62_is_an_error() {
    for offset in [1i64 << 62, i64::MAX, 1] {
        let pkl = state_dict_with("final_logits_bias", |p| {
            p.op(b'(')
                .storage_id("0", 128)
                .op(b'Q')
                .int(offset)
                .ints(&[1, 128])
                .ints(&[128, 1])
                .op(0x89)
                .op(b'N')
                .op(b't')
        });
        let msg = bin_err(&pkl, &[("0", vec![0u8; 512])]);
        assert!(msg.contains("reaches past the end"), "{offset}: {msg}");
    }
}

#[test]
fn a_pickle_calling_os_system_is_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let cmd = format!("touch {}", marker.display());
    let pkls = [
        // GLOBAL os.system, REDUCE.
        Pickle::new()
            .global("os", "system")
            .str(&cmd)
            .op(0x85)
            .op(b'R')
            .done(),
        // STACK_GLOBAL, inside a state dict value.
        Pickle::new()
            .op(b'}')
            .str("w")
            .str("os")
            .str("system")
            .op(0x93)
            .str(&cmd)
            .op(0x85)
            .op(b'R')
            .op(b's')
            .done(),
        // Smuggled in as the persistent id's "storage class".
        Pickle::new()
            .op(b'(')
            .str("storage")
            .global("posix", "system")
            .str(&cmd)
            .op(0x85)
            .op(b'R')
            .str("0")
            .str("cpu")
            .int(1)
            .op(b't')
            .op(b'Q')
            .done(),
    ];
    for pkl in pkls {
        let msg = bin_err(&pkl, &[]);
        assert!(
            msg.contains("system`") && msg.contains("nothing in the file is run"),
            "{msg}"
        );
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(!marker.exists(), "the pickle ran a command");
}

// ---------------------------------------------------------------------------------------
// Targets of the mutation loop.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `model.safetensors` of cg, loaded with `ElmerModel::from_dir`.
    Safetensors,
    /// cg_bin's `pytorch_model.bin`, bytes mutated anywhere.
    BinRaw,
    /// cg_bin's `pytorch_model.bin` with `data.pkl` (or the entry list) mutated, zip rebuilt.
    BinPickle,
    /// cg's `config.json`: `ElmerConfig::from_json_str` + `validate`, then `from_dir` with
    /// cg's weights when valid.
    Config,
    /// tiny-random-bart's `tokenizer.json`, `BartTokenizer::from_dir`.
    TokenizerJson,
    /// tiny-random-bart's `vocab.json` (with the original `merges.txt`).
    Vocab,
    /// tiny-random-bart's `merges.txt` (with the original `vocab.json`).
    Merges,
}

const KINDS: [Kind; 7] = [
    Kind::Safetensors,
    Kind::BinRaw,
    Kind::BinPickle,
    Kind::Config,
    Kind::TokenizerJson,
    Kind::Vocab,
    Kind::Merges,
];

impl Kind {
    /// Prefix of its regression fixtures in `tests/fixtures/fuzz/`.
    fn prefix(self) -> &'static str {
        match self {
            Kind::Safetensors => "safetensors",
            Kind::BinRaw => "bin",
            Kind::BinPickle => "pkl",
            Kind::Config => "config",
            Kind::TokenizerJson => "tokenizer",
            Kind::Vocab => "vocab",
            Kind::Merges => "merges",
        }
    }

    fn is_text(self) -> bool {
        matches!(
            self,
            Kind::Config | Kind::TokenizerJson | Kind::Vocab | Kind::Merges
        )
    }
}

/// The original files and one scratch directory per target.
struct Bench {
    safetensors: Vec<u8>,
    bin: Vec<u8>,
    bin_entries: Vec<(String, Vec<u8>)>,
    pkl_index: usize,
    config: Vec<u8>,
    tokenizer_json: Vec<u8>,
    vocab: Vec<u8>,
    merges: Vec<u8>,
    /// cg's config + a mutated model.safetensors / a mutated config.json.
    st_dir: tempfile::TempDir,
    /// cg_bin's config + a mutated pytorch_model.bin.
    bin_dir: tempfile::TempDir,
    /// A tokenizer.json / vocab.json + merges.txt.
    tok_json_dir: tempfile::TempDir,
    tok_files_dir: tempfile::TempDir,
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

impl Bench {
    fn new() -> Self {
        let tiny = fixtures().join("tiny-random-bart");
        let bin = read(model_dir("cg_bin").join("pytorch_model.bin"));
        let bin_entries = read_zip(&bin);
        let pkl_index = bin_entries
            .iter()
            .position(|(n, _)| n.ends_with("/data.pkl"))
            .unwrap();
        let b = Self {
            safetensors: read(model_dir("cg").join("model.safetensors")),
            bin,
            bin_entries,
            pkl_index,
            config: read(model_dir("cg").join("config.json")),
            tokenizer_json: read(tiny.join("tokenizer.json")),
            vocab: read(tiny.join("vocab.json")),
            merges: read(tiny.join("merges.txt")),
            st_dir: tempfile::tempdir().unwrap(),
            bin_dir: tempfile::tempdir().unwrap(),
            tok_json_dir: tempfile::tempdir().unwrap(),
            tok_files_dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(b.st_dir.path().join("config.json"), &b.config).unwrap();
        std::fs::write(b.st_dir.path().join("model.safetensors"), &b.safetensors).unwrap();
        std::fs::copy(
            model_dir("cg_bin").join("config.json"),
            b.bin_dir.path().join("config.json"),
        )
        .unwrap();
        std::fs::write(b.tok_files_dir.path().join("vocab.json"), &b.vocab).unwrap();
        std::fs::write(b.tok_files_dir.path().join("merges.txt"), &b.merges).unwrap();
        b
    }

    fn original(&self, kind: Kind) -> Vec<u8> {
        match kind {
            Kind::Safetensors => self.safetensors.clone(),
            Kind::BinRaw => self.bin.clone(),
            Kind::BinPickle => self.bin_entries[self.pkl_index].1.clone(),
            Kind::Config => self.config.clone(),
            Kind::TokenizerJson => self.tokenizer_json.clone(),
            Kind::Vocab => self.vocab.clone(),
            Kind::Merges => self.merges.clone(),
        }
    }

    /// Loads `bytes` as `kind` through the public API; `Ok(true)` if it loaded.
    fn load(&self, kind: Kind, bytes: &[u8], entries: Option<&[(String, Vec<u8>)]>) -> bool {
        let opts = LoadOptions::default();
        match kind {
            Kind::Safetensors => {
                std::fs::write(self.st_dir.path().join("model.safetensors"), bytes).unwrap();
                ElmerModel::from_dir(self.st_dir.path(), &opts).is_ok()
            }
            Kind::BinRaw | Kind::BinPickle => {
                let file = if kind == Kind::BinRaw {
                    bytes.to_vec()
                } else {
                    let mut e = entries.unwrap_or(&self.bin_entries).to_vec();
                    if let Some(p) = e.iter_mut().find(|(n, _)| n.ends_with("/data.pkl")) {
                        p.1 = bytes.to_vec();
                    }
                    write_zip(&e)
                };
                std::fs::write(self.bin_dir.path().join("pytorch_model.bin"), file).unwrap();
                ElmerModel::from_dir(self.bin_dir.path(), &opts).is_ok()
            }
            Kind::Config => {
                let text = String::from_utf8_lossy(bytes);
                let Ok(cfg) = ElmerConfig::from_json_str(&text) else {
                    return false;
                };
                if cfg.validate().is_err() {
                    return false;
                }
                std::fs::write(
                    self.st_dir.path().join("model.safetensors"),
                    &self.safetensors,
                )
                .unwrap();
                std::fs::write(self.st_dir.path().join("config.json"), bytes).unwrap();
                let ok = ElmerModel::from_dir(self.st_dir.path(), &opts).is_ok();
                std::fs::write(self.st_dir.path().join("config.json"), &self.config).unwrap();
                ok
            }
            Kind::TokenizerJson | Kind::Vocab | Kind::Merges => {
                let (dir, file) = match kind {
                    Kind::TokenizerJson => (self.tok_json_dir.path(), "tokenizer.json"),
                    Kind::Vocab => (self.tok_files_dir.path(), "vocab.json"),
                    _ => (self.tok_files_dir.path(), "merges.txt"),
                };
                std::fs::write(dir.join(file), bytes).unwrap();
                let r = BartTokenizer::from_dir(dir);
                let ok = match r {
                    Ok(tok) => tok
                        .encode("Hello <mask> world, héllo 1889!")
                        .and_then(|ids| tok.decode(&ids))
                        .is_ok(),
                    Err(_) => false,
                };
                if kind == Kind::Vocab {
                    std::fs::write(dir.join(file), &self.vocab).unwrap();
                } else if kind == Kind::Merges {
                    std::fs::write(dir.join(file), &self.merges).unwrap();
                }
                ok
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Seeded mutations.

/// SplitMix64: a fixed, dependency-free generator, so a seed names the same input forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    /// A position in `0..len`, biased to the first and last 16 KiB (headers, the pickle,
    /// the zip directory) of large files.
    fn pos(&mut self, len: usize) -> usize {
        let w = len.min(16 << 10);
        match self.below(4) {
            0 => self.below(w),
            1 => len - w + self.below(w),
            _ => self.below(len),
        }
    }
}

const INTERESTING_BYTES: [u8; 8] = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe, 0x40, 0x3f];
const INTERESTING_WORDS: [u64; 10] = [
    0,
    1,
    0x7f,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 62,
    u64::MAX,
];
const INTERESTING_NUMBERS: [&str; 14] = [
    "0",
    "-1",
    "1",
    "2",
    "65535",
    "4294967296",
    "18446744073709551616",
    "9223372036854775807",
    "1e308",
    "-0.0",
    "NaN",
    "null",
    "\"x\"",
    "[]",
];
/// Pickle opcodes (with a plausible argument) for insertion into `data.pkl`.
const OPCODES: [&[u8]; 24] = [
    b"(",
    b")",
    b"]",
    b"}",
    b"t",
    b"a",
    b"e",
    b"s",
    b"u",
    b"R",
    b"b",
    b"Q",
    b"0",
    b"1",
    b"2",
    b"N",
    b"\x85",
    b"\x86",
    b"\x87",
    b"\x81",
    b"h\x02",
    b"q\x07",
    b"K\xff",
    b"J\xff\xff\xff\x7f",
];

/// Applies one random mutation to `data`; returns what it did.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, kind: Kind) -> String {
    if data.is_empty() {
        data.push(rng.next() as u8);
        return "grew from empty".into();
    }
    let len = data.len();
    // 8 byte-level mutations; text and data.pkl also get a ninth (numbers / opcodes).
    let ops = if kind.is_text() || kind == Kind::BinPickle {
        9
    } else {
        8
    };
    match rng.below(ops) {
        0 => {
            let (p, bit) = (rng.pos(len), rng.below(8));
            data[p] ^= 1 << bit;
            format!("flip bit {bit} of byte {p}")
        }
        1 => {
            let (p, v) = (rng.pos(len), *rng.pick(&INTERESTING_BYTES));
            data[p] = v;
            format!("byte {p} = {v:#04x}")
        }
        2 => {
            let p = rng.pos(len);
            let w = *rng.pick(&INTERESTING_WORDS);
            let n = *rng.pick(&[1usize, 2, 4, 8]);
            let bytes = w.to_le_bytes();
            let end = (p + n).min(len);
            data[p..end].copy_from_slice(&bytes[..end - p]);
            format!("{n} bytes at {p} = {w:#x}")
        }
        3 => {
            let p = rng.pos(len);
            data.truncate(p);
            format!("truncate to {p}")
        }
        4 => {
            let p = rng.pos(len);
            let n = 1 + rng.below(16);
            let fill: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(p..p, fill);
            format!("insert {n} random bytes at {p}")
        }
        5 => {
            let a = rng.pos(len);
            let n = (1 + rng.below(4096)).min(len - a);
            let chunk = data[a..a + n].to_vec();
            let b = rng.pos(len);
            data.splice(b..b, chunk);
            format!("copy {n} bytes from {a} to {b}")
        }
        6 => {
            let a = rng.pos(len);
            let n = (1 + rng.below(256)).min(len - a);
            data.drain(a..a + n);
            format!("delete {n} bytes at {a}")
        }
        7 => {
            let p = rng.pos(len);
            let v = rng.next() as u8;
            data[p] = v;
            format!("byte {p} = {v:#04x} (random)")
        }
        _ if kind == Kind::BinPickle => {
            let p = rng.below(len);
            let op = *rng.pick(&OPCODES);
            data.splice(p..p, op.iter().copied());
            format!("insert opcode {op:?} at {p}")
        }
        _ => {
            // Text: replace a run of digits (or any token start) with an interesting value.
            let starts: Vec<usize> = (0..len)
                .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
                .collect();
            let num = *rng.pick(&INTERESTING_NUMBERS);
            if starts.is_empty() {
                let p = rng.below(len);
                data.splice(p..p, num.bytes());
                return format!("insert {num} at {p}");
            }
            let a = *rng.pick(&starts);
            let b = (a..len).find(|&i| !data[i].is_ascii_digit()).unwrap_or(len);
            data.splice(a..b, num.bytes());
            format!("number at {a} = {num}")
        }
    }
}

/// Mutates cg_bin's entry list (not data.pkl): a storage truncated, grown or dropped.
fn mutate_entries(rng: &mut Rng, entries: &mut Vec<(String, Vec<u8>)>) -> String {
    let i = rng.below(entries.len());
    match rng.below(3) {
        0 => {
            let n = rng.below(entries[i].1.len() + 1);
            entries[i].1.truncate(n);
            format!("entry {} truncated to {n}", entries[i].0)
        }
        1 => {
            entries[i].1.extend([0u8; 4]);
            format!("entry {} grown by 4", entries[i].0)
        }
        _ => {
            let name = entries.remove(i).0;
            format!("entry {name} dropped")
        }
    }
}

struct Failure {
    seed: u64,
    kind: Kind,
    what: String,
    saved: PathBuf,
}

/// Runs one input; `Err` describes a panic, a slow load or an absurd allocation.
fn check(
    bench: &Bench,
    kind: Kind,
    bytes: &[u8],
    entries: Option<&[(String, Vec<u8>)]>,
) -> Result<bool, String> {
    let start = Instant::now();
    let (r, largest) =
        watched(|| catch_unwind(AssertUnwindSafe(|| bench.load(kind, bytes, entries))));
    let took = start.elapsed();
    match r {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        }
        Ok(_) if took > MAX_TIME => Err(format!("took {took:?}")),
        Ok(_) if largest > MAX_ALLOCATION => Err(format!("allocated {largest} bytes at once")),
        Ok(ok) => Ok(ok),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn mutated_fixtures_load_or_fail_cleanly() {
    let iters = env_u64("ELMER_FUZZ_ITERS").unwrap_or(DEFAULT_ITERS);
    let first_seed = env_u64("ELMER_FUZZ_SEED").unwrap_or(0xE1_3E5);
    let log = std::env::var_os("ELMER_FUZZ_LOG").is_some();
    let bench = Bench::new();
    // The originals load (so mutations start from a loadable input).
    for kind in KINDS {
        assert_eq!(
            check(&bench, kind, &bench.original(kind), None),
            Ok(true),
            "{kind:?}"
        );
    }
    let mut failures: Vec<Failure> = Vec::new();
    let mut loaded = 0u64;
    let mut per_kind = [(0u64, 0u64); KINDS.len()];
    for i in 0..iters {
        let seed = first_seed.wrapping_add(i);
        let mut rng = Rng(seed);
        let kind = KINDS[(i % KINDS.len() as u64) as usize];
        let mut bytes = bench.original(kind);
        let mut what = Vec::new();
        let mut entries = None;
        if kind == Kind::BinPickle && rng.below(5) == 0 {
            let mut e = bench.bin_entries.clone();
            what.push(mutate_entries(&mut rng, &mut e));
            entries = Some(e);
        } else {
            for _ in 0..1 + rng.below(4) {
                what.push(mutate(&mut rng, &mut bytes, kind));
            }
        }
        let what = what.join("; ");
        if log {
            eprintln!("fuzz seed {seed} {kind:?}: {what}");
        }
        match check(&bench, kind, &bytes, entries.as_deref()) {
            Ok(ok) => {
                loaded += ok as u64;
                let k = &mut per_kind[(i % KINDS.len() as u64) as usize];
                k.0 += ok as u64;
                k.1 += 1;
            }
            Err(why) => {
                let saved =
                    std::env::temp_dir().join(format!("elmer-fuzz-{seed}-{}", kind.prefix()));
                let out = match &entries {
                    Some(e) => write_zip(e),
                    None => bytes.clone(),
                };
                let _ = std::fs::write(&saved, out);
                failures.push(Failure {
                    seed,
                    kind,
                    what: format!("{what}: {why}"),
                    saved,
                });
            }
        }
    }
    if log {
        for (kind, (ok, n)) in KINDS.iter().zip(per_kind) {
            eprintln!("fuzz {kind:?}: {ok} of {n} clean inputs loaded, the rest refused");
        }
    }
    let report: Vec<String> = failures
        .iter()
        .map(|f| {
            format!(
                "seed {} {:?} ({}), input saved to {}",
                f.seed,
                f.kind,
                f.what,
                f.saved.display()
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {iters} inputs failed (save each as a regression fixture in \
         tests/fixtures/fuzz/ after fixing it):\n{}",
        failures.len(),
        report.join("\n")
    );
    // Some mutations are harmless: the loop must not only exercise error paths.
    assert!(iters < 100 || loaded > 0, "no mutated input loaded");
}

/// Every input in `tests/fixtures/fuzz/` (a crasher once) must now fail with `Err`. The file
/// name's prefix names the target (`bin-`, `pkl-`, `safetensors-`, `config-`, `tokenizer-`,
/// `vocab-`, `merges-`).
#[test]
fn saved_fuzz_inputs_fail_cleanly() {
    let dir = fixtures().join("fuzz");
    let bench = Bench::new();
    let (mut n, mut bad) = (0, Vec::new());
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(kind) = KINDS
            .into_iter()
            .find(|k| name.starts_with(&format!("{}-", k.prefix())))
        else {
            continue;
        };
        n += 1;
        match check(&bench, kind, &read(p.clone()), None) {
            Ok(false) => {}
            Ok(true) => bad.push(format!("{name}: loaded")),
            Err(why) => bad.push(format!("{name}: {why}")),
        }
    }
    assert!(n > 0, "no inputs in {}", dir.display());
    assert!(
        bad.is_empty(),
        "{} of {n} saved inputs:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
