//! Element types as a safetensors header spells them, and how each becomes tensor storage.
//!
//! What the loader does with each type:
//! - `F32`: read in place from the memory map (zero copy) when 4-byte aligned, copied otherwise.
//! - `F16`, `BF16`: kept as half-precision storage (half the memory; ops widen to f32 as they
//!   read). [`Tensor::to_f32`] or [`crate::io::TensorStore::to_f32`] widen once, for hot weights.
//! - `F64`: narrowed to f32 (an error if a finite value overflows f32).
//! - `I64`, `I32`: converted to f32 for index buffers such as BERT's `position_ids`; an error
//!   unless every value is an integer f32 represents exactly (|v| <= 2^24).
//! - everything else (`U8`, `I8`, `BOOL`, `I16`, `U16`, `U32`, `U64`, `F8_*`): rejected with an
//!   error naming the tensor and its type.

use crate::error::{Error, Result};
use crate::storage::{DType, MappedF32, Storage};
use crate::tensor::Tensor;
use half::{bf16, f16};
use std::path::Path;
use std::sync::Arc;

/// A safetensors element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum FileDtype {
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

/// Integers beyond this magnitude are not all representable in f32.
const F32_EXACT_INT: i64 = 1 << 24;

impl FileDtype {
    /// The type named `s` in a header, if it is a safetensors type.
    pub fn parse(s: &str) -> Option<FileDtype> {
        use FileDtype::*;
        Some(match s {
            "BOOL" => BOOL,
            "U8" => U8,
            "I8" => I8,
            "F8_E5M2" => F8_E5M2,
            "F8_E4M3" => F8_E4M3,
            "I16" => I16,
            "U16" => U16,
            "F16" => F16,
            "BF16" => BF16,
            "I32" => I32,
            "U32" => U32,
            "F32" => F32,
            "F64" => F64,
            "I64" => I64,
            "U64" => U64,
            _ => return None,
        })
    }

    /// The header spelling.
    pub fn name(self) -> &'static str {
        use FileDtype::*;
        match self {
            BOOL => "BOOL",
            U8 => "U8",
            I8 => "I8",
            F8_E5M2 => "F8_E5M2",
            F8_E4M3 => "F8_E4M3",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            F64 => "F64",
            I64 => "I64",
            U64 => "U64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        use FileDtype::*;
        match self {
            BOOL | U8 | I8 | F8_E5M2 | F8_E4M3 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            F64 | I64 | U64 => 8,
        }
    }

    /// Whether the loader turns this type into a tensor (see the module documentation).
    pub fn is_loadable(self) -> bool {
        use FileDtype::*;
        matches!(self, F32 | F16 | BF16 | F64 | I64 | I32)
    }

    /// The file type a storage type is saved as.
    pub fn of(dtype: DType) -> FileDtype {
        match dtype {
            DType::F32 => FileDtype::F32,
            DType::F16 => FileDtype::F16,
            DType::BF16 => FileDtype::BF16,
        }
    }
}

/// The types [`decode`] accepts, for error messages.
pub(crate) const LOADABLE: &str = "F32, F16 and BF16, and converts F64, I64 and I32 to f32";

/// Where a tensor's bytes are: the memory map (for zero-copy f32) and the absolute offset of
/// `bytes` in it.
pub(crate) struct Source<'a> {
    pub(crate) map: &'a Arc<memmap2::Mmap>,
    pub(crate) offset: usize,
}

/// The storage for `bytes` (one tensor's little-endian data, length already validated) of type
/// `dtype`, named `name` in `path` for error messages.
pub(crate) fn decode(
    path: &Path,
    name: &str,
    dtype: FileDtype,
    bytes: &[u8],
    source: Option<Source<'_>>,
) -> Result<Storage> {
    let n = bytes.len() / dtype.size();
    match dtype {
        FileDtype::F32 => {
            // The map holds little-endian bytes: only a little-endian host may read them in place.
            let mapped = source
                .filter(|_| cfg!(target_endian = "little"))
                .and_then(|s| MappedF32::new(s.map.clone(), s.offset, n));
            Ok(match mapped {
                Some(m) => Storage::Mapped(m),
                None => Storage::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
            })
        }
        FileDtype::F16 => Ok(Storage::F16(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        )),
        FileDtype::BF16 => Ok(Storage::BF16(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        )),
        FileDtype::F64 => {
            let mut out = Vec::with_capacity(n);
            for (i, b) in bytes.chunks_exact(8).enumerate() {
                let v = f64::from_le_bytes(b.try_into().expect("chunks of 8"));
                let x = v as f32;
                if v.is_finite() && !x.is_finite() {
                    return Err(Error::format(
                        path,
                        format!("tensor `{name}` (F64): element {i} = {v:e} overflows f32"),
                    ));
                }
                out.push(x);
            }
            Ok(Storage::F32(out))
        }
        FileDtype::I64 | FileDtype::I32 => {
            let mut out = Vec::with_capacity(n);
            for (i, b) in bytes.chunks_exact(dtype.size()).enumerate() {
                let v = match dtype {
                    FileDtype::I64 => i64::from_le_bytes(b.try_into().expect("chunks of 8")),
                    _ => i32::from_le_bytes(b.try_into().expect("chunks of 4")) as i64,
                };
                if v.abs() > F32_EXACT_INT {
                    return Err(Error::format(
                        path,
                        format!(
                            "tensor `{name}` ({}): element {i} = {v} is not exactly representable \
                             in f32 (|v| > 2^24)",
                            dtype.name()
                        ),
                    ));
                }
                out.push(v as f32);
            }
            Ok(Storage::F32(out))
        }
        other => Err(Error::format(
            path,
            format!(
                "tensor `{name}` has dtype {}, which tlc does not load (it loads {LOADABLE})",
                other.name()
            ),
        )),
    }
}

/// The tensor's elements, row-major, as little-endian bytes of its storage type.
pub(crate) fn encode(t: &Tensor) -> Vec<u8> {
    let data = t.contiguous_data();
    match t.dtype() {
        DType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        // Half values widened to f32 narrow back exactly.
        DType::F16 => data
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        DType::BF16 => data
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
    }
}

impl Tensor {
    /// The same values in owned, contiguous f32 storage (widening half precision). Keeps autograd
    /// identity only in the sense of values: the result is a fresh tensor without history.
    pub fn to_f32(&self) -> Tensor {
        Tensor::new_unchecked(self.to_vec(), self.shape())
    }

    /// The same values rounded to `dtype` storage (round to nearest even), as a fresh tensor.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        let data = self.contiguous_data();
        let storage = match dtype {
            DType::F32 => Storage::F32(data.into_owned()),
            DType::F16 => Storage::F16(data.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::BF16 => Storage::BF16(data.iter().map(|&v| bf16::from_f32(v)).collect()),
        };
        Tensor::from_storage(storage, self.shape()).expect("same element count")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes() {
        for s in [
            "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
            "F32", "F64", "I64", "U64",
        ] {
            let d = FileDtype::parse(s).unwrap();
            assert_eq!(d.name(), s);
            assert!(matches!(d.size(), 1 | 2 | 4 | 8));
        }
        assert_eq!(FileDtype::parse("f32"), None);
        assert_eq!(FileDtype::parse("F17"), None);
        assert_eq!(FileDtype::BF16.size(), 2);
        assert_eq!(FileDtype::I64.size(), 8);
    }

    #[test]
    fn decodes_each_loadable_type() {
        let p = Path::new("x.safetensors");
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = decode(p, "a", FileDtype::F32, &f32s, None).unwrap();
        assert_eq!(s.f32_range(0, 2), vec![1.5, -2.0]);

        let h: Vec<u8> = [0.5f32, 3.0]
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        let s = decode(p, "h", FileDtype::F16, &h, None).unwrap();
        assert_eq!(s.dtype(), DType::F16);
        assert_eq!(s.f32_range(0, 2), vec![0.5, 3.0]);

        let b: Vec<u8> = [0.25f32, -8.0]
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        let s = decode(p, "b", FileDtype::BF16, &b, None).unwrap();
        assert_eq!(s.dtype(), DType::BF16);
        assert_eq!(s.f32_range(0, 2), vec![0.25, -8.0]);

        let d: Vec<u8> = [0.1f64, -3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = decode(p, "d", FileDtype::F64, &d, None).unwrap();
        assert_eq!(s.f32_range(0, 2), vec![0.1f32, -3.0]);

        let i: Vec<u8> = [0i64, 511, -7]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = decode(p, "ids", FileDtype::I64, &i, None).unwrap();
        assert_eq!(s.f32_range(0, 3), vec![0.0, 511.0, -7.0]);

        let i: Vec<u8> = [3i32, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = decode(p, "ids32", FileDtype::I32, &i, None).unwrap();
        assert_eq!(s.f32_range(0, 2), vec![3.0, -1.0]);
    }

    #[test]
    fn rejects_lossy_conversions_and_other_types() {
        let p = Path::new("m.safetensors");
        let i: Vec<u8> = [1i64, (1 << 24) + 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = decode(p, "big", FileDtype::I64, &i, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.safetensors") && e.contains("`big`") && e.contains("element 1"),
            "{e}"
        );

        let d = 1e300f64.to_le_bytes();
        let e = decode(p, "huge", FileDtype::F64, &d, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`huge`") && e.contains("overflows f32"), "{e}");

        let e = decode(p, "mask", FileDtype::U8, &[1, 0], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`mask`") && e.contains("U8") && e.contains("m.safetensors"),
            "{e}"
        );
    }

    #[test]
    fn dtype_conversions() {
        let t = Tensor::from_vec(vec![1.0, 0.1, -3.5], &[3]).unwrap();
        let h = t.to_dtype(DType::F16);
        assert_eq!(h.dtype(), DType::F16);
        assert_eq!(h.to_vec()[0], 1.0);
        assert_eq!(h.to_vec()[1], f16::from_f32(0.1).to_f32());
        let b = t.to_dtype(DType::BF16);
        assert_eq!(b.dtype(), DType::BF16);
        assert_eq!(b.to_vec()[1], bf16::from_f32(0.1).to_f32());
        let back = h.to_f32();
        assert_eq!(back.dtype(), DType::F32);
        assert_eq!(back.to_vec(), h.to_vec());
        // encode -> decode is the identity for every storage type.
        for x in [t.clone(), h, b] {
            let bytes = encode(&x);
            let d = FileDtype::of(x.dtype());
            let s = decode(Path::new("t"), "x", d, &bytes, None).unwrap();
            assert_eq!(s.dtype(), x.dtype());
            assert_eq!(s.f32_range(0, 3), x.to_vec());
        }
    }
}
