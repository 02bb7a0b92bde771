//! What a graph node computes: the typed layer kinds and their hyper-parameters, in a form that
//! serialises into a checkpoint's header (so a checkpoint describes its own architecture).

use serde::{Deserialize, Serialize};
use tlc_kernels::conv::{Conv2dParams, Conv2dShape};
use tlc_kernels::Activation;

/// A 2-D convolution layer (PyTorch's `nn.Conv2d`); parameters `weight` `[out, in/groups, kh, kw]`
/// and, if `bias`, `bias` `[out]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    pub in_ch: usize,
    pub out_ch: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub bias: bool,
}

impl ConvSpec {
    /// A square `k x k` convolution with stride `s`, padding `p`, no dilation, one group, no bias.
    pub fn new(in_ch: usize, out_ch: usize, k: usize, s: usize, p: usize) -> Self {
        ConvSpec {
            in_ch,
            out_ch,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [1, 1],
            groups: 1,
            bias: false,
        }
    }

    /// The same with `groups` groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }

    /// The same with a bias.
    pub fn with_bias(mut self, on: bool) -> Self {
        self.bias = on;
        self
    }

    /// The kernel crate's parameters.
    pub fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: (self.stride[0], self.stride[1]),
            padding: (self.padding[0], self.padding[1]),
            dilation: (self.dilation[0], self.dilation[1]),
            groups: self.groups,
        }
    }

    /// The kernel crate's shape of this conv over `batch` samples of per-sample input shape
    /// `input` (`[C, H, W]`).
    pub fn shape(&self, batch: usize, input: &[usize]) -> Conv2dShape {
        Conv2dShape {
            batch,
            in_channels: self.in_ch,
            in_h: input[1],
            in_w: input[2],
            out_channels: self.out_ch,
            kernel_h: self.kernel[0],
            kernel_w: self.kernel[1],
            params: self.params(),
        }
    }

    /// Shape of `weight`.
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_ch,
            self.in_ch / self.groups.max(1),
            self.kernel[0],
            self.kernel[1],
        ]
    }

    /// Whether each output channel sees exactly one input channel (depthwise).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_ch
    }
}

/// A batch-norm layer over channels (`nn.BatchNorm2d` / `nn.BatchNorm1d`): parameters `weight`
/// (gamma) and `bias` (beta), buffers `running_mean`, `running_var`, `num_batches_tracked`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNormSpec {
    pub channels: usize,
    pub eps: f32,
    pub momentum: f32,
}

/// A fully connected layer (`nn.Linear`): `weight` `[out, in]`, `bias` `[out]` if `bias`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearSpec {
    pub in_f: usize,
    pub out_f: usize,
    pub bias: bool,
}

/// A 2-D pooling window (`nn.MaxPool2d` / `nn.AvgPool2d`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub ceil_mode: bool,
}

impl PoolSpec {
    /// A square `k x k` window with stride `s` and padding `p`.
    pub fn new(k: usize, s: usize, p: usize) -> Self {
        PoolSpec {
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            ceil_mode: false,
        }
    }
}

/// A point-wise non-linearity by name (the serialised form of [`Activation`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActKind {
    Relu,
    Relu6,
    Gelu,
    GeluTanh,
    Silu,
    Sigmoid,
    Tanh,
}

impl ActKind {
    /// The kernel crate's activation.
    pub fn activation(self) -> Activation {
        match self {
            ActKind::Relu => Activation::Relu,
            ActKind::Relu6 => Activation::Relu6,
            ActKind::Gelu => Activation::Gelu,
            ActKind::GeluTanh => Activation::GeluTanh,
            ActKind::Silu => Activation::Silu,
            ActKind::Sigmoid => Activation::Sigmoid,
            ActKind::Tanh => Activation::Tanh,
        }
    }
}

/// What a node computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    /// The network's input (one per graph), shape `[C, H, W]` or `[F]` without the batch.
    Input {
        shape: Vec<usize>,
    },
    Conv2d(ConvSpec),
    BatchNorm(BatchNormSpec),
    Linear(LinearSpec),
    Activation {
        act: ActKind,
    },
    /// Element-wise sum of the node's inputs (a residual join).
    Add,
    MaxPool(PoolSpec),
    AvgPool(PoolSpec),
    /// Adaptive average pooling to `[h, w]` (`[1, 1]` is the global average pool).
    AdaptiveAvgPool {
        out: [usize; 2],
    },
    /// Flatten every dimension from `start` (counting the batch as 0) into one.
    Flatten {
        start: usize,
    },
    Dropout {
        p: f32,
    },
    /// Passes its input through (an activation TLC removed, say).
    Identity,
}

impl Op {
    /// Names of the trainable parameters this op owns, relative to its node.
    pub fn param_roles(&self) -> &'static [&'static str] {
        match self {
            Op::Conv2d(c) if c.bias => &["weight", "bias"],
            Op::Conv2d(_) => &["weight"],
            Op::Linear(l) if l.bias => &["weight", "bias"],
            Op::Linear(_) => &["weight"],
            Op::BatchNorm(_) => &["weight", "bias"],
            _ => &[],
        }
    }

    /// Names of the non-trainable buffers this op owns, relative to its node.
    pub fn buffer_roles(&self) -> &'static [&'static str] {
        match self {
            Op::BatchNorm(_) => &["running_mean", "running_var", "num_batches_tracked"],
            _ => &[],
        }
    }

    /// Short human name of the kind.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv2d(c) if c.is_depthwise() => "conv2d (depthwise)",
            Op::Conv2d(_) => "conv2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::Linear(_) => "linear",
            Op::Activation { .. } => "activation",
            Op::Add => "add",
            Op::MaxPool(_) => "max_pool",
            Op::AvgPool(_) => "avg_pool",
            Op::AdaptiveAvgPool { .. } => "adaptive_avg_pool",
            Op::Flatten { .. } => "flatten",
            Op::Dropout { .. } => "dropout",
            Op::Identity => "identity",
        }
    }
}
