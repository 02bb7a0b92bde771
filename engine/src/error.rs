//! The engine's error type: every public fallible API returns [`Result`].
//!
//! Messages name what went wrong concretely (the op, the shapes, the tensor, the file), because the
//! person reading them is usually deep in a training run or loading somebody else's checkpoint.

use std::path::Path;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes that an op cannot combine.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    /// An argument outside its domain (negative stride, axis out of range, ...).
    #[error("{op}: invalid argument: {detail}")]
    Invalid { op: &'static str, detail: String },
    /// A file that is not what it claims to be (truncated, corrupt header, bad offsets, ...).
    #[error("{path}: {detail}")]
    Format { path: String, detail: String },
    /// A tensor looked up by name that is not there.
    #[error("tensor `{name}` not found in {source_name}")]
    MissingTensor { name: String, source_name: String },
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A NaN or infinity where a finite number is required (a diverging loss, say).
    #[error("non-finite value: {0}")]
    NonFinite(String),
}

impl Error {
    /// A shape mismatch in `op`.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }

    /// An invalid argument to `op`.
    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            detail: detail.into(),
        }
    }

    /// A malformed file.
    pub fn format(path: impl AsRef<Path>, detail: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().display().to_string(),
            detail: detail.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
