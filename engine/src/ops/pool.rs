//! 2-D pooling over `[N, C, H, W]` (or unbatched `[C, H, W]`) with PyTorch's semantics:
//! max-pool (padding counts as -inf; argmax saved for the backward), average pool, adaptive
//! average pool to any output size, and the global average pool; each with its backward.

use crate::autograd::{is_grad_enabled, Backward};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use tlc_kernels::pool::{self as kp, PoolDims, Window2d};

/// Arguments of [`Tensor::max_pool2d`], as in PyTorch's `nn.MaxPool2d`; `[height, width]` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2dParams {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    /// Round the output size up (the last window may hang over the bottom/right edge).
    pub ceil_mode: bool,
}

impl MaxPool2dParams {
    /// A `k x k` window with stride `k` (PyTorch's default), no padding or dilation, floor mode.
    pub fn new(k: usize) -> Self {
        MaxPool2dParams {
            kernel: [k, k],
            stride: [k, k],
            padding: [0, 0],
            dilation: [1, 1],
            ceil_mode: false,
        }
    }

    /// The same with stride `s` in both directions.
    pub fn stride(self, s: usize) -> Self {
        MaxPool2dParams {
            stride: [s, s],
            ..self
        }
    }

    /// The same with padding `p` on every side.
    pub fn padding(self, p: usize) -> Self {
        MaxPool2dParams {
            padding: [p, p],
            ..self
        }
    }

    /// The same with dilation `d` in both directions.
    pub fn dilation(self, d: usize) -> Self {
        MaxPool2dParams {
            dilation: [d, d],
            ..self
        }
    }

    /// The same with `ceil_mode` set.
    pub fn ceil_mode(self, on: bool) -> Self {
        MaxPool2dParams {
            ceil_mode: on,
            ..self
        }
    }

    fn window(&self) -> Window2d {
        Window2d {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        }
    }
}

/// Arguments of [`Tensor::avg_pool2d`], as in PyTorch's `nn.AvgPool2d`; `[height, width]` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2dParams {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    /// Round the output size up (the last window may hang over the bottom/right edge).
    pub ceil_mode: bool,
    /// Divide by the whole window, padding included (PyTorch's default), rather than by the
    /// number of input elements it covers.
    pub count_include_pad: bool,
}

impl AvgPool2dParams {
    /// A `k x k` window with stride `k`, no padding, floor mode, padding counted (PyTorch's
    /// defaults).
    pub fn new(k: usize) -> Self {
        AvgPool2dParams {
            kernel: [k, k],
            stride: [k, k],
            padding: [0, 0],
            ceil_mode: false,
            count_include_pad: true,
        }
    }

    /// The same with stride `s` in both directions.
    pub fn stride(self, s: usize) -> Self {
        AvgPool2dParams {
            stride: [s, s],
            ..self
        }
    }

    /// The same with padding `p` on every side.
    pub fn padding(self, p: usize) -> Self {
        AvgPool2dParams {
            padding: [p, p],
            ..self
        }
    }

    /// The same with `ceil_mode` set.
    pub fn ceil_mode(self, on: bool) -> Self {
        AvgPool2dParams {
            ceil_mode: on,
            ..self
        }
    }

    /// The same with `count_include_pad` set.
    pub fn count_include_pad(self, on: bool) -> Self {
        AvgPool2dParams {
            count_include_pad: on,
            ..self
        }
    }

    fn window(&self) -> Window2d {
        Window2d {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: [1, 1],
        }
    }
}

/// `(planes, h, w)` of a pooling input `[N, C, H, W]` or `[C, H, W]` with non-empty planes.
fn planes_of(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize)> {
    let s = x.shape();
    if !(3..=4).contains(&s.len()) || s[s.len() - 1] == 0 || s[s.len() - 2] == 0 {
        return Err(Error::shape(
            op,
            format!("input of shape {s:?} is not [N, C, H, W] or [C, H, W] with H, W > 0"),
        ));
    }
    let r = s.len();
    Ok((s[..r - 2].iter().product(), s[r - 2], s[r - 1]))
}

/// The output shape: the input's with its last two dims replaced.
fn out_shape(x: &Tensor, oh: usize, ow: usize) -> Vec<usize> {
    let mut s = x.shape().to_vec();
    let r = s.len();
    s[r - 2] = oh;
    s[r - 1] = ow;
    s
}

/// Check a window (positive kernel, stride, dilation; padding at most half the kernel, as
/// PyTorch requires) and compute the planes' pooled dims.
fn pooled_dims(op: &'static str, x: &Tensor, win: Window2d, ceil_mode: bool) -> Result<PoolDims> {
    let (planes, h, w) = planes_of(op, x)?;
    if win.kernel.contains(&0) || win.stride.contains(&0) || win.dilation.contains(&0) {
        return Err(Error::invalid(
            op,
            format!("kernel, stride and dilation must be positive: {win:?}"),
        ));
    }
    if (0..2).any(|a| win.padding[a] > win.kernel[a] / 2) {
        return Err(Error::invalid(
            op,
            format!(
                "padding {:?} must be at most half of kernel {:?}",
                win.padding, win.kernel
            ),
        ));
    }
    let size = |n: usize, a: usize| {
        kp::pooled_size(
            n,
            win.kernel[a],
            win.stride[a],
            win.padding[a],
            win.dilation[a],
            ceil_mode,
        )
    };
    match (size(h, 0), size(w, 1)) {
        (Some(out_h), Some(out_w)) => Ok(PoolDims {
            planes,
            h,
            w,
            out_h,
            out_w,
        }),
        _ => Err(Error::shape(
            op,
            format!(
                "input of shape {:?} is too small for {win:?}: the output would be empty",
                x.shape()
            ),
        )),
    }
}

struct MaxPool2dBackward {
    dims: PoolDims,
    indices: Vec<u32>,
}

impl Backward for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let g = grad.contiguous_data();
        let mut dx = vec![0.0f32; x.numel()];
        kp::max_pool2d_backward(&g, &self.indices, self.dims, &mut dx);
        Ok(vec![Some(Tensor::new_unchecked(dx, x.shape()))])
    }
}

struct AvgPool2dBackward {
    dims: PoolDims,
    win: Window2d,
    count_include_pad: bool,
}

impl Backward for AvgPool2dBackward {
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let g = grad.contiguous_data();
        let mut dx = vec![0.0f32; x.numel()];
        kp::avg_pool2d_backward(&g, self.dims, self.win, self.count_include_pad, &mut dx);
        Ok(vec![Some(Tensor::new_unchecked(dx, x.shape()))])
    }
}

struct AdaptiveAvgPool2dBackward {
    dims: PoolDims,
}

impl Backward for AdaptiveAvgPool2dBackward {
    fn name(&self) -> &'static str {
        "adaptive_avg_pool2d"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let g = grad.contiguous_data();
        let mut dx = vec![0.0f32; x.numel()];
        kp::adaptive_avg_pool2d_backward(&g, self.dims, &mut dx);
        Ok(vec![Some(Tensor::new_unchecked(dx, x.shape()))])
    }
}

impl Tensor {
    /// 2-D max pooling (PyTorch's `F.max_pool2d`): padding counts as -inf, NaN propagates, and
    /// the gradient goes to each window's first maximum.
    pub fn max_pool2d(&self, p: &MaxPool2dParams) -> Result<Tensor> {
        const OP: &str = "max_pool2d";
        let win = p.window();
        let dims = pooled_dims(OP, self, win, p.ceil_mode)?;
        if dims.in_plane() >= kp::NO_INDEX as usize {
            return Err(Error::shape(
                OP,
                format!("planes of {:?} are too large to index", self.shape()),
            ));
        }
        let xd = self.contiguous_data();
        let mut y = vec![0.0f32; dims.planes * dims.out_plane()];
        let shape = out_shape(self, dims.out_h, dims.out_w);
        if !(is_grad_enabled() && self.requires_grad()) {
            kp::max_pool2d(&xd, dims, win, &mut y);
            return Ok(Tensor::new_unchecked(y, &shape));
        }
        let mut indices = vec![0u32; y.len()];
        kp::max_pool2d_with_indices(&xd, dims, win, &mut y, &mut indices);
        let out = Tensor::new_unchecked(y, &shape);
        Ok(Tensor::record(out, &[self], || MaxPool2dBackward {
            dims,
            indices,
        }))
    }

    /// 2-D average pooling (PyTorch's `F.avg_pool2d`, without `divisor_override`).
    pub fn avg_pool2d(&self, p: &AvgPool2dParams) -> Result<Tensor> {
        const OP: &str = "avg_pool2d";
        let win = p.window();
        let dims = pooled_dims(OP, self, win, p.ceil_mode)?;
        let xd = self.contiguous_data();
        let mut y = vec![0.0f32; dims.planes * dims.out_plane()];
        kp::avg_pool2d(&xd, dims, win, p.count_include_pad, &mut y);
        let out = Tensor::new_unchecked(y, &out_shape(self, dims.out_h, dims.out_w));
        Ok(Tensor::record(out, &[self], || AvgPool2dBackward {
            dims,
            win,
            count_include_pad: p.count_include_pad,
        }))
    }

    /// Adaptive average pooling to `out_h x out_w` (PyTorch's `F.adaptive_avg_pool2d`): output
    /// `(i, j)` averages input rows `floor(i H / out_h)..ceil((i + 1) H / out_h)` and the like
    /// columns, so any output size works, larger than the input included.
    pub fn adaptive_avg_pool2d(&self, out_h: usize, out_w: usize) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d";
        let (planes, h, w) = planes_of(OP, self)?;
        if out_h == 0 || out_w == 0 {
            return Err(Error::invalid(
                OP,
                format!("output size {out_h}x{out_w} is empty"),
            ));
        }
        let dims = PoolDims {
            planes,
            h,
            w,
            out_h,
            out_w,
        };
        let xd = self.contiguous_data();
        let mut y = vec![0.0f32; planes * out_h * out_w];
        kp::adaptive_avg_pool2d(&xd, dims, &mut y);
        let out = Tensor::new_unchecked(y, &out_shape(self, out_h, out_w));
        Ok(Tensor::record(out, &[self], || AdaptiveAvgPool2dBackward {
            dims,
        }))
    }

    /// The mean of each `H x W` plane: `[N, C, H, W] -> [N, C, 1, 1]` (the 1x1 adaptive pool).
    pub fn global_avg_pool(&self) -> Result<Tensor> {
        self.adaptive_avg_pool2d(1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    /// Distinct values 0.05 apart in random order: no ties, and finite differences of 1e-2
    /// never change a window's argmax.
    fn distinct(shape: &[usize], rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - n as f32 * 0.025).collect();
        rng.shuffle(&mut v);
        Tensor::from_vec(v, shape).unwrap()
    }

    #[test]
    fn max_pool_values() {
        let x = Tensor::from_vec((0..16).map(|v| v as f32).collect(), &[1, 1, 4, 4]).unwrap();
        let y = x.max_pool2d(&MaxPool2dParams::new(2)).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert_eq!(y.to_vec(), vec![5.0, 7.0, 13.0, 15.0]);
        // Padding is -inf: a 3x3/2 window with padding 1 at the corner sees only 0, 1, 4, 5.
        let y = x
            .neg()
            .unwrap()
            .max_pool2d(&MaxPool2dParams::new(3).stride(2).padding(1))
            .unwrap();
        assert_eq!(y.to_vec(), vec![0.0, -1.0, -4.0, -5.0]);
        // ceil_mode adds the overhanging window; unbatched [C, H, W] input works.
        let y = x
            .reshape(&[1, 4, 4])
            .unwrap()
            .max_pool2d(&MaxPool2dParams::new(3).stride(2).ceil_mode(true))
            .unwrap();
        assert_eq!(y.shape(), &[1, 2, 2]);
        assert_eq!(y.to_vec(), vec![10.0, 11.0, 14.0, 15.0]);
        // With and without autograd the forward agrees.
        let xg = x.with_requires_grad(true);
        let p = MaxPool2dParams::new(2).stride(1).dilation(2);
        assert_eq!(
            xg.max_pool2d(&p).unwrap().to_vec(),
            x.max_pool2d(&p).unwrap().to_vec()
        );
    }

    #[test]
    fn avg_and_adaptive_values() {
        let x = Tensor::ones(&[1, 1, 5, 5]);
        let p = AvgPool2dParams::new(2).padding(1).ceil_mode(true);
        assert_eq!(
            x.avg_pool2d(&p).unwrap().to_vec(),
            vec![0.25, 0.5, 0.5, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0]
        );
        let y = x.avg_pool2d(&p.count_include_pad(false)).unwrap();
        assert!(y.to_vec().iter().all(|&v| v == 1.0));
        let x = Tensor::from_vec((0..6).map(|v| v as f32).collect(), &[1, 1, 2, 3]).unwrap();
        assert_eq!(
            x.adaptive_avg_pool2d(1, 2).unwrap().to_vec(),
            vec![2.0, 3.0]
        );
        let g = x.global_avg_pool().unwrap();
        assert_eq!((g.shape(), g.to_vec()), (&[1usize, 1, 1, 1][..], vec![2.5]));
    }

    #[test]
    fn pool_errors() {
        let x = Tensor::zeros(&[1, 2, 5, 5]);
        let e = Tensor::zeros(&[5, 5])
            .max_pool2d(&MaxPool2dParams::new(2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_pool2d") && e.contains("[5, 5]"), "{e}");
        assert!(Tensor::zeros(&[1, 1, 1, 2, 2])
            .avg_pool2d(&AvgPool2dParams::new(2))
            .is_err());
        assert!(Tensor::zeros(&[1, 1, 0, 2])
            .max_pool2d(&MaxPool2dParams::new(1))
            .is_err());
        assert!(x.max_pool2d(&MaxPool2dParams::new(0)).is_err());
        assert!(x.max_pool2d(&MaxPool2dParams::new(2).stride(0)).is_err());
        assert!(x.max_pool2d(&MaxPool2dParams::new(2).dilation(0)).is_err());
        assert!(x.max_pool2d(&MaxPool2dParams::new(3).padding(2)).is_err());
        assert!(x.avg_pool2d(&AvgPool2dParams::new(2).padding(2)).is_err());
        let e = x
            .max_pool2d(&MaxPool2dParams::new(6))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too small"), "{e}");
        assert!(x.max_pool2d(&MaxPool2dParams::new(3).dilation(3)).is_err());
        assert!(x.adaptive_avg_pool2d(0, 2).is_err());
        assert!(Tensor::zeros(&[2]).global_avg_pool().is_err());
        // An empty batch is fine: the output is empty too.
        let y = Tensor::zeros(&[0, 3, 4, 4])
            .max_pool2d(&MaxPool2dParams::new(2))
            .unwrap();
        assert_eq!(y.shape(), &[0, 3, 2, 2]);
    }

    #[test]
    fn gradcheck_max_pool() {
        let mut rng = Rng::new(11);
        let cases: [(&[usize], MaxPool2dParams); 6] = [
            (&[1, 1, 5, 5], MaxPool2dParams::new(2)),
            (&[2, 2, 7, 6], MaxPool2dParams::new(3).stride(2).padding(1)),
            (
                &[1, 3, 7, 7],
                MaxPool2dParams::new(3).stride(2).padding(1).ceil_mode(true),
            ),
            (
                &[2, 1, 9, 8],
                MaxPool2dParams::new(2).stride(1).dilation(2).padding(1),
            ),
            (
                &[1, 2, 6, 5],
                MaxPool2dParams {
                    kernel: [2, 3],
                    stride: [3, 1],
                    padding: [1, 1],
                    dilation: [2, 1],
                    ceil_mode: true,
                },
            ),
            (&[3, 5, 5], MaxPool2dParams::new(2).stride(1)),
        ];
        for (shape, p) in cases {
            let x = distinct(shape, &mut rng);
            gradcheck(
                &format!("max_pool2d {shape:?} {p:?}"),
                |t| t[0].max_pool2d(&p),
                &[x],
                &GradcheckOptions::default(),
            )
            .unwrap();
        }
    }

    #[test]
    fn gradcheck_avg_pools() {
        let mut rng = Rng::new(12);
        let o = GradcheckOptions::default();
        let avg: [(&[usize], AvgPool2dParams); 5] = [
            (&[1, 1, 5, 5], AvgPool2dParams::new(2)),
            (&[2, 2, 7, 6], AvgPool2dParams::new(3).stride(2).padding(1)),
            (
                &[1, 2, 7, 7],
                AvgPool2dParams::new(3)
                    .stride(2)
                    .padding(1)
                    .ceil_mode(true)
                    .count_include_pad(false),
            ),
            (
                &[2, 1, 5, 5],
                AvgPool2dParams::new(2).padding(1).ceil_mode(true),
            ),
            (
                &[3, 6, 5],
                AvgPool2dParams {
                    kernel: [3, 2],
                    stride: [1, 2],
                    padding: [1, 1],
                    ceil_mode: true,
                    count_include_pad: false,
                },
            ),
        ];
        for (shape, p) in avg {
            let x = Tensor::randn(shape, &mut rng);
            gradcheck(
                &format!("avg_pool2d {shape:?} {p:?}"),
                |t| t[0].avg_pool2d(&p),
                &[x],
                &o,
            )
            .unwrap();
        }
        let adaptive: [(&[usize], [usize; 2]); 5] = [
            (&[1, 2, 7, 5], [3, 2]),
            (&[2, 1, 5, 5], [3, 3]),
            (&[1, 1, 3, 4], [5, 7]),
            (&[2, 3, 4, 6], [1, 1]),
            (&[2, 6, 6], [4, 4]),
        ];
        for (shape, [oh, ow]) in adaptive {
            let x = Tensor::randn(shape, &mut rng);
            gradcheck(
                &format!("adaptive {shape:?} -> {oh}x{ow}"),
                |t| t[0].adaptive_avg_pool2d(oh, ow),
                &[x],
                &o,
            )
            .unwrap();
        }
        let x = Tensor::randn(&[2, 3, 3, 5], &mut rng);
        gradcheck("global_avg_pool", |t| t[0].global_avg_pool(), &[x], &o).unwrap();
    }

    fn pair(meta: &serde_json::Value, key: &str) -> [usize; 2] {
        let a = meta[key].as_array().unwrap();
        [
            a[0].as_u64().unwrap() as usize,
            a[1].as_u64().unwrap() as usize,
        ]
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("pool").unwrap();
        for case in fx.cases() {
            let m = fx.meta(&case).unwrap();
            let x = fx.tensor(&case, "x").unwrap().with_requires_grad(true);
            let out = match fx.meta_str(&case, "op").unwrap().as_str() {
                "max_pool2d" => x.max_pool2d(&MaxPool2dParams {
                    kernel: pair(&m, "kernel"),
                    stride: pair(&m, "stride"),
                    padding: pair(&m, "padding"),
                    dilation: pair(&m, "dilation"),
                    ceil_mode: m["ceil_mode"].as_bool().unwrap(),
                }),
                "avg_pool2d" => x.avg_pool2d(&AvgPool2dParams {
                    kernel: pair(&m, "kernel"),
                    stride: pair(&m, "stride"),
                    padding: pair(&m, "padding"),
                    ceil_mode: m["ceil_mode"].as_bool().unwrap(),
                    count_include_pad: m["count_include_pad"].as_bool().unwrap(),
                }),
                "adaptive_avg_pool2d" => {
                    let [oh, ow] = pair(&m, "output_size");
                    x.adaptive_avg_pool2d(oh, ow)
                }
                "global_avg_pool" => x.global_avg_pool(),
                other => panic!("unknown op {other}"),
            }
            .unwrap();
            assert_close(
                &out,
                &fx.tensor(&case, "out").unwrap(),
                1e-4,
                &format!("{case} out"),
            );
            let g = out
                .backward_with(fx.tensor(&case, "grad_out").unwrap())
                .unwrap();
            assert_close(
                g.get(&x).unwrap(),
                &fx.tensor(&case, "grad_x").unwrap(),
                1e-4,
                &format!("{case} grad_x"),
            );
        }
    }
}
