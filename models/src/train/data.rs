//! From a `--data` argument to the train / validation / test sets of a run and their
//! normalisation.

use super::TrainConfig;
use crate::data::{cifar, fashion_mnist, Dataset};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tlc_engine::Rng;

/// Where images come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// Fashion-MNIST IDX files in a directory (Debian's location for `fashion-mnist`).
    FashionMnist(PathBuf),
    /// A CIFAR-10 binary directory (`data_batch_1.bin` .. `test_batch.bin`).
    Cifar10(PathBuf),
}

impl DataSource {
    /// `fashion-mnist` (Debian's package location, or the copy [`fashion_mnist::locate`] fetches
    /// when it is not installed), `cifar10:DIR`, or a directory recognised by its files.
    pub fn parse(arg: &str) -> Result<DataSource> {
        match arg {
            "fashion-mnist" | "fashion_mnist" | "fmnist" => {
                // Fetched into the user's cache when not installed: the commands' one-line
                // notes go to stderr, next to their progress.
                let dir = fashion_mnist::locate(&mut |m| eprintln!("{m}"))?;
                return Ok(DataSource::FashionMnist(dir));
            }
            "cifar10" | "cifar-10" => {
                return Err(Error::Config(
                    "CIFAR-10 has no standard location: give --data DIR, the extracted \
                     cifar-10-batches-bin directory"
                        .into(),
                ))
            }
            _ => {}
        }
        if let Some(dir) = arg.strip_prefix("cifar10:") {
            return Ok(DataSource::Cifar10(dir.into()));
        }
        if let Some(dir) = arg.strip_prefix("fashion-mnist:") {
            return Ok(DataSource::FashionMnist(dir.into()));
        }
        let dir = Path::new(arg);
        if !dir.is_dir() {
            return Err(Error::MissingDataset {
                what: format!("data set `{arg}`"),
                path: dir.to_path_buf(),
                hint: format!(
                    "--data takes `fashion-mnist` or a directory of Fashion-MNIST IDX files or \
                     CIFAR-10 binary batches. {}",
                    fashion_mnist::INSTALL_HINT
                ),
            });
        }
        let has = |name: &str| dir.join(name).is_file();
        if has("data_batch_1.bin") || has("test_batch.bin") {
            Ok(DataSource::Cifar10(dir.to_path_buf()))
        } else if ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
            .iter()
            .any(|n| has(n))
        {
            Ok(DataSource::FashionMnist(dir.to_path_buf()))
        } else {
            Err(Error::MissingDataset {
                what: format!("a data set in `{arg}`"),
                path: dir.to_path_buf(),
                hint: "Expected Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...) or \
                       CIFAR-10 binary batches (data_batch_1.bin .. data_batch_5.bin, test_batch.bin)."
                    .into(),
            })
        }
    }

    /// The (train, test) sets.
    pub fn load(&self) -> Result<(Dataset, Dataset)> {
        match self {
            DataSource::FashionMnist(dir) => fashion_mnist::load(Some(dir)),
            DataSource::Cifar10(dir) => cifar::load(dir),
        }
    }

    /// The (train, test) sets, zero-padded to `pad_to` x `pad_to` when given.
    pub fn load_padded(&self, pad_to: Option<usize>) -> Result<(Dataset, Dataset)> {
        let (train, test) = self.load()?;
        match pad_to {
            Some(side) => Ok((train.pad_to(side)?, test.pad_to(side)?)),
            None => Ok((train, test)),
        }
    }

    /// The class names, in label order.
    pub fn class_names(&self) -> &'static [&'static str] {
        match self {
            DataSource::FashionMnist(_) => &fashion_mnist::CLASSES,
            DataSource::Cifar10(_) => &cifar::CLASSES,
        }
    }
}

/// Per-channel normalisation `(x / 255 - mean) / std`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// The statistics of `ds`.
    pub fn of(ds: &Dataset) -> Normalization {
        let (mean, std) = ds.channel_stats();
        Normalization { mean, std }
    }
}

/// The data of a run.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Arc<Dataset>,
    pub val: Option<Arc<Dataset>>,
    pub test: Option<Arc<Dataset>>,
    /// Computed on the training split.
    pub norm: Normalization,
}

/// A seeded random `n` of the images (all of them if `n >= len`), kept in their original order.
pub fn random_subset(ds: &Dataset, n: usize, seed: u64) -> Dataset {
    if n >= ds.len() {
        return ds.clone();
    }
    let mut idx: Vec<usize> = (0..ds.len()).collect();
    Rng::new(seed ^ 0x5EED_5B5E_7000_0001).shuffle(&mut idx);
    idx.truncate(n);
    idx.sort_unstable();
    ds.subset(&idx)
}

impl Splits {
    /// Split `train` and limit `test` as `cfg` says: a random `train_limit` subset, then a
    /// validation fraction held out, normalisation from what is left for training.
    pub fn new(train: Dataset, test: Option<Dataset>, cfg: &TrainConfig) -> Result<Splits> {
        let train = match cfg.train_limit {
            Some(n) => random_subset(&train, n, cfg.seed),
            None => train,
        };
        let (train, val) = if cfg.val_fraction > 0.0 {
            let (t, v) = train.split(cfg.val_fraction, cfg.seed)?;
            (t, (!v.is_empty()).then_some(v))
        } else {
            (train, None)
        };
        if train.len() < cfg.batch_size {
            return Err(Error::Config(format!(
                "{} training images are fewer than one batch of {}",
                train.len(),
                cfg.batch_size
            )));
        }
        let test = test.map(|t| match cfg.test_limit {
            Some(n) => t.take(n),
            None => t,
        });
        let norm = Normalization::of(&train);
        Ok(Splits {
            train: Arc::new(train),
            val: val.map(Arc::new),
            test: test.map(Arc::new),
            norm,
        })
    }

    /// Load `source` (padded as `cfg` says) and split it.
    pub fn load(source: &DataSource, cfg: &TrainConfig) -> Result<Splits> {
        let (train, test) = source.load_padded(cfg.pad_to)?;
        Splits::new(train, Some(test), cfg)
    }
}
