//! A bounded reader for torch's zip-format checkpoints (`pytorch_model.bin`) that never runs
//! anything from the file: a small zip reader and an iterative pickle interpreter that knows
//! the handful of calls `torch.save` writes for a state dict.
//!
//! # The file
//! A zip archive (entries STORED, as torch writes them; zip64 records understood) with
//! `<archive>/data.pkl` (the pickle), `<archive>/data/<key>` (one entry per storage, raw
//! element bytes) and optionally `<archive>/byteorder` (`little` or `big`). Sizes come from
//! the central directory (torch's local headers carry data descriptors); every offset is
//! checked against the file length before it is read, and `data.pkl`'s CRC-32 is verified.
//!
//! # The pickle
//! `data.pkl` is interpreted by a loop over opcodes with an explicit value stack and mark
//! stack (no recursion), protocols 2-5: `PROTO FRAME STOP MARK POP POP_MARK DUP`,
//! `NONE NEWTRUE NEWFALSE BININT BININT1 BININT2 LONG1 LONG4 BINFLOAT`,
//! `BINUNICODE SHORT_BINUNICODE BINUNICODE8 BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES
//! BINBYTES8 BYTEARRAY8`, `EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST APPEND
//! APPENDS EMPTY_DICT DICT SETITEM SETITEMS EMPTY_SET ADDITEMS FROZENSET`,
//! `BINPUT LONG_BINPUT MEMOIZE BINGET LONG_BINGET`, `GLOBAL STACK_GLOBAL REDUCE BUILD NEWOBJ
//! NEWOBJ_EX BINPERSID`. The text opcodes of protocol 0, `INST`/`OBJ`, the extension
//! registry and out-of-band buffers are refused.
//!
//! Nothing is ever imported or called. `GLOBAL` only resolves names on this list; any other
//! name (`os.system`, `builtins.eval`, ...) is an error naming it:
//! - `torch._utils._rebuild_tensor_v2` (6 or 7 arguments), `torch._utils._rebuild_tensor`
//!   (4), `torch._utils._rebuild_parameter` (3), `torch._utils._rebuild_parameter_with_state`
//!   (4), `torch._tensor._rebuild_from_type_v2` (4; its function must be one of the former
//!   and its type `torch.Tensor` or `torch.nn.parameter.Parameter`): they make a tensor
//!   *description* (storage, offset, shape, strides), checked here and read on demand;
//! - `collections.OrderedDict` (called with no arguments: a dict);
//! - the storage classes `torch.{Float,Double,Half,BFloat16,Long,Int,Short,Byte}Storage`
//!   (f32, f64, f16, bf16, i64, i32, i16, u8) and, refused when a tensor uses them,
//!   `torch.{Char,Bool}Storage`; they are only valid inside a persistent id
//!   `('storage', class, key, location, numel)`;
//! - harmless data types whose instances are kept as opaque values and never looked into
//!   (metadata): `torch.Size`, `torch.device`, `builtins.set`, `builtins.frozenset`,
//!   `builtins.bytearray`, `_codecs.encode`.
//!
//! The result must be a dict (or `OrderedDict`); its string-keyed tensor values are the
//! checkpoint's tensors, any other value is ignored.
//!
//! # Caps
//! - `data.pkl` at most [`MAX_PICKLE_BYTES`] (256 MiB); strings and byte strings at most
//!   [`MAX_STRING`] (16 MiB) each; `GLOBAL` names at most 256 bytes per line;
//! - value stack at most [`MAX_STACK`] (65 536) values, at most as many open marks;
//!   containers nested at most [`MAX_DEPTH`] (64) deep (so dropping or copying a value never
//!   recurses deeper); memo at most [`MAX_MEMO`] (1 048 576) entries;
//! - work: every opcode costs one unit and copying a shared container (copy-on-write after
//!   `BINGET`) one unit per element; at most `1 << 20` + 16 × `data.pkl` length units. A
//!   `torch.save` pickle uses about one unit per byte. Time and the number of values alive
//!   are linear in `data.pkl`'s size;
//! - at most [`MAX_TENSORS`] (1 048 576) tensors, of rank at most [`MAX_RANK`] (16); zip
//!   central directories of at most [`MAX_ZIP_ENTRIES`] (1 048 576) entries.
//!
//! A tensor's size, stride and storage offset are checked with checked arithmetic: every
//! element it addresses lies inside its storage, and it has no more elements than its storage
//! (strides that overlap, like `expand`'s zero strides, are refused), and the storage's
//! declared byte length must equal its zip entry's, which lies inside the file. So loading
//! one tensor allocates at most its file's size (plus a 64 KiB read buffer), whatever the
//! pickle says. Non-contiguous strides (e.g. a saved transpose) are read by gathering.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Largest `data.pkl` read, in bytes.
pub(crate) const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Longest string or byte string in a pickle, in bytes.
pub(crate) const MAX_STRING: u64 = 16 << 20;
/// Most values on the pickle stack (and most open marks).
pub(crate) const MAX_STACK: usize = 1 << 16;
/// Deepest nesting of containers.
pub(crate) const MAX_DEPTH: u32 = 64;
/// Most memo entries.
pub(crate) const MAX_MEMO: usize = 1 << 20;
/// Most tensors in one file.
pub(crate) const MAX_TENSORS: usize = 1 << 20;
/// Highest tensor rank.
pub(crate) const MAX_RANK: usize = 16;
/// Most entries in a zip central directory.
pub(crate) const MAX_ZIP_ENTRIES: u64 = 1 << 20;
/// Work units every pickle may use, besides [`WORK_PER_BYTE`] per byte of it.
const WORK_BASE: u64 = 1 << 20;
/// Work units per byte of `data.pkl`.
const WORK_PER_BYTE: u64 = 16;
/// Longest `GLOBAL` module or name line.
const MAX_LINE: usize = 256;
/// Read buffer when decoding a tensor.
const CHUNK: usize = 1 << 16;

/// Why reading failed: a malformed file (message) or an I/O error.
#[derive(Debug)]
enum Fail {
    Parse(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Io(e)
    }
}

type R<T> = std::result::Result<T, Fail>;

macro_rules! bail {
    ($($t:tt)*) => {
        return Err(Fail::Parse(format!($($t)*)))
    };
}

fn to_error(path: &Path, f: Fail) -> Error {
    match f {
        Fail::Parse(message) => Error::Parse {
            path: path.to_path_buf(),
            message,
        },
        Fail::Io(e) => Error::io(path, e),
    }
}

// ---------------------------------------------------------------------------------------
// Little helpers over byte slices (all bounds-checked).

fn field<const N: usize>(b: &[u8], at: usize) -> R<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Fail::Parse(format!("record truncated at byte {at}")))
}

fn le16(b: &[u8], at: usize) -> R<u16> {
    field::<2>(b, at).map(u16::from_le_bytes)
}

fn le32(b: &[u8], at: usize) -> R<u32> {
    field::<4>(b, at).map(u32::from_le_bytes)
}

fn le64(b: &[u8], at: usize) -> R<u64> {
    field::<8>(b, at).map(u64::from_le_bytes)
}

fn read_at(file: &mut File, offset: u64, len: usize) -> R<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------------------
// The zip archive.

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

#[derive(Debug, Clone)]
struct ZipEntry {
    flags: u16,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local_header: u64,
}

struct Zip {
    len: u64,
    entries: HashMap<String, ZipEntry>,
}

impl Zip {
    fn open(file: &mut File, len: u64) -> R<Self> {
        if len < 22 {
            bail!("not a zip archive ({len} bytes; a torch checkpoint is a zip archive)");
        }
        let tail_len = len.min(22 + 0xffff) as usize;
        let tail_start = len - tail_len as u64;
        let tail = read_at(file, tail_start, tail_len)?;
        let mut eocd = None;
        for i in (0..=tail_len - 22).rev() {
            if le32(&tail, i)? == EOCD_SIG {
                let comment = le16(&tail, i + 20)? as usize;
                if i + 22 + comment <= tail_len {
                    eocd = Some(i);
                    break;
                }
            }
        }
        let Some(i) = eocd else {
            let mut head = [0u8; 2];
            file.seek(SeekFrom::Start(0))?;
            file.read_exact(&mut head)?;
            if head[0] == 0x80 {
                bail!(
                    "a bare pickle (torch's legacy pre-1.6 format), not a zip archive; \
                     re-save it with a current torch.save"
                );
            }
            bail!(
                "not a zip archive (no end-of-central-directory record; truncated or not a \
                 torch checkpoint)"
            );
        };
        let e = &tail[i..];
        let eocd_pos = tail_start + i as u64;
        let mut disk = le16(e, 4)? as u32;
        let mut cd_disk = le16(e, 6)? as u32;
        let mut n_entries = le16(e, 10)? as u64;
        let mut cd_size = le32(e, 12)? as u64;
        let mut cd_offset = le32(e, 16)? as u64;
        let mut cd_limit = eocd_pos;
        if eocd_pos >= 20 {
            let loc = read_at(file, eocd_pos - 20, 20)?;
            if le32(&loc, 0)? == ZIP64_LOCATOR_SIG {
                let at = le64(&loc, 8)?;
                if at.checked_add(56).is_none_or(|end| end > eocd_pos - 20) {
                    bail!("zip64 end-of-central-directory record at byte {at} is out of place");
                }
                let rec = read_at(file, at, 56)?;
                if le32(&rec, 0)? != ZIP64_EOCD_SIG {
                    bail!("zip64 end-of-central-directory record at byte {at} has a bad signature");
                }
                disk = le32(&rec, 16)?;
                cd_disk = le32(&rec, 20)?;
                n_entries = le64(&rec, 32)?;
                cd_size = le64(&rec, 40)?;
                cd_offset = le64(&rec, 48)?;
                cd_limit = at;
            }
        }
        if disk != 0 || cd_disk != 0 {
            bail!("multi-disk zip archives are not supported");
        }
        if cd_offset
            .checked_add(cd_size)
            .is_none_or(|end| end > cd_limit)
        {
            bail!(
                "zip central directory ({cd_size} bytes at byte {cd_offset}) does not fit the \
                 {len}-byte file (truncated?)"
            );
        }
        if n_entries > MAX_ZIP_ENTRIES || n_entries.saturating_mul(46) > cd_size {
            bail!("zip central directory of {cd_size} bytes cannot hold {n_entries} entries");
        }
        let cd = read_at(file, cd_offset, cd_size as usize)?;
        let mut entries = HashMap::new();
        let mut p = 0usize;
        for _ in 0..n_entries {
            if le32(&cd, p)? != CENTRAL_SIG {
                bail!(
                    "zip central directory entry at byte {} has a bad signature",
                    cd_offset + p as u64
                );
            }
            let flags = le16(&cd, p + 8)?;
            let method = le16(&cd, p + 10)?;
            let crc = le32(&cd, p + 16)?;
            let mut compressed = le32(&cd, p + 20)? as u64;
            let mut size = le32(&cd, p + 24)? as u64;
            let name_len = le16(&cd, p + 28)? as usize;
            let extra_len = le16(&cd, p + 30)? as usize;
            let comment_len = le16(&cd, p + 32)? as usize;
            let mut local_header = le32(&cd, p + 42)? as u64;
            let name_at = p + 46;
            let extra_at = name_at + name_len;
            let next = extra_at + extra_len + comment_len;
            let (Some(name), Some(extra)) = (
                cd.get(name_at..extra_at),
                cd.get(extra_at..extra_at + extra_len),
            ) else {
                bail!(
                    "zip central directory entry at byte {} is truncated",
                    cd_offset + p as u64
                );
            };
            let name = String::from_utf8_lossy(name).into_owned();
            // The zip64 extended information field holds the 32-bit fields that overflowed,
            // in this order.
            let mut q = 0usize;
            while q + 4 <= extra.len() {
                let id = le16(extra, q)?;
                let n = le16(extra, q + 2)? as usize;
                let Some(data) = extra.get(q + 4..q + 4 + n) else {
                    bail!("zip entry `{name}`: extra field truncated");
                };
                if id == 1 {
                    let mut r = 0usize;
                    for v in [&mut size, &mut compressed, &mut local_header] {
                        if *v == 0xffff_ffff {
                            *v = le64(data, r).map_err(|_| {
                                Fail::Parse(format!("zip entry `{name}`: zip64 field truncated"))
                            })?;
                            r += 8;
                        }
                    }
                }
                q += 4 + n;
            }
            let entry = ZipEntry {
                flags,
                method,
                crc,
                compressed,
                size,
                local_header,
            };
            if entries.insert(name.clone(), entry).is_some() {
                bail!("zip archive holds two entries named `{name}`");
            }
            p = next;
        }
        Ok(Self { len, entries })
    }

    /// The byte range `(start, len)` of a STORED entry's data, checked against the file.
    fn data_range(&self, file: &mut File, name: &str) -> R<(u64, u64)> {
        let Some(e) = self.entries.get(name) else {
            bail!("zip archive has no entry `{name}`");
        };
        if e.flags & 1 != 0 {
            bail!("zip entry `{name}` is encrypted");
        }
        if e.method != 0 {
            bail!(
                "zip entry `{name}` is compressed (method {}); torch writes uncompressed (STORED) \
                 entries",
                e.method
            );
        }
        if e.compressed != e.size {
            bail!(
                "zip entry `{name}` is STORED but its sizes differ ({} vs {} bytes)",
                e.compressed,
                e.size
            );
        }
        if e.local_header
            .checked_add(30)
            .is_none_or(|end| end > self.len)
        {
            bail!(
                "zip entry `{name}`: local header at byte {} is past the end of the file",
                e.local_header
            );
        }
        let h = read_at(file, e.local_header, 30)?;
        if le32(&h, 0)? != LOCAL_SIG {
            bail!(
                "zip entry `{name}`: bad local header signature at byte {}",
                e.local_header
            );
        }
        let start = e.local_header + 30 + le16(&h, 26)? as u64 + le16(&h, 28)? as u64;
        if start.checked_add(e.size).is_none_or(|end| end > self.len) {
            bail!(
                "zip entry `{name}` ({} bytes at byte {start}) extends past the end of the \
                 {}-byte file (truncated?)",
                e.size,
                self.len
            );
        }
        Ok((start, e.size))
    }

    fn read_entry(&self, file: &mut File, name: &str, max: u64) -> R<Vec<u8>> {
        let (start, len) = self.data_range(file, name)?;
        if len > max {
            bail!("zip entry `{name}` is {len} bytes (at most {max} accepted)");
        }
        let bytes = read_at(file, start, len as usize)?;
        let want = self.entries.get(name).map_or(0, |e| e.crc);
        let got = crc32(&bytes);
        if got != want {
            bail!("zip entry `{name}`: CRC-32 {got:08x} does not match the recorded {want:08x} (corrupt file)");
        }
        Ok(bytes)
    }
}

// ---------------------------------------------------------------------------------------
// Pickle values.

/// A storage class (`torch.FloatStorage`, ...): its name and element type, if supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StorageClass {
    name: &'static str,
    dtype: Option<DType>,
}

const STORAGE_CLASSES: [StorageClass; 10] = [
    StorageClass {
        name: "FloatStorage",
        dtype: Some(DType::F32),
    },
    StorageClass {
        name: "DoubleStorage",
        dtype: Some(DType::F64),
    },
    StorageClass {
        name: "HalfStorage",
        dtype: Some(DType::F16),
    },
    StorageClass {
        name: "BFloat16Storage",
        dtype: Some(DType::BF16),
    },
    StorageClass {
        name: "LongStorage",
        dtype: Some(DType::I64),
    },
    StorageClass {
        name: "IntStorage",
        dtype: Some(DType::I32),
    },
    StorageClass {
        name: "ShortStorage",
        dtype: Some(DType::I16),
    },
    StorageClass {
        name: "ByteStorage",
        dtype: Some(DType::U8),
    },
    StorageClass {
        name: "CharStorage",
        dtype: None,
    },
    StorageClass {
        name: "BoolStorage",
        dtype: None,
    },
];

/// The names `GLOBAL` may resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter` (only as `_rebuild_from_type_v2`'s type).
    TensorType,
    OrderedDict,
    Storage(StorageClass),
    /// A harmless data type: calling it makes an opaque value.
    Data(&'static str),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Self::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor") => Self::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Self::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Self::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Self::RebuildFromTypeV2,
            ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Self::TensorType,
            ("collections", "OrderedDict") => Self::OrderedDict,
            ("torch", "Size") => Self::Data("torch.Size"),
            ("torch", "device") => Self::Data("torch.device"),
            ("builtins" | "__builtin__", "set") => Self::Data("set"),
            ("builtins" | "__builtin__", "frozenset") => Self::Data("frozenset"),
            ("builtins" | "__builtin__", "bytearray") => Self::Data("bytearray"),
            ("_codecs", "encode") => Self::Data("bytes"),
            ("torch", n) => Self::Storage(*STORAGE_CLASSES.iter().find(|c| c.name == n)?),
            _ => return None,
        })
    }

    fn name(&self) -> String {
        match self {
            Self::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Self::RebuildTensor => "torch._utils._rebuild_tensor".into(),
            Self::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Self::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state".into(),
            Self::RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2".into(),
            Self::TensorType => "torch.Tensor".into(),
            Self::OrderedDict => "collections.OrderedDict".into(),
            Self::Storage(c) => format!("torch.{}", c.name),
            Self::Data(n) => (*n).into(),
        }
    }
}

/// A persistent id `('storage', class, key, location, numel)`.
#[derive(Debug)]
struct StorageRef {
    class: StorageClass,
    key: Rc<str>,
    numel: u64,
}

/// A tensor as the pickle describes it (checked against its storage's declared size).
#[derive(Debug, Clone)]
struct RawTensor {
    key: String,
    dtype: DType,
    storage_numel: u64,
    /// In elements.
    offset: u64,
    shape: Vec<usize>,
    /// In elements; 0 for dimensions of size 1.
    stride: Vec<usize>,
    numel: u64,
    /// Elements from `offset` to the last addressed one, inclusive (0 when empty).
    span: u64,
}

#[derive(Debug, Clone)]
struct Seq {
    items: Vec<Value>,
    depth: u32,
}

#[derive(Debug, Clone)]
struct Pairs {
    items: Vec<(Value, Value)>,
    depth: u32,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Pairs>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<RawTensor>),
    /// A value this reader does not model (instances of harmless data types, sets, big
    /// integers); never looked into.
    Opaque(&'static str),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(d) => d.depth,
            _ => 0,
        }
    }

    /// A short description for error messages.
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => {
                let short: String = s.chars().take(40).collect();
                format!("str {short:?}")
            }
            Value::Bytes(b) => format!("bytes of length {}", b.len()),
            Value::Global(g) => format!("global {}", g.name()),
            Value::Tuple(s) => format!("tuple of {} elements", s.items.len()),
            Value::List(s) => format!("list of {} elements", s.items.len()),
            Value::Dict(d) => format!("dict of {} items", d.items.len()),
            Value::Storage(s) => format!("torch.{} `{}`", s.class.name, s.key),
            Value::Tensor(t) => format!("tensor {:?}", t.shape),
            Value::Opaque(n) => format!("{n} value"),
        }
    }
}

fn depth_above(items: impl Iterator<Item = u32>) -> R<u32> {
    let d = items.max().unwrap_or(0) + 1;
    if d > MAX_DEPTH {
        bail!("containers nested deeper than {MAX_DEPTH}");
    }
    Ok(d)
}

fn seq(items: Vec<Value>) -> R<Rc<Seq>> {
    let depth = depth_above(items.iter().map(Value::depth))?;
    Ok(Rc::new(Seq { items, depth }))
}

fn pairs(flat: Vec<Value>) -> R<Vec<(Value, Value)>> {
    if !flat.len().is_multiple_of(2) {
        bail!("odd number of values ({}) for dict items", flat.len());
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        0x80 => "PROTO",
        0x95 => "FRAME",
        b'.' => "STOP",
        b'(' => "MARK",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'N' => "NONE",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'M' => "BININT2",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'G' => "BINFLOAT",
        b'X' => "BINUNICODE",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8e => "BINBYTES8",
        0x96 => "BYTEARRAY8",
        b')' => "EMPTY_TUPLE",
        b't' => "TUPLE",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        b']' => "EMPTY_LIST",
        b'l' => "LIST",
        b'a' => "APPEND",
        b'e' => "APPENDS",
        b'}' => "EMPTY_DICT",
        b'd' => "DICT",
        b's' => "SETITEM",
        b'u' => "SETITEMS",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        0x94 => "MEMOIZE",
        b'h' => "BINGET",
        b'j' => "LONG_BINGET",
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        b'R' => "REDUCE",
        b'b' => "BUILD",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'Q' => "BINPERSID",
        b'P' => "PERSID",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'g' => "GET",
        b'p' => "PUT",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown opcode",
    }
}

// ---------------------------------------------------------------------------------------
// The pickle machine.

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    work: u64,
    budget: u64,
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            work: 0,
            budget: WORK_BASE.saturating_add(WORK_PER_BYTE.saturating_mul(data.len() as u64)),
        }
    }

    fn charge(&mut self, units: u64) -> R<()> {
        self.work = self.work.saturating_add(units);
        if self.work > self.budget {
            bail!(
                "the pickle does more than {} units of work for {} bytes (copy bomb?)",
                self.budget,
                self.data.len()
            );
        }
        Ok(())
    }

    fn take(&mut self, n: u64) -> R<&'a [u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            bail!("wants {n} bytes but only {left} are left (truncated)");
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn arg<const N: usize>(&mut self) -> R<[u8; N]> {
        let s = self.take(N as u64)?;
        s.try_into()
            .map_err(|_| Fail::Parse("argument truncated".into()))
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.arg::<1>()?[0])
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') else {
            bail!("GLOBAL name longer than {MAX_LINE} bytes or not terminated");
        };
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| Fail::Parse("GLOBAL name is not UTF-8".into()))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&mut self, n: u64) -> R<Value> {
        if n > MAX_STRING {
            bail!("string of {n} bytes (at most {MAX_STRING})");
        }
        let b = self.take(n)?;
        let s =
            std::str::from_utf8(b).map_err(|e| Fail::Parse(format!("string is not UTF-8: {e}")))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn bytes(&mut self, n: u64) -> R<Value> {
        if n > MAX_STRING {
            bail!("byte string of {n} bytes (at most {MAX_STRING})");
        }
        Ok(Value::Bytes(Rc::from(self.take(n)?)))
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value) -> R<()> {
        if self.stack.len() >= MAX_STACK {
            bail!("pickle stack grows past {MAX_STACK} values");
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> R<Value> {
        if self.stack.len() <= self.floor() {
            bail!("stack underflow");
        }
        self.stack
            .pop()
            .ok_or_else(|| Fail::Parse("stack underflow".into()))
    }

    fn top(&mut self) -> R<&mut Value> {
        if self.stack.len() <= self.floor() {
            bail!("stack underflow");
        }
        self.stack
            .last_mut()
            .ok_or_else(|| Fail::Parse("stack underflow".into()))
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            bail!("no MARK to pop to");
        };
        if m > self.stack.len() {
            bail!("MARK beyond the stack");
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, key: u32) -> R<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            bail!("memo grows past {MAX_MEMO} entries");
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> R<()> {
        let Some(v) = self.memo.get(&key).cloned() else {
            bail!("memo key {key} was never set");
        };
        self.push(v)
    }

    /// Appends `items` to the list on top of the stack (an opaque value swallows them).
    fn extend_list(&mut self, items: Vec<Value>) -> R<()> {
        let d = depth_above(items.iter().map(Value::depth))?;
        let mut copied = 0u64;
        match self.top()? {
            Value::List(rc) => {
                if Rc::strong_count(rc) > 1 {
                    copied = rc.items.len() as u64;
                }
                let s = Rc::make_mut(rc);
                s.items.extend(items);
                s.depth = s.depth.max(d);
            }
            Value::Opaque(_) => {}
            other => bail!("APPEND to a {}", other.describe()),
        }
        self.charge(copied)
    }

    /// Adds `items` to the dict on top of the stack (an opaque value swallows them).
    fn extend_dict(&mut self, items: Vec<(Value, Value)>) -> R<()> {
        let d = depth_above(items.iter().map(|(k, v)| k.depth().max(v.depth())))?;
        let mut copied = 0u64;
        match self.top()? {
            Value::Dict(rc) => {
                if Rc::strong_count(rc) > 1 {
                    copied = rc.items.len() as u64;
                }
                let s = Rc::make_mut(rc);
                s.items.extend(items);
                s.depth = s.depth.max(d);
            }
            Value::Opaque(_) => {}
            other => bail!("SETITEM on a {}", other.describe()),
        }
        self.charge(copied)
    }

    /// Runs to STOP and returns the pickled object.
    fn run(mut self) -> R<Value> {
        loop {
            let at = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                bail!("data.pkl ends at byte {at} without STOP (truncated)");
            };
            self.pos += 1;
            match self.step(op) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(Fail::Parse(m)) => {
                    bail!("data.pkl byte {at}, {} (0x{op:02x}): {m}", opcode_name(op))
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn step(&mut self, op: u8) -> R<Option<Value>> {
        self.charge(1)?;
        match op {
            0x80 => {
                let v = self.u8()?;
                if v > 5 {
                    bail!("pickle protocol {v} (at most 5 known)");
                }
            }
            0x95 => {
                self.arg::<8>()?;
            }
            b'.' => return self.pop().map(Some),
            b'(' => {
                if self.marks.len() >= MAX_STACK {
                    bail!("more than {MAX_STACK} open MARKs");
                }
                self.marks.push(self.stack.len());
            }
            b'0' => {
                if self.stack.len() > self.floor() {
                    self.stack.pop();
                } else if self.marks.pop().is_none() {
                    bail!("stack underflow");
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.push(v)?;
            }
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(self.arg()?);
                self.push(Value::Int(v as i64))?;
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v as i64))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.arg()?);
                self.push(Value::Int(v as i64))?;
            }
            0x8a | 0x8b => {
                let n = if op == 0x8a {
                    self.u8()? as u64
                } else {
                    let n = i32::from_le_bytes(self.arg()?);
                    u64::try_from(n).map_err(|_| Fail::Parse(format!("negative length {n}")))?
                };
                let b = self.take(n)?;
                let v = if b.is_empty() {
                    Value::Int(0)
                } else if b.len() <= 8 {
                    // Two's complement, little-endian, sign-extended.
                    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
                    let mut w = [fill; 8];
                    w[..b.len()].copy_from_slice(b);
                    Value::Int(i64::from_le_bytes(w))
                } else {
                    Value::Opaque("integer wider than 64 bits")
                };
                self.push(v)?;
            }
            b'G' => {
                let v = f64::from_be_bytes(self.arg()?);
                self.push(Value::Float(v))?;
            }
            b'X' => {
                let n = u32::from_le_bytes(self.arg()?) as u64;
                let v = self.string(n)?;
                self.push(v)?;
            }
            0x8c => {
                let n = self.u8()? as u64;
                let v = self.string(n)?;
                self.push(v)?;
            }
            0x8d => {
                let n = u64::from_le_bytes(self.arg()?);
                let v = self.string(n)?;
                self.push(v)?;
            }
            b'T' => {
                let n = i32::from_le_bytes(self.arg()?);
                let n =
                    u64::try_from(n).map_err(|_| Fail::Parse(format!("negative length {n}")))?;
                let v = self.bytes(n)?;
                self.push(v)?;
            }
            b'U' | b'C' => {
                let n = self.u8()? as u64;
                let v = self.bytes(n)?;
                self.push(v)?;
            }
            b'B' => {
                let n = u32::from_le_bytes(self.arg()?) as u64;
                let v = self.bytes(n)?;
                self.push(v)?;
            }
            0x8e | 0x96 => {
                let n = u64::from_le_bytes(self.arg()?);
                let v = self.bytes(n)?;
                self.push(v)?;
            }
            b')' => self.push(Value::Tuple(seq(Vec::new())?))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(seq(items)?))?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Value::Tuple(seq(items)?))?;
            }
            b']' => self.push(Value::List(seq(Vec::new())?))?,
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(seq(items)?))?;
            }
            b'a' => {
                let v = self.pop()?;
                self.extend_list(vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            b'}' => self.push(Value::Dict(Rc::new(Pairs {
                items: Vec::new(),
                depth: 1,
            })))?,
            b'd' => {
                let items = pairs(self.pop_mark()?)?;
                let depth = depth_above(items.iter().map(|(k, v)| k.depth().max(v.depth())))?;
                self.push(Value::Dict(Rc::new(Pairs { items, depth })))?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![(k, v)])?;
            }
            b'u' => {
                let items = pairs(self.pop_mark()?)?;
                self.extend_dict(items)?;
            }
            0x8f => self.push(Value::Opaque("set"))?,
            0x90 => {
                self.pop_mark()?;
                match self.top()? {
                    Value::Opaque("set") => {}
                    other => bail!("ADDITEMS to a {}", other.describe()),
                }
            }
            0x91 => {
                self.pop_mark()?;
                self.push(Value::Opaque("frozenset"))?;
            }
            b'q' => {
                let k = self.u8()? as u32;
                self.memo_put(k)?;
            }
            b'r' => {
                let k = u32::from_le_bytes(self.arg()?);
                self.memo_put(k)?;
            }
            0x94 => {
                let k = u32::try_from(self.memo.len())
                    .map_err(|_| Fail::Parse("memo too large".into()))?;
                self.memo_put(k)?;
            }
            b'h' => {
                let k = self.u8()? as u32;
                self.memo_get(k)?;
            }
            b'j' => {
                let k = u32::from_le_bytes(self.arg()?);
                self.memo_get(k)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = global(module, name)?;
                self.push(Value::Global(g))?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    bail!(
                        "STACK_GLOBAL needs two strings, got {} and {}",
                        module.describe(),
                        name.describe()
                    );
                };
                let g = global(module, name)?;
                self.push(Value::Global(g))?;
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let Value::Global(g) = func else {
                    bail!(
                        "REDUCE calls a {}; only recognised torch globals are called",
                        func.describe()
                    );
                };
                let Value::Tuple(args) = args else {
                    bail!(
                        "REDUCE of {} with a {} for arguments",
                        g.name(),
                        args.describe()
                    );
                };
                let v = call(g, &args.items)?;
                self.push(v)?;
            }
            0x81 | 0x92 => {
                if op == 0x92 {
                    self.pop()?; // keyword arguments
                }
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = match (&cls, &args) {
                    (Value::Global(Global::OrderedDict), Value::Tuple(_)) => {
                        Value::Dict(Rc::new(Pairs {
                            items: Vec::new(),
                            depth: 1,
                        }))
                    }
                    (Value::Global(Global::Data(n)), Value::Tuple(_)) => Value::Opaque(n),
                    _ => bail!(
                        "NEWOBJ of {} with {} (only dicts and plain data may be created)",
                        cls.describe(),
                        args.describe()
                    ),
                };
                self.push(v)?;
            }
            b'b' => {
                let state = self.pop()?;
                match self.top()? {
                    Value::Dict(_) | Value::Tensor(_) | Value::Opaque(_) => {}
                    other => bail!("BUILD on a {} with {}", other.describe(), state.describe()),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = persistent_load(&pid)?;
                self.push(v)?;
            }
            b'P' | b'F' | b'I' | b'L' | b'S' | b'V' | b'g' | b'p' | b'i' | b'o' | 0x82 | 0x83
            | 0x84 | 0x97 | 0x98 => {
                bail!("opcode not supported (torch.save writes protocol 2 pickles)")
            }
            _ => bail!("not a pickle opcode (corrupt data.pkl)"),
        }
        Ok(None)
    }
}

fn global(module: &str, name: &str) -> R<Global> {
    Global::resolve(module, name).ok_or_else(|| {
        Fail::Parse(format!(
            "the pickle refers to `{module}.{name}`, which is not a torch tensor constructor; \
             refusing it (nothing in the file is run)"
        ))
    })
}

fn int_arg(v: &Value, what: &str) -> R<u64> {
    match v {
        Value::Int(i) => {
            u64::try_from(*i).map_err(|_| Fail::Parse(format!("{what} is negative ({i})")))
        }
        other => bail!("{what} must be an int, got {}", other.describe()),
    }
}

fn ints_arg(v: &Value, what: &str) -> R<Vec<usize>> {
    let Value::Tuple(s) = v else {
        bail!("{what} must be a tuple of ints, got {}", v.describe());
    };
    if s.items.len() > MAX_RANK {
        bail!(
            "{what} has {} dimensions (at most {MAX_RANK})",
            s.items.len()
        );
    }
    s.items
        .iter()
        .map(|x| {
            let n = int_arg(x, what)?;
            usize::try_from(n).map_err(|_| Fail::Parse(format!("{what}: {n} does not fit usize")))
        })
        .collect()
}

/// `('storage', class, key, location, numel)` -> a storage reference.
fn persistent_load(pid: &Value) -> R<Value> {
    let Value::Tuple(t) = pid else {
        bail!("persistent id must be a tuple, got {}", pid.describe());
    };
    let [tag, class, key, _location, numel] = t.items.as_slice() else {
        bail!(
            "persistent id must be ('storage', class, key, location, numel), got a tuple of {} \
             elements",
            t.items.len()
        );
    };
    if !matches!(tag, Value::Str(s) if &**s == "storage") {
        bail!(
            "persistent id tag must be 'storage', got {}",
            tag.describe()
        );
    }
    let Value::Global(Global::Storage(class)) = class else {
        bail!(
            "persistent id storage type must be a torch storage class, got {}",
            class.describe()
        );
    };
    let Value::Str(key) = key else {
        bail!(
            "persistent id storage key must be a string, got {}",
            key.describe()
        );
    };
    let numel = int_arg(numel, "storage size")?;
    Ok(Value::Storage(Rc::new(StorageRef {
        class: *class,
        key: key.clone(),
        numel,
    })))
}

/// Applies a recognised global to its arguments (never running anything).
fn call(g: Global, args: &[Value]) -> R<Value> {
    let arity = |ok: &[usize], sig: &str| -> R<()> {
        if ok.contains(&args.len()) {
            Ok(())
        } else {
            bail!("{} takes ({sig}), got {} arguments", g.name(), args.len())
        }
    };
    match g {
        Global::RebuildTensorV2 => {
            arity(
                &[6, 7],
                "storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]",
            )?;
            rebuild(args)
        }
        Global::RebuildTensor => {
            arity(&[4], "storage, storage_offset, size, stride")?;
            rebuild(args)
        }
        Global::RebuildParameter | Global::RebuildParameterWithState => {
            if g == Global::RebuildParameter {
                arity(&[3], "data, requires_grad, backward_hooks")?;
            } else {
                arity(&[4], "data, requires_grad, backward_hooks, state")?;
            }
            match &args[0] {
                t @ Value::Tensor(_) => Ok(t.clone()),
                other => bail!(
                    "{}: data must be a tensor, got {}",
                    g.name(),
                    other.describe()
                ),
            }
        }
        Global::RebuildFromTypeV2 => {
            arity(&[4], "func, new_type, args, state")?;
            let inner = match &args[0] {
                Value::Global(
                    f @ (Global::RebuildTensorV2
                    | Global::RebuildTensor
                    | Global::RebuildParameter
                    | Global::RebuildParameterWithState),
                ) => *f,
                other => bail!(
                    "{}: func must be a tensor rebuild function, got {}",
                    g.name(),
                    other.describe()
                ),
            };
            if !matches!(args[1], Value::Global(Global::TensorType)) {
                bail!(
                    "{}: new_type must be torch.Tensor or Parameter, got {}",
                    g.name(),
                    args[1].describe()
                );
            }
            let Value::Tuple(inner_args) = &args[2] else {
                bail!(
                    "{}: args must be a tuple, got {}",
                    g.name(),
                    args[2].describe()
                );
            };
            call(inner, &inner_args.items)
        }
        Global::OrderedDict => {
            if !args.is_empty() {
                bail!(
                    "collections.OrderedDict is only accepted without arguments, got {}",
                    args.len()
                );
            }
            Ok(Value::Dict(Rc::new(Pairs {
                items: Vec::new(),
                depth: 1,
            })))
        }
        Global::Data(n) => Ok(Value::Opaque(n)),
        Global::TensorType | Global::Storage(_) => {
            bail!("{} cannot be called here", g.name())
        }
    }
}

/// `(storage, storage_offset, size, stride, ...)` -> a tensor description, checked against
/// the storage's declared element count.
fn rebuild(args: &[Value]) -> R<Value> {
    let [storage, offset, size, stride, ..] = args else {
        bail!("tensor rebuild needs (storage, storage_offset, size, stride)");
    };
    let Value::Storage(s) = storage else {
        bail!(
            "tensor storage must be a persistent id, got {}",
            storage.describe()
        );
    };
    let Some(dtype) = s.class.dtype else {
        bail!("tensor of torch.{} is not supported", s.class.name);
    };
    let offset = int_arg(offset, "storage_offset")?;
    let shape = ints_arg(size, "size")?;
    let mut stride = ints_arg(stride, "stride")?;
    if stride.len() != shape.len() {
        bail!(
            "size has {} dimensions but stride {}",
            shape.len(),
            stride.len()
        );
    }
    let (numel, span) = check_layout(s.numel, offset, &shape, &mut stride)?;
    Ok(Value::Tensor(Rc::new(RawTensor {
        key: s.key.to_string(),
        dtype,
        storage_numel: s.numel,
        offset,
        shape,
        stride,
        numel,
        span,
    })))
}

/// Checks a layout against a storage of `storage_numel` elements; returns the element count
/// and the span (elements from the offset to the last addressed one, inclusive). Strides of
/// size-1 dimensions are set to 0 (they are never applied).
fn check_layout(
    storage_numel: u64,
    offset: u64,
    shape: &[usize],
    stride: &mut [usize],
) -> R<(u64, u64)> {
    for (st, &d) in stride.iter_mut().zip(shape) {
        if d == 1 {
            *st = 0;
        }
    }
    let stride: &[usize] = stride;
    let overflow = || Fail::Parse(format!("size {shape:?} / stride {stride:?} overflow"));
    let mut numel: u64 = 1;
    for &d in shape {
        numel = numel.checked_mul(d as u64).ok_or_else(overflow)?;
    }
    if numel == 0 {
        if offset > storage_numel {
            bail!("storage offset {offset} is past the end of a {storage_numel}-element storage");
        }
        return Ok((0, 0));
    }
    let mut last: u64 = 0;
    for (&st, &d) in stride.iter().zip(shape) {
        let reach = (d as u64 - 1).checked_mul(st as u64).ok_or_else(overflow)?;
        last = last.checked_add(reach).ok_or_else(overflow)?;
    }
    let end = offset
        .checked_add(last)
        .filter(|&e| e < storage_numel)
        .ok_or_else(|| {
            Fail::Parse(format!(
                "tensor of size {shape:?}, stride {stride:?} at offset {offset} reaches past the \
                 end of its {storage_numel}-element storage"
            ))
        })?;
    debug_assert!(end < storage_numel);
    if numel > storage_numel {
        bail!(
            "tensor of size {shape:?} has {numel} elements but its storage only \
             {storage_numel} (overlapping strides are not supported)"
        );
    }
    Ok((numel, last + 1))
}

/// Interprets `data.pkl` and returns its named tensors (in pickle order; a later name wins).
fn parse_pickle(data: &[u8]) -> R<Vec<(String, RawTensor)>> {
    let top = Vm::new(data).run()?;
    let Value::Dict(d) = top else {
        bail!("data.pkl holds a {}, not a state dict", top.describe());
    };
    let mut out = Vec::new();
    for (k, v) in &d.items {
        match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => out.push((k.to_string(), (**t).clone())),
            (k, Value::Tensor(_)) => {
                bail!(
                    "a tensor is stored under a {}, not a string name",
                    k.describe()
                )
            }
            _ => {}
        }
        if out.len() > MAX_TENSORS {
            bail!("more than {MAX_TENSORS} tensors");
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The file.

#[derive(Debug)]
struct PthTensor {
    dtype: DType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    /// Absolute byte offset of the tensor's first element.
    start: u64,
    numel: usize,
    /// Elements from the first to the last addressed one, inclusive.
    span: usize,
    contiguous: bool,
}

/// A zip-format torch checkpoint, read tensor by tensor on demand.
pub(crate) struct PthFile {
    path: PathBuf,
    file: Mutex<File>,
    big_endian: bool,
    tensors: BTreeMap<String, PthTensor>,
}

impl PthFile {
    /// Reads the archive's directory and `data.pkl`, and checks every tensor against its
    /// storage entry. Errors are [`Error::Parse`] naming `path` (or [`Error::Io`]).
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let (big_endian, tensors) = Self::read(&mut file, len).map_err(|f| to_error(path, f))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            big_endian,
            tensors,
        })
    }

    fn read(file: &mut File, len: u64) -> R<(bool, BTreeMap<String, PthTensor>)> {
        let zip = Zip::open(file, len)?;
        let mut pkls: Vec<&str> = zip
            .entries
            .keys()
            .map(String::as_str)
            .filter(|n| {
                n.strip_suffix("/data.pkl")
                    .is_some_and(|p| !p.is_empty() && !p.contains('/'))
            })
            .collect();
        pkls.sort_unstable();
        let prefix = match pkls.as_slice() {
            [one] => one.trim_end_matches("data.pkl").to_string(),
            [] => bail!("zip archive has no `<archive>/data.pkl` (not a torch checkpoint)"),
            more => bail!(
                "zip archive has {} data.pkl entries ({})",
                more.len(),
                more.join(", ")
            ),
        };
        let byteorder = format!("{prefix}byteorder");
        let big_endian = if zip.entries.contains_key(&byteorder) {
            let b = zip.read_entry(file, &byteorder, 16)?;
            match String::from_utf8_lossy(&b).trim() {
                "little" => false,
                "big" => true,
                other => bail!("byteorder entry says {other:?} (want little or big)"),
            }
        } else {
            false
        };
        let pkl = zip.read_entry(file, &format!("{prefix}data.pkl"), MAX_PICKLE_BYTES)?;
        let raw = parse_pickle(&pkl)?;
        let mut ranges: HashMap<String, (u64, u64)> = HashMap::new();
        let mut tensors = BTreeMap::new();
        for (name, t) in raw {
            let entry = format!("{prefix}data/{}", t.key);
            let (start, bytes) = match ranges.get(&entry) {
                Some(r) => *r,
                None => {
                    let r = zip
                        .data_range(file, &entry)
                        .map_err(|f| tensor_fail(&name, f))?;
                    ranges.insert(entry.clone(), r);
                    r
                }
            };
            let width = t.dtype.size_in_bytes() as u64;
            if t.storage_numel.checked_mul(width) != Some(bytes) {
                bail!(
                    "tensor `{name}`: storage `{}` declares {} elements of {width} bytes but its \
                     entry holds {bytes} bytes",
                    t.key,
                    t.storage_numel
                );
            }
            // Both fit: offset + span <= storage_numel, whose byte size is inside the file.
            let to_usize = |v: u64| {
                usize::try_from(v).map_err(|_| Fail::Parse(format!("tensor `{name}` too large")))
            };
            let contiguous = is_contiguous(&t.shape, &t.stride);
            tensors.insert(
                name.clone(),
                PthTensor {
                    dtype: t.dtype,
                    start: start + t.offset * width,
                    numel: to_usize(t.numel)?,
                    span: to_usize(t.span)?,
                    shape: t.shape,
                    stride: t.stride,
                    contiguous,
                },
            );
        }
        Ok((big_endian, tensors))
    }

    /// Tensor names with their dtype and shape.
    pub(crate) fn infos(&self) -> impl Iterator<Item = (&str, DType, &[usize])> {
        self.tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.dtype, t.shape.as_slice()))
    }

    /// Reads tensor `name` into a CPU tensor.
    pub(crate) fn load(&self, name: &str) -> Result<Tensor> {
        let Some(t) = self.tensors.get(name) else {
            return Err(to_error(
                &self.path,
                Fail::Parse(format!("tensor `{name}` not found")),
            ));
        };
        let r = match t.dtype {
            DType::F32 => self.read_tensor::<f32>(t),
            DType::F64 => self.read_tensor::<f64>(t),
            DType::F16 => self.read_tensor::<half::f16>(t),
            DType::BF16 => self.read_tensor::<half::bf16>(t),
            DType::I64 => self.read_tensor::<i64>(t),
            DType::I32 => self.read_tensor::<i32>(t),
            DType::I16 => self.read_tensor::<i16>(t),
            DType::U8 => self.read_tensor::<u8>(t),
            other => Err(Fail::Parse(format!("dtype {other:?} not supported"))),
        };
        r.map_err(|f| to_error(&self.path, tensor_fail(name, f)))
    }

    fn read_tensor<T: Elem>(&self, t: &PthTensor) -> R<Tensor> {
        let big = self.big_endian;
        let mut f = self
            .file
            .lock()
            .map_err(|_| Fail::Parse("file lock poisoned".into()))?;
        let values: Vec<T> = if t.numel == 0 {
            Vec::new()
        } else if t.contiguous {
            let mut out = Vec::with_capacity(t.numel);
            let mut left = t
                .numel
                .checked_mul(T::WIDTH)
                .ok_or_else(|| Fail::Parse("tensor too large".into()))?;
            let mut buf = vec![0u8; CHUNK.min(left)];
            f.seek(SeekFrom::Start(t.start))?;
            while left > 0 {
                let k = left.min(buf.len());
                f.read_exact(&mut buf[..k])?;
                out.extend(buf[..k].chunks_exact(T::WIDTH).map(|c| T::decode(c, big)));
                left -= k;
            }
            out
        } else {
            let bytes = t
                .span
                .checked_mul(T::WIDTH)
                .ok_or_else(|| Fail::Parse("tensor too large".into()))?;
            let span = read_at(&mut f, t.start, bytes)?;
            gather(&span, &t.shape, &t.stride, t.numel, big)?
        };
        drop(f);
        Tensor::from_vec(values, t.shape.as_slice(), &Device::Cpu)
            .map_err(|e| Fail::Parse(e.to_string()))
    }
}

fn tensor_fail(name: &str, f: Fail) -> Fail {
    match f {
        Fail::Parse(m) => Fail::Parse(format!("tensor `{name}`: {m}")),
        io => io,
    }
}

/// Row-major contiguous (strides of size-1 dimensions ignored).
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut want = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != want {
            return false;
        }
        want = want.saturating_mul(d);
    }
    true
}

/// Reads a strided tensor out of the bytes of its span (checked by [`check_layout`]).
fn gather<T: Elem>(
    span: &[u8],
    shape: &[usize],
    stride: &[usize],
    numel: usize,
    big: bool,
) -> R<Vec<T>> {
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..numel {
        let pos: usize = idx.iter().zip(stride).map(|(i, s)| i * s).sum();
        let at = pos * T::WIDTH;
        let Some(b) = span.get(at..at + T::WIDTH) else {
            bail!("strided element {pos} outside its span");
        };
        out.push(T::decode(b, big));
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// Element types read from a storage's bytes.
trait Elem: candle_core::WithDType {
    const WIDTH: usize;
    /// `b` is exactly `WIDTH` bytes.
    fn decode(b: &[u8], big_endian: bool) -> Self;
}

macro_rules! elem {
    ($($t:ty => $w:literal, $conv:expr);* $(;)?) => {$(
        impl Elem for $t {
            const WIDTH: usize = $w;
            fn decode(b: &[u8], big_endian: bool) -> Self {
                let mut a = [0u8; $w];
                a.copy_from_slice(b);
                if big_endian {
                    a.reverse();
                }
                let conv: fn([u8; $w]) -> $t = $conv;
                conv(a)
            }
        }
    )*};
}

elem! {
    f32 => 4, f32::from_le_bytes;
    f64 => 8, f64::from_le_bytes;
    i64 => 8, i64::from_le_bytes;
    i32 => 4, i32::from_le_bytes;
    i16 => 2, i16::from_le_bytes;
    u8 => 1, u8::from_le_bytes;
    half::f16 => 2, |a| half::f16::from_bits(u16::from_le_bytes(a));
    half::bf16 => 2, |a| half::bf16::from_bits(u16::from_le_bytes(a));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickle written opcode by opcode.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn new() -> Self {
            P(vec![0x80, 2])
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
            let mut p = self.op(b'(');
            for &x in v {
                p = p.int(x);
            }
            p.op(b't')
        }
        /// `('storage', torch.<class>, key, 'cpu', numel)` BINPERSID.
        fn storage(self, class: &str, key: &str, numel: i64) -> Self {
            self.op(b'(')
                .str("storage")
                .global("torch", class)
                .str(key)
                .str("cpu")
                .int(numel)
                .op(b't')
                .op(b'Q')
        }
        /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
        fn tensor(self, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Self {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(b'(')
                .storage("FloatStorage", key, numel)
                .int(offset)
                .ints(size)
                .ints(stride)
                .op(0x89)
                .global("collections", "OrderedDict")
                .op(b')')
                .op(b'R')
                .op(b't')
                .op(b'R')
        }
        fn done(self) -> Vec<u8> {
            self.op(b'.').0
        }
    }

    fn err(pkl: &[u8]) -> String {
        match parse_pickle(pkl) {
            Ok(t) => panic!("parsed to {} tensors", t.len()),
            Err(Fail::Parse(m)) => m,
            Err(Fail::Io(e)) => panic!("io error {e}"),
        }
    }

    /// A torch-style zip (STORED entries, central directory, no zip64).
    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let off = out.len() as u32;
            let crc = crc32(data);
            let mut h = Vec::new();
            h.extend(LOCAL_SIG.to_le_bytes());
            h.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend([0, 0]);
            out.extend(&h);
            out.extend(name.as_bytes());
            out.extend(*data);
            central.extend(CENTRAL_SIG.to_le_bytes());
            central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            central.extend(crc.to_le_bytes());
            central.extend((data.len() as u32).to_le_bytes());
            central.extend((data.len() as u32).to_le_bytes());
            central.extend((name.len() as u16).to_le_bytes());
            central.extend([0u8; 12]);
            central.extend(off.to_le_bytes());
            central.extend(name.as_bytes());
        }
        let cd_off = out.len() as u32;
        out.extend(&central);
        out.extend(EOCD_SIG.to_le_bytes());
        out.extend([0, 0, 0, 0]);
        out.extend((entries.len() as u16).to_le_bytes());
        out.extend((entries.len() as u16).to_le_bytes());
        out.extend((central.len() as u32).to_le_bytes());
        out.extend(cd_off.to_le_bytes());
        out.extend([0, 0]);
        out
    }

    fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<PthFile>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pytorch_model.bin");
        std::fs::write(&p, bytes).unwrap();
        let r = PthFile::open(&p);
        (dir, r)
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn one_tensor(offset: i64, size: &[i64], stride: &[i64], data: &[f32]) -> Vec<u8> {
        let pkl = P::new()
            .op(b'}')
            .str("w")
            .tensor("0", data.len() as i64, offset, size, stride)
            .op(b's')
            .done();
        zip(&[
            ("archive/data.pkl", &pkl),
            ("archive/data/0", &f32_bytes(data)),
        ])
    }

    #[test]
    fn reads_the_fixtures_like_candle() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for p in [
            root.join("model/cg_bin/pytorch_model.bin"),
            root.join("tiny-random-bart/pytorch_model.bin"),
        ] {
            let ours = PthFile::open(&p).unwrap();
            let theirs = candle_core::pickle::PthTensors::new(&p, None).unwrap();
            assert_eq!(
                ours.tensors.len(),
                theirs.tensor_infos().len(),
                "{}",
                p.display()
            );
            for (name, dtype, shape) in ours.infos() {
                let info = &theirs.tensor_infos()[name];
                assert_eq!(dtype, info.dtype, "{name}");
                assert_eq!(shape, info.layout.shape().dims(), "{name}");
                let a = ours.load(name).unwrap();
                let b = theirs.get(name).unwrap().unwrap();
                let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
                let diff: f32 = diff.max(0).unwrap().to_scalar().unwrap();
                assert_eq!(diff, 0.0, "{name}");
            }
        }
    }

    #[test]
    fn contiguous_and_strided_tensors() {
        let data = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
        let (_d, f) = open_bytes(&one_tensor(0, &[2, 3], &[3, 1], &data));
        let t = f.unwrap().load("w").unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        );
        // A saved transpose (column-major) is gathered.
        let (_d, f) = open_bytes(&one_tensor(0, &[2, 3], &[1, 2], &data));
        let t = f.unwrap().load("w").unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]
        );
        // An offset, and a size-1 dimension whose stride is never applied.
        let (_d, f) = open_bytes(&one_tensor(2, &[1, 3], &[1 << 40, 1], &data));
        let t = f.unwrap().load("w").unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[2.0, 3.0, 4.0]]);
        // Empty.
        let (_d, f) = open_bytes(&one_tensor(6, &[0, 3], &[3, 1], &data));
        assert_eq!(f.unwrap().load("w").unwrap().dims(), [0, 3]);
    }

    #[test]
    fn big_endian_storages() {
        let pkl = P::new()
            .op(b'}')
            .str("w")
            .tensor("0", 2, 0, &[2], &[1])
            .op(b's')
            .done();
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        let z = zip(&[
            ("a/data.pkl", &pkl),
            ("a/byteorder", b"big"),
            ("a/data/0", &data),
        ]);
        let (_d, f) = open_bytes(&z);
        let t = f.unwrap().load("w").unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [1.5, -2.0]);
    }

    #[test]
    fn layouts_outside_the_storage_are_refused() {
        let data = [0.0f32; 6];
        for (offset, size, stride, needle) in [
            (
                1i64 << 62,
                vec![2i64, 3],
                vec![3i64, 1],
                "reaches past the end",
            ),
            (1, vec![2, 3], vec![3, 1], "reaches past the end"),
            (0, vec![2, 3], vec![4, 1], "reaches past the end"),
            (0, vec![1 << 40, 1 << 40], vec![1, 1], "overflow"),
            (0, vec![100], vec![0], "overlapping strides"),
            (7, vec![0], vec![1], "past the end"),
            (0, vec![2, 3], vec![-3, 1], "negative"),
            (-1, vec![2], vec![1], "negative"),
        ] {
            let (_d, f) = open_bytes(&one_tensor(offset, &size, &stride, &data));
            let e = f.err().expect("refused").to_string();
            assert!(e.contains(needle) && e.contains("pytorch_model.bin"), "{e}");
        }
    }

    #[test]
    fn storage_size_must_match_its_entry() {
        let pkl = P::new()
            .op(b'}')
            .str("w")
            .tensor("0", 1 << 40, 0, &[2], &[1])
            .op(b's')
            .done();
        let (_d, f) = open_bytes(&zip(&[("a/data.pkl", &pkl), ("a/data/0", &[0u8; 8])]));
        let e = f.err().unwrap().to_string();
        assert!(e.contains("declares 1099511627776 elements"), "{e}");
        let (_d, f) = open_bytes(&zip(&[("a/data.pkl", &pkl)]));
        let e = f.err().unwrap().to_string();
        assert!(e.contains("no entry `a/data/0`"), "{e}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for open in [b']', b')'] {
            let mut p = P::new();
            for _ in 0..1_000_000 {
                p = p.op(b'(');
                p = p.op(open);
            }
            let e = err(&p.done());
            assert!(e.contains("open MARKs") || e.contains("stack grows"), "{e}");
        }
        // Nesting built through the memo (wrap, memoize, fetch, wrap again ...).
        let mut p = P::new().op(b']');
        for _ in 0..1000 {
            p = p
                .op(b'q')
                .op(0)
                .op(0x85)
                .op(b'q')
                .op(0)
                .op(b'0')
                .op(b'h')
                .op(0);
        }
        assert!(err(&p.done()).contains("nested deeper"));
    }

    #[test]
    fn copy_bombs_run_out_of_work() {
        // A list of 200 elements, memoized; then ever more appends to fetched copies.
        let mut p = P::new().op(b']').op(b'(');
        for _ in 0..200 {
            p = p.op(b'N');
        }
        p = p.op(b'e').op(b'q').op(0);
        for _ in 0..100_000 {
            p = p.op(b'h').op(0).op(b'N').op(b'a').op(b'0');
        }
        assert!(err(&p.done()).contains("units of work"));
    }

    #[test]
    fn malformed_rebuild_calls_are_errors() {
        // A 2-element argument tuple.
        let p = P::new()
            .op(b'}')
            .str("w")
            .global("torch._utils", "_rebuild_tensor_v2")
            .storage("FloatStorage", "0", 4)
            .int(0)
            .op(0x86)
            .op(b'R')
            .op(b's')
            .done();
        assert!(err(&p).contains("got 2 arguments"));
        // A 2-element persistent id.
        let p = P::new().str("storage").str("0").op(0x86).op(b'Q').done();
        assert!(err(&p).contains("tuple of 2 elements"));
        // Wrong types.
        let p = P::new()
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(')
            .int(1)
            .int(0)
            .ints(&[1])
            .ints(&[1])
            .op(0x89)
            .op(b'N')
            .op(b't')
            .op(b'R')
            .done();
        assert!(err(&p).contains("must be a persistent id"));
        let p = P::new().storage("CharStorage", "0", 1).done();
        assert!(err(&p).contains("not a state dict"));
        let p = P::new()
            .op(b'}')
            .str("w")
            .global("torch._utils", "_rebuild_tensor")
            .op(b'(')
            .storage("BoolStorage", "0", 1)
            .int(0)
            .ints(&[1])
            .ints(&[1])
            .op(b't')
            .op(b'R')
            .op(b's')
            .done();
        assert!(err(&p).contains("BoolStorage is not supported"));
    }

    #[test]
    fn unknown_globals_are_refused_and_nothing_runs() {
        let p = P::new()
            .global("os", "system")
            .str("touch /tmp/elmer-pwned")
            .op(0x85)
            .op(b'R')
            .done();
        let e = err(&p);
        assert!(
            e.contains("`os.system`") && e.contains("nothing in the file is run"),
            "{e}"
        );
        let p = P::new().str("builtins").str("eval").op(0x93).done();
        assert!(err(&p).contains("`builtins.eval`"));
        // Calling a non-global, or a storage class.
        let p = P::new().str("x").op(b')').op(b'R').done();
        assert!(err(&p).contains("REDUCE calls a str"));
        let p = P::new()
            .global("torch", "FloatStorage")
            .op(b')')
            .op(b'R')
            .done();
        assert!(err(&p).contains("cannot be called"));
    }

    #[test]
    fn malformed_pickles_are_errors() {
        for (bytes, needle) in [
            (vec![0x80, 2], "without STOP"),
            (vec![0x80, 9, b'.'], "protocol 9"),
            (vec![b'.'], "stack underflow"),
            (vec![b'h', 3, b'.'], "never set"),
            (vec![b'X', 100, 0, 0, 0, b'a'], "truncated"),
            (vec![b'X', 0xff, 0xff, 0xff, 0xff], "at most"),
            (vec![0x8d, 0, 0, 0, 0, 0, 0, 0, 0x10, b'.'], "at most"),
            (vec![b'X', 2, 0, 0, 0, 0xff, 0xfe, b'.'], "not UTF-8"),
            (vec![b'c', b'o', b's'], "not terminated"),
            (vec![b'(', b'N', b'u', b'.'], "odd number"),
            (vec![b'N', b'N', b'a', b'.'], "APPEND to a None"),
            (vec![b'N', b'(', 0x85, b'.'], "stack underflow"),
            (vec![b'I', b'1', b'\n', b'.'], "not supported"),
            (vec![0xfe], "not a pickle opcode"),
            (vec![b'K', 1, b'.'], "not a state dict"),
        ] {
            let e = err(&bytes);
            assert!(e.contains(needle), "{bytes:?}: {e}");
        }
        // Metadata besides tensors is ignored; big integers are opaque.
        let p = P::new()
            .op(b'}')
            .str("meta")
            .op(b'(')
            .op(0x8a)
            .op(9)
            .op(b']')
            .op(0x8f)
            .op(b'(')
            .op(b'N')
            .op(0x90)
            .op(b'}')
            .str("a")
            .op(b'G')
            .op(0)
            .op(0)
            .op(0)
            .op(0)
            .op(0)
            .op(0)
            .op(0)
            .op(0)
            .op(b's')
            .op(b't')
            .op(b's')
            .done();
        let mut p = p;
        // Make the LONG1 above 9 bytes long: insert them after its length byte.
        let at = p.iter().position(|&b| b == 0x8a).unwrap() + 2;
        p.splice(at..at, [1u8; 9]);
        assert!(parse_pickle(&p).unwrap().is_empty());
    }

    #[test]
    fn zip_damage_is_reported() {
        let good = one_tensor(0, &[2], &[1], &[1.0, 2.0]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "not a zip archive"),
            (vec![0x80, 2, b'}', b'.'], "not a zip archive"),
            ([vec![0x80, 2, b'}', b'.'], vec![0; 30]].concat(), "legacy"),
            (zip(&[("a/x", b"")]), "no `<archive>/data.pkl`"),
            (
                zip(&[("a/data.pkl", b""), ("b/data.pkl", b"")]),
                "2 data.pkl entries",
            ),
            (
                zip(&[("a/data.pkl", b"."), ("a/data.pkl", b".")]),
                "two entries",
            ),
            (
                {
                    let mut z = good.clone();
                    // Corrupt a byte of data.pkl (the CRC no longer matches).
                    z[31 + "archive/data.pkl".len()] ^= 1;
                    z
                },
                "CRC-32",
            ),
            (
                {
                    let mut z = good.clone();
                    // The first central entry's method becomes deflate.
                    let c = z
                        .windows(4)
                        .position(|w| w == CENTRAL_SIG.to_le_bytes())
                        .unwrap();
                    z[c + 10] = 8;
                    z
                },
                "compressed",
            ),
        ];
        for (bytes, needle) in cases {
            let (_d, f) = open_bytes(&bytes);
            let e = f.err().expect("refused").to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
