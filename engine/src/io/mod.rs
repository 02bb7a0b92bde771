//! safetensors I/O: [`TensorStore`] loads a file through a memory map (f32 tensors zero-copy),
//! validates it with errors that name the file and the tensor, and saves atomically.
//!
//! Element types on load (details in [`dtype`]): F32 in place; F16 and BF16 kept as half storage
//! (ops widen on read; [`TensorStore::to_f32`] widens once); F64, I64 and I32 converted to f32
//! (exactly, or an error); any other type is an error naming the tensor and the type.

pub mod atomic;
pub mod dtype;
pub mod header;
mod load;
mod save;
mod store;

pub use dtype::FileDtype;
pub use store::TensorStore;

#[cfg(test)]
mod tests;
