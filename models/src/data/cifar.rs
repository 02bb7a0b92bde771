//! The CIFAR-10 binary format: records of one label byte followed by 3x32x32 pixel bytes (red,
//! green, blue planes), in data_batch_1..5.bin (training) and test_batch.bin.

use super::Dataset;
use crate::error::{Error, Result};
use std::path::Path;

const PIXELS: usize = 3 * 32 * 32;
const RECORD: usize = 1 + PIXELS;

/// The class names, in label order.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Read one CIFAR-10 binary batch file.
pub fn read_batch(path: &Path) -> Result<Dataset> {
    let raw = std::fs::read(path).map_err(|e| tlc_engine::Error::io(path, e))?;
    if raw.is_empty() || raw.len() % RECORD != 0 {
        return Err(Error::corrupt(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
                raw.len()
            ),
        ));
    }
    let n = raw.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in raw.chunks_exact(RECORD).enumerate() {
        if rec[0] >= 10 {
            return Err(Error::corrupt(
                path,
                format!("record {i} has label {} (CIFAR-10 has 0..9)", rec[0]),
            ));
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Dataset::new(pixels, labels, (3, 32, 32), 10)
}

fn concat(parts: Vec<Dataset>) -> Dataset {
    let mut all = parts[0].clone();
    for p in &parts[1..] {
        all.pixels.extend_from_slice(&p.pixels);
        all.labels.extend_from_slice(&p.labels);
    }
    all
}

/// Load the (train, test) sets from a directory holding the binary batches.
pub fn load(dir: &Path) -> Result<(Dataset, Dataset)> {
    let missing = |name: &str| Error::MissingDataset {
        what: format!("CIFAR-10 file {name}"),
        path: dir.to_path_buf(),
        hint:
            "Download the CIFAR-10 binary version (cifar-10-binary.tar.gz) and point --data at the \
               extracted cifar-10-batches-bin directory."
                .into(),
    };
    let mut train = Vec::new();
    for i in 1..=5 {
        let p = dir.join(format!("data_batch_{i}.bin"));
        if !p.is_file() {
            return Err(missing(&format!("data_batch_{i}.bin")));
        }
        train.push(read_batch(&p)?);
    }
    let tp = dir.join("test_batch.bin");
    if !tp.is_file() {
        return Err(missing("test_batch.bin"));
    }
    Ok((concat(train), read_batch(&tp)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_rejects_corruption() {
        let dir = std::env::temp_dir().join(format!("tlc-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        for label in [3u8, 7] {
            bytes.push(label);
            bytes.extend((0..PIXELS).map(|i| (i % 251) as u8 ^ label));
        }
        let p = dir.join("b.bin");
        std::fs::write(&p, &bytes).unwrap();
        let d = read_batch(&p).unwrap();
        assert_eq!(d.labels, vec![3, 7]);
        assert_eq!((d.channels, d.height, d.width), (3, 32, 32));
        assert_eq!(d.image(1)[5], 5 ^ 7);

        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read_batch(&p)
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        bytes[0] = 12;
        std::fs::write(&p, &bytes).unwrap();
        assert!(read_batch(&p).unwrap_err().to_string().contains("label 12"));
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
