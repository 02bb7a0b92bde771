//! Element-wise arithmetic with broadcasting: add, sub, mul, div, and their scalar forms.

use super::broadcast::{for_each_row, sum_to_shape};
use crate::autograd::Backward;
use crate::error::Result;
use crate::shape::{broadcast_shapes, broadcast_strides, contiguous_strides, numel};
use crate::tensor::Tensor;
use tlc_kernels::elementwise::{self, BinaryOp};

fn op_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
    }
}

/// `op` applied element-wise with broadcasting, without recording autograd.
fn broadcast_apply(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let shape = broadcast_shapes(op_name(op), a.shape(), b.shape())?;
    let (ad, bd) = (a.contiguous_data(), b.contiguous_data());
    if a.shape() == b.shape() && op == BinaryOp::Add {
        // The residual adds of every ResNet block: written straight into the new buffer, with no
        // zero-fill pass before it (a quarter of the memory traffic).
        return Ok(Tensor::new_unchecked(add_same_shape(&ad, &bd), &shape));
    }
    let mut out = vec![0.0f32; numel(&shape)];
    if a.shape() == b.shape() {
        elementwise::binary(op, &ad, &bd, &mut out);
    } else if b.numel() == 1 {
        elementwise::binary_scalar_rhs(op, &ad, bd[0], &mut out);
    } else if a.numel() == 1 {
        elementwise::binary_scalar_lhs(op, ad[0], &bd, &mut out);
    } else {
        let sa = broadcast_strides(a.shape(), &contiguous_strides(a.shape()), &shape);
        let sb = broadcast_strides(b.shape(), &contiguous_strides(b.shape()), &shape);
        let so = contiguous_strides(&shape);
        let inner = *shape.last().unwrap_or(&1);
        let (ia, ib) = (*sa.last().unwrap_or(&0), *sb.last().unwrap_or(&0));
        for_each_row(&shape, [&sa, &sb, &so], |[oa, ob, oo]| {
            let o = &mut out[oo..oo + inner];
            match (ia, ib) {
                (1, 1) => elementwise::binary(op, &ad[oa..oa + inner], &bd[ob..ob + inner], o),
                (1, 0) => elementwise::binary_scalar_rhs(op, &ad[oa..oa + inner], bd[ob], o),
                (0, 1) => elementwise::binary_scalar_lhs(op, ad[oa], &bd[ob..ob + inner], o),
                _ => o.iter_mut().for_each(|v| *v = op.apply(ad[oa], bd[ob])),
            }
        });
    }
    Ok(Tensor::new_unchecked(out, &shape))
}

/// `a + b` for equal lengths, collected into a fresh buffer (in parallel for large inputs).
fn add_same_shape(a: &[f32], b: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    use tlc_kernels::parallel::{worth_splitting, ELEMWISE_PAR_MIN_ELEMS};
    const PIECE: usize = 1 << 14;
    let mut out = Vec::with_capacity(a.len());
    if worth_splitting(a.len(), ELEMWISE_PAR_MIN_ELEMS) {
        a.par_iter()
            .zip(b.par_iter())
            .with_min_len(PIECE)
            .map(|(x, y)| x + y)
            .collect_into_vec(&mut out);
    } else {
        out.extend(a.iter().zip(b).map(|(x, y)| x + y));
    }
    out
}

struct BinaryBackward {
    op: BinaryOp,
}

impl Backward for BinaryBackward {
    fn name(&self) -> &'static str {
        op_name(self.op)
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let (ga, gb) = match self.op {
            BinaryOp::Add => (
                a.requires_grad().then(|| grad.clone()),
                b.requires_grad().then(|| grad.clone()),
            ),
            BinaryOp::Sub => (
                a.requires_grad().then(|| grad.clone()),
                if b.requires_grad() {
                    Some(grad.scale(-1.0)?)
                } else {
                    None
                },
            ),
            BinaryOp::Mul => (
                if a.requires_grad() {
                    Some(grad.mul(b)?)
                } else {
                    None
                },
                if b.requires_grad() {
                    Some(grad.mul(a)?)
                } else {
                    None
                },
            ),
            BinaryOp::Div => (
                if a.requires_grad() {
                    Some(grad.div(b)?)
                } else {
                    None
                },
                if b.requires_grad() {
                    // d(a/b)/db = -a / b^2
                    Some(grad.mul(a)?.div(&b.mul(b)?)?.scale(-1.0)?)
                } else {
                    None
                },
            ),
        };
        Ok(vec![
            ga.map(|g| sum_to_shape(&g, a.shape())).transpose()?,
            gb.map(|g| sum_to_shape(&g, b.shape())).transpose()?,
        ])
    }
}

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = broadcast_apply(op, a, b)?;
    Ok(Tensor::record(out, &[a, b], || BinaryBackward { op }))
}

struct AffineBackward {
    scale: f32,
}

impl Backward for AffineBackward {
    fn name(&self) -> &'static str {
        "affine"
    }

    fn backward(&self, grad: &Tensor, _inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(if self.scale == 1.0 {
            grad.clone()
        } else {
            grad.scale(self.scale)?
        })])
    }
}

impl Tensor {
    /// `self + other`, broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        binary(BinaryOp::Add, self, other)
    }

    /// `self - other`, broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        binary(BinaryOp::Sub, self, other)
    }

    /// `self * other` element-wise, broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        binary(BinaryOp::Mul, self, other)
    }

    /// `self / other` element-wise, broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        binary(BinaryOp::Div, self, other)
    }

    /// `self * scale + shift`, element-wise with two constants.
    pub fn affine(&self, scale: f32, shift: f32) -> Result<Tensor> {
        let x = self.contiguous_data();
        let mut out = vec![0.0f32; x.len()];
        elementwise::affine(&x, scale, shift, &mut out);
        let out = Tensor::new_unchecked(out, self.shape());
        Ok(Tensor::record(out, &[self], || AffineBackward { scale }))
    }

    /// `self * s`.
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.affine(s, 0.0)
    }

    /// `self + s`.
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        self.affine(1.0, s)
    }

    /// `-self`.
    pub fn neg(&self) -> Result<Tensor> {
        self.affine(-1.0, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::{Rng, Tensor};

    #[test]
    fn broadcast_values() {
        let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let b = Tensor::from_vec(vec![10.0, 20.0], &[2, 1]).unwrap();
        assert_eq!(
            a.add(&b).unwrap().to_vec(),
            vec![11.0, 12.0, 13.0, 24.0, 25.0, 26.0]
        );
        assert_eq!(
            a.sub(&Tensor::scalar(1.0)).unwrap().to_vec(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        assert_eq!(
            Tensor::scalar(12.0).div(&a).unwrap().to_vec(),
            vec![12.0, 6.0, 4.0, 3.0, 2.4, 2.0]
        );
        let e = a.mul(&Tensor::zeros(&[4])).unwrap_err().to_string();
        assert!(
            e.contains("mul") && e.contains("[2, 3]") && e.contains("[4]"),
            "{e}"
        );
    }

    #[test]
    fn gradcheck_broadcasting_shapes() {
        let mut rng = Rng::new(1);
        let shapes: [(&[usize], &[usize]); 5] = [
            (&[3, 5], &[3, 5]),
            (&[2, 3, 5], &[5]),
            (&[2, 1, 5], &[3, 1]),
            (&[7], &[]),
            (&[1, 4, 1, 3], &[2, 1, 5, 1]),
        ];
        for (sa, sb) in shapes {
            let a = Tensor::randn(sa, &mut rng);
            // Keep divisors away from zero so finite differences stay meaningful.
            let b = Tensor::rand_uniform(sb, 0.5, 2.0, &mut rng);
            let opts = GradcheckOptions::default();
            gradcheck("add", |x| x[0].add(&x[1]), &[a.clone(), b.clone()], &opts).unwrap();
            gradcheck("sub", |x| x[0].sub(&x[1]), &[a.clone(), b.clone()], &opts).unwrap();
            gradcheck("mul", |x| x[0].mul(&x[1]), &[a.clone(), b.clone()], &opts).unwrap();
            gradcheck("div", |x| x[0].div(&x[1]), &[a.clone(), b.clone()], &opts).unwrap();
            gradcheck("affine", |x| x[0].affine(-1.5, 0.25), &[a.clone()], &opts).unwrap();
        }
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("binary").unwrap();
        for case in fx.cases() {
            let a = fx.tensor(&case, "a").unwrap().with_requires_grad(true);
            let b = fx.tensor(&case, "b").unwrap().with_requires_grad(true);
            let op = fx.meta_str(&case, "op").unwrap();
            let out = match op.as_str() {
                "add" => a.add(&b),
                "sub" => a.sub(&b),
                "mul" => a.mul(&b),
                "div" => a.div(&b),
                other => panic!("unknown op {other} in fixture"),
            }
            .unwrap();
            assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-4, &case);
            let grads = out
                .backward_with(fx.tensor(&case, "grad_out").unwrap())
                .unwrap();
            assert_close(
                grads.get(&a).unwrap(),
                &fx.tensor(&case, "grad_a").unwrap(),
                1e-4,
                &case,
            );
            assert_close(
                grads.get(&b).unwrap(),
                &fx.tensor(&case, "grad_b").unwrap(),
                1e-4,
                &case,
            );
        }
    }
}
