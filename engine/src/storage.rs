//! Where a tensor's numbers live: an owned f32 buffer, a zero-copy f32 window into a memory-mapped
//! file, or half-precision buffers that are widened to f32 when an op reads them.

use half::{bf16, f16};
use std::sync::Arc;

/// The element type a storage holds (compute is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// A window of f32 values inside a memory map, valid and 4-byte aligned by construction.
#[derive(Clone, Debug)]
pub struct MappedF32 {
    map: Arc<memmap2::Mmap>,
    byte_offset: usize,
    len: usize,
}

impl MappedF32 {
    /// The window `len` f32 values at `byte_offset`, or `None` if it is out of bounds or misaligned
    /// (the caller then copies instead).
    pub fn new(map: Arc<memmap2::Mmap>, byte_offset: usize, len: usize) -> Option<Self> {
        let end = byte_offset.checked_add(len.checked_mul(4)?)?;
        let aligned =
            (map.as_ptr() as usize + byte_offset).is_multiple_of(std::mem::align_of::<f32>());
        (end <= map.len() && aligned).then_some(MappedF32 {
            map,
            byte_offset,
            len,
        })
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        bytemuck::cast_slice(&self.map[self.byte_offset..self.byte_offset + self.len * 4])
    }
}

/// A flat buffer of elements.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Owned f32 values.
    F32(Vec<f32>),
    /// f32 values read in place from a memory-mapped file.
    Mapped(MappedF32),
    /// Owned IEEE half-precision values.
    F16(Vec<f16>),
    /// Owned bfloat16 values.
    BF16(Vec<bf16>),
}

impl Storage {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::Mapped(m) => m.len,
            Storage::F16(v) => v.len(),
            Storage::BF16(v) => v.len(),
        }
    }

    /// Whether the storage holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) | Storage::Mapped(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
        }
    }

    /// The values as an f32 slice, when they are stored as f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Storage::F32(v) => Some(v),
            Storage::Mapped(m) => Some(m.as_slice()),
            _ => None,
        }
    }

    /// Elements `range` widened to f32.
    pub fn f32_range(&self, start: usize, len: usize) -> Vec<f32> {
        match self {
            Storage::F32(v) => v[start..start + len].to_vec(),
            Storage::Mapped(m) => m.as_slice()[start..start + len].to_vec(),
            Storage::F16(v) => v[start..start + len].iter().map(|x| x.to_f32()).collect(),
            Storage::BF16(v) => v[start..start + len].iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Element `i` widened to f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Storage::F32(v) => v[i],
            Storage::Mapped(m) => m.as_slice()[i],
            Storage::F16(v) => v[i].to_f32(),
            Storage::BF16(v) => v[i].to_f32(),
        }
    }

    /// Mutable f32 values, converting this storage to an owned f32 buffer first if needed.
    pub fn f32_mut(&mut self) -> &mut Vec<f32> {
        if !matches!(self, Storage::F32(_)) {
            *self = Storage::F32(self.f32_range(0, self.len()));
        }
        match self {
            Storage::F32(v) => v,
            _ => unreachable!("converted to F32 above"),
        }
    }
}
