//! Adam with decoupled weight decay, step for step as `torch.optim.AdamW` computes it
//! (single-tensor path, `amsgrad = false`):
//!
//! ```text
//! t += 1                                       (per parameter: skipped steps do not count)
//! p = p * (1 - lr * wd)
//! m = lerp(m, g, 1 - beta1)
//! v = beta2 * v + (1 - beta2) * g * g
//! p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//! Scalars are computed in f64 (Python floats in PyTorch), element-wise work in f32.

use super::params::{check_lr, check_range, check_state_shape, ensure_slots, grad_of, DecayMask};
use super::state::OptimState;
use super::Optimizer;
use crate::autograd::Gradients;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const OP: &str = "adamw";

/// AdamW hyperparameters (defaults as PyTorch's: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
/// weight decay 1e-2).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

impl AdamWConfig {
    /// PyTorch's defaults at learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        AdamWConfig {
            lr,
            ..Default::default()
        }
    }

    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
}

/// One parameter's moments and step count.
#[derive(Clone, Debug)]
struct Moments {
    shape: Vec<usize>,
    step: u64,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The AdamW optimizer.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    decay: DecayMask,
    moments: Vec<Option<Moments>>,
    started: bool,
}

/// `torch.lerp(a, b, w)` for scalars: the formula switches at w = 0.5 for accuracy.
#[inline]
fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if w < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

impl AdamW {
    /// An optimizer with `config`, checked as PyTorch checks it.
    pub fn new(config: AdamWConfig) -> Result<AdamW> {
        check_lr(OP, config.lr)?;
        let unit = |v: f64| (0.0..1.0).contains(&v);
        check_range(OP, "beta1", config.beta1, unit, "in [0, 1)")?;
        check_range(OP, "beta2", config.beta2, unit, "in [0, 1)")?;
        check_range(OP, "eps", config.eps, |v| v >= 0.0, ">= 0")?;
        check_range(
            OP,
            "weight_decay",
            config.weight_decay,
            |v| v >= 0.0,
            ">= 0",
        )?;
        Ok(AdamW {
            config,
            decay: DecayMask::default(),
            moments: Vec::new(),
            started: false,
        })
    }

    /// Apply weight decay only to the parameters whose entry is `true` (by index in the slice
    /// passed to [`Optimizer::step`]); see [`super::decay_matrices_only`].
    pub fn with_decay_mask(mut self, mask: Vec<bool>) -> AdamW {
        self.decay = DecayMask::new(mask);
        self
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &mut [Tensor], grads: &Gradients) -> Result<()> {
        let c = &self.config;
        check_lr(OP, c.lr)?;
        self.decay.check(OP, params.len())?;
        ensure_slots(OP, &mut self.moments, &mut self.started, params.len())?;
        let w1 = (1.0 - c.beta1) as f32;
        let beta2 = c.beta2 as f32;
        let w2 = (1.0 - c.beta2) as f32;
        let eps = c.eps as f32;
        for (i, p) in params.iter_mut().enumerate() {
            let Some(g) = grad_of(OP, i, p, grads)? else {
                continue;
            };
            let shape = p.shape().to_vec();
            let st = self.moments[i].get_or_insert_with(|| Moments {
                shape: shape.clone(),
                step: 0,
                m: vec![0.0; g.len()],
                v: vec![0.0; g.len()],
            });
            check_state_shape(OP, i, p, &st.shape)?;
            st.step += 1;
            let decay = if self.decay.decays(i) && c.weight_decay != 0.0 {
                Some((1.0 - c.lr * c.weight_decay) as f32)
            } else {
                None
            };
            let t = st.step as f64;
            let bc1 = 1.0 - c.beta1.powf(t);
            let bc2_sqrt = (1.0 - c.beta2.powf(t)).sqrt() as f32;
            let neg_step_size = -(c.lr / bc1) as f32;
            let (m, v) = (&mut st.m, &mut st.v);
            p.update_data(|pd| {
                for j in 0..pd.len() {
                    if let Some(k) = decay {
                        pd[j] *= k;
                    }
                    m[j] = lerp(m[j], g[j], w1);
                    v[j] = v[j] * beta2 + w2 * g[j] * g[j];
                    let denom = v[j].sqrt() / bc2_sqrt + eps;
                    pd[j] += neg_step_size * (m[j] / denom);
                }
            });
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state(&self) -> OptimState {
        let mut tensors = Vec::new();
        let mut counters = std::collections::BTreeMap::new();
        for (i, s) in self.moments.iter().enumerate() {
            let Some(s) = s else { continue };
            let t = |v: &Vec<f32>| Tensor::from_vec(v.clone(), &s.shape).expect("fits shape");
            tensors.push((format!("exp_avg.{i}"), t(&s.m)));
            tensors.push((format!("exp_avg_sq.{i}"), t(&s.v)));
            counters.insert(format!("step.{i}"), s.step);
        }
        OptimState {
            kind: OP.to_string(),
            lr: self.config.lr,
            num_params: self.moments.len(),
            tensors,
            counters,
        }
    }

    fn load_state(&mut self, state: &OptimState) -> Result<()> {
        state.expect_kind(OP)?;
        let n = state.num_params;
        let mut m: Vec<Option<Tensor>> = vec![None; n];
        let mut v: Vec<Option<Tensor>> = vec![None; n];
        for (field, i, t) in state.indexed_tensors(&["exp_avg", "exp_avg_sq"])? {
            let slot = if field == "exp_avg" {
                &mut m[i]
            } else {
                &mut v[i]
            };
            *slot = Some(t.clone());
        }
        let mut moments = vec![None; n];
        for i in 0..n {
            match (&m[i], &v[i]) {
                (None, None) => continue,
                (Some(a), Some(b)) if a.shape() == b.shape() => {
                    moments[i] = Some(Moments {
                        shape: a.shape().to_vec(),
                        step: state.counter("step", i)?,
                        m: a.to_vec(),
                        v: b.to_vec(),
                    });
                }
                _ => {
                    return Err(Error::invalid(
                        "load_state",
                        format!(
                            "exp_avg.{i} and exp_avg_sq.{i} must both be present, with one shape"
                        ),
                    ))
                }
            }
        }
        check_lr(OP, state.lr)?;
        self.config.lr = state.lr;
        self.moments = moments;
        self.started = n > 0;
        Ok(())
    }
}
