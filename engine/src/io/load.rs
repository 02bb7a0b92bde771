//! Reading a safetensors file: map it, validate the header, and turn each entry into a tensor
//! (f32 zero-copy from the map; see [`super::dtype`] for the other types).

use super::dtype::{decode, Source};
use super::header::{self, Header};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// The tensors of `path` in header order, and its header.
pub(crate) fn read(path: &Path) -> Result<(Header, Vec<(String, Tensor)>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        // Also avoids mapping an empty file, which some platforms refuse.
        return Err(Error::format(
            path,
            format!("the file is {len} bytes long; a safetensors file starts with an 8-byte header length"),
        ));
    }
    let map = Arc::new(map_read_only(&file, path)?);
    let header = header::parse(path, &map)?;
    let mut tensors = Vec::with_capacity(header.entries.len());
    for e in &header.entries {
        let offset = header.data_start + e.begin;
        let bytes = &map[offset..header.data_start + e.end];
        let source = Source { map: &map, offset };
        let storage = decode(path, &e.name, e.dtype, bytes, Some(source))?;
        tensors.push((e.name.clone(), Tensor::from_storage(storage, &e.shape)?));
    }
    Ok((header, tensors))
}

/// Map `file` read-only.
fn map_read_only(file: &File, path: &Path) -> Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and only ever viewed as bytes (and, through `MappedF32`, as
    // aligned f32, for which every bit pattern is valid). The remaining hazard of any file map --
    // another process truncating or rewriting the file in place while it is mapped -- is outside
    // Rust's model; our own writer never does it (it replaces files by rename, which leaves the
    // mapped inode intact), and the `TensorStore` documentation tells users not to.
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, e))
}
