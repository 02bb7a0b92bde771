//! The IDX format of (Fashion-)MNIST: a big-endian header (magic with the element type and rank,
//! then each dimension) followed by the raw elements. Files are usually gzip-compressed.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

const UBYTE: u8 = 0x08;

/// The dimensions and the u8 payload of an IDX file.
#[derive(Debug)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Read an IDX file, gunzipping it if it starts with the gzip magic.
pub fn read(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| tlc_engine::Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::corrupt(path, format!("gzip stream is corrupt: {e}")))?;
        out
    } else {
        raw
    };
    parse(&bytes).map_err(|detail| Error::corrupt(path, detail))
}

/// Parse IDX bytes holding unsigned bytes.
pub fn parse(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "{} bytes is too short for an IDX header",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "bad IDX magic {:02x}{:02x}{:02x}{:02x}",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    if bytes[2] != UBYTE {
        return Err(format!(
            "IDX element type 0x{:02x} is not unsigned byte (0x08)",
            bytes[2]
        ));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(format!(
            "IDX header of rank {rank} does not fit in {} bytes",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("IDX dimensions overflow")?;
    let payload = &bytes[header..];
    if payload.len() != expected {
        return Err(format!(
            "IDX dimensions {dims:?} need {expected} bytes of data, the file has {}",
            payload.len()
        ));
    }
    Ok(IdxArray {
        dims,
        data: payload.to_vec(),
    })
}

/// Encode an IDX u8 array (tests and tools write small files with it).
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, UBYTE, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let bytes = encode(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let a = parse(&bytes).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
        assert!(parse(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .contains("need 6 bytes"));
        assert!(parse(&[0, 0, 8]).unwrap_err().contains("too short"));
        assert!(parse(&[1, 0, 8, 1, 0, 0, 0, 0])
            .unwrap_err()
            .contains("magic"));
        assert!(parse(&[0, 0, 0x0d, 1, 0, 0, 0, 0])
            .unwrap_err()
            .contains("element type"));
        assert!(parse(&[0, 0, 8, 2, 0, 0, 0, 1])
            .unwrap_err()
            .contains("header"));
    }
}
