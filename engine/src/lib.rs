//! tlc-engine: tensors, reverse-mode autograd, the ops of deep networks (forward and backward),
//! optimizers, and safetensors I/O.
//!
//! Ops are methods on [`Tensor`] returning [`Result`]; each op family lives in one file under
//! [`ops`] with its forward, its backward and, beneath them, its gradcheck and PyTorch parity
//! tests.

pub mod autograd;
pub mod error;
pub mod graph;
pub mod io;
pub mod ops;
pub mod optim;
pub mod passes;
pub mod plan;
pub mod rng;
pub mod shape;
pub mod storage;
pub mod tensor;
pub mod testing;
pub mod tlc;

pub use autograd::{is_grad_enabled, no_grad, Backward, Gradients};
pub use error::{Error, Result};
pub use graph::{Graph, Mode, Model};
pub use io::TensorStore;
pub use ops::conv::Conv2dParams;
pub use ops::pool::{AvgPool2dParams, MaxPool2dParams};
pub use optim::{
    clip_grad_norm, clip_grad_value, AdamW, AdamWConfig, LrSchedule, OptimState, Optimizer, Sgd,
    SgdConfig,
};
pub use rng::Rng;
pub use storage::{DType, Storage};
pub use tensor::Tensor;
pub use tlc_kernels::Activation;
