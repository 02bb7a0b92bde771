//! softmax and log_softmax along any axis. The tensor is read as `[outer, axis, inner]` around
//! the chosen axis, so no transpose is needed for a non-last axis; forward and backward are the
//! SIMD kernels of `tlc_kernels::softmax`, the backward using the saved output.

use crate::autograd::Backward;
use crate::error::Result;
use crate::shape::{normalize_axis, numel};
use crate::tensor::Tensor;
use tlc_kernels::softmax::{self, SoftmaxKind};

/// `[outer, axis, inner]` of `shape` around `axis` (a rank-0 tensor is one element).
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    if shape.is_empty() {
        return (1, 1, 1);
    }
    (
        numel(&shape[..axis]),
        shape[axis],
        numel(&shape[axis + 1..]),
    )
}

fn kind_name(kind: SoftmaxKind) -> &'static str {
    match kind {
        SoftmaxKind::Softmax => "softmax",
        SoftmaxKind::LogSoftmax => "log_softmax",
    }
}

struct SoftmaxBackward {
    kind: SoftmaxKind,
    /// The output, detached (an attached one would form a reference cycle through its node).
    out: Tensor,
    dims: (usize, usize, usize),
}

impl Backward for SoftmaxBackward {
    fn name(&self) -> &'static str {
        kind_name(self.kind)
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (y, g) = (self.out.contiguous_data(), grad.contiguous_data());
        let mut dx = vec![0.0f32; y.len()];
        let (o, a, i) = self.dims;
        softmax::backward_on(
            tlc_kernels::isa::current(),
            self.kind,
            &y,
            &g,
            &mut dx,
            o,
            a,
            i,
        );
        Ok(vec![Some(Tensor::new_unchecked(dx, inputs[0].shape()))])
    }
}

fn normalise(kind: SoftmaxKind, x: &Tensor, axis: isize) -> Result<Tensor> {
    let ax = normalize_axis(kind_name(kind), axis, x.rank())?;
    let dims = split_at_axis(x.shape(), ax);
    let xd = x.contiguous_data();
    let mut y = vec![0.0f32; xd.len()];
    softmax::forward_on(
        tlc_kernels::isa::current(),
        kind,
        &xd,
        &mut y,
        dims.0,
        dims.1,
        dims.2,
    );
    let out = Tensor::new_unchecked(y, x.shape());
    Ok(Tensor::record(out.clone(), &[x], || SoftmaxBackward {
        kind,
        out: out.detach(),
        dims,
    }))
}

impl Tensor {
    /// `exp(x) / sum(exp(x))` along `axis` (negative counts from the end), computed stably.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        normalise(SoftmaxKind::Softmax, self, axis)
    }

    /// `x - log(sum(exp(x)))` along `axis`, computed stably (never as log of a softmax).
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        normalise(SoftmaxKind::LogSoftmax, self, axis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    #[test]
    fn values() {
        let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 1.0, 1.0, 1.0], &[2, 3]).unwrap();
        let s = x.softmax(-1).unwrap().to_vec();
        let z = 1.0 + 1f32.exp() + 2f32.exp();
        let want = [
            1.0 / z,
            1f32.exp() / z,
            2f32.exp() / z,
            1.0 / 3.0,
            1.0 / 3.0,
            1.0 / 3.0,
        ];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        // Along axis 0: columns.
        let c = x.softmax(0).unwrap().to_vec();
        let e = 1.0 / (1.0 + (-1f32).exp());
        assert!(
            (c[0] - 0.5).abs() < 1e-6 && (c[1] - e).abs() < 1e-6 && (c[4] - (1.0 - e)).abs() < 1e-6
        );
        let l = x.log_softmax(1).unwrap().to_vec();
        for (a, b) in l.iter().zip(s) {
            assert!((a - b.ln()).abs() < 1e-6);
        }
        // A transposed input, and a rank-0 tensor (softmax of one value is 1).
        let t = x.transpose(0, 1).unwrap().softmax(0).unwrap();
        assert_close(
            &t,
            &x.softmax(1).unwrap().transpose(0, 1).unwrap().contiguous(),
            1e-6,
            "t",
        );
        assert_eq!(Tensor::scalar(5.0).softmax(0).unwrap().item().unwrap(), 1.0);
    }

    #[test]
    fn errors() {
        let x = Tensor::zeros(&[2, 3]);
        let e = x.softmax(2).unwrap_err().to_string();
        assert!(e.contains("softmax") && e.contains("axis 2"), "{e}");
        assert!(x.log_softmax(-3).is_err());
    }

    #[test]
    fn gradcheck_every_axis() {
        let mut rng = Rng::new(5);
        let opts = GradcheckOptions::default();
        for shape in [&[7][..], &[3, 5], &[2, 3, 4], &[2, 1, 3, 5]] {
            let x = Tensor::randn(shape, &mut rng).scale(2.0).unwrap();
            for axis in -(shape.len() as isize)..shape.len() as isize {
                gradcheck("softmax", |t| t[0].softmax(axis), &[x.clone()], &opts).unwrap();
                gradcheck(
                    "log_softmax",
                    |t| t[0].log_softmax(axis),
                    &[x.clone()],
                    &opts,
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("softmax").unwrap();
        for case in fx.cases() {
            let x = fx.tensor(&case, "x").unwrap().with_requires_grad(true);
            let meta = fx.meta(&case).unwrap();
            let axis = meta["dim"].as_i64().unwrap() as isize;
            let out = match meta["op"].as_str().unwrap() {
                "softmax" => x.softmax(axis),
                "log_softmax" => x.log_softmax(axis),
                other => panic!("unknown op {other} in fixture"),
            }
            .unwrap();
            assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-4, &case);
            let g = out
                .backward_with(fx.tensor(&case, "grad_out").unwrap())
                .unwrap();
            assert_close(
                g.get(&x).unwrap(),
                &fx.tensor(&case, "grad_x").unwrap(),
                1e-4,
                &case,
            );
        }
    }
}
