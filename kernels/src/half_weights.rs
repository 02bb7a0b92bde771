//! Weights stored in 16 bits — IEEE binary16 ([`HalfKind::F16`]) or bfloat16 ([`HalfKind::Bf16`])
//! — for inference: half the memory and memory traffic of f32, with f32 arithmetic. The kernels
//! decode them block by block into per-thread scratch where they copy or pack weights anyway
//! (the 16-bit GEMMs of [`crate::gemm`], the shifted convolution's weight staging, depthwise taps).
//!
//! Encoding rounds to nearest, ties to even. f16 keeps 11 significant bits (relative error at most
//! 2^-11, about 4.9e-4) over ±65504, with less precision below 6.1e-5 (subnormal) and zero below
//! 3e-8; bf16 keeps 8 significant bits (at most 2^-8, about 3.9e-3) over the whole f32 range.

use crate::gemm::PackedRows;
use crate::simd;
use std::ops::Range;

/// A 16-bit float format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HalfKind {
    /// IEEE 754 binary16: 5 exponent bits, 10 mantissa bits.
    F16,
    /// bfloat16: the upper half of an f32 (8 exponent bits, 7 mantissa bits).
    Bf16,
}

impl HalfKind {
    /// `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            HalfKind::F16 => "f16",
            HalfKind::Bf16 => "bf16",
        }
    }

    /// The bits of `v` rounded to this format (to nearest, ties to even).
    pub fn encode_one(self, v: f32) -> u16 {
        match self {
            HalfKind::F16 => half::f16::from_f32(v).to_bits(),
            HalfKind::Bf16 => half::bf16::from_f32(v).to_bits(),
        }
    }

    /// `dst[i]` = the value of the bits `src[i]` (exact).
    pub fn decode(self, src: &[u16], dst: &mut [f32]) {
        match self {
            HalfKind::F16 => simd::widen_f16(src, dst),
            HalfKind::Bf16 => simd::widen_bf16(src, dst),
        }
    }
}

/// Owned 16-bit values.
#[derive(Clone, Debug, PartialEq)]
pub struct HalfVec {
    kind: HalfKind,
    bits: Vec<u16>,
}

impl HalfVec {
    /// `src` rounded to `kind`, or `Err(i)` with the first index whose finite value does not fit
    /// (an f16 beyond ±65504 would become infinite).
    pub fn encode(kind: HalfKind, src: &[f32]) -> Result<HalfVec, usize> {
        // All-ones exponent: the infinities (and NaN) of either format.
        let inf = match kind {
            HalfKind::F16 => 0x7c00,
            HalfKind::Bf16 => 0x7f80,
        };
        let bits: Vec<u16> = src.iter().map(|&v| kind.encode_one(v)).collect();
        match src
            .iter()
            .zip(&bits)
            .position(|(v, b)| v.is_finite() && b & inf == inf)
        {
            Some(i) => Err(i),
            None => Ok(HalfVec { kind, bits }),
        }
    }

    pub fn kind(&self) -> HalfKind {
        self.kind
    }

    pub fn len(&self) -> usize {
        self.bits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// Bytes of storage (two per value).
    pub fn bytes(&self) -> usize {
        2 * self.bits.len()
    }

    pub fn as_slice(&self) -> HalfSlice<'_> {
        HalfSlice {
            kind: self.kind,
            bits: &self.bits,
        }
    }

    /// Every value decoded (a new vector).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.len()];
        self.as_slice().decode_into(&mut v);
        v
    }
}

/// Borrowed 16-bit values of one kind.
#[derive(Clone, Copy, Debug)]
pub struct HalfSlice<'a> {
    kind: HalfKind,
    bits: &'a [u16],
}

impl<'a> HalfSlice<'a> {
    pub fn new(kind: HalfKind, bits: &'a [u16]) -> Self {
        HalfSlice { kind, bits }
    }

    pub fn kind(self) -> HalfKind {
        self.kind
    }

    pub fn bits(self) -> &'a [u16] {
        self.bits
    }

    pub fn len(self) -> usize {
        self.bits.len()
    }

    pub fn is_empty(self) -> bool {
        self.bits.is_empty()
    }

    /// Elements `r` (panics when out of range, like slicing).
    pub fn range(self, r: Range<usize>) -> Self {
        HalfSlice {
            kind: self.kind,
            bits: &self.bits[r],
        }
    }

    /// Decode every value into `dst` (same length).
    pub fn decode_into(self, dst: &mut [f32]) {
        self.kind.decode(self.bits, dst)
    }
}

/// A weight tensor as a kernel reads it: f32, 16-bit values decoded as they are read, or f32
/// rows packed once for the channel-major tiles.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    Half(HalfSlice<'a>),
    /// `[Cout x Cin*kh*kw]` packed by [`PackedRows::new`]: only the GEMM paths that take the
    /// weights as A rows read these (`conv::prepacked_supported`), whole panels of rows at a time.
    Packed(&'a PackedRows),
}

impl<'a> Weights<'a> {
    pub fn len(self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::Half(h) => h.len(),
            Weights::Packed(p) => p.rows() * p.depth(),
        }
    }

    /// `block` (channels per task) rounded up so row ranges start on a packed panel (the rows
    /// of [`PackedRows::row_quantum`]; any row for the other kinds), at most `all`.
    pub(crate) fn align_rows(self, block: usize, all: usize) -> usize {
        match self {
            Weights::Packed(p) => block.next_multiple_of(p.row_quantum()).min(all),
            _ => block,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Elements `r`. Panics for packed rows, which the GEMM takes by row range instead.
    pub fn range(self, r: Range<usize>) -> Self {
        match self {
            Weights::F32(w) => Weights::F32(&w[r]),
            Weights::Half(h) => Weights::Half(h.range(r)),
            Weights::Packed(_) => panic!("packed weights are read by whole row panels"),
        }
    }

    /// Run `f` on the values as f32: the slice itself, or the values decoded into per-thread
    /// scratch (the decoding slot: not for callers that already hold it).
    pub(crate) fn with_f32<R>(self, f: impl FnOnce(&[f32]) -> R) -> R {
        match self {
            Weights::F32(w) => f(w),
            Weights::Half(h) => crate::scratch::with_decoded(h.len(), |buf| {
                h.decode_into(buf);
                f(buf)
            }),
            Weights::Packed(_) => panic!("packed weights serve only the GEMM paths"),
        }
    }
}

impl<'a> From<&'a [f32]> for Weights<'a> {
    fn from(w: &'a [f32]) -> Self {
        Weights::F32(w)
    }
}

impl<'a> From<&'a Vec<f32>> for Weights<'a> {
    fn from(w: &'a Vec<f32>) -> Self {
        Weights::F32(w)
    }
}

impl<'a> From<HalfSlice<'a>> for Weights<'a> {
    fn from(h: HalfSlice<'a>) -> Self {
        Weights::Half(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_rounds_to_nearest_within_the_format_precision() {
        let src: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) * 0.731).sin() * 3.0)
            .collect();
        for (kind, tol) in [
            (HalfKind::F16, 2f32.powi(-11)),
            (HalfKind::Bf16, 2f32.powi(-8)),
        ] {
            let h = HalfVec::encode(kind, &src).unwrap();
            assert_eq!(h.bytes(), 2000);
            for (a, b) in src.iter().zip(h.to_f32()) {
                assert!(
                    (a - b).abs() <= tol * a.abs() + 1e-7,
                    "{kind:?}: {a} -> {b}"
                );
            }
            // Decoding a range decodes those elements.
            let mut part = vec![0.0; 10];
            h.as_slice().range(500..510).decode_into(&mut part);
            assert_eq!(part, h.to_f32()[500..510]);
        }
        // Ties to even: 1 + 2^-11 is halfway between two f16 values; the even one is 1.
        assert_eq!(HalfKind::F16.encode_one(1.0 + 2f32.powi(-11)), 0x3c00);
    }

    #[test]
    fn f16_rejects_what_it_cannot_hold() {
        assert_eq!(HalfVec::encode(HalfKind::F16, &[1.0, 7e4, 2.0]), Err(1));
        assert!(HalfVec::encode(HalfKind::F16, &[65504.0, f32::INFINITY]).is_ok());
        assert!(HalfVec::encode(HalfKind::Bf16, &[1e38]).is_ok());
        assert_eq!(HalfVec::encode(HalfKind::Bf16, &[f32::MAX]), Err(0));
    }
}
