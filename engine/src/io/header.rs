//! The safetensors header: parsing and validation, with errors that name the file, the tensor
//! and the numbers that disagree.
//!
//! Layout: 8 bytes little-endian `n`, then `n` bytes of JSON (an object: tensor name ->
//! `{"dtype", "shape", "data_offsets": [begin, end]}`, plus an optional `__metadata__` string
//! map), then the data section. Offsets are relative to the data section; the tensors' byte ranges
//! must tile it exactly (no overlap, no gap, no trailing bytes), as the reference implementation
//! requires.

use super::dtype::{FileDtype, LOADABLE};
use crate::error::{Error, Result};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The header key holding the free-form string metadata.
pub const METADATA_KEY: &str = "__metadata__";

/// One tensor's header entry, validated against the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: FileDtype,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub begin: usize,
    pub end: usize,
}

/// A validated header.
#[derive(Clone, Debug, Default)]
pub struct Header {
    /// Tensors in the order the header lists them.
    pub entries: Vec<Entry>,
    /// The `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
    /// Absolute offset of the data section in the file.
    pub data_start: usize,
}

/// A JSON object with its keys in document order (serde_json's own map sorts them).
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<OrderedObject, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry::<String, Value>()? {
                    v.push(kv);
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parse and validate the header of `bytes`, the whole content of the file `path`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Header> {
    let fail = |detail: String| Error::format(path, detail);
    if bytes.len() < 8 {
        return Err(fail(format!(
            "the file is {} bytes long; a safetensors file starts with an 8-byte header length",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let available = (bytes.len() - 8) as u64;
    if n > available {
        return Err(fail(format!(
            "the header length field says {n} bytes but only {available} bytes follow it \
             (truncated, or not a safetensors file)"
        )));
    }
    let data_start = 8 + n as usize;
    let json = &bytes[8..data_start];
    let object: OrderedObject =
        serde_json::from_slice(json).map_err(|e| fail(format!("corrupt header JSON: {e}")))?;

    let mut header = Header {
        data_start,
        ..Header::default()
    };
    let mut seen_metadata = false;
    for (key, value) in object.0 {
        if key == METADATA_KEY {
            if std::mem::replace(&mut seen_metadata, true) {
                return Err(fail(format!(
                    "`{METADATA_KEY}` appears twice in the header"
                )));
            }
            header.metadata = parse_metadata(&value).map_err(fail)?;
            continue;
        }
        if header.entries.iter().any(|e| e.name == key) {
            return Err(fail(format!("tensor `{key}` appears twice in the header")));
        }
        let entry = parse_entry(&key, &value).map_err(|d| fail(format!("tensor `{key}`: {d}")))?;
        header.entries.push(entry);
    }
    check_ranges(&header.entries, bytes.len() - data_start).map_err(fail)?;
    Ok(header)
}

fn parse_metadata(v: &Value) -> std::result::Result<BTreeMap<String, String>, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("`{METADATA_KEY}` is not a JSON object of strings"))?;
    obj.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(format!(
                "`{METADATA_KEY}` value of `{k}` is not a string: {other}"
            )),
        })
        .collect()
}

fn parse_entry(name: &str, v: &Value) -> std::result::Result<Entry, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("header entry is not a JSON object: {v}"))?;
    let field = |k: &str| {
        obj.get(k)
            .ok_or_else(|| format!("header entry has no `{k}`"))
    };
    let dtype_str = field("dtype")?
        .as_str()
        .ok_or_else(|| "`dtype` is not a string".to_string())?;
    let dtype = FileDtype::parse(dtype_str)
        .ok_or_else(|| format!("unknown dtype `{dtype_str}` (tlc loads {LOADABLE})"))?;
    let shape_v = field("shape")?;
    let shape = usizes(shape_v)
        .ok_or_else(|| format!("`shape` is not a list of non-negative integers: {shape_v}"))?;
    let offsets_v = field("data_offsets")?;
    let offsets = usizes(offsets_v).filter(|o| o.len() == 2).ok_or_else(|| {
        format!("`data_offsets` is not a pair of non-negative integers: {offsets_v}")
    })?;
    let (begin, end) = (offsets[0], offsets[1]);
    if begin > end {
        return Err(format!("data_offsets [{begin}, {end}] are reversed"));
    }
    let needed = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    if end - begin != needed {
        return Err(format!(
            "shape {shape:?} of {} needs {needed} bytes but data_offsets [{begin}, {end}] span {}",
            dtype.name(),
            end - begin
        ));
    }
    Ok(Entry {
        name: name.to_string(),
        dtype,
        shape,
        begin,
        end,
    })
}

/// A JSON list of non-negative integers.
fn usizes(v: &Value) -> Option<Vec<usize>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
        .collect()
}

/// The entries' byte ranges must tile `[0, data_len)` exactly.
fn check_ranges(entries: &[Entry], data_len: usize) -> std::result::Result<(), String> {
    if let Some(e) = entries.iter().find(|e| e.end > data_len) {
        return Err(format!(
            "tensor `{}`: data_offsets [{}, {}] reach past the end of the data section \
             ({data_len} bytes): the file is truncated or the offsets are corrupt",
            e.name, e.begin, e.end
        ));
    }
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by_key(|e| (e.begin, e.end));
    let mut covered = 0usize;
    let mut prev: Option<&Entry> = None;
    for e in order {
        if e.begin < covered {
            let p = prev.expect("covered > 0 only after an entry");
            return Err(format!(
                "tensor `{}` (bytes {}..{}) overlaps tensor `{}` (bytes {}..{})",
                e.name, e.begin, e.end, p.name, p.begin, p.end
            ));
        }
        if e.begin > covered {
            return Err(format!(
                "bytes {covered}..{} of the data section belong to no tensor (next: `{}`)",
                e.begin, e.name
            ));
        }
        covered = e.end;
        prev = Some(e);
    }
    if covered != data_len {
        return Err(format!(
            "{} trailing bytes after the last tensor's data (data section is {data_len} bytes)",
            data_len - covered
        ));
    }
    Ok(())
}
