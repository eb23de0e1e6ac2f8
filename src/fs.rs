//! Files: written atomically, read as UTF-8 lines with the failing line named.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// flushed to disk, then renamed over `path`. A crash leaves either the old or the new file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Reads a UTF-8 text file as lines (`\n` or `\r\n` endings; a final newline does not make
/// an extra empty line). A line that is not valid UTF-8 is an [`Error::Parse`] naming the file
/// and the line number.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut body: &[u8] = &bytes;
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if body.last() == Some(&b'\n') {
        body = &body[..body.len() - 1];
    }
    let mut lines = Vec::new();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            message: format!("line {}: invalid UTF-8 ({e})", i + 1),
        })?;
        lines.push(line.to_owned());
    }
    Ok(lines)
}
