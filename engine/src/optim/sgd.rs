//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay,
//! step for step as `torch.optim.SGD` computes it:
//!
//! ```text
//! g = grad + wd * p
//! buf = g                                   (first step)
//! buf = momentum * buf + (1 - dampening) * g (later steps)
//! g = g + momentum * buf   (nesterov)   or   g = buf
//! p = p - lr * g
//! ```

use super::params::{check_lr, check_range, check_state_shape, ensure_slots, grad_of, DecayMask};
use super::state::OptimState;
use super::Optimizer;
use crate::autograd::Gradients;
use crate::error::Result;
use crate::tensor::Tensor;

const OP: &str = "sgd";

/// SGD hyperparameters (PyTorch's defaults: only `lr` is set).
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl SgdConfig {
    /// Plain SGD at learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        SgdConfig {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }

    pub fn dampening(mut self, d: f64) -> Self {
        self.dampening = d;
        self
    }

    pub fn nesterov(mut self, on: bool) -> Self {
        self.nesterov = on;
        self
    }

    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
}

/// A momentum buffer and the shape of the parameter it belongs to.
#[derive(Clone, Debug)]
struct Buffer {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// The SGD optimizer.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: SgdConfig,
    decay: DecayMask,
    buffers: Vec<Option<Buffer>>,
    started: bool,
}

impl Sgd {
    /// An optimizer with `config`, checked as PyTorch checks it.
    pub fn new(config: SgdConfig) -> Result<Sgd> {
        check_lr(OP, config.lr)?;
        check_range(OP, "momentum", config.momentum, |v| v >= 0.0, ">= 0")?;
        check_range(OP, "dampening", config.dampening, f64::is_finite, "finite")?;
        check_range(
            OP,
            "weight_decay",
            config.weight_decay,
            |v| v >= 0.0,
            ">= 0",
        )?;
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(crate::error::Error::invalid(
                OP,
                "Nesterov momentum requires momentum > 0 and dampening = 0",
            ));
        }
        Ok(Sgd {
            config,
            decay: DecayMask::default(),
            buffers: Vec::new(),
            started: false,
        })
    }

    /// Apply weight decay only to the parameters whose entry is `true` (by index in the slice
    /// passed to [`Optimizer::step`]); see [`super::decay_matrices_only`].
    pub fn with_decay_mask(mut self, mask: Vec<bool>) -> Sgd {
        self.decay = DecayMask::new(mask);
        self
    }

    /// The hyperparameters.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [Tensor], grads: &Gradients) -> Result<()> {
        let c = &self.config;
        check_lr(OP, c.lr)?;
        self.decay.check(OP, params.len())?;
        ensure_slots(OP, &mut self.buffers, &mut self.started, params.len())?;
        let lr = c.lr as f32;
        let momentum = c.momentum as f32;
        let keep = (1.0 - c.dampening) as f32;
        let nesterov = c.nesterov;
        for (i, p) in params.iter_mut().enumerate() {
            let Some(g) = grad_of(OP, i, p, grads)? else {
                continue;
            };
            let wd = if self.decay.decays(i) {
                c.weight_decay as f32
            } else {
                0.0
            };
            if let Some(b) = &self.buffers[i] {
                check_state_shape(OP, i, p, &b.shape)?;
            }
            let shape = p.shape().to_vec();
            let slot = &mut self.buffers[i];
            p.update_data(|pd| {
                let decayed = |g: f32, p: f32| if wd != 0.0 { g + wd * p } else { g };
                if c.momentum == 0.0 {
                    for (p, &g) in pd.iter_mut().zip(g.iter()) {
                        *p -= lr * decayed(g, *p);
                    }
                    return;
                }
                let first = slot.is_none();
                let buf = &mut slot
                    .get_or_insert_with(|| Buffer {
                        shape,
                        values: vec![0.0; g.len()],
                    })
                    .values;
                for ((p, &g), b) in pd.iter_mut().zip(g.iter()).zip(buf.iter_mut()) {
                    let d = decayed(g, *p);
                    *b = if first { d } else { *b * momentum + keep * d };
                    *p -= lr * if nesterov { d + momentum * *b } else { *b };
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
        let tensors = self
            .buffers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let b = b.as_ref()?;
                let t = Tensor::from_vec(b.values.clone(), &b.shape).expect("buffer fits shape");
                Some((format!("momentum_buffer.{i}"), t))
            })
            .collect();
        OptimState {
            kind: OP.to_string(),
            lr: self.config.lr,
            num_params: self.buffers.len(),
            tensors,
            counters: Default::default(),
        }
    }

    fn load_state(&mut self, state: &OptimState) -> Result<()> {
        state.expect_kind(OP)?;
        let mut buffers = vec![None; state.num_params];
        for (_, i, t) in state.indexed_tensors(&["momentum_buffer"])? {
            buffers[i] = Some(Buffer {
                shape: t.shape().to_vec(),
                values: t.to_vec(),
            });
        }
        check_lr(OP, state.lr)?;
        self.config.lr = state.lr;
        self.buffers = buffers;
        self.started = state.num_params > 0;
        Ok(())
    }
}
