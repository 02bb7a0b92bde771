//! A Debian data package fetched without root, for machines where it is not installed:
//! `apt-get download` puts the `.deb` in a scratch directory (any user may run it), `dpkg-deb -x`
//! unpacks it there, and the package's data directory is renamed into a per-user cache — whole or
//! not at all, so an interrupted fetch leaves nothing that looks complete.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A data package and what it installs.
pub struct Package {
    /// Debian's package name.
    pub name: &'static str,
    /// The directory the package installs the data into (absolute, as on an installed system).
    pub dir: &'static str,
    /// Files that directory must hold for the data to count as present.
    pub files: &'static [&'static str],
    /// Roughly how large the download is, for the message before it starts.
    pub download_mb: usize,
}

impl Package {
    /// Whether `dir` holds every one of the package's files.
    pub fn complete_in(&self, dir: &Path) -> bool {
        self.files.iter().all(|f| dir.join(f).is_file())
    }

    /// Where [`fetch`] puts the package's data under `cache`.
    pub fn cached_dir(&self, cache: &Path) -> PathBuf {
        cache.join(self.name)
    }
}

/// The per-user cache: `$TLC_CACHE_DIR`, else `$XDG_CACHE_HOME/tlc`, else `$HOME/.cache/tlc`.
pub fn cache_root() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("TLC_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("tlc")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("tlc")))
}

/// Download and unpack `pkg` into `pkg.cached_dir(cache)`; `note` hears what is happening.
/// Returns the directory holding the package's files.
pub fn fetch(pkg: &Package, cache: &Path, note: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let dest = pkg.cached_dir(cache);
    if pkg.complete_in(&dest) {
        return Ok(dest);
    }
    let fail = |detail: String| Error::MissingDataset {
        what: format!("Debian's {} package", pkg.name),
        path: dest.clone(),
        hint: format!(
            "fetching it failed: {detail}. Install it with `apt-get install -y {}` (after \
             `apt-get update` on a fresh system), or point --data at a directory of its files.",
            pkg.name
        ),
    };
    let scratch = cache.join(format!(".fetch-{}-{}", pkg.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| fail(format!("cannot create {}: {e}", scratch.display())))?;
    let result = (|| {
        note(&format!(
            "{} is not installed: fetching Debian's {} package (~{} MB) into {}",
            pkg.dir,
            pkg.name,
            pkg.download_mb,
            dest.display()
        ));
        run(Command::new("apt-get")
            .args(["download", pkg.name])
            .current_dir(&scratch))
        .map_err(|e| fail(format!("`apt-get download {}`: {e}", pkg.name)))?;
        let deb = std::fs::read_dir(&scratch)
            .map_err(|e| fail(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| fail("apt-get download left no .deb".into()))?;
        let root = scratch.join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
            .map_err(|e| fail(format!("`dpkg-deb -x {}`: {e}", deb.display())))?;
        let data = root.join(pkg.dir.trim_start_matches('/'));
        if !pkg.complete_in(&data) {
            return Err(fail(format!(
                "the package holds no {} with {}",
                pkg.dir,
                pkg.files.join(", ")
            )));
        }
        // A concurrent fetch may have finished first: keep its copy.
        if let Err(e) = std::fs::rename(&data, &dest) {
            if !pkg.complete_in(&dest) {
                return Err(fail(format!(
                    "cannot move the data to {}: {e}",
                    dest.display()
                )));
            }
        }
        note(&format!("{} ready in {}", pkg.name, dest.display()));
        Ok(dest.clone())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Run `cmd`, its stderr's last line as the error when it fails or cannot start.
fn run(cmd: &mut Command) -> std::result::Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run it ({e})"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(format!("{} ({last})", out.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAKE: Package = Package {
        name: "tlc-test-no-such-package",
        dir: "/usr/share/datasets/none",
        files: &["a.bin"],
        download_mb: 1,
    };

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tlc-debian-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_complete_cache_is_used_without_fetching() {
        let cache = tmpdir("hit");
        let dir = FAKE.cached_dir(&cache);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.bin"), b"x").unwrap();
        let mut notes = vec![];
        let got = fetch(&FAKE, &cache, &mut |m| notes.push(m.to_string())).unwrap();
        assert_eq!(got, dir);
        assert!(notes.is_empty(), "{notes:?}");
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn a_failed_fetch_says_how_to_install_and_leaves_no_partial_data() {
        let cache = tmpdir("miss");
        let e = fetch(&FAKE, &cache, &mut |_| {}).unwrap_err().to_string();
        assert!(
            e.contains("apt-get install -y tlc-test-no-such-package"),
            "{e}"
        );
        assert!(e.contains("apt-get download"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
