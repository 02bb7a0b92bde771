//! The tensor: a shape and strides over shared storage, plus autograd bookkeeping.
//!
//! Cloning a [`Tensor`] is cheap (one reference count). Views (reshape of contiguous data, permute,
//! transpose, slice, broadcast expansion) share storage; ops read their inputs through
//! [`Tensor::contiguous_data`], which borrows when it can and materialises when it must.

use crate::autograd::{self, Backward, GradMeta};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::shape::{self, numel};
use crate::storage::{DType, Storage};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// An n-dimensional array of numbers (computed in f32) that can take part in autograd.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

#[derive(Clone)]
pub(crate) struct Inner {
    pub(crate) storage: Arc<Storage>,
    pub(crate) shape: Vec<usize>,
    pub(crate) strides: Vec<usize>,
    pub(crate) offset: usize,
    pub(crate) grad: Option<Arc<GradMeta>>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?}", self.shape())?;
        if self.requires_grad() {
            write!(f, "(requires_grad)")?;
        }
        let n = self.numel();
        let shown: Vec<f32> = (0..n.min(8)).map(|i| self.get_flat(i)).collect();
        write!(f, " {shown:?}{}", if n > 8 { " ..." } else { "" })
    }
}

impl Tensor {
    // ----- construction -------------------------------------------------------------------------

    /// A tensor over `storage` with a contiguous layout of `shape`.
    pub fn from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        if storage.len() != numel(shape) {
            return Err(Error::shape(
                "from_storage",
                format!("{} elements cannot have shape {shape:?}", storage.len()),
            ));
        }
        Ok(Tensor::raw(
            Arc::new(storage),
            shape.to_vec(),
            shape::contiguous_strides(shape),
            0,
        ))
    }

    pub(crate) fn raw(
        storage: Arc<Storage>,
        shape: Vec<usize>,
        strides: Vec<usize>,
        offset: usize,
    ) -> Tensor {
        Tensor(Arc::new(Inner {
            storage,
            shape,
            strides,
            offset,
            grad: None,
        }))
    }

    /// A contiguous f32 tensor from its values.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(Storage::F32(data), shape)
    }

    /// A contiguous f32 tensor copied from a slice.
    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A tensor known to be well-formed (ops use this for outputs they computed themselves).
    pub(crate) fn new_unchecked(data: Vec<f32>, shape: &[usize]) -> Tensor {
        debug_assert_eq!(data.len(), numel(shape));
        Tensor::raw(
            Arc::new(Storage::F32(data)),
            shape.to_vec(),
            shape::contiguous_strides(shape),
            0,
        )
    }

    /// A rank-0 tensor.
    pub fn scalar(v: f32) -> Tensor {
        Tensor::new_unchecked(vec![v], &[])
    }

    /// All elements equal to `v`.
    pub fn full(shape: &[usize], v: f32) -> Tensor {
        Tensor::new_unchecked(vec![v; numel(shape)], shape)
    }

    /// All zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// All ones.
    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// Independent standard-normal values.
    pub fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
        Tensor::new_unchecked((0..numel(shape)).map(|_| rng.normal()).collect(), shape)
    }

    /// Independent uniform values in [lo, hi).
    pub fn rand_uniform(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Tensor {
        Tensor::new_unchecked(
            (0..numel(shape)).map(|_| rng.uniform_in(lo, hi)).collect(),
            shape,
        )
    }

    // ----- layout -------------------------------------------------------------------------------

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// The element strides of each dimension.
    pub fn strides(&self) -> &[usize] {
        &self.0.strides
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }

    /// The size of dimension `axis` (negative counts from the end).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.0.shape[shape::normalize_axis("dim", axis, self.rank())?])
    }

    /// The storage's element type.
    pub fn dtype(&self) -> DType {
        self.0.storage.dtype()
    }

    /// The underlying storage (shared by views).
    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }

    /// Offset of element 0 in the storage.
    pub fn storage_offset(&self) -> usize {
        self.0.offset
    }

    /// Whether the elements are laid out densely in row-major order.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.0.shape.iter().zip(&self.0.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// A view with another layout over the same storage (the caller guarantees it is in bounds).
    pub(crate) fn view_of(&self, shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Tensor {
        Tensor::raw(self.0.storage.clone(), shape, strides, offset)
    }

    // ----- data access --------------------------------------------------------------------------

    /// Element with row-major index `i` (slow; for tests, debugging and small tensors).
    pub fn get_flat(&self, mut i: usize) -> f32 {
        let mut off = self.0.offset;
        for (&d, &s) in self.0.shape.iter().zip(&self.0.strides).rev() {
            off += (i % d) * s;
            i /= d;
        }
        self.0.storage.get(off)
    }

    /// The values in row-major order as f32: borrowed when the tensor is f32 and contiguous,
    /// gathered otherwise.
    pub fn contiguous_data(&self) -> Cow<'_, [f32]> {
        let n = self.numel();
        if self.is_contiguous() {
            if let Some(s) = self.0.storage.as_f32() {
                return Cow::Borrowed(&s[self.0.offset..self.0.offset + n]);
            }
            return Cow::Owned(self.0.storage.f32_range(self.0.offset, n));
        }
        Cow::Owned(self.gather())
    }

    /// The values in row-major order, copied.
    pub fn to_vec(&self) -> Vec<f32> {
        self.contiguous_data().into_owned()
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("tensor of shape {:?} is not a scalar", self.shape()),
            ));
        }
        Ok(self.get_flat(0))
    }

    /// Gather a strided view into a dense row-major buffer.
    fn gather(&self) -> Vec<f32> {
        let shape = &self.0.shape;
        let strides = &self.0.strides;
        let n = numel(shape);
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let rank = shape.len();
        let (inner, inner_stride) = (shape[rank - 1], strides[rank - 1]);
        let outer = n / inner;
        let mut idx = vec![0usize; rank.saturating_sub(1)];
        let storage = &*self.0.storage;
        let f32s = storage.as_f32();
        for _ in 0..outer {
            let base = self.0.offset + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
            match f32s {
                Some(s) if inner_stride == 1 => out.extend_from_slice(&s[base..base + inner]),
                Some(s) => out.extend((0..inner).map(|j| s[base + j * inner_stride])),
                None => out.extend((0..inner).map(|j| storage.get(base + j * inner_stride))),
            }
            for d in (0..rank - 1).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }

    /// Mutate the values in place (optimizer updates). The tensor keeps its identity (and autograd
    /// id); storage shared with other tensors is copied first, so they are unaffected.
    pub fn update_data(&mut self, f: impl FnOnce(&mut [f32])) {
        let inner = Arc::make_mut(&mut self.0);
        if !is_dense(&inner.shape, &inner.strides)
            || inner.offset != 0
            || inner.storage.len() != numel(&inner.shape)
        {
            let dense = Tensor::raw(
                inner.storage.clone(),
                inner.shape.clone(),
                inner.strides.clone(),
                inner.offset,
            )
            .to_vec();
            inner.storage = Arc::new(Storage::F32(dense));
            inner.strides = shape::contiguous_strides(&inner.shape);
            inner.offset = 0;
        }
        f(Arc::make_mut(&mut inner.storage).f32_mut());
    }

    /// The same values (sharing storage) without autograd history: gradients stop here.
    pub fn detach(&self) -> Tensor {
        let mut inner = (*self.0).clone();
        inner.grad = None;
        Tensor(Arc::new(inner))
    }

    // ----- autograd -----------------------------------------------------------------------------

    /// Whether gradients flow to or through this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.grad.is_some()
    }

    /// This tensor as an autograd leaf (a parameter or an input whose gradient is wanted), or
    /// detached when `on` is false.
    pub fn with_requires_grad(&self, on: bool) -> Tensor {
        let mut inner = (*self.0).clone();
        inner.grad = on.then(|| Arc::new(GradMeta::leaf()));
        Tensor(Arc::new(inner))
    }

    /// The autograd identity of this tensor (keys [`crate::Gradients`]), if it requires grad.
    pub fn grad_id(&self) -> Option<u64> {
        self.0.grad.as_ref().map(|g| g.id)
    }

    pub(crate) fn grad_meta(&self) -> Option<&Arc<GradMeta>> {
        self.0.grad.as_ref()
    }

    /// Record `out` as computed from `inputs` by an op whose backward `make` builds. Nothing is
    /// recorded (and `make` is not called) when no input requires grad or grad mode is off.
    pub(crate) fn record<B: Backward + 'static>(
        out: Tensor,
        inputs: &[&Tensor],
        make: impl FnOnce() -> B,
    ) -> Tensor {
        if !autograd::is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
            return out;
        }
        let node = autograd::Node {
            op: Box::new(make()),
            inputs: inputs.iter().map(|t| (*t).clone()).collect(),
        };
        let mut inner = match Arc::try_unwrap(out.0) {
            Ok(inner) => inner,
            Err(shared) => (*shared).clone(),
        };
        inner.grad = Some(Arc::new(GradMeta::with_node(node)));
        Tensor(Arc::new(inner))
    }
}

fn is_dense(shape: &[usize], strides: &[usize]) -> bool {
    strides == shape::contiguous_strides(shape).as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_checks_element_count() {
        assert!(Tensor::from_vec(vec![1.0; 5], &[2, 3]).is_err());
        let t = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert!(t.is_contiguous());
        assert_eq!(t.get_flat(4), 5.0);
        assert!(Tensor::scalar(3.0).item().unwrap() == 3.0);
        assert!(t.item().is_err());
    }

    #[test]
    fn gather_reads_a_transposed_view() {
        let t = Tensor::from_vec((0..6).map(|x| x as f32).collect(), &[2, 3]).unwrap();
        let tt = t.view_of(vec![3, 2], vec![1, 3], 0);
        assert!(!tt.is_contiguous());
        assert_eq!(tt.to_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn update_data_copies_shared_storage() {
        let a = Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap();
        let mut b = a.clone();
        b.update_data(|d| d[0] = 10.0);
        assert_eq!(a.to_vec(), vec![1.0, 2.0]);
        assert_eq!(b.to_vec(), vec![10.0, 2.0]);
    }

    #[test]
    fn half_storage_reads_as_f32() {
        let s = Storage::F16(vec![half::f16::from_f32(1.5), half::f16::from_f32(-2.0)]);
        let t = Tensor::from_storage(s, &[2]).unwrap();
        assert_eq!(t.dtype(), DType::F16);
        assert_eq!(t.to_vec(), vec![1.5, -2.0]);
    }
}
