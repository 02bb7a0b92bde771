//! Writing a safetensors file: header in the caller's tensor order, data laid out with the widest
//! element types first so every f32 tensor starts 4-byte aligned (and loads zero-copy).

use super::atomic::write_atomically;
use super::dtype::{encode, FileDtype};
use super::header::METADATA_KEY;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::BTreeMap;
use std::path::Path;

/// Atomically write `tensors` (in this order in the header) and `metadata` to `path`.
pub(crate) fn write(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    if let Some((name, _)) = tensors.iter().find(|(n, _)| *n == METADATA_KEY) {
        return Err(Error::invalid(
            "save",
            format!(
                "{}: tensor name `{name}` is reserved for metadata",
                path.display()
            ),
        ));
    }
    let header = header_bytes(tensors, metadata);
    write_atomically(path, |w| {
        let io = |e| Error::io(path, e);
        w.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for &i in &layout_order(tensors) {
            w.write_all(&encode(tensors[i].1)).map_err(io)?;
        }
        Ok(())
    })
}

/// Data order: by element size descending, then the caller's order (a stable sort).
fn layout_order(tensors: &[(&str, &Tensor)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tensors[i].1.dtype().size()));
    order
}

/// The JSON header, padded with spaces to a multiple of 8 bytes (so the data section is aligned).
fn header_bytes(tensors: &[(&str, &Tensor)], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut offsets = vec![(0usize, 0usize); tensors.len()];
    let mut at = 0usize;
    for i in layout_order(tensors) {
        let t = tensors[i].1;
        let n = t.numel() * t.dtype().size();
        offsets[i] = (at, at + n);
        at += n;
    }
    let mut s = String::from("{");
    if !metadata.is_empty() {
        s += &format!("{}:{}", json(METADATA_KEY), json(metadata));
    }
    for (i, (name, t)) in tensors.iter().enumerate() {
        if s.len() > 1 {
            s.push(',');
        }
        s += &format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}",
            json(name),
            FileDtype::of(t.dtype()).name(),
            json(t.shape()),
            offsets[i].0,
            offsets[i].1
        );
    }
    s.push('}');
    while s.len() % 8 != 0 {
        s.push(' ');
    }
    s.into_bytes()
}

/// A string, map of strings or integer list as JSON (these always encode).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("strings, string maps and integer lists encode")
}
