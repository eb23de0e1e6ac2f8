//! Files: written atomically, read as UTF-8 lines with the failing line named.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// flushed to disk, then renamed over `path`. A crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
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
    sync_dir(&dir)
}

/// Flushes a directory's entries (new names, renames) to disk. A no-op where directories
/// cannot be opened for syncing (not Unix).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
        d.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Flushes every file directly inside `dir`, then `dir` itself.
pub(crate) fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.is_file() {
            let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
            f.sync_all().map_err(|e| Error::io(&p, e))?;
        }
    }
    sync_dir(dir)
}

/// The name an existing `dst` is moved to while [`replace_dir`] swaps a new one in.
fn displaced(dst: &Path) -> std::path::PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dst.with_file_name(format!(".old-{name}"))
}

/// Moves the finished directory `tmp` to `dst`, replacing any `dst` without a moment where
/// neither exists on disk: the old `dst` is renamed away, `tmp` renamed in, the parent
/// synced, and only then the old one deleted. After a crash in between,
/// [`recover_dir`] puts the old one back.
pub(crate) fn replace_dir(tmp: &Path, dst: &Path) -> Result<()> {
    let parent = dst.parent().unwrap_or(Path::new("."));
    sync_tree(tmp)?;
    let old = displaced(dst);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    let had_old = dst.exists();
    if had_old {
        std::fs::rename(dst, &old).map_err(|e| Error::io(dst, e))?;
    }
    std::fs::rename(tmp, dst).map_err(|e| Error::io(dst, e))?;
    sync_dir(parent)?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Undoes an interrupted [`replace_dir`]: when `dst` is missing but its displaced copy
/// exists, the copy is renamed back; a displaced copy next to a complete `dst` is deleted.
pub(crate) fn recover_dir(dst: &Path) -> Result<()> {
    let old = displaced(dst);
    if !old.exists() {
        return Ok(());
    }
    if dst.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
    } else {
        std::fs::rename(&old, dst).map_err(|e| Error::io(&old, e))
    }
}

/// Reads a UTF-8 text file as lines (`\n` or `\r\n` endings; a final newline does not make
/// an extra empty line). A line that is not valid UTF-8 is an [`Error::Parse`] naming the file
/// and the line number.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    lines(std::io::BufReader::new(f), path).collect()
}

/// The lines of `reader` one at a time, with the rules of [`read_lines`]; errors name
/// `name` (a path, or e.g. `<stdin>`) and the line number. Reads only as far as it is
/// iterated, so a stream of any length takes constant memory.
pub fn lines<R: std::io::BufRead>(
    reader: R,
    name: impl AsRef<Path>,
) -> impl Iterator<Item = Result<String>> {
    let name = name.as_ref().to_path_buf();
    reader.split(b'\n').enumerate().map(move |(i, raw)| {
        let mut bytes = raw.map_err(|e| Error::io(&name, e))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        String::from_utf8(bytes).map_err(|e| Error::Parse {
            path: name.clone(),
            message: format!("line {}: invalid UTF-8 ({})", i + 1, e.utf8_error()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn replace_dir_swaps_and_a_crash_in_between_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let (new, dst) = (tmp.path().join(".tmp-best"), tmp.path().join("best"));
        write(&new.join("w"), "1");
        replace_dir(&new, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("w")).unwrap(), "1");
        write(&new.join("w"), "2");
        replace_dir(&new, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("w")).unwrap(), "2");
        assert!(!new.exists() && !displaced(&dst).exists());
        // Killed after the old one was moved away, before the new one came in.
        std::fs::rename(&dst, displaced(&dst)).unwrap();
        recover_dir(&dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("w")).unwrap(), "2");
        // Killed after the new one came in, before the old one was deleted.
        write(&displaced(&dst).join("w"), "old");
        recover_dir(&dst).unwrap();
        assert!(!displaced(&dst).exists());
        assert_eq!(std::fs::read_to_string(dst.join("w")).unwrap(), "2");
    }

    #[test]
    fn read_lines_names_the_bad_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.txt");
        std::fs::write(&p, b"a\r\nb\n\xff\n").unwrap();
        let e = read_lines(&p).unwrap_err().to_string();
        assert!(e.contains("x.txt") && e.contains("line 3"), "{e}");
        std::fs::write(&p, b"a\r\nb\n").unwrap();
        assert_eq!(read_lines(&p).unwrap(), vec!["a", "b"]);
    }
}
