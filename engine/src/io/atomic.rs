//! Crash-safe file replacement: write a temporary file beside the target, flush it to disk, then
//! rename it over the target. A crash at any point leaves either the old file or the new one,
//! never a torn mix; a failed write removes the temporary file.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name in `path`'s directory, unique within this process and across processes.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    path.with_file_name(unique)
}

/// Replace `path` with what `write` produces. Either the whole new content is in place when this
/// returns `Ok`, or `path` is untouched.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    if path.file_name().is_none() {
        return Err(Error::invalid(
            "save",
            format!("`{}` does not name a file", path.display()),
        ));
    }
    let tmp = temp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_dir(path)
}

/// Make the rename itself durable (POSIX: the directory entry lives in the directory's data).
fn sync_dir(path: &Path) -> Result<()> {
    if cfg!(unix) {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "tlc-{tag}-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        pub(crate) fn entries(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = TempDir::new("atomic-ok");
        let p = dir.path("f.bin");
        std::fs::write(&p, b"old").unwrap();
        write_atomically(&p, |w| {
            w.write_all(b"new content").map_err(|e| Error::io(&p, e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new content");
        assert_eq!(dir.entries(), vec!["f.bin".to_string()]);
    }

    #[test]
    fn a_failure_mid_write_keeps_the_old_file() {
        let dir = TempDir::new("atomic-fail");
        let p = dir.path("f.bin");
        std::fs::write(&p, b"old").unwrap();
        // Half the data goes out, then the writer fails (a full disk, a crash in serialisation).
        let err = write_atomically(&p, |w| {
            w.write_all(&[7u8; 100_000]).map_err(|e| Error::io(&p, e))?;
            Err(Error::invalid("save", "simulated failure"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("simulated failure"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(dir.entries(), vec!["f.bin".to_string()]);
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_path() {
        let dir = TempDir::new("atomic-nodir");
        let p = dir.path("no/such/dir/f.bin");
        let err = write_atomically(&p, |_| Ok(())).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }
}
