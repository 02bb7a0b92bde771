//! How a plan stores conv and linear weights: f32, or 16 bits decoded by the kernels.

use tlc_kernels::conv::channels_last::depthwise::Taps;
use tlc_kernels::conv::winograd::WinogradWeights;
use tlc_kernels::gemm::{PackedB, PackedPanels, PackedRows};
use tlc_kernels::half_weights::{HalfKind, HalfVec};

/// How conv and linear weights are stored (the arithmetic is f32 either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    /// As trained.
    #[default]
    F32,
    /// IEEE binary16: half the bytes, 11 significant bits (relative rounding error <= 2^-11).
    F16,
    /// bfloat16: half the bytes, 8 significant bits (<= 2^-8), f32's range.
    Bf16,
}

impl WeightDtype {
    /// `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
        }
    }

    /// Bytes per stored weight.
    pub fn bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::Bf16 => 2,
        }
    }

    pub(super) fn half(self) -> Option<HalfKind> {
        match self {
            WeightDtype::F32 => None,
            WeightDtype::F16 => Some(HalfKind::F16),
            WeightDtype::Bf16 => Some(HalfKind::Bf16),
        }
    }
}

/// A conv layer's weights as stored.
pub(super) enum ConvWeight {
    F32(Vec<f32>),
    Half(HalfVec),
    /// `W^T` packed for the pixel-major tiles (`conv::pixel_major`).
    PixelMajor(PackedPanels),
    /// `W` packed as the channel-major tiles' A panels (`conv::prepacked_supported`).
    Rows(PackedRows),
    /// `G W G^T` per transform position, packed for the Winograd GEMMs (`conv::winograd`).
    Winograd(WinogradWeights),
    /// `W^T` packed for the channels-last rows (`conv::channels_last::conv`) of a channels-last
    /// input.
    ChannelsLast(PackedPanels),
    /// `W^T` packed for `conv::channels_last::conv_from_nchw` (an NCHW input, the image stem;
    /// channels-last output).
    FromNchw(PackedPanels),
    /// Depthwise weights tap-major for `conv::channels_last::depthwise`.
    Taps(Taps),
}

impl ConvWeight {
    /// Bytes as stored.
    pub(super) fn bytes(&self) -> usize {
        match self {
            ConvWeight::F32(w) => 4 * w.len(),
            ConvWeight::Half(h) => h.bytes(),
            ConvWeight::PixelMajor(p) => 4 * p.rows() * p.cols(),
            ConvWeight::Rows(p) => 4 * p.rows() * p.depth(),
            ConvWeight::Winograd(w) => w.bytes(),
            ConvWeight::ChannelsLast(p) | ConvWeight::FromNchw(p) => 4 * p.rows() * p.cols(),
            ConvWeight::Taps(t) => t.bytes(),
        }
    }
}

pub(super) enum LinearWeight {
    /// `W^T` packed for the GEMM micro-kernel.
    Packed(PackedB),
    /// `W` `[out, in]` in 16 bits, decoded block by block by `linear_half`.
    Half(HalfVec),
    /// `W` `[out, in]` as stored, for a one-row input with long rows: the matrix-vector kernel
    /// streams its rows, eight at a time (a 4096x4096 product alone on two threads, cold: 1.4-2.0
    /// ms against 2.0-2.9 over the packed panels, which a task reads in K-block pieces; ONNX
    /// Runtime 1.7-1.9 in the same runs).
    Rows(Vec<f32>),
}

impl LinearWeight {
    /// Bytes of the values as stored (a packed layout's padding is not counted).
    pub(super) fn bytes(&self) -> usize {
        match self {
            LinearWeight::Packed(p) => 4 * p.rows() * p.cols(),
            LinearWeight::Half(h) => h.bytes(),
            LinearWeight::Rows(w) => 4 * w.len(),
        }
    }
}
