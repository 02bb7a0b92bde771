//! Element-wise math the composites (losses, norms, optimizers) are built from: exp, log, sqrt,
//! abs, square and pow_scalar. IEEE semantics throughout: log of a negative number is NaN, of 0
//! is -inf; sqrt of a negative number is NaN; as in PyTorch.

use crate::autograd::Backward;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use tlc_kernels::parallel::{self, ELEMWISE_PAR_MIN_ELEMS, TRANSCENDENTAL_PAR_MIN_ELEMS};
use tlc_kernels::vmath;

/// The element-wise functions of this file.
#[derive(Clone, Copy, Debug, PartialEq)]
enum UnaryOp {
    Exp,
    Log,
    Sqrt,
    Abs,
    Square,
    Pow(f32),
}

impl UnaryOp {
    fn name(self) -> &'static str {
        match self {
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Square => "square",
            UnaryOp::Pow(_) => "pow_scalar",
        }
    }

    /// `y = f(x)` over one piece.
    fn run(self, x: &[f32], y: &mut [f32]) {
        let each = |f: fn(f32) -> f32, y: &mut [f32]| {
            y.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v));
        };
        match self {
            UnaryOp::Exp => vmath::exp(x, y),
            UnaryOp::Log => each(f32::ln, y),
            UnaryOp::Sqrt => each(f32::sqrt, y),
            UnaryOp::Abs => each(f32::abs, y),
            UnaryOp::Square => each(|v| v * v, y),
            UnaryOp::Pow(p) => y.iter_mut().zip(x).for_each(|(o, &v)| *o = v.powf(p)),
        }
    }

    /// Whether an element costs a libm call or polynomial rather than one instruction.
    fn is_transcendental(self) -> bool {
        matches!(self, UnaryOp::Exp | UnaryOp::Log | UnaryOp::Pow(_))
    }
}

/// Elements per parallel piece.
const PIECE: usize = 1 << 13;

fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let xd = x.contiguous_data();
    let mut y = vec![0.0f32; xd.len()];
    let threshold = if op.is_transcendental() {
        TRANSCENDENTAL_PAR_MIN_ELEMS
    } else {
        ELEMWISE_PAR_MIN_ELEMS
    };
    let par = parallel::worth_splitting(y.len(), threshold);
    parallel::for_each_chunk_mut(&mut y, PIECE, par, |i, yc| {
        op.run(&xd[i * PIECE..i * PIECE + yc.len()], yc)
    });
    let out = Tensor::new_unchecked(y, x.shape());
    let saved = matches!(op, UnaryOp::Exp | UnaryOp::Sqrt).then(|| out.detach());
    Ok(Tensor::record(out.clone(), &[x], || UnaryBackward {
        op,
        out: saved,
    }))
}

struct UnaryBackward {
    op: UnaryOp,
    /// The output (detached: holding it attached would make a reference cycle), for ops whose
    /// derivative is cheapest from it.
    out: Option<Tensor>,
}

impl Backward for UnaryBackward {
    fn name(&self) -> &'static str {
        self.op.name()
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let g = grad.contiguous_data();
        let src = match &self.out {
            Some(y) => y.contiguous_data(),
            None => x.contiguous_data(),
        };
        let d: Vec<f32> = match self.op {
            // d exp = exp; d sqrt = 1 / (2 sqrt): both from the output.
            UnaryOp::Exp => src.iter().zip(g.iter()).map(|(y, g)| g * y).collect(),
            UnaryOp::Sqrt => src
                .iter()
                .zip(g.iter())
                .map(|(y, g)| g / (2.0 * y))
                .collect(),
            UnaryOp::Log => src.iter().zip(g.iter()).map(|(x, g)| g / x).collect(),
            UnaryOp::Abs => src
                .iter()
                .zip(g.iter())
                .map(|(x, g)| if *x == 0.0 { 0.0 } else { g * x.signum() })
                .collect(),
            UnaryOp::Square => src.iter().zip(g.iter()).map(|(x, g)| 2.0 * x * g).collect(),
            // PyTorch's convention: the gradient of x^0 is 0, even at x = 0.
            UnaryOp::Pow(0.0) => vec![0.0; g.len()],
            UnaryOp::Pow(p) => src
                .iter()
                .zip(g.iter())
                .map(|(x, g)| g * p * x.powf(p - 1.0))
                .collect(),
        };
        Ok(vec![Some(Tensor::new_unchecked(d, x.shape()))])
    }
}

impl Tensor {
    /// e^x.
    pub fn exp(&self) -> Result<Tensor> {
        unary(UnaryOp::Exp, self)
    }

    /// The natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        unary(UnaryOp::Log, self)
    }

    /// The square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        unary(UnaryOp::Sqrt, self)
    }

    /// |x|; its gradient is sign(x), 0 at 0 (as PyTorch).
    pub fn abs(&self) -> Result<Tensor> {
        unary(UnaryOp::Abs, self)
    }

    /// x^2.
    pub fn square(&self) -> Result<Tensor> {
        unary(UnaryOp::Square, self)
    }

    /// x^p for a constant p (`powf` semantics: a negative base with a fractional p is NaN).
    pub fn pow_scalar(&self, p: f32) -> Result<Tensor> {
        if p.is_nan() {
            return Err(Error::invalid("pow_scalar", "the exponent is NaN"));
        }
        unary(UnaryOp::Pow(p), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    #[test]
    fn values() {
        let x = Tensor::from_vec(vec![0.25, 1.0, 4.0, 9.0], &[2, 2]).unwrap();
        assert_eq!(x.sqrt().unwrap().to_vec(), vec![0.5, 1.0, 2.0, 3.0]);
        assert_eq!(x.square().unwrap().to_vec(), vec![0.0625, 1.0, 16.0, 81.0]);
        assert_eq!(
            x.pow_scalar(0.5).unwrap().to_vec(),
            vec![0.5, 1.0, 2.0, 3.0]
        );
        assert_eq!(
            x.pow_scalar(-1.0).unwrap().to_vec(),
            vec![4.0, 1.0, 0.25, 1.0 / 9.0]
        );
        let l = x.log().unwrap().to_vec();
        let e = x.log().unwrap().exp().unwrap().to_vec();
        for i in 0..4 {
            assert!((l[i] - x.get_flat(i).ln()).abs() < 1e-7);
            assert!((e[i] - x.get_flat(i)).abs() < 1e-6 * x.get_flat(i));
        }
        let y = Tensor::from_vec(vec![-2.0, 0.0, 3.0], &[3]).unwrap();
        assert_eq!(y.abs().unwrap().to_vec(), vec![2.0, 0.0, 3.0]);
        assert!(y.log().unwrap().get_flat(0).is_nan());
        assert_eq!(y.log().unwrap().get_flat(1), f32::NEG_INFINITY);
        assert!(y.sqrt().unwrap().get_flat(0).is_nan());
        // Non-contiguous input.
        let t = x.transpose(0, 1).unwrap();
        assert_eq!(t.square().unwrap().to_vec(), vec![0.0625, 16.0, 1.0, 81.0]);
    }

    #[test]
    fn errors_and_conventions() {
        let x = Tensor::from_vec(vec![0.0, 2.0], &[2])
            .unwrap()
            .with_requires_grad(true);
        let e = x.pow_scalar(f32::NAN).unwrap_err().to_string();
        assert!(e.contains("pow_scalar"), "{e}");
        // d|x|/dx at 0 is 0; d x^0/dx is 0.
        let g = x.abs().unwrap().backward_with(Tensor::ones(&[2])).unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec(), vec![0.0, 1.0]);
        let g = x
            .pow_scalar(0.0)
            .unwrap()
            .backward_with(Tensor::ones(&[2]))
            .unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn gradcheck_in_several_shapes() {
        let mut rng = Rng::new(4);
        let shapes: [&[usize]; 4] = [&[5], &[3, 4], &[2, 3, 5], &[1, 7, 1]];
        let opts = GradcheckOptions::default();
        for shape in shapes {
            // Positive inputs away from 0 for log, sqrt and fractional powers.
            let pos = Tensor::rand_uniform(shape, 0.5, 2.5, &mut rng);
            let any = Tensor::randn(shape, &mut rng);
            // |x| has a kink at 0: keep away from it.
            let away: Vec<f32> = any
                .to_vec()
                .iter()
                .map(|v| if v.abs() < 0.05 { 0.1 } else { *v })
                .collect();
            let away = Tensor::from_vec(away, shape).unwrap();
            gradcheck("exp", |t| t[0].exp(), &[any.clone()], &opts).unwrap();
            gradcheck("log", |t| t[0].log(), &[pos.clone()], &opts).unwrap();
            gradcheck("sqrt", |t| t[0].sqrt(), &[pos.clone()], &opts).unwrap();
            gradcheck("abs", |t| t[0].abs(), &[away], &opts).unwrap();
            gradcheck("square", |t| t[0].square(), &[any.clone()], &opts).unwrap();
            for p in [3.0, 1.5, -0.5, -2.0] {
                gradcheck("pow", |t| t[0].pow_scalar(p), &[pos.clone()], &opts).unwrap();
            }
            gradcheck("pow int", |t| t[0].pow_scalar(3.0), &[any.clone()], &opts).unwrap();
        }
    }

    #[test]
    fn large_inputs_split_over_the_pool_consistently() {
        let n = 3 * ELEMWISE_PAR_MIN_ELEMS + 7;
        let x = Tensor::from_vec((0..n).map(|i| (i % 1000) as f32 * 0.01).collect(), &[n]).unwrap();
        for f in [Tensor::exp, Tensor::sqrt, Tensor::log] {
            let y = f(&x).unwrap();
            for i in (0..n).step_by(4099) {
                let one = f(&Tensor::scalar(x.get_flat(i))).unwrap().item().unwrap();
                assert!(y.get_flat(i) == one || (one.is_nan() && y.get_flat(i).is_nan()));
            }
        }
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("unary").unwrap();
        for case in fx.cases() {
            let x = fx.tensor(&case, "x").unwrap().with_requires_grad(true);
            let meta = fx.meta(&case).unwrap();
            let out = match meta["op"].as_str().unwrap() {
                "exp" => x.exp(),
                "log" => x.log(),
                "sqrt" => x.sqrt(),
                "abs" => x.abs(),
                "square" => x.square(),
                "pow" => x.pow_scalar(meta["p"].as_f64().unwrap() as f32),
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
