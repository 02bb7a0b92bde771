//! Test support shared by the unit tests of every op and by the integration tests: PyTorch parity
//! fixtures, tolerance comparison, and finite-difference gradient checking.
//!
//! Fixtures are written by `tests/fixtures/make_fixtures.py` (PyTorch) into
//! `tests/fixtures/<family>.safetensors`: tensors named `<case>/<role>`, the header metadata
//! holding `cases` (a JSON list of case names) and, per case, a JSON object of the op's arguments.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::PathBuf;

/// Directory of the committed parity fixtures.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// One fixture file: named tensors and per-case metadata.
pub struct Fixture {
    name: String,
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

impl Fixture {
    /// Load `tests/fixtures/<name>.safetensors`.
    pub fn load(name: &str) -> Result<Fixture> {
        let path = fixtures_dir().join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::format(&path, e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(&path, e.to_string()))?;
        let mut tensors = HashMap::new();
        for (tname, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(Error::format(
                    &path,
                    format!("fixture tensor {tname} is not f32"),
                ));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(tname.clone(), Tensor::from_vec(data, view.shape())?);
        }
        Ok(Fixture {
            name: name.to_string(),
            tensors,
            meta,
        })
    }

    /// The case names, in the order the generator wrote them.
    pub fn cases(&self) -> Vec<String> {
        self.meta
            .get("cases")
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default()
    }

    /// Tensor `<case>/<role>`.
    pub fn tensor(&self, case: &str, role: &str) -> Result<Tensor> {
        self.try_tensor(case, role)
            .ok_or_else(|| Error::MissingTensor {
                name: format!("{case}/{role}"),
                source_name: format!("fixture {}", self.name),
            })
    }

    /// Tensor `<case>/<role>` if present.
    pub fn try_tensor(&self, case: &str, role: &str) -> Option<Tensor> {
        self.tensors.get(&format!("{case}/{role}")).cloned()
    }

    /// The case's arguments as JSON.
    pub fn meta(&self, case: &str) -> Result<serde_json::Value> {
        let raw = self.meta.get(case).ok_or_else(|| Error::MissingTensor {
            name: format!("metadata of {case}"),
            source_name: format!("fixture {}", self.name),
        })?;
        serde_json::from_str(raw).map_err(|e| Error::format(&self.name, e.to_string()))
    }

    /// A string argument of the case.
    pub fn meta_str(&self, case: &str, key: &str) -> Result<String> {
        self.meta(case)?[key]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::invalid("fixture", format!("{case}: no string `{key}`")))
    }
}

/// Assert `actual` matches `expected` within `rtol`, relative to the larger of the element's own
/// magnitude and the tensor's RMS (so elements near zero are judged on the tensor's scale).
#[track_caller]
pub fn assert_close(actual: &Tensor, expected: &Tensor, rtol: f32, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes differ");
    let (a, e) = (actual.to_vec(), expected.to_vec());
    let rms = (e.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / e.len().max(1) as f64)
        .sqrt() as f32;
    let mut worst = (0usize, 0.0f32);
    for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
        let err = (x - y).abs() / y.abs().max(rms).max(1e-30);
        let err = if err.is_nan() { f32::INFINITY } else { err };
        if err > worst.1 {
            worst = (i, err);
        }
    }
    assert!(
        worst.1 <= rtol,
        "{what}: element {} is {} but expected {} (relative error {:.2e} > {rtol:.0e})",
        worst.0,
        a[worst.0],
        e[worst.0],
        worst.1
    );
}

/// Settings of [`gradcheck`].
#[derive(Clone, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step (f32 compute: 1e-2 balances truncation against rounding).
    pub eps: f32,
    /// Relative tolerance on each gradient element.
    pub rtol: f32,
    /// Absolute tolerance on each gradient element.
    pub atol: f32,
    /// At most this many elements of each input are probed (chosen at random beyond it).
    pub max_probes: usize,
    /// Inputs (by index) that are not differentiated (indices, masks, targets).
    pub skip: Vec<usize>,
    /// Seed of the output projection and the probe choice.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-2,
            rtol: 1e-2,
            atol: 2e-3,
            max_probes: 48,
            skip: Vec::new(),
            seed: 0,
        }
    }
}

/// Check the autograd gradients of `f` at `inputs` against central finite differences of the
/// scalar `sum(f(inputs) * r)` for a random projection `r`. Returns a description of the first
/// mismatch.
pub fn gradcheck(
    name: &str,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: &GradcheckOptions,
) -> std::result::Result<(), String> {
    let mut rng = Rng::new(opts.seed ^ 0x5eed);
    let leaves: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| t.detach().with_requires_grad(!opts.skip.contains(&i)))
        .collect();
    let out = f(&leaves).map_err(|e| format!("{name}: forward failed: {e}"))?;
    let r = Tensor::randn(out.shape(), &mut rng);
    let rv = r.to_vec();
    let grads = if out.requires_grad() {
        out.backward_with(r)
            .map_err(|e| format!("{name}: backward failed: {e}"))?
    } else {
        Default::default()
    };
    let project = |xs: &[Tensor]| -> std::result::Result<f64, String> {
        let o = no_grad(|| f(xs)).map_err(|e| format!("{name}: forward failed: {e}"))?;
        Ok(o.to_vec()
            .iter()
            .zip(&rv)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum())
    };
    for (i, leaf) in leaves.iter().enumerate() {
        if opts.skip.contains(&i) {
            continue;
        }
        let analytic = grads
            .get(leaf)
            .map(|g| g.to_vec())
            .unwrap_or_else(|| vec![0.0; leaf.numel()]);
        let base = leaf.to_vec();
        let n = base.len();
        let probes: Vec<usize> = if n <= opts.max_probes {
            (0..n).collect()
        } else {
            (0..opts.max_probes).map(|_| rng.below(n)).collect()
        };
        for j in probes {
            let mut xs: Vec<Tensor> = leaves.iter().map(|t| t.detach()).collect();
            let mut eval = |delta: f32| {
                let mut v = base.clone();
                v[j] += delta;
                xs[i] = Tensor::from_vec(v, leaf.shape()).expect("same shape");
                project(&xs)
            };
            let fd = (eval(opts.eps)? - eval(-opts.eps)?) / (2.0 * opts.eps as f64);
            let an = analytic[j] as f64;
            let tol = opts.atol as f64 + opts.rtol as f64 * fd.abs().max(an.abs());
            let diff = (fd - an).abs();
            if diff.is_nan() || diff > tol {
                return Err(format!(
                    "{name}: input {i} {:?}, element {j}: autograd {an:.6e} vs finite difference {fd:.6e}",
                    leaf.shape()
                ));
            }
        }
    }
    Ok(())
}

/// Give `m` non-trivial batch-norm statistics and affine parameters and non-zero biases: a fresh
/// model's gamma 1, beta 0, mean 0, var 1 and zero biases hide mistakes in passes and executors.
/// With `weights`, conv and linear weights are redrawn uniformly in ±0.4 too. Parameters keep
/// whether they require gradients.
pub fn randomize_model(m: &mut crate::graph::Model, weights: bool, rng: &mut Rng) {
    let names: Vec<String> = m.to_store().names().map(String::from).collect();
    for name in names {
        let t = m.get_mut(&name).expect("names come from the model");
        let shape = t.shape().to_vec();
        let (lo, hi) = match name.rsplit('.').next().unwrap_or("") {
            "running_var" => (0.5, 1.5),
            "running_mean" | "bias" => (-0.3, 0.3),
            "weight" if shape.len() == 1 => (0.5, 1.5),
            "weight" if weights => (-0.4, 0.4),
            _ => continue,
        };
        *t = Tensor::rand_uniform(&shape, lo, hi, rng).with_requires_grad(t.requires_grad());
    }
}

/// A model of `g` with every parameter and BN statistic random (biases and shifts non-zero).
pub fn random_model(g: crate::graph::Graph, seed: u64) -> crate::graph::Model {
    let mut rng = Rng::new(seed);
    let mut m = crate::graph::Model::init(g, crate::graph::LinearInit::Uniform, &mut rng)
        .expect("a valid graph");
    randomize_model(&mut m, true, &mut rng);
    m
}

/// A batch-norm node over `ch` channels (PyTorch's eps and momentum), for test graphs.
pub fn bn_op(ch: usize) -> crate::graph::Op {
    crate::graph::Op::BatchNorm(crate::graph::BatchNormSpec {
        channels: ch,
        eps: 1e-5,
        momentum: 0.1,
    })
}

/// A square conv node `i -> o`, kernel `k`, stride `s`, padding `p`, for test graphs.
pub fn conv_op(i: usize, o: usize, k: usize, s: usize, p: usize) -> crate::graph::Op {
    crate::graph::Op::Conv2d(crate::graph::ConvSpec::new(i, o, k, s, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradcheck_catches_a_wrong_gradient() {
        // scale's backward is right; a function whose forward ignores part of the graph is not
        // differentiable through autograd, and gradcheck must say so.
        let x = Tensor::from_vec(vec![0.5, -1.0, 2.0], &[3]).unwrap();
        assert!(gradcheck(
            "ok",
            |t| t[0].scale(3.0),
            &[x.clone()],
            &GradcheckOptions::default()
        )
        .is_ok());
        let wrong = |t: &[Tensor]| -> Result<Tensor> {
            // Forward is 2x, but the detached half carries no gradient: autograd says 1x.
            t[0].add(&t[0].detach())
        };
        let err = gradcheck("wrong", wrong, &[x], &GradcheckOptions::default()).unwrap_err();
        assert!(err.contains("finite difference"), "{err}");
    }

    #[test]
    #[should_panic(expected = "relative error")]
    fn assert_close_rejects_a_difference() {
        let a = Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap();
        let b = Tensor::from_vec(vec![1.0, 2.01], &[2]).unwrap();
        assert_close(&a, &b, 1e-4, "t");
    }
}
