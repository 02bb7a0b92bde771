//! tlc-models: architectures as graph builders, data sets, the training loop and the TLC driver.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod tlc;
pub mod train;
pub mod zoo;

pub use error::{Error, Result};
