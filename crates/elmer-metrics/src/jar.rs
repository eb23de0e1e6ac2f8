//! A minimal, read-only ZIP reader for pulling METEOR's tables out of `meteor-1.5.jar`.
//!
//! Only what a jar needs: the end-of-central-directory record (no ZIP64, no multi-disk),
//! the central directory, and entries that are *stored* (method 0) or *deflated*
//! (method 8, decoded by `flate2`). Sizes and CRC-32 come from the central directory,
//! so entries written with a trailing data descriptor (bit 3, as `jar` does) work.
//!
//! Every offset and length read from the file is bounds-checked against the file size,
//! the number of entries and the size of the central directory are capped, and the
//! decoded bytes are checked against the declared size and CRC-32 while streaming, so a
//! corrupt or hostile archive gives an `io::Error`, never a panic or an unbounded read.
//! Every error message starts with the archive's path.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// End-of-central-directory record signature (`PK\x05\x06`).
const EOCD_SIG: u32 = 0x0605_4b50;
/// Central directory file header signature (`PK\x01\x02`).
const CDFH_SIG: u32 = 0x0201_4b50;
/// Local file header signature (`PK\x03\x04`).
const LFH_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: u64 = 22;
const CDFH_LEN: usize = 46;
const LFH_LEN: usize = 30;
/// The EOCD may be followed by a comment of at most 65,535 bytes.
const MAX_EOCD_SEARCH: u64 = EOCD_LEN + 0xFFFF;
/// Upper bound on the central directory we are willing to read into memory.
const MAX_CENTRAL_DIR: u64 = 64 << 20;

/// One central-directory entry.
#[derive(Debug, Clone)]
struct Entry {
    name: Vec<u8>,
    flags: u16,
    method: u16,
    crc32: u32,
    compressed_size: u64,
    size: u64,
    local_header_offset: u64,
}

/// An open ZIP archive (the central directory is read once, entries are streamed).
#[derive(Debug)]
pub(crate) struct ZipArchive {
    path: PathBuf,
    file: File,
    len: u64,
    entries: Vec<Entry>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ZipArchive {
    /// Opens `path` and reads its central directory.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: cannot open: {e}", path.display()))
        })?;
        let len = file
            .metadata()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?
            .len();
        let mut z = ZipArchive {
            path: path.to_path_buf(),
            file,
            len,
            entries: Vec::new(),
        };
        z.entries = z.read_central_directory().map_err(|e| z.wrap(e))?;
        Ok(z)
    }

    /// The archive's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `path: msg` error of kind `InvalidData`.
    fn invalid(&self, msg: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {msg}", self.path.display()),
        )
    }

    /// Prefixes an error that does not yet name the archive with its path.
    fn wrap(&self, e: io::Error) -> io::Error {
        let p = self.path.display().to_string();
        if e.to_string().starts_with(&p) {
            e
        } else {
            io::Error::new(e.kind(), format!("{p}: {e}"))
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(self.invalid("not a zip file (truncated or bad offset)"));
        }
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(buf)
    }

    fn read_central_directory(&mut self) -> io::Result<Vec<Entry>> {
        if self.len < EOCD_LEN {
            return Err(self.invalid("not a zip file (too short)"));
        }
        let tail_len = self.len.min(MAX_EOCD_SEARCH);
        let tail_start = self.len - tail_len;
        let mut tail = vec![0u8; tail_len as usize];
        self.read_at(tail_start, &mut tail)?;
        // Last EOCD signature whose comment length reaches exactly to the end of the file
        // (falls back to the last signature found, for archives with trailing junk).
        let mut found = None;
        for i in (0..=tail.len() - EOCD_LEN as usize).rev() {
            if le32(&tail, i) == EOCD_SIG {
                let comment = le16(&tail, i + 20) as usize;
                if i + EOCD_LEN as usize + comment == tail.len() {
                    found = Some(i);
                    break;
                }
                found.get_or_insert(i);
            }
        }
        let Some(i) = found else {
            return Err(self.invalid("not a zip file (no end of central directory record)"));
        };
        let eocd = &tail[i..i + EOCD_LEN as usize];
        let disk = le16(eocd, 4);
        let cd_disk = le16(eocd, 6);
        let n_disk = le16(eocd, 8);
        let n_total = le16(eocd, 10);
        let cd_size = le32(eocd, 12);
        let cd_offset = le32(eocd, 16);
        if n_total == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            return Err(self.invalid("ZIP64 archives are not supported"));
        }
        if disk != 0 || cd_disk != 0 || n_disk != n_total {
            return Err(self.invalid("multi-disk zip archives are not supported"));
        }
        let (cd_size, cd_offset) = (u64::from(cd_size), u64::from(cd_offset));
        let eocd_pos = tail_start + i as u64;
        if cd_size > MAX_CENTRAL_DIR || cd_offset.saturating_add(cd_size) > eocd_pos {
            return Err(self.invalid("corrupt zip (central directory out of range)"));
        }
        let mut cd = vec![0u8; cd_size as usize];
        self.read_at(cd_offset, &mut cd)?;

        let mut entries = Vec::with_capacity(usize::from(n_total).min(cd.len() / CDFH_LEN));
        let mut at = 0usize;
        for _ in 0..n_total {
            if cd.len() - at < CDFH_LEN || le32(&cd, at) != CDFH_SIG {
                return Err(self.invalid("corrupt zip (bad central directory entry)"));
            }
            let h = &cd[at..at + CDFH_LEN];
            let name_len = usize::from(le16(h, 28));
            let extra_len = usize::from(le16(h, 30));
            let comment_len = usize::from(le16(h, 32));
            let var = name_len + extra_len + comment_len;
            if cd.len() - at - CDFH_LEN < var {
                return Err(self.invalid("corrupt zip (central directory entry overruns)"));
            }
            let e = Entry {
                name: cd[at + CDFH_LEN..at + CDFH_LEN + name_len].to_vec(),
                flags: le16(h, 8),
                method: le16(h, 10),
                crc32: le32(h, 16),
                compressed_size: u64::from(le32(h, 20)),
                size: u64::from(le32(h, 24)),
                local_header_offset: u64::from(le32(h, 42)),
            };
            if e.compressed_size == 0xFFFF_FFFF
                || e.size == 0xFFFF_FFFF
                || e.local_header_offset == 0xFFFF_FFFF
            {
                return Err(self.invalid("ZIP64 archives are not supported"));
            }
            entries.push(e);
            at += CDFH_LEN + var;
        }
        Ok(entries)
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name.as_bytes())
    }

    /// Streams the decoded bytes of entry `name`; `Ok(None)` when there is no such entry.
    /// Entries declaring more than `max_size` decoded bytes are refused. The returned
    /// reader fails with `InvalidData` (naming archive and entry) when the data is
    /// corrupt, longer or shorter than declared, or fails its CRC-32.
    pub(crate) fn entry(
        &mut self,
        name: &str,
        max_size: u64,
    ) -> io::Result<Option<Box<dyn Read + '_>>> {
        let Some(e) = self.find(name).cloned() else {
            return Ok(None);
        };
        let what = format!("{}: entry `{name}`", self.path.display());
        let bad = |msg: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {msg}"));
        if e.flags & 1 != 0 {
            return Err(bad("encrypted entries are not supported"));
        }
        if e.size > max_size {
            return Err(bad(&format!(
                "declares {} bytes, more than the {max_size} accepted",
                e.size
            )));
        }
        let mut lfh = [0u8; LFH_LEN];
        self.read_at(e.local_header_offset, &mut lfh)
            .map_err(|_| bad("local header out of range"))?;
        if le32(&lfh, 0) != LFH_SIG {
            return Err(bad("bad local header"));
        }
        let data_start = e.local_header_offset
            + LFH_LEN as u64
            + u64::from(le16(&lfh, 26))
            + u64::from(le16(&lfh, 28));
        if data_start
            .checked_add(e.compressed_size)
            .is_none_or(|end| end > self.len)
        {
            return Err(bad("data out of range"));
        }
        self.file
            .seek(SeekFrom::Start(data_start))
            .map_err(|err| io::Error::new(err.kind(), format!("{what}: {err}")))?;
        let raw = BufReader::with_capacity(1 << 16, (&self.file).take(e.compressed_size));
        let inner: Box<dyn Read + '_> = match e.method {
            0 if e.compressed_size == e.size => Box::new(raw),
            0 => return Err(bad("stored entry with compressed size != size")),
            8 => Box::new(flate2::bufread::DeflateDecoder::new(raw)),
            m => return Err(bad(&format!("unsupported compression method {m}"))),
        };
        Ok(Some(Box::new(Checked {
            inner,
            what,
            remaining: e.size,
            crc_want: e.crc32,
            crc: flate2::Crc::new(),
            done: false,
        })))
    }
}

/// Enforces the declared size and CRC-32 of an entry while it is read.
struct Checked<R> {
    inner: R,
    what: String,
    remaining: u64,
    crc_want: u32,
    crc: flate2::Crc,
    done: bool,
}

impl<R: Read> Checked<R> {
    fn bad(&self, msg: impl std::fmt::Display) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {msg}", self.what))
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // Declared size reached: the stream must end here.
            let mut probe = [0u8; 1];
            let n = self
                .inner
                .read(&mut probe)
                .map_err(|e| self.bad(format!("corrupt data: {e}")))?;
            if n != 0 {
                return Err(self.bad("more data than the declared size"));
            }
            if self.crc.sum() != self.crc_want {
                return Err(self.bad("CRC-32 mismatch"));
            }
            self.done = true;
            return Ok(0);
        }
        let cap = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self
            .inner
            .read(&mut buf[..cap])
            .map_err(|e| self.bad(format!("corrupt data: {e}")))?;
        if n == 0 {
            return Err(self.bad("data shorter than the declared size"));
        }
        self.crc.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}
