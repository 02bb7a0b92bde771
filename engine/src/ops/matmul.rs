//! Matrix products: `matmul` (batched, broadcasting, PyTorch semantics) and `linear`
//! (`x W^T + b`, the fully connected layer, with its bias fused into the GEMM's store).

use super::broadcast::sum_to_shape;
use crate::autograd::Backward;
use crate::error::{Error, Result};
use crate::shape::{broadcast_shapes, broadcast_strides, numel};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::borrow::Cow;
use tlc_kernels::gemm::{gemm, EpilogueOp, MatMut, MatRef};
use tlc_kernels::parallel::{self, GEMM_PAR_MIN_MACS};

/// A tensor's values as an f32 slice together with the layout that addresses them: the storage
/// itself when it is f32 (no copy, any strides), a dense copy otherwise.
struct Strided<'a> {
    data: Cow<'a, [f32]>,
    offset: usize,
    strides: Vec<usize>,
}

fn strided(t: &Tensor) -> Strided<'_> {
    match t.storage().as_f32() {
        Some(s) => Strided {
            data: Cow::Borrowed(s),
            offset: t.storage_offset(),
            strides: t.strides().to_vec(),
        },
        None => Strided {
            data: Cow::Owned(t.to_vec()),
            offset: 0,
            strides: crate::shape::contiguous_strides(t.shape()),
        },
    }
}

/// `a @ b` for rank >= 2 operands, batch dimensions broadcast; no autograd recorded.
fn matmul_raw(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (k2, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    if k != k2 {
        return Err(Error::shape(
            "matmul",
            format!(
                "{:?} @ {:?}: inner dimensions {k} and {k2} differ",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let batch = broadcast_shapes("matmul", &a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
    let nb = numel(&batch);
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    let mut out = vec![0.0f32; nb * m * n];
    if out.is_empty() {
        return Ok(Tensor::new_unchecked(out, &out_shape));
    }

    // A contiguous left operand times a plain matrix is one tall GEMM, not a loop.
    if rb == 2 && a.is_contiguous() {
        let ad = a.contiguous_data();
        let sb = strided(b);
        let bm = MatRef {
            data: &sb.data[sb.offset..],
            rows: k,
            cols: n,
            row_stride: sb.strides[0],
            col_stride: sb.strides[1],
        };
        gemm(
            MatRef::row_major(&ad, nb * m, k),
            bm,
            0.0,
            MatMut::row_major(&mut out, nb * m, n),
            &[],
        );
        return Ok(Tensor::new_unchecked(out, &out_shape));
    }

    let (sa, sb) = (strided(a), strided(b));
    let a_bs = broadcast_strides(&a.shape()[..ra - 2], &sa.strides[..ra - 2], &batch);
    let b_bs = broadcast_strides(&b.shape()[..rb - 2], &sb.strides[..rb - 2], &batch);
    let offsets: Vec<(usize, usize)> = (0..nb)
        .map(|mut i| {
            let (mut oa, mut ob) = (sa.offset, sb.offset);
            for d in (0..batch.len()).rev() {
                let idx = i % batch[d];
                i /= batch[d];
                oa += idx * a_bs[d];
                ob += idx * b_bs[d];
            }
            (oa, ob)
        })
        .collect();
    let (a_rs, a_cs) = (sa.strides[ra - 2], sa.strides[ra - 1]);
    let (b_rs, b_cs) = (sb.strides[rb - 2], sb.strides[rb - 1]);
    let one = |(oa, ob): (usize, usize), c: &mut [f32]| {
        let am = MatRef {
            data: &sa.data[oa..],
            rows: m,
            cols: k,
            row_stride: a_rs,
            col_stride: a_cs,
        };
        let bm = MatRef {
            data: &sb.data[ob..],
            rows: k,
            cols: n,
            row_stride: b_rs,
            col_stride: b_cs,
        };
        gemm(am, bm, 0.0, MatMut::row_major(c, m, n), &[]);
    };
    // Many small products (attention heads): spread the batch; few large ones: let GEMM split.
    let total = nb * m * n * k;
    if nb > 1
        && m * n * k < GEMM_PAR_MIN_MACS
        && parallel::worth_splitting(total, GEMM_PAR_MIN_MACS)
    {
        out.par_chunks_mut(m * n)
            .zip(offsets.par_iter())
            .for_each(|(c, &o)| one(o, c));
    } else {
        out.chunks_mut(m * n)
            .zip(&offsets)
            .for_each(|(c, &o)| one(o, c));
    }
    Ok(Tensor::new_unchecked(out, &out_shape))
}

struct MatmulBackward;

impl Backward for MatmulBackward {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let ga = if a.requires_grad() {
            Some(sum_to_shape(
                &matmul_raw(grad, &b.transpose(-1, -2)?)?,
                a.shape(),
            )?)
        } else {
            None
        };
        let gb = if !b.requires_grad() {
            None
        } else if b.rank() == 2 && a.rank() > 2 {
            // Sum over the batch inside one GEMM: (k, B*m) @ (B*m, n).
            let k = a.shape()[a.rank() - 1];
            let n = b.shape()[1];
            let a2 = a.contiguous().reshape(&[-1, k as isize])?;
            let g2 = grad.contiguous().reshape(&[-1, n as isize])?;
            Some(matmul_raw(&a2.transpose(0, 1)?, &g2)?)
        } else {
            Some(sum_to_shape(
                &matmul_raw(&a.transpose(-1, -2)?, grad)?,
                b.shape(),
            )?)
        };
        Ok(vec![ga, gb])
    }
}

struct LinearBackward {
    has_bias: bool,
}

impl Backward for LinearBackward {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (&inputs[0], &inputs[1]);
        let (out_f, in_f) = (w.shape()[0], w.shape()[1]);
        let g = grad.contiguous_data();
        let rows = g.len() / out_f.max(1);
        let gm = MatRef::row_major(&g, rows, out_f);
        let gx = if x.requires_grad() {
            let wd = w.contiguous_data();
            let mut dx = vec![0.0f32; rows * in_f];
            gemm(
                gm,
                MatRef::row_major(&wd, out_f, in_f),
                0.0,
                MatMut::row_major(&mut dx, rows, in_f),
                &[],
            );
            Some(Tensor::new_unchecked(dx, x.shape()))
        } else {
            None
        };
        let gw = if w.requires_grad() {
            let xd = x.contiguous_data();
            let mut dw = vec![0.0f32; out_f * in_f];
            gemm(
                gm.t(),
                MatRef::row_major(&xd, rows, in_f),
                0.0,
                MatMut::row_major(&mut dw, out_f, in_f),
                &[],
            );
            Some(Tensor::new_unchecked(dw, w.shape()))
        } else {
            None
        };
        let mut grads = vec![gx, gw];
        if self.has_bias {
            let gb = if inputs[2].requires_grad() {
                let mut db = vec![0.0f32; out_f];
                for row in g.chunks_exact(out_f) {
                    db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
                }
                Some(Tensor::new_unchecked(db, &[out_f]))
            } else {
                None
            };
            grads.push(gb);
        }
        Ok(grads)
    }
}

impl Tensor {
    /// Matrix product with PyTorch's `matmul` semantics: 1-D operands are promoted to matrices
    /// (and the added dimension removed), leading batch dimensions broadcast.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        if self.rank() == 0 || other.rank() == 0 {
            return Err(Error::shape(
                "matmul",
                "operands must have at least one dimension",
            ));
        }
        if self.rank() == 1 {
            let out = self.unsqueeze(0)?.matmul(other)?;
            return out.squeeze(-2);
        }
        if other.rank() == 1 {
            let out = self.matmul(&other.unsqueeze(1)?)?;
            return out.squeeze(-1);
        }
        let out = matmul_raw(self, other)?;
        Ok(Tensor::record(out, &[self, other], || MatmulBackward))
    }

    /// The fully connected layer: `self @ weight^T + bias`, with `self` of shape `[..., in]`,
    /// `weight` `[out, in]` (PyTorch's layout) and `bias` `[out]`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let ws = weight.shape();
        if ws.len() != 2 || self.rank() == 0 || self.shape()[self.rank() - 1] != ws[1] {
            return Err(Error::shape(
                "linear",
                format!(
                    "input {:?} does not fit weight {ws:?} (expected [..., {}])",
                    self.shape(),
                    ws.get(1).unwrap_or(&0)
                ),
            ));
        }
        let (out_f, in_f) = (ws[0], ws[1]);
        if let Some(b) = bias {
            if b.shape() != [out_f] {
                return Err(Error::shape(
                    "linear",
                    format!("bias {:?} for {out_f} outputs", b.shape()),
                ));
            }
        }
        let rows = self.numel() / in_f.max(1);
        let xd = self.contiguous_data();
        let wd = weight.contiguous_data();
        let bd = bias.map(|b| b.contiguous_data());
        let mut out = vec![0.0f32; rows * out_f];
        let epi: Vec<EpilogueOp> = bd.iter().map(|b| EpilogueOp::BiasPerCol(b)).collect();
        gemm(
            MatRef::row_major(&xd, rows, in_f),
            MatRef::row_major(&wd, out_f, in_f).t(),
            0.0,
            MatMut::row_major(&mut out, rows, out_f),
            &epi,
        );
        let mut shape = self.shape().to_vec();
        *shape.last_mut().expect("rank checked above") = out_f;
        let out = Tensor::new_unchecked(out, &shape);
        Ok(match bias {
            Some(b) => Tensor::record(out, &[self, weight, b], || LinearBackward {
                has_bias: true,
            }),
            None => Tensor::record(out, &[self, weight], || LinearBackward { has_bias: false }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    fn half_copy(t: &Tensor) -> Tensor {
        let v: Vec<half::f16> = t.to_vec().into_iter().map(half::f16::from_f32).collect();
        Tensor::from_storage(Storage::F16(v), t.shape()).unwrap()
    }

    #[test]
    fn matmul_values_and_errors() {
        let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let b = Tensor::from_vec(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]).unwrap();
        assert_eq!(a.matmul(&b).unwrap().to_vec(), vec![4.0, 5.0, 10.0, 11.0]);
        let e = a.matmul(&a).unwrap_err().to_string();
        assert!(e.contains("matmul") && e.contains("[2, 3]"), "{e}");
        assert!(a.linear(&b, None).is_err());
        assert!(a
            .linear(&b.transpose(0, 1).unwrap(), Some(&Tensor::zeros(&[3])))
            .is_err());
        // f16 storage goes through the copying path and gives the same answer.
        assert_eq!(
            half_copy(&a).matmul(&b).unwrap().to_vec(),
            vec![4.0, 5.0, 10.0, 11.0]
        );
    }

    #[test]
    fn gradcheck_matmul_shapes() {
        let mut rng = Rng::new(2);
        let cases: [(&[usize], &[usize]); 6] = [
            (&[3, 4], &[4, 5]),
            (&[2, 3, 4], &[4, 5]),
            (&[2, 3, 4], &[2, 4, 5]),
            (&[2, 1, 3, 4], &[3, 4, 2]),
            (&[4], &[4, 3]),
            (&[2, 3, 4], &[4]),
        ];
        for (sa, sb) in cases {
            let a = Tensor::randn(sa, &mut rng);
            let b = Tensor::randn(sb, &mut rng);
            gradcheck(
                "matmul",
                |x| x[0].matmul(&x[1]),
                &[a, b],
                &GradcheckOptions::default(),
            )
            .unwrap();
        }
        // A transposed (non-contiguous) operand.
        let a = Tensor::randn(&[4, 3], &mut rng);
        let b = Tensor::randn(&[4, 5], &mut rng);
        gradcheck(
            "matmul_t",
            |x| x[0].transpose(0, 1)?.matmul(&x[1]),
            &[a, b],
            &GradcheckOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn gradcheck_linear() {
        let mut rng = Rng::new(3);
        for shape in [&[5, 7][..], &[2, 3, 7], &[7]] {
            let x = Tensor::randn(shape, &mut rng);
            let w = Tensor::randn(&[4, 7], &mut rng);
            let b = Tensor::randn(&[4], &mut rng);
            let o = GradcheckOptions::default();
            gradcheck(
                "linear",
                |t| t[0].linear(&t[1], Some(&t[2])),
                &[x.clone(), w.clone(), b],
                &o,
            )
            .unwrap();
            gradcheck("linear_nobias", |t| t[0].linear(&t[1], None), &[x, w], &o).unwrap();
        }
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("matmul").unwrap();
        for case in fx.cases() {
            let a = fx.tensor(&case, "a").unwrap().with_requires_grad(true);
            let b = fx.tensor(&case, "b").unwrap().with_requires_grad(true);
            let bias = fx
                .try_tensor(&case, "bias")
                .map(|t| t.with_requires_grad(true));
            let out = match fx.meta_str(&case, "op").unwrap().as_str() {
                "matmul" => a.matmul(&b).unwrap(),
                "linear" => a.linear(&b, bias.as_ref()).unwrap(),
                other => panic!("unknown op {other}"),
            };
            assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-4, &case);
            let g = out
                .backward_with(fx.tensor(&case, "grad_out").unwrap())
                .unwrap();
            assert_close(
                g.get(&a).unwrap(),
                &fx.tensor(&case, "grad_a").unwrap(),
                1e-4,
                &case,
            );
            assert_close(
                g.get(&b).unwrap(),
                &fx.tensor(&case, "grad_b").unwrap(),
                1e-4,
                &case,
            );
            if let Some(bias) = &bias {
                assert_close(
                    g.get(bias).unwrap(),
                    &fx.tensor(&case, "grad_bias").unwrap(),
                    1e-4,
                    &case,
                );
            }
        }
    }
}
