//! Learning-rate schedules as pure functions of the step (or epoch) number, with the values of
//! `torch.optim.lr_scheduler` (MultiStepLR, CosineAnnealingLR, and LinearLR warm-up chained
//! into another schedule with SequentialLR).
//!
//! A training loop calls `optimizer.set_lr(schedule.lr(base_lr, epoch))` before each epoch (or
//! step): no scheduler state to save, resuming only needs the epoch number.

use crate::error::{Error, Result};
use std::f64::consts::PI;

/// A learning-rate schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// Always `base_lr`.
    Constant,
    /// `base_lr * gamma^k`, k = how many milestones are <= the epoch (a repeated milestone counts
    /// each time, as in MultiStepLR).
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    /// `eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / t_max)) / 2`; past `t_max` the
    /// cosine goes on (rising again), as CosineAnnealingLR does.
    Cosine { t_max: usize, eta_min: f64 },
    /// For `epoch < steps`: `base_lr * (start_factor + (1 - start_factor) * epoch / steps)`
    /// (LinearLR to factor 1); afterwards `then` evaluated at `epoch - steps` (SequentialLR).
    Warmup {
        steps: usize,
        start_factor: f64,
        then: Box<LrSchedule>,
    },
}

impl LrSchedule {
    /// Multiply by `gamma` at each milestone.
    pub fn multi_step(milestones: Vec<usize>, gamma: f64) -> Result<LrSchedule> {
        let s = LrSchedule::MultiStep { milestones, gamma };
        s.validate()?;
        Ok(s)
    }

    /// Cosine annealing from `base_lr` down to `eta_min` over `t_max` epochs.
    pub fn cosine(t_max: usize, eta_min: f64) -> Result<LrSchedule> {
        let s = LrSchedule::Cosine { t_max, eta_min };
        s.validate()?;
        Ok(s)
    }

    /// A linear warm-up over `steps` from `start_factor * base_lr`, then `then`.
    pub fn warmup(steps: usize, start_factor: f64, then: LrSchedule) -> Result<LrSchedule> {
        let s = LrSchedule::Warmup {
            steps,
            start_factor,
            then: Box::new(then),
        };
        s.validate()?;
        Ok(s)
    }

    /// Check the parameters (the constructors do; call it on a schedule built by hand).
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "lr schedule";
        match self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::MultiStep { gamma, .. } if !(gamma.is_finite() && *gamma > 0.0) => {
                Err(Error::invalid(
                    OP,
                    format!("multi-step gamma {gamma} must be finite and > 0"),
                ))
            }
            LrSchedule::MultiStep { .. } => Ok(()),
            LrSchedule::Cosine { t_max: 0, .. } => {
                Err(Error::invalid(OP, "cosine t_max must be at least 1"))
            }
            LrSchedule::Cosine { eta_min, .. } if !(eta_min.is_finite() && *eta_min >= 0.0) => {
                Err(Error::invalid(
                    OP,
                    format!("cosine eta_min {eta_min} must be finite and >= 0"),
                ))
            }
            LrSchedule::Cosine { .. } => Ok(()),
            LrSchedule::Warmup { start_factor, .. }
                if !(*start_factor > 0.0 && *start_factor <= 1.0) =>
            {
                Err(Error::invalid(
                    OP,
                    format!("warm-up start_factor {start_factor} must be in (0, 1]"),
                ))
            }
            LrSchedule::Warmup { then, .. } => then.validate(),
        }
    }

    /// The learning rate at `epoch` (0-based) for a base learning rate `base_lr`.
    pub fn lr(&self, base_lr: f64, epoch: usize) -> f64 {
        match self {
            LrSchedule::Constant => base_lr,
            LrSchedule::MultiStep { milestones, gamma } => {
                let k = milestones.iter().filter(|&&m| m <= epoch).count();
                base_lr * gamma.powi(k as i32)
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let t = epoch as f64 / (*t_max).max(1) as f64;
                eta_min + (base_lr - eta_min) * (1.0 + (PI * t).cos()) / 2.0
            }
            LrSchedule::Warmup {
                steps,
                start_factor,
                then,
            } => {
                if epoch < *steps {
                    let f = start_factor + (1.0 - start_factor) * epoch as f64 / *steps as f64;
                    base_lr * f
                } else {
                    then.lr(base_lr, epoch - steps)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use serde_json::Value;

    fn from_meta(v: &Value) -> LrSchedule {
        match v["kind"].as_str().unwrap() {
            "constant" => LrSchedule::Constant,
            "multistep" => LrSchedule::multi_step(
                v["milestones"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_u64().unwrap() as usize)
                    .collect(),
                v["gamma"].as_f64().unwrap(),
            )
            .unwrap(),
            "cosine" => LrSchedule::cosine(
                v["t_max"].as_u64().unwrap() as usize,
                v["eta_min"].as_f64().unwrap(),
            )
            .unwrap(),
            "warmup" => LrSchedule::warmup(
                v["warmup"].as_u64().unwrap() as usize,
                v["start_factor"].as_f64().unwrap(),
                from_meta(&v["inner"]),
            )
            .unwrap(),
            k => panic!("unknown schedule {k}"),
        }
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("optim").unwrap();
        let mut n = 0;
        for case in fx.cases().into_iter().filter(|c| c.starts_with("sched_")) {
            let meta = fx.meta(&case).unwrap();
            let sched = from_meta(&meta);
            let base = meta["base_lr"].as_f64().unwrap();
            let want = fx.tensor(&case, "lr").unwrap().to_vec();
            for (epoch, &w) in want.iter().enumerate() {
                let got = sched.lr(base, epoch) as f32;
                let tol = 1e-6 * w.abs().max(1e-6);
                assert!(
                    (got - w).abs() <= tol,
                    "{case} epoch {epoch}: {got} vs torch {w}"
                );
            }
            n += 1;
        }
        assert_eq!(n, 5, "schedule cases in the fixture");
    }

    #[test]
    fn closed_forms() {
        let s = LrSchedule::multi_step(vec![2, 4], 0.1).unwrap();
        assert_eq!(s.lr(1.0, 0), 1.0);
        assert_eq!(s.lr(1.0, 2), 0.1);
        assert!((s.lr(1.0, 100) - 0.01).abs() < 1e-15);
        let c = LrSchedule::cosine(10, 0.0).unwrap();
        assert_eq!(c.lr(2.0, 0), 2.0);
        assert!((c.lr(2.0, 5) - 1.0).abs() < 1e-12);
        assert!(c.lr(2.0, 10).abs() < 1e-12);
        let w = LrSchedule::warmup(4, 0.5, LrSchedule::Constant).unwrap();
        assert_eq!(w.lr(1.0, 0), 0.5);
        assert_eq!(w.lr(1.0, 2), 0.75);
        assert_eq!(w.lr(1.0, 4), 1.0);
        // No warm-up at all: the inner schedule from epoch 0.
        let w0 = LrSchedule::warmup(0, 0.1, c.clone()).unwrap();
        assert_eq!(w0.lr(2.0, 0), 2.0);
    }

    #[test]
    fn rejects_bad_parameters() {
        for (r, what) in [
            (LrSchedule::cosine(0, 0.0), "t_max"),
            (LrSchedule::cosine(5, -1.0), "eta_min"),
            (LrSchedule::multi_step(vec![1], 0.0), "gamma"),
            (LrSchedule::multi_step(vec![1], f64::NAN), "gamma"),
            (
                LrSchedule::warmup(3, 0.0, LrSchedule::Constant),
                "start_factor",
            ),
            (
                LrSchedule::warmup(3, 1.5, LrSchedule::Constant),
                "start_factor",
            ),
        ] {
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains(what), "{msg}");
        }
        let nested = LrSchedule::Warmup {
            steps: 2,
            start_factor: 0.5,
            then: Box::new(LrSchedule::Cosine {
                t_max: 0,
                eta_min: 0.0,
            }),
        };
        assert!(nested.validate().is_err());
    }
}
