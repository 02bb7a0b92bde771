//! Turning a [`Dataset`] into batches of normalised f32 tensors: seeded shuffling, random crop
//! with zero padding and horizontal flips (as torchvision's RandomCrop/RandomHorizontalFlip), and a
//! prefetch thread so the next batch is assembled while the current one is computed.

use super::Dataset;
use crate::error::{Error, Result};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use tlc_engine::{Rng, Tensor};

/// Training-time augmentation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Augment {
    /// Pad each side by this many zero (black) pixels, then crop back to the original size at a
    /// random offset; 0 disables it.
    pub crop_padding: usize,
    /// Mirror left-right with probability 1/2.
    pub hflip: bool,
}

/// How batches are made.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Shuffle the order each epoch (seeded by `seed` and the epoch number).
    pub shuffle: bool,
    pub seed: u64,
    pub augment: Augment,
    /// Per-channel mean and std applied after scaling pixels to [0, 1].
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
}

impl LoaderConfig {
    /// Evaluation batches: in order, no augmentation.
    pub fn eval(batch_size: usize, mean: Vec<f32>, std: Vec<f32>) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: false,
            seed: 0,
            augment: Augment::default(),
            mean,
            std,
            drop_last: false,
        }
    }

    fn validate(&self, ds: &Dataset) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        if self.mean.len() != ds.channels || self.std.len() != ds.channels {
            return Err(Error::Config(format!(
                "normalisation has {} means and {} stds for {} channels",
                self.mean.len(),
                self.std.len(),
                ds.channels
            )));
        }
        if self.std.iter().any(|&s| s.is_nan() || s <= 0.0) {
            return Err(Error::Config(format!(
                "normalisation std {:?} must be positive",
                self.std
            )));
        }
        Ok(())
    }
}

/// A batch of images `[B, C, H, W]` and their class indices.
pub struct Batch {
    pub images: Tensor,
    pub labels: Vec<usize>,
}

/// The image order of `epoch`.
pub fn epoch_order(len: usize, cfg: &LoaderConfig, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if cfg.shuffle {
        Rng::new(cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .shuffle(&mut order);
    }
    order
}

/// Number of batches an epoch yields.
pub fn batches_per_epoch(len: usize, cfg: &LoaderConfig) -> usize {
    if cfg.drop_last {
        len / cfg.batch_size.max(1)
    } else {
        len.div_ceil(cfg.batch_size.max(1))
    }
}

/// Assemble the batch of images `indices` (augmented with `rng` when configured).
pub fn make_batch(ds: &Dataset, indices: &[usize], cfg: &LoaderConfig, rng: &mut Rng) -> Batch {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let plane = h * w;
    let mut out = vec![0.0f32; indices.len() * c * plane];
    // Normalised value of a raw pixel, per channel: (v / 255 - mean) / std.
    let scale: Vec<f32> = cfg.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = cfg.mean.iter().zip(&cfg.std).map(|(m, s)| -m / s).collect();
    for (b, &i) in indices.iter().enumerate() {
        let img = ds.image(i);
        let p = cfg.augment.crop_padding as isize;
        let (dy, dx) = if p > 0 {
            (
                rng.below(2 * p as usize + 1) as isize - p,
                rng.below(2 * p as usize + 1) as isize - p,
            )
        } else {
            (0, 0)
        };
        let flip = cfg.augment.hflip && rng.uniform() < 0.5;
        for ch in 0..c {
            let src = &img[ch * plane..(ch + 1) * plane];
            let dst = &mut out[(b * c + ch) * plane..(b * c + ch + 1) * plane];
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    let raw = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        src[sy as usize * w + sx as usize]
                    } else {
                        0
                    };
                    dst[y * w + x] = raw as f32 * scale[ch] + shift[ch];
                }
            }
        }
    }
    let images = Tensor::from_vec(out, &[indices.len(), c, h, w]).expect("sizes computed above");
    Batch {
        images,
        labels: indices.iter().map(|&i| ds.labels[i] as usize).collect(),
    }
}

/// The batches of one epoch, assembled on a background thread two batches ahead of the consumer.
pub struct Prefetcher {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Prefetcher {
    /// Start producing the batches of `epoch`, skipping the first `skip` (to resume mid-epoch).
    pub fn start(
        ds: Arc<Dataset>,
        cfg: LoaderConfig,
        epoch: usize,
        skip: usize,
    ) -> Result<Prefetcher> {
        cfg.validate(&ds)?;
        let order = epoch_order(ds.len(), &cfg, epoch);
        let total = batches_per_epoch(ds.len(), &cfg);
        let (tx, rx) = sync_channel(2);
        let worker = std::thread::Builder::new()
            .name("tlc-prefetch".into())
            .spawn(move || {
                let mut rng = Rng::new(
                    cfg.seed ^ 0xA5A5 ^ (epoch as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
                );
                for (bi, chunk) in order.chunks(cfg.batch_size).enumerate().take(total) {
                    // Draw augmentation for skipped batches too, so a resumed epoch sees the same data.
                    let batch = make_batch(&ds, chunk, &cfg, &mut rng);
                    if bi < skip {
                        continue;
                    }
                    if tx.send(batch).is_err() {
                        return; // the consumer stopped early
                    }
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the prefetch thread: {e}")))?;
        Ok(Prefetcher {
            rx,
            worker: Some(worker),
            remaining: total.saturating_sub(skip),
        })
    }
}

impl Iterator for Prefetcher {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        self.rx.recv().ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Unblock the worker (its send fails once the receiver is gone) and wait for it.
        let (_, dummy) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dummy));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> Dataset {
        // 10 images 1x3x3; image i has all pixels = 10*i, label i % 2.
        let pixels = (0..10)
            .flat_map(|i| std::iter::repeat_n(10 * i as u8, 9))
            .collect();
        Dataset::new(
            pixels,
            (0..10).map(|i| (i % 2) as u8).collect(),
            (1, 3, 3),
            2,
        )
        .unwrap()
    }

    fn cfg() -> LoaderConfig {
        LoaderConfig {
            batch_size: 4,
            shuffle: true,
            seed: 3,
            augment: Augment::default(),
            mean: vec![0.0],
            std: vec![1.0],
            drop_last: false,
        }
    }

    #[test]
    fn epochs_cover_every_image_once_in_a_seeded_order() {
        let d = Arc::new(ds());
        let batches: Vec<Batch> = Prefetcher::start(d.clone(), cfg(), 0, 0).unwrap().collect();
        assert_eq!(
            batches.iter().map(|b| b.labels.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let mut seen: Vec<usize> = batches
            .iter()
            .flat_map(|b| {
                b.images
                    .to_vec()
                    .chunks(9)
                    .map(|c| (c[0] * 255.0 / 10.0).round() as usize)
                    .collect::<Vec<_>>()
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(epoch_order(10, &cfg(), 0), epoch_order(10, &cfg(), 0));
        assert_ne!(epoch_order(10, &cfg(), 0), epoch_order(10, &cfg(), 1));
    }

    #[test]
    fn resuming_mid_epoch_yields_the_same_remaining_batches() {
        let d = Arc::new(ds());
        let mut c = cfg();
        c.augment = Augment {
            crop_padding: 1,
            hflip: true,
        };
        let all: Vec<Vec<f32>> = Prefetcher::start(d.clone(), c.clone(), 2, 0)
            .unwrap()
            .map(|b| b.images.to_vec())
            .collect();
        let rest: Vec<Vec<f32>> = Prefetcher::start(d, c, 2, 1)
            .unwrap()
            .map(|b| b.images.to_vec())
            .collect();
        assert_eq!(&all[1..], &rest[..]);
    }

    #[test]
    fn crop_and_flip_move_pixels() {
        // A single 1x1x3 image [1, 2, 3]: flipping reverses it; cropping shifts in zeros.
        let d = Dataset::new(vec![1, 2, 3], vec![0], (1, 1, 3), 1).unwrap();
        let mut c = cfg();
        c.augment = Augment {
            crop_padding: 0,
            hflip: true,
        };
        c.std = vec![1.0 / 255.0];
        let mut rng = Rng::new(0);
        let mut saw = std::collections::HashSet::new();
        for _ in 0..20 {
            let b = make_batch(&d, &[0], &c, &mut rng);
            saw.insert(
                b.images
                    .to_vec()
                    .iter()
                    .map(|v| *v as i32)
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(saw.len(), 2);
        assert!(saw.contains(&vec![3, 2, 1]) && saw.contains(&vec![1, 2, 3]));
        c.augment = Augment {
            crop_padding: 1,
            hflip: false,
        };
        let mut saw = std::collections::HashSet::new();
        for _ in 0..50 {
            saw.insert(
                make_batch(&d, &[0], &c, &mut rng)
                    .images
                    .to_vec()
                    .iter()
                    .map(|v| *v as i32)
                    .collect::<Vec<_>>(),
            );
        }
        assert!(
            saw.contains(&vec![0, 1, 2]) && saw.contains(&vec![2, 3, 0]),
            "{saw:?}"
        );
    }

    #[test]
    fn bad_configuration_is_an_error() {
        let d = Arc::new(ds());
        let mut c = cfg();
        c.batch_size = 0;
        assert!(Prefetcher::start(d.clone(), c, 0, 0).is_err());
        let mut c = cfg();
        c.mean = vec![0.0, 0.0];
        assert!(Prefetcher::start(d.clone(), c, 0, 0).is_err());
        let mut c = cfg();
        c.std = vec![0.0];
        assert!(Prefetcher::start(d, c, 0, 0).is_err());
    }
}
