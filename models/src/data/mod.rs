//! Image classification data: an in-memory labelled set of u8 images, the readers that fill it
//! (Fashion-MNIST IDX, CIFAR-10 binary), and the batch loader (shuffle, augment, normalise,
//! prefetch).

pub mod cifar;
pub mod debian;
pub mod fashion_mnist;
pub mod idx;
pub mod loader;

use crate::error::{Error, Result};
use tlc_engine::Rng;

/// A labelled image set held as u8 pixels in NCHW order.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Pixels, `len * channels * height * width` bytes, image after image (channel planes).
    pub pixels: Vec<u8>,
    /// One class index per image.
    pub labels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
}

impl Dataset {
    /// Check the invariants a reader must establish.
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<u8>,
        (channels, height, width): (usize, usize, usize),
        classes: usize,
    ) -> Result<Dataset> {
        let per = channels * height * width;
        if per == 0 || pixels.len() != labels.len() * per {
            return Err(Error::Config(format!(
                "{} pixel bytes do not hold {} images of {channels}x{height}x{width}",
                pixels.len(),
                labels.len()
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(Error::Config(format!("label {bad} outside 0..{classes}")));
        }
        Ok(Dataset {
            pixels,
            labels,
            channels,
            height,
            width,
            classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// A new set holding the images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        Dataset {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ..self.clone_meta()
        }
    }

    fn clone_meta(&self) -> Dataset {
        Dataset {
            pixels: Vec::new(),
            labels: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
        }
    }

    /// The first `n` images (or all of them).
    pub fn take(&self, n: usize) -> Dataset {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.subset(&idx)
    }

    /// The images zero-padded (centred) to `side` x `side`, e.g. Fashion-MNIST's 28x28 to the 32x32
    /// that networks with five stride-2 stages (VGG) need.
    pub fn pad_to(&self, side: usize) -> Result<Dataset> {
        let (h, w) = (self.height, self.width);
        if side < h || side < w {
            return Err(Error::Config(format!(
                "cannot pad {h}x{w} images to {side}x{side}: padding only enlarges"
            )));
        }
        let (top, left) = ((side - h) / 2, (side - w) / 2);
        let planes = self.len() * self.channels;
        let mut pixels = vec![0u8; planes * side * side];
        for (src, dst) in self
            .pixels
            .chunks_exact(h * w)
            .zip(pixels.chunks_exact_mut(side * side))
        {
            for (y, row) in src.chunks_exact(w).enumerate() {
                let at = (top + y) * side + left;
                dst[at..at + w].copy_from_slice(row);
            }
        }
        Ok(Dataset {
            pixels,
            labels: self.labels.clone(),
            height: side,
            width: side,
            ..self.clone_meta()
        })
    }

    /// Split off a validation set: a seeded random `val_fraction` of the images, the rest for
    /// training. Deterministic for a given seed.
    pub fn split(&self, val_fraction: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::Config(format!(
                "validation fraction {val_fraction} not in [0, 1)"
            )));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        Rng::new(seed).shuffle(&mut idx);
        let n_val = (self.len() as f32 * val_fraction).round() as usize;
        let (val, train) = idx.split_at(n_val);
        let (mut train, mut val) = (train.to_vec(), val.to_vec());
        train.sort_unstable();
        val.sort_unstable();
        Ok((self.subset(&train), self.subset(&val)))
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sq = vec![0f64; self.channels];
        for img in self.pixels.chunks_exact(self.image_len()) {
            for (c, p) in img.chunks_exact(plane).enumerate() {
                for &v in p {
                    let x = v as f64 / 255.0;
                    sum[c] += x;
                    sq[c] += x * x;
                }
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, &m)| ((q / n - (m as f64) * (m as f64)).max(1e-12)).sqrt() as f32)
            .collect();
        (mean, std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let pixels = (0..n * 4).map(|i| (i % 256) as u8).collect();
        let labels = (0..n).map(|i| (i % 3) as u8).collect();
        Dataset::new(pixels, labels, (1, 2, 2), 3).unwrap()
    }

    #[test]
    fn invariants_are_checked() {
        assert!(Dataset::new(vec![0; 7], vec![0, 1], (1, 2, 2), 3).is_err());
        assert!(Dataset::new(vec![0; 8], vec![0, 3], (1, 2, 2), 3).is_err());
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let d = toy(100);
        let (t1, v1) = d.split(0.2, 5).unwrap();
        let (t2, v2) = d.split(0.2, 5).unwrap();
        assert_eq!((t1.len(), v1.len()), (80, 20));
        assert_eq!(v1.pixels, v2.pixels);
        assert_eq!(t1.labels, t2.labels);
        let (_, v3) = d.split(0.2, 6).unwrap();
        assert_ne!(v1.pixels, v3.pixels);
        assert!(d.split(1.0, 0).is_err());
    }

    #[test]
    fn padding_centres_each_plane() {
        // Two 2-channel 2x2 images padded to 4x4: each plane lands at rows/cols 1..3.
        let d = Dataset::new((1..=16).collect(), vec![0, 1], (2, 2, 2), 2).unwrap();
        let p = d.pad_to(4).unwrap();
        assert_eq!((p.len(), p.channels, p.height, p.width), (2, 2, 4, 4));
        assert_eq!(p.labels, d.labels);
        let plane = |img: usize, c: usize| &p.image(img)[c * 16..(c + 1) * 16];
        #[rustfmt::skip]
        assert_eq!(plane(1, 1), &[0, 0, 0, 0,
                                  0, 13, 14, 0,
                                  0, 15, 16, 0,
                                  0, 0, 0, 0]);
        assert_eq!(
            plane(0, 0).iter().map(|&v| v as u32).sum::<u32>(),
            1 + 2 + 3 + 4
        );
        assert_eq!(d.pad_to(2).unwrap().pixels, d.pixels);
        assert!(d.pad_to(1).is_err());
    }
}
