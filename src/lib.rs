//! tlc: the facade over the engine's crates, for the CLI and for users who want one dependency.

pub use tlc_engine as engine;
pub use tlc_kernels as kernels;
