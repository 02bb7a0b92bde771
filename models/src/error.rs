//! Errors of the model zoo, data and training layers.

use std::path::PathBuf;

/// What can go wrong above the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An engine error (shapes, files, tensors).
    #[error(transparent)]
    Engine(#[from] tlc_engine::Error),
    /// A data set that is not where it was looked for.
    #[error("data set not found: {what} (looked in {}). {hint}", path.display())]
    MissingDataset {
        what: String,
        path: PathBuf,
        hint: String,
    },
    /// A data file whose contents are not what its format requires.
    #[error("{}: {detail}", path.display())]
    CorruptData { path: PathBuf, detail: String },
    /// An invalid option or configuration.
    #[error("{0}")]
    Config(String),
    /// A checkpoint that cannot serve the request (no architecture metadata, a bad header entry,
    /// tensors that do not fit the architecture).
    #[error("checkpoint {}: {detail}", path.display())]
    Checkpoint { path: PathBuf, detail: String },
    /// Training produced a NaN or infinite loss or gradient; the last checkpoint is left as it was.
    #[error("training diverged at epoch {epoch}, batch {batch}: {detail}")]
    Diverged {
        epoch: usize,
        batch: usize,
        detail: String,
    },
}

impl Error {
    pub(crate) fn corrupt(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::CorruptData {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;
