//! A synthetic image task that needs no download: bars in four orientations on noise. A small
//! CNN learns it in seconds, so it drives the `demo` command and the training loop's tests.

use crate::data::Dataset;
use tlc_engine::Rng;

/// Class names of [`bars`], in label order.
pub const CLASSES: [&str; 4] = ["horizontal", "vertical", "diagonal", "anti-diagonal"];

/// How hard [`bars`] makes the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Difficulty {
    /// Bars 2 pixels thick, 60-100 % of the side long, on faint noise: learnt within an epoch.
    Easy,
    /// Bars 1 pixel thick, 25-50 % of the side long, on strong noise: several epochs of visible
    /// progress for a small CNN.
    Hard,
}

/// `n` grey `size x size` images (`size` at least 8), each one bright bar at a random place in
/// one of four orientations on a noisy background; the label is the orientation. Deterministic
/// for a given `seed`.
pub fn bars(n: usize, size: usize, seed: u64, difficulty: Difficulty) -> Dataset {
    let size = size.max(8);
    let (thick, noise, min_len, extra_len) = match difficulty {
        Difficulty::Easy => (2, 90, size * 3 / 5, size * 2 / 5),
        Difficulty::Hard => (1, 150, size / 4, size / 4),
    };
    let mut rng = Rng::new(seed);
    let mut pixels = Vec::with_capacity(n * size * size);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.below(4);
        let mut img: Vec<u8> = (0..size * size).map(|_| rng.below(noise) as u8).collect();
        let len = (min_len + rng.below(extra_len + 1)).min(size - 1);
        let (x0, y0) = (rng.below(size - len), rng.below(size - len));
        let across = rng.below(size - 1);
        let bright = 130 + rng.below(126) as u8;
        for t in 0..len {
            for th in 0..thick {
                let (y, x) = match class {
                    0 => (across + th, x0 + t),
                    1 => (y0 + t, across + th),
                    2 => (y0 + t, x0 + t + th),
                    _ => (y0 + t, x0 + len - 1 - t + th),
                };
                if y < size && x < size {
                    img[y * size + x] = bright;
                }
            }
        }
        pixels.extend_from_slice(&img);
        labels.push(class as u8);
    }
    Dataset::new(pixels, labels, (1, size, size), 4).expect("sizes are consistent by construction")
}
