//! Fashion-MNIST (60 000 training and 10 000 test images, 28x28 grey, 10 classes) from its four
//! IDX files, as Debian's `dataset-fashion-mnist` package installs them.

use super::debian::{self, Package};
use super::{idx, Dataset};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Where Debian's package puts the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// How to get the data when it is missing.
pub const INSTALL_HINT: &str =
    "Install it with `apt-get install -y dataset-fashion-mnist`, or point --data at a directory holding \
     train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and \
     t10k-labels-idx1-ubyte(.gz).";

/// Debian's package, as [`locate`] fetches it when it is not installed.
pub const PACKAGE: Package = Package {
    name: "dataset-fashion-mnist",
    dir: DEFAULT_DIR,
    files: &[
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ],
    download_mb: 31,
};

/// The directory of the data set `--data fashion-mnist` names: Debian's location when the package
/// is installed, else a copy in the per-user cache ([`debian::cache_root`]); when neither holds it
/// the package is downloaded into the cache first ([`debian::fetch`], no root needed), `note`
/// hearing about it. Without a cache directory, Debian's location, whose loading then says how to
/// install the package.
pub fn locate(note: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let installed = PathBuf::from(DEFAULT_DIR);
    if PACKAGE.complete_in(&installed) {
        return Ok(installed);
    }
    let Some(cache) = debian::cache_root() else {
        return Ok(installed);
    };
    let cached = PACKAGE.cached_dir(&cache);
    if PACKAGE.complete_in(&cached) {
        return Ok(cached);
    }
    debian::fetch(&PACKAGE, &cache, note)
}

/// The class names, in label order.
pub const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::MissingDataset {
        what: format!("Fashion-MNIST file {stem}(.gz)"),
        path: dir.to_path_buf(),
        hint: INSTALL_HINT.to_string(),
    })
}

fn load_pair(dir: &Path, prefix: &str) -> Result<Dataset> {
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = idx::read(&ip)?;
    let labels = idx::read(&lp)?;
    if images.dims.len() != 3 {
        return Err(Error::corrupt(
            &ip,
            format!("expected images of rank 3, found dims {:?}", images.dims),
        ));
    }
    if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
        return Err(Error::corrupt(
            &lp,
            format!(
                "{:?} labels for {} images in {}",
                labels.dims,
                images.dims[0],
                ip.display()
            ),
        ));
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l >= 10) {
        return Err(Error::corrupt(
            &lp,
            format!("label {bad} is not a Fashion-MNIST class (0..9)"),
        ));
    }
    Dataset::new(
        images.data,
        labels.data,
        (1, images.dims[1], images.dims[2]),
        10,
    )
}

/// Load the (train, test) sets from `dir` (Debian's location when `None`).
pub fn load(dir: Option<&Path>) -> Result<(Dataset, Dataset)> {
    let dir = dir.unwrap_or(Path::new(DEFAULT_DIR));
    if !dir.is_dir() {
        return Err(Error::MissingDataset {
            what: "Fashion-MNIST".into(),
            path: dir.to_path_buf(),
            hint: INSTALL_HINT.to_string(),
        });
    }
    Ok((load_pair(dir, "train")?, load_pair(dir, "t10k")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tlc-fmnist-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_set(dir: &Path, prefix: &str, n: usize, label: u8) {
        let imgs = idx::encode(&[n, 28, 28], &vec![7u8; n * 784]);
        let labs = idx::encode(&[n], &vec![label; n]);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), imgs).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labs).unwrap();
    }

    #[test]
    fn missing_directory_names_the_install_command() {
        let e = load(Some(Path::new("/nonexistent/fmnist")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("apt-get install -y dataset-fashion-mnist"),
            "{e}"
        );
    }

    #[test]
    fn loads_uncompressed_files_and_rejects_bad_labels() {
        let d = tmpdir("ok");
        write_set(&d, "train", 3, 4);
        write_set(&d, "t10k", 2, 9);
        let (tr, te) = load(Some(&d)).unwrap();
        assert_eq!((tr.len(), te.len(), tr.height, tr.channels), (3, 2, 28, 1));
        write_set(&d, "t10k", 2, 10);
        let e = load(Some(&d)).unwrap_err().to_string();
        assert!(e.contains("label 10"), "{e}");
        std::fs::write(
            d.join("t10k-labels-idx1-ubyte"),
            idx::encode(&[3], &[1, 2, 3]),
        )
        .unwrap();
        let e = load(Some(&d)).unwrap_err().to_string();
        assert!(e.contains("labels for 2 images"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let d = tmpdir("gz");
        write_set(&d, "train", 1, 0);
        write_set(&d, "t10k", 1, 0);
        std::fs::write(
            d.join("t10k-images-idx3-ubyte.gz"),
            [0x1f, 0x8b, 8, 0, 1, 2, 3],
        )
        .unwrap();
        let e = load(Some(&d)).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// The real data set, as `.ci/run` installs it (Debian's `dataset-fashion-mnist`).
#[cfg(test)]
mod real_data {
    use super::*;

    #[test]
    fn debian_package_loads_with_the_published_statistics() {
        let (train, test) = load(None).expect("CI installs dataset-fashion-mnist");
        assert_eq!((train.len(), test.len()), (60_000, 10_000));
        assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
        // Balanced classes: 6000 training and 1000 test images each.
        for (set, per) in [(&train, 6000), (&test, 1000)] {
            let mut counts = [0usize; 10];
            set.labels.iter().for_each(|&l| counts[l as usize] += 1);
            assert!(counts.iter().all(|&c| c == per), "{counts:?}");
        }
        // The commonly quoted normalisation constants (0.2860, 0.3530).
        let (mean, std) = train.channel_stats();
        assert!(
            (mean[0] - 0.2860).abs() < 1e-3 && (std[0] - 0.3530).abs() < 1e-3,
            "{mean:?} {std:?}"
        );
    }

    /// The fetch a machine without the package takes (CI's apt lists are fresh: `.ci/run` ran
    /// `apt-get update`): the downloaded copy is the installed one, byte for byte.
    #[test]
    fn fetching_the_package_into_a_cache_gives_the_installed_files() {
        let cache = std::env::temp_dir().join(format!("tlc-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let mut notes = vec![];
        let dir = debian::fetch(&PACKAGE, &cache, &mut |m| notes.push(m.to_string()))
            .expect("apt-get download dataset-fashion-mnist");
        assert_eq!(dir, PACKAGE.cached_dir(&cache));
        assert!(
            notes[0].contains("fetching Debian's dataset-fashion-mnist"),
            "{notes:?}"
        );
        for f in PACKAGE.files {
            let (got, want) = (
                std::fs::read(dir.join(f)),
                std::fs::read(Path::new(DEFAULT_DIR).join(f)),
            );
            assert!(
                got.unwrap() == want.unwrap(),
                "{f} differs from the installed copy"
            );
        }
        let (train, test) = load(Some(&dir)).unwrap();
        assert_eq!((train.len(), test.len()), (60_000, 10_000));
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
