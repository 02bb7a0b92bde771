//! [`TensorStore`]: named tensors in order, with string metadata, loaded from and saved to
//! safetensors files.

use super::{load, save};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Named tensors (in insertion / file order) and a string metadata map: a checkpoint, a model's
/// weights, an optimizer's state.
///
/// Loaded f32 tensors read straight from a memory map of the file, which stays mapped while any
/// of them lives. Replacing the file with [`TensorStore::save`] is safe (it writes a new file and
/// renames it); truncating or rewriting it in place by other means while it is mapped is not.
#[derive(Clone, Debug, Default)]
pub struct TensorStore {
    source: Option<String>,
    names: Vec<String>,
    tensors: HashMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
}

impl TensorStore {
    /// An empty store.
    pub fn new() -> TensorStore {
        TensorStore::default()
    }

    /// Load a safetensors file (see [`crate::io`] for how each element type is stored).
    pub fn load(path: impl AsRef<Path>) -> Result<TensorStore> {
        let path = path.as_ref();
        let (header, tensors) = load::read(path)?;
        let names = tensors.iter().map(|(n, _)| n.clone()).collect();
        Ok(TensorStore {
            source: Some(path.display().to_string()),
            names,
            tensors: tensors.into_iter().collect(),
            metadata: header.metadata,
        })
    }

    /// Write every tensor and the metadata to `path`, atomically: the file is replaced whole or
    /// not at all. F32 tensors are written as F32, half-precision ones in their own type.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let list: Vec<(&str, &Tensor)> = self.iter().collect();
        save::write(path.as_ref(), &list, &self.metadata)
    }

    /// Where the tensors came from (the file path), for messages; "memory" if built in memory.
    pub fn source(&self) -> &str {
        self.source.as_deref().unwrap_or("memory")
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the store holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether a tensor is called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor called `name`, or [`Error::MissingTensor`] naming it and the file.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| self.missing(name))
    }

    /// The tensor called `name`, which must have shape `shape` ([`Error::Shape`] naming the
    /// tensor, the expected and the found shape otherwise).
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self.get(name)?;
        if t.shape() != shape {
            return Err(Error::shape(
                "TensorStore::get",
                format!(
                    "tensor `{name}` in {}: expected shape {shape:?}, found {:?}",
                    self.source(),
                    t.shape()
                ),
            ));
        }
        Ok(t)
    }

    /// The tensor called `name`, if present.
    pub fn try_get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Add or replace the tensor `name` (a replacement keeps its position), returning the old one.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        let name = name.into();
        let old = self.tensors.insert(name.clone(), tensor);
        if old.is_none() {
            self.names.push(name);
        }
        old
    }

    /// Remove the tensor `name`, returning it.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        let t = self.tensors.remove(name)?;
        self.names.retain(|n| n != name);
        Some(t)
    }

    /// Remove the tensor `name`, or [`Error::MissingTensor`].
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.remove(name).ok_or_else(|| self.missing(name))
    }

    /// The names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// `(name, tensor)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names
            .iter()
            .map(|n| (n.as_str(), &self.tensors[n.as_str()]))
    }

    /// The metadata map (`__metadata__` in the file).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// One metadata value.
    pub fn metadata_get(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Set one metadata value, returning the old one.
    pub fn set_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Option<String> {
        self.metadata.insert(key.into(), value.into())
    }

    /// Widen every half-precision tensor to owned f32 (f32 ones, mapped or not, are kept).
    pub fn to_f32(&mut self) {
        for t in self.tensors.values_mut() {
            if t.dtype() != crate::storage::DType::F32 {
                *t = t.to_f32();
            }
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            name: name.to_string(),
            source_name: self.source().to_string(),
        }
    }
}

impl<S: Into<String>> FromIterator<(S, Tensor)> for TensorStore {
    fn from_iter<I: IntoIterator<Item = (S, Tensor)>>(iter: I) -> Self {
        let mut s = TensorStore::new();
        for (n, t) in iter {
            s.insert(n, t);
        }
        s
    }
}
