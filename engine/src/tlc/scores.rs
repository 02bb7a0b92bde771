//! Per-channel and per-layer scores. A channel whose pre-activation is N(shift, scale^2) (BN's
//! beta and |gamma|, or measured mean and std) is OFF with probability Phi(-shift/scale); deciding
//! by the sign of the shift is wrong with probability Phi(-|shift|/scale); a layer's entropy is the
//! mean binary entropy of its channels' OFF probabilities (0 = already linear).

use super::candidates::channel_axis;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use tlc_kernels::activation::normal_cdf;

/// Probabilities are clamped to this distance from 0 and 1 before taking logarithms.
const P_CLAMP: f64 = 1e-5;

/// Probability that a channel with pre-activation N(`shift`, `scale`^2) is negative. A zero scale
/// is a constant channel: OFF exactly when `shift <= 0`.
pub fn p_off(shift: f32, scale: f32) -> f32 {
    let s = scale.abs();
    if s == 0.0 {
        return if shift <= 0.0 { 1.0 } else { 0.0 };
    }
    normal_cdf(-shift / s)
}

/// Probability that deciding ON (`shift > 0`) or OFF by the sign of the shift is wrong.
pub fn error_likelihood(shift: f32, scale: f32) -> f32 {
    let s = scale.abs();
    if s == 0.0 {
        return 0.0;
    }
    normal_cdf(-shift.abs() / s)
}

/// Binary entropy in bits of a probability, clamped to [1e-5, 1 - 1e-5].
pub fn binary_entropy(p: f32) -> f32 {
    let p = (p as f64).clamp(P_CLAMP, 1.0 - P_CLAMP);
    (-(p * p.log2()) - (1.0 - p) * (1.0 - p).log2()) as f32
}

/// The Gaussian each channel's pre-activation is modelled by.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelStats {
    /// BN's beta, or the measured mean.
    pub shift: Vec<f32>,
    /// BN's gamma (its sign does not matter), or the measured standard deviation.
    pub scale: Vec<f32>,
}

/// Per-channel mean and standard deviation of an activation's input, accumulated over calibration
/// batches (for activations with no batch-norm in front of them).
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    count: u64,
}

impl Calibration {
    /// Add a batch `[N, ...]` whose per-sample channel axis is [`channel_axis`] of `x.shape()[1..]`.
    pub fn add(&mut self, x: &Tensor) -> Result<()> {
        if x.rank() < 2 {
            return Err(Error::shape(
                "tlc calibration",
                format!("expected [N, ...], got {:?}", x.shape()),
            ));
        }
        let axis = 1 + channel_axis(&x.shape()[1..]);
        let c = x.shape()[axis];
        let inner: usize = x.shape()[axis + 1..].iter().product();
        if self.sum.is_empty() {
            self.sum = vec![0.0; c];
            self.sum_sq = vec![0.0; c];
        } else if self.sum.len() != c {
            return Err(Error::shape(
                "tlc calibration",
                format!(
                    "a batch with {c} channels after batches with {}",
                    self.sum.len()
                ),
            ));
        }
        let data = x.contiguous_data();
        for (i, v) in data.iter().enumerate() {
            let ch = (i / inner) % c;
            self.sum[ch] += *v as f64;
            self.sum_sq[ch] += (*v as f64) * (*v as f64);
        }
        self.count += (data.len() / c.max(1)) as u64;
        Ok(())
    }

    /// The measured Gaussian per channel (population standard deviation).
    pub fn stats(&self) -> ChannelStats {
        let n = self.count.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let std = self
            .sum_sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / n - m * m).max(0.0).sqrt() as f32)
            .collect();
        ChannelStats {
            shift: mean.into_iter().map(|m| m as f32).collect(),
            scale: std,
        }
    }
}

/// One candidate layer's scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerScore {
    /// Per channel: probability the channel is OFF.
    pub p_off: Vec<f32>,
    /// Per channel: probability the ON/OFF decision is wrong.
    pub error: Vec<f32>,
    /// Per channel: the decision, `true` = ON (kept, linear), `false` = OFF (removed).
    pub on: Vec<bool>,
    /// Mean binary entropy of `p_off`, in bits.
    pub entropy: f32,
    /// Mean of `error`.
    pub mean_error: f32,
}

impl LayerScore {
    /// Score every channel of `stats`.
    pub fn new(stats: &ChannelStats) -> LayerScore {
        let pairs = || stats.shift.iter().zip(&stats.scale);
        let p: Vec<f32> = pairs().map(|(&b, &g)| p_off(b, g)).collect();
        let error: Vec<f32> = pairs().map(|(&b, &g)| error_likelihood(b, g)).collect();
        let on = stats.shift.iter().map(|&b| b > 0.0).collect();
        let n = p.len().max(1) as f64;
        let entropy = (p.iter().map(|&q| binary_entropy(q) as f64).sum::<f64>() / n) as f32;
        let mean_error = (error.iter().map(|&e| e as f64).sum::<f64>() / n) as f32;
        LayerScore {
            p_off: p,
            error,
            on,
            entropy,
            mean_error,
        }
    }

    /// Number of ON channels.
    pub fn n_on(&self) -> usize {
        self.on.iter().filter(|&&o| o).count()
    }

    /// Number of OFF channels.
    pub fn n_off(&self) -> usize {
        self.on.len() - self.n_on()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_off_and_error_match_the_normal_cdf() {
        // Phi(-1) = 0.158655, Phi(-2) = 0.022750, Phi(0) = 0.5.
        assert!((p_off(1.0, 1.0) - 0.158_655).abs() < 1e-5);
        assert!((p_off(-2.0, 1.0) - 0.977_250).abs() < 1e-5);
        assert!(
            (p_off(2.0, -1.0) - 0.022_750).abs() < 1e-5,
            "the sign of gamma does not matter"
        );
        assert_eq!(p_off(0.0, 3.0), 0.5);
        assert!((error_likelihood(-2.0, 1.0) - 0.022_750).abs() < 1e-5);
        assert!((error_likelihood(2.0, 1.0) - 0.022_750).abs() < 1e-5);
    }

    #[test]
    fn zero_gamma_is_a_constant_channel() {
        assert_eq!(p_off(0.5, 0.0), 0.0);
        assert_eq!(p_off(0.0, 0.0), 1.0);
        assert_eq!(p_off(-0.5, 0.0), 1.0);
        assert_eq!(error_likelihood(-0.5, 0.0), 0.0);
    }

    #[test]
    fn calibration_measures_mean_and_std_per_channel() {
        let mut cal = Calibration::default();
        // [N=2, C=2, H=1, W=2]: channel 0 sees 1, 3, 5, 7; channel 1 sees -1 four times.
        cal.add(
            &Tensor::from_slice(&[1.0, 3.0, -1.0, -1.0, 5.0, 7.0, -1.0, -1.0], &[2, 2, 1, 2])
                .unwrap(),
        )
        .unwrap();
        // Tokens [N=1, T=2, F=2] keep their features last: channel 0 sees 4, 4.
        cal.add(&Tensor::from_slice(&[4.0, -1.0, 4.0, -1.0], &[1, 2, 2]).unwrap())
            .unwrap();
        let s = cal.stats();
        assert!((s.shift[0] - 4.0).abs() < 1e-6 && s.shift[1] == -1.0);
        // Population std of {1, 3, 5, 7, 4, 4} = sqrt(20 / 6).
        assert!((s.scale[0] - (20.0f32 / 6.0).sqrt()).abs() < 1e-6 && s.scale[1] == 0.0);
        assert!(cal.add(&Tensor::zeros(&[1, 2, 3])).is_err());
        assert!(cal.add(&Tensor::zeros(&[4])).is_err());
    }

    #[test]
    fn entropy_values() {
        assert!((binary_entropy(0.5) - 1.0).abs() < 1e-7);
        // h(0.1) = 0.468996 bits.
        assert!((binary_entropy(0.1) - 0.468_996).abs() < 1e-6);
        assert!((binary_entropy(0.1) - binary_entropy(0.9)).abs() < 1e-6);
        // Clamped: h(1e-5) = 1.8e-4 bits, not 0 and not NaN.
        let h0 = binary_entropy(0.0);
        assert!(h0 > 1.7e-4 && h0 < 1.9e-4, "{h0}");
        assert_eq!(h0, binary_entropy(1.0));
    }

    #[test]
    fn layer_decisions_and_means() {
        let s = LayerScore::new(&ChannelStats {
            shift: vec![1.0, -1.0, 0.0, 2.0],
            scale: vec![1.0, 1.0, 1.0, 0.0],
        });
        assert_eq!(s.on, [true, false, false, true]);
        assert_eq!((s.n_on(), s.n_off()), (2, 2));
        let h = (2.0 * binary_entropy(0.158_655) + 1.0 + binary_entropy(0.0)) / 4.0;
        assert!((s.entropy - h).abs() < 1e-5, "{} vs {h}", s.entropy);
        let e = (2.0 * 0.158_655 + 0.5 + 0.0) / 4.0;
        assert!((s.mean_error - e).abs() < 1e-5);
    }
}
