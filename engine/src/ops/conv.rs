//! 2-D convolution with PyTorch's `conv2d` semantics (NCHW input, `[Cout, C/groups, kh, kw]`
//! weight): the forward through the kernels' specialised paths (1x1 GEMM, depthwise SIMD, tiled
//! im2col) with the bias fused into the store, and the backward for input, weight and bias.

use crate::autograd::Backward;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use tlc_kernels::conv::{self as kconv, Conv2dShape, ConvEpilogueOp};

pub use tlc_kernels::conv::Conv2dParams;

const OP: &str = "conv2d";

/// Validate the operands and describe the convolution, or say precisely what does not fit.
fn conv_shape(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
) -> Result<Conv2dShape> {
    if x.rank() != 4 {
        return Err(Error::shape(
            OP,
            format!("input must be [N, C, H, W], got {:?}", x.shape()),
        ));
    }
    if w.rank() != 4 {
        return Err(Error::shape(
            OP,
            format!(
                "weight must be [out_channels, in_channels / groups, kh, kw], got {:?}",
                w.shape()
            ),
        ));
    }
    if x.shape()[2] == 0 || x.shape()[3] == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "input {:?} has an empty spatial size (only the batch may be empty)",
                x.shape()
            ),
        ));
    }
    let p = &params;
    if p.groups == 0 {
        return Err(Error::invalid(OP, "groups must be at least 1, got 0"));
    }
    if p.stride.0 == 0 || p.stride.1 == 0 {
        return Err(Error::invalid(
            OP,
            format!("stride must be positive, got {:?}", p.stride),
        ));
    }
    if p.dilation.0 == 0 || p.dilation.1 == 0 {
        return Err(Error::invalid(
            OP,
            format!("dilation must be positive, got {:?}", p.dilation),
        ));
    }
    let (xs, ws) = (x.shape(), w.shape());
    let (c, cout, kh, kw) = (xs[1], ws[0], ws[2], ws[3]);
    if c != ws[1] * p.groups {
        return Err(Error::shape(
            OP,
            format!(
                "input {xs:?} has {c} channels but weight {ws:?} with groups={} expects {}",
                p.groups,
                ws[1] * p.groups
            ),
        ));
    }
    if cout % p.groups != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "weight {ws:?}: {cout} output channels are not divisible by groups={}",
                p.groups
            ),
        ));
    }
    if kh == 0 || kw == 0 {
        return Err(Error::shape(
            OP,
            format!("weight {ws:?} has an empty kernel"),
        ));
    }
    if let Some(b) = bias {
        if b.shape() != [cout] {
            return Err(Error::shape(
                OP,
                format!("bias {:?} for weight {ws:?} must be [{cout}]", b.shape()),
            ));
        }
    }
    if p.output_size(xs[2], xs[3], kh, kw).is_none() {
        return Err(Error::shape(
            OP,
            format!(
                "kernel {kh}x{kw} with dilation {:?} spans {}x{}, larger than input {xs:?} \
                 padded by {:?}",
                p.dilation,
                p.dilation.0 * (kh - 1) + 1,
                p.dilation.1 * (kw - 1) + 1,
                p.padding
            ),
        ));
    }
    Ok(Conv2dShape {
        batch: xs[0],
        in_channels: c,
        in_h: xs[2],
        in_w: xs[3],
        out_channels: cout,
        kernel_h: kh,
        kernel_w: kw,
        params,
    })
}

struct Conv2dBackward {
    shape: Conv2dShape,
    has_bias: bool,
}

impl Backward for Conv2dBackward {
    fn name(&self) -> &'static str {
        OP
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let s = &self.shape;
        let (x, w) = (&inputs[0], &inputs[1]);
        let g = grad.contiguous_data();
        let gx = if x.requires_grad() {
            let wd = w.contiguous_data();
            let mut dx = tlc_kernels::alloc::zeroed_f32(s.input_len());
            kconv::backward_input(s, &g, &wd, &mut dx);
            Some(Tensor::new_unchecked(dx, x.shape()))
        } else {
            None
        };
        let gw = if w.requires_grad() {
            let xd = x.contiguous_data();
            let mut dw = vec![0.0f32; s.weight_len()];
            kconv::backward_weight(s, &xd, &g, &mut dw);
            Some(Tensor::new_unchecked(dw, w.shape()))
        } else {
            None
        };
        let mut grads = vec![gx, gw];
        if self.has_bias {
            grads.push(inputs[2].requires_grad().then(|| {
                let mut db = vec![0.0f32; s.out_channels];
                kconv::backward_bias(s, &g, &mut db);
                Tensor::new_unchecked(db, &[s.out_channels])
            }));
        }
        Ok(grads)
    }
}

impl Tensor {
    /// 2-D convolution (cross-correlation, as PyTorch's `conv2d`): `self` `[N, C, H, W]`, `weight`
    /// `[Cout, C / groups, kh, kw]`, optional `bias` `[Cout]`; output `[N, Cout, OH, OW]` with
    /// `OH = (H + 2 * pad_h - dil_h * (kh - 1) - 1) / stride_h + 1` (likewise OW).
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Result<Tensor> {
        let shape = conv_shape(self, weight, bias, params)?;
        let xd = self.contiguous_data();
        let wd = weight.contiguous_data();
        let bd = bias.map(|b| b.contiguous_data());
        let epi: Vec<ConvEpilogueOp> = bd.iter().map(|b| ConvEpilogueOp::Bias(b)).collect();
        let mut out = tlc_kernels::alloc::zeroed_f32(shape.output_len());
        kconv::forward(&shape, &xd, &wd, &mut out, &epi);
        let (oh, ow) = shape.out_hw();
        let out = Tensor::new_unchecked(out, &[shape.batch, shape.out_channels, oh, ow]);
        Ok(match bias {
            Some(b) => Tensor::record(out, &[self, weight, b], || Conv2dBackward {
                shape,
                has_bias: true,
            }),
            None => Tensor::record(out, &[self, weight], || Conv2dBackward {
                shape,
                has_bias: false,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    fn p() -> Conv2dParams {
        Conv2dParams::default()
    }

    #[test]
    fn conv2d_values() {
        let x = Tensor::from_vec((1..=9).map(|v| v as f32).collect(), &[1, 1, 3, 3]).unwrap();
        let w = Tensor::ones(&[1, 1, 2, 2]);
        let b = Tensor::from_vec(vec![0.5], &[1]).unwrap();
        let y = x.conv2d(&w, Some(&b), p()).unwrap();
        assert_eq!(y.shape(), [1, 1, 2, 2]);
        assert_eq!(y.to_vec(), vec![12.5, 16.5, 24.5, 28.5]);
        // Stride 2 with padding 1: windows at the corners see one, two or four values.
        let y = x.conv2d(&w, None, p().stride(2, 2).padding(1, 1)).unwrap();
        assert_eq!(y.to_vec(), vec![1.0, 5.0, 11.0, 28.0]);
        // Depthwise with channel multiplier 2: channel 0 doubled, channel 0 negated.
        let w2 = Tensor::from_vec(vec![2.0, -1.0], &[2, 1, 1, 1]).unwrap();
        let y = x.conv2d(&w2, None, p().groups(1)).unwrap();
        assert_eq!(y.shape(), [1, 2, 3, 3]);
        assert_eq!(y.to_vec()[..3], [2.0, 4.0, 6.0]);
        assert_eq!(y.to_vec()[9..12], [-1.0, -2.0, -3.0]);
        // Dilation 2: the 2x2 kernel touches the four corners.
        let y = x.conv2d(&w, None, p().dilation(2, 2)).unwrap();
        assert_eq!(y.to_vec(), vec![1.0 + 3.0 + 7.0 + 9.0]);
    }

    #[test]
    fn conv2d_empty_batch_and_channels() {
        let w = Tensor::ones(&[2, 3, 3, 3]).with_requires_grad(true);
        let x = Tensor::zeros(&[0, 3, 5, 5]).with_requires_grad(true);
        let y = x.conv2d(&w, None, p()).unwrap();
        assert_eq!(y.shape(), [0, 2, 3, 3]);
        let g = y.backward_with(Tensor::zeros(y.shape())).unwrap();
        assert_eq!(g.get(&w).unwrap().to_vec(), vec![0.0; 54]);
        assert_eq!(g.get(&x).unwrap().shape(), [0, 3, 5, 5]);
        // No input channels: the output is the bias.
        let b = Tensor::from_vec(vec![1.5, -2.0], &[2]).unwrap();
        let y = Tensor::zeros(&[1, 0, 3, 3])
            .conv2d(&Tensor::zeros(&[2, 0, 3, 3]), Some(&b), p().padding(1, 1))
            .unwrap();
        assert_eq!(y.shape(), [1, 2, 3, 3]);
        assert_eq!(y.to_vec()[..2], [1.5, 1.5]);
        assert_eq!(y.to_vec()[9], -2.0);
    }

    #[test]
    fn conv2d_reads_non_contiguous_inputs() {
        let mut rng = Rng::new(5);
        let x = Tensor::randn(&[2, 5, 4, 3], &mut rng);
        let xt = x.permute(&[0, 3, 2, 1]).unwrap(); // [2, 3, 4, 5], strided
        let w = Tensor::randn(&[4, 3, 3, 3], &mut rng);
        let a = xt.conv2d(&w, None, p().padding(1, 1)).unwrap();
        let b = xt.contiguous().conv2d(&w, None, p().padding(1, 1)).unwrap();
        assert_close(&a, &b, 1e-6, "permuted input");
    }

    #[test]
    fn conv2d_errors() {
        let x = Tensor::zeros(&[1, 4, 5, 5]);
        let w = Tensor::zeros(&[6, 2, 3, 3]);
        let err = |r: Result<Tensor>| r.unwrap_err().to_string();
        let e = err(Tensor::zeros(&[4, 5, 5]).conv2d(&w, None, p().groups(2)));
        assert!(e.contains("conv2d") && e.contains("[4, 5, 5]"), "{e}");
        let e = err(x.conv2d(&Tensor::zeros(&[6, 2, 3]), None, p()));
        assert!(e.contains("weight") && e.contains("[6, 2, 3]"), "{e}");
        let e = err(x.conv2d(&w, None, p()));
        assert!(e.contains("4 channels") && e.contains("expects 2"), "{e}");
        let e = err(x.conv2d(&Tensor::zeros(&[5, 2, 3, 3]), None, p().groups(2)));
        assert!(e.contains("not divisible by groups=2"), "{e}");
        let e = err(x.conv2d(&w, Some(&Tensor::zeros(&[5])), p().groups(2)));
        assert!(e.contains("bias [5]") && e.contains("[6]"), "{e}");
        let e = err(x.conv2d(&w, None, p().groups(2).stride(0, 1)));
        assert!(e.contains("stride") && e.contains("(0, 1)"), "{e}");
        let e = err(x.conv2d(&w, None, p().groups(2).dilation(1, 0)));
        assert!(e.contains("dilation"), "{e}");
        let e = err(x.conv2d(&w, None, p().groups(0)));
        assert!(e.contains("groups"), "{e}");
        let e = err(x.conv2d(&w, None, p().groups(2).dilation(3, 3)));
        assert!(
            e.contains("spans 7x7") && e.contains("larger than input"),
            "{e}"
        );
        let e = err(x.conv2d(&Tensor::zeros(&[6, 2, 0, 3]), None, p().groups(2)));
        assert!(e.contains("empty kernel"), "{e}");
        let e = err(Tensor::zeros(&[1, 4, 0, 5]).conv2d(&w, None, p().groups(2).padding(1, 1)));
        assert!(e.contains("empty spatial size"), "{e}");
        // The padding makes a kernel larger than the input fit.
        let big = Tensor::zeros(&[6, 2, 7, 7]);
        assert!(x.conv2d(&big, None, p().groups(2)).is_err());
        assert_eq!(
            x.conv2d(&big, None, p().groups(2).padding(1, 1))
                .unwrap()
                .shape(),
            [1, 6, 1, 1]
        );
    }

    /// (input shape, weight shape, params).
    fn geometries() -> Vec<([usize; 4], [usize; 4], Conv2dParams)> {
        vec![
            ([1, 2, 5, 6], [3, 2, 3, 3], p().padding(1, 1)),
            ([2, 3, 7, 5], [4, 3, 3, 3], p().stride(2, 2).padding(1, 1)),
            ([1, 2, 9, 8], [2, 2, 3, 2], p().dilation(2, 2).padding(2, 1)),
            ([2, 4, 5, 5], [6, 2, 3, 3], p().groups(2).padding(1, 0)),
            ([2, 3, 6, 7], [6, 1, 3, 3], p().groups(3).padding(1, 1)),
            (
                [1, 3, 7, 7],
                [3, 1, 3, 3],
                p().groups(3).stride(2, 2).padding(1, 1),
            ),
            ([2, 5, 3, 4], [4, 5, 1, 1], p()),
            ([1, 4, 5, 5], [6, 4, 1, 1], p().stride(2, 2)),
            ([1, 3, 9, 7], [2, 3, 5, 3], p().stride(2, 1).padding(2, 0)),
        ]
    }

    #[test]
    fn gradcheck_conv2d_geometries() {
        let mut rng = Rng::new(9);
        for (xs, ws, params) in geometries() {
            let x = Tensor::randn(&xs, &mut rng);
            let w = Tensor::randn(&ws, &mut rng);
            let b = Tensor::randn(&[ws[0]], &mut rng);
            let o = GradcheckOptions::default();
            gradcheck(
                "conv2d",
                |t| t[0].conv2d(&t[1], Some(&t[2]), params),
                &[x.clone(), w.clone(), b],
                &o,
            )
            .unwrap_or_else(|e| panic!("{xs:?} {ws:?} {params:?}: {e}"));
            gradcheck(
                "conv2d_nobias",
                |t| t[0].conv2d(&t[1], None, params),
                &[x, w],
                &o,
            )
            .unwrap_or_else(|e| panic!("{xs:?} {ws:?} {params:?}: {e}"));
        }
    }

    #[test]
    fn backward_skips_inputs_without_grad() {
        let mut rng = Rng::new(4);
        let x = Tensor::randn(&[1, 2, 4, 4], &mut rng);
        let w = Tensor::randn(&[3, 2, 3, 3], &mut rng).with_requires_grad(true);
        let y = x.conv2d(&w, None, p()).unwrap();
        let g = y.backward_with(Tensor::ones(y.shape())).unwrap();
        assert!(g.get(&w).is_some() && g.get(&x).is_none());
    }

    fn pair(v: &serde_json::Value, key: &str) -> (usize, usize) {
        let a = v[key].as_array().expect("fixture pair");
        (
            a[0].as_u64().unwrap() as usize,
            a[1].as_u64().unwrap() as usize,
        )
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("conv").unwrap();
        let cases = fx.cases();
        assert!(cases.len() >= 10);
        for case in cases {
            let m = fx.meta(&case).unwrap();
            let params = Conv2dParams {
                stride: pair(&m, "stride"),
                padding: pair(&m, "padding"),
                dilation: pair(&m, "dilation"),
                groups: m["groups"].as_u64().unwrap() as usize,
            };
            let x = fx.tensor(&case, "x").unwrap().with_requires_grad(true);
            let w = fx.tensor(&case, "w").unwrap().with_requires_grad(true);
            let b = fx
                .try_tensor(&case, "b")
                .map(|t| t.with_requires_grad(true));
            let out = x.conv2d(&w, b.as_ref(), params).unwrap();
            assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-4, &case);
            let g = out
                .backward_with(fx.tensor(&case, "grad_out").unwrap())
                .unwrap();
            let check = |t: &Tensor, role: &str| {
                assert_close(
                    g.get(t).unwrap(),
                    &fx.tensor(&case, role).unwrap(),
                    1e-4,
                    &format!("{case} {role}"),
                )
            };
            check(&x, "grad_x");
            check(&w, "grad_w");
            if let Some(b) = &b {
                check(b, "grad_b");
            }
        }
    }
}
