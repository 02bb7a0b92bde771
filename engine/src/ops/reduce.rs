//! Reductions: sum and mean over a set of axes, max along one axis (its gradient flows to the
//! first maximal element, as PyTorch's `max(dim)`), argmax, and the whole-tensor sum_all and
//! mean_all. Adjacent reduced axes are folded into one `[outer, axis, inner]` kernel call.

use super::broadcast::for_each_row;
use super::softmax::split_at_axis;
use crate::autograd::Backward;
use crate::error::{Error, Result};
use crate::shape::{broadcast_strides, contiguous_strides, normalize_axis, numel};
use crate::tensor::Tensor;
use std::borrow::Cow;
use tlc_kernels::reduce;

/// The sorted, de-duplicated axes of `axes`, or an error naming the problem.
fn resolve_axes(op: &'static str, axes: &[isize], rank: usize) -> Result<Vec<usize>> {
    if axes.is_empty() {
        return Err(Error::invalid(
            op,
            "no axes given (use sum_all / mean_all to reduce everything)",
        ));
    }
    let mut out = axes
        .iter()
        .map(|&a| normalize_axis(op, a, rank))
        .collect::<Result<Vec<_>>>()?;
    out.sort_unstable();
    if out.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::invalid(op, format!("axis repeated in {axes:?}")));
    }
    Ok(out)
}

/// `shape` with `axes` set to 1 (`keepdim`) or removed.
fn reduced_shape(shape: &[usize], axes: &[usize], keepdim: bool) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keepdim) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

/// Sum of `data` (of `shape`) over `axes` (sorted), keeping them as size 1. Runs of adjacent
/// axes reduce in one pass; runs are taken last to first.
fn sum_raw(data: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
    if shape.is_empty() {
        return data.to_vec();
    }
    let mut shape = shape.to_vec();
    let mut cur: Cow<[f32]> = Cow::Borrowed(data);
    let mut end = axes.len();
    while end > 0 {
        let mut start = end - 1;
        while start > 0 && axes[start - 1] + 1 == axes[start] {
            start -= 1;
        }
        let (first, last) = (axes[start], axes[end - 1]);
        let outer = numel(&shape[..first]);
        let axis = numel(&shape[first..=last]);
        let inner = numel(&shape[last + 1..]);
        let mut out = vec![0.0f32; outer * inner];
        reduce::sum(&cur, &mut out, outer, axis, inner);
        for d in &mut shape[first..=last] {
            *d = 1;
        }
        cur = Cow::Owned(out);
        end = start;
    }
    cur.into_owned()
}

/// `grad` (of the keep-dim reduced shape `kept`) broadcast back to `shape`, times `scale`.
fn broadcast_back(grad: &Tensor, kept: &[usize], shape: &[usize], scale: f32) -> Tensor {
    let g = grad.contiguous_data();
    let src = broadcast_strides(kept, &contiguous_strides(kept), shape);
    let dst = contiguous_strides(shape);
    let mut out = vec![0.0f32; numel(shape)];
    let inner = *shape.last().unwrap_or(&1);
    let inner_src = *src.last().unwrap_or(&0);
    for_each_row(shape, [&src, &dst], |[so, d]| {
        let row = &mut out[d..d + inner];
        if inner_src == 0 {
            row.iter_mut().for_each(|v| *v = g[so] * scale);
        } else {
            row.iter_mut()
                .zip(&g[so..so + inner])
                .for_each(|(v, x)| *v = x * scale);
        }
    });
    Tensor::new_unchecked(out, shape)
}

struct SumBackward {
    /// The input's shape with the reduced axes as 1.
    kept: Vec<usize>,
    /// 1 for sum, 1 / count for mean.
    scale: f32,
    name: &'static str,
}

impl Backward for SumBackward {
    fn name(&self) -> &'static str {
        self.name
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(broadcast_back(
            grad,
            &self.kept,
            inputs[0].shape(),
            self.scale,
        ))])
    }
}

struct MaxBackward {
    axis: usize,
    /// Position along `axis` of each output element's maximum.
    idx: Vec<usize>,
}

impl Backward for MaxBackward {
    fn name(&self) -> &'static str {
        "max"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let shape = inputs[0].shape();
        let (_, axis, inner) = split_at_axis(shape, self.axis);
        let g = grad.contiguous_data();
        let mut dx = vec![0.0f32; numel(shape)];
        for (k, (&a, &gv)) in self.idx.iter().zip(g.iter()).enumerate() {
            let (o, j) = (k / inner, k % inner);
            dx[(o * axis + a) * inner + j] = gv;
        }
        Ok(vec![Some(Tensor::new_unchecked(dx, shape))])
    }
}

fn reduce_sum(x: &Tensor, axes: &[isize], keepdim: bool, mean: bool) -> Result<Tensor> {
    let name = if mean { "mean" } else { "sum" };
    let axes = resolve_axes(name, axes, x.rank())?;
    let count: usize = if x.rank() == 0 {
        1
    } else {
        axes.iter().map(|&a| x.shape()[a]).product()
    };
    let scale = if mean { 1.0 / count as f32 } else { 1.0 };
    let mut data = sum_raw(&x.contiguous_data(), x.shape(), &axes);
    if mean {
        data.iter_mut().for_each(|v| *v *= scale);
    }
    let kept = reduced_shape(x.shape(), &axes, true);
    let out = Tensor::new_unchecked(data, &reduced_shape(x.shape(), &axes, keepdim));
    Ok(Tensor::record(out, &[x], || SumBackward {
        kept,
        scale,
        name,
    }))
}

impl Tensor {
    /// Sum over `axes` (negative count from the end; at least one, no repeats), removing them
    /// or, with `keepdim`, keeping them as size 1.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        reduce_sum(self, axes, keepdim, false)
    }

    /// Mean over `axes` (as [`Tensor::sum`]); NaN over an empty axis, as 0 / 0.
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        reduce_sum(self, axes, keepdim, true)
    }

    /// The sum of every element, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let out = Tensor::scalar(reduce::sum_all(&self.contiguous_data()));
        let kept = vec![1; self.rank()];
        Ok(Tensor::record(out, &[self], || SumBackward {
            kept,
            scale: 1.0,
            name: "sum_all",
        }))
    }

    /// The mean of every element, as a rank-0 tensor (NaN for an empty tensor).
    pub fn mean_all(&self) -> Result<Tensor> {
        let n = self.numel();
        let scale = 1.0 / n as f32;
        let out = Tensor::scalar(reduce::sum_all(&self.contiguous_data()) * scale);
        let kept = vec![1; self.rank()];
        Ok(Tensor::record(out, &[self], || SumBackward {
            kept,
            scale,
            name: "mean_all",
        }))
    }

    /// The maximum along `axis` and, for each, the index of its first occurrence (NaN counts
    /// as the maximum). Indices are in the row-major order of the output.
    pub fn max_with_indices(&self, axis: isize, keepdim: bool) -> Result<(Tensor, Vec<usize>)> {
        let ax = normalize_axis("max", axis, self.rank())?;
        let (outer, len, inner) = split_at_axis(self.shape(), ax);
        if len == 0 {
            return Err(Error::invalid(
                "max",
                format!(
                    "axis {axis} of {:?} is empty: its maximum is undefined",
                    self.shape()
                ),
            ));
        }
        let mut values = vec![0.0f32; outer * inner];
        let mut idx = vec![0usize; outer * inner];
        reduce::max(
            &self.contiguous_data(),
            &mut values,
            &mut idx,
            outer,
            len,
            inner,
        );
        let shape = if self.rank() == 0 {
            vec![]
        } else {
            reduced_shape(self.shape(), &[ax], keepdim)
        };
        let out = Tensor::new_unchecked(values, &shape);
        let out = Tensor::record(out, &[self], || MaxBackward {
            axis: ax,
            idx: idx.clone(),
        });
        Ok((out, idx))
    }

    /// The maximum along `axis`; the gradient goes to the first maximal element.
    pub fn max(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        Ok(self.max_with_indices(axis, keepdim)?.0)
    }

    /// The index of the first maximum along `axis`, for every position of the other axes in
    /// row-major order (not differentiable).
    pub fn argmax(&self, axis: isize) -> Result<Vec<usize>> {
        crate::autograd::no_grad(|| Ok(self.max_with_indices(axis, false)?.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape).unwrap()
    }

    #[test]
    fn values() {
        let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        assert_eq!(x.sum(&[0], false).unwrap().to_vec(), vec![5.0, 7.0, 9.0]);
        assert_eq!(x.sum(&[1], true).unwrap().shape(), &[2, 1]);
        assert_eq!(x.sum(&[-1], false).unwrap().to_vec(), vec![6.0, 15.0]);
        assert_eq!(x.sum(&[0, 1], false).unwrap().shape(), &[] as &[usize]);
        assert_eq!(x.mean(&[1], false).unwrap().to_vec(), vec![2.0, 5.0]);
        assert_eq!(x.sum_all().unwrap().item().unwrap(), 21.0);
        assert_eq!(x.mean_all().unwrap().item().unwrap(), 3.5);
        let y = t(&[3.0, 9.0, 9.0, 1.0, 7.0, 2.0], &[2, 3]);
        let (m, i) = y.max_with_indices(1, false).unwrap();
        assert_eq!((m.to_vec(), i), (vec![9.0, 7.0], vec![1, 1]));
        assert_eq!(y.max(0, true).unwrap().to_vec(), vec![3.0, 9.0, 9.0]);
        assert_eq!(y.argmax(0).unwrap(), vec![0, 0, 0]);
        // Non-adjacent axes: [2, 3, 4] summed over 0 and 2.
        let z = Tensor::from_vec((0..24).map(|v| v as f32).collect(), &[2, 3, 4]).unwrap();
        let s = z.sum(&[0, 2], false).unwrap();
        let want: Vec<f32> = (0..3)
            .map(|j| {
                (0..2)
                    .flat_map(|i| (0..4).map(move |k| (i * 12 + j * 4 + k) as f32))
                    .sum()
            })
            .collect();
        assert_eq!(s.to_vec(), want);
        // A transposed input.
        let xt = x.transpose(0, 1).unwrap();
        assert_eq!(xt.sum(&[1], false).unwrap().to_vec(), vec![5.0, 7.0, 9.0]);
        // Empty axes: sum 0, mean NaN.
        let e = Tensor::zeros(&[2, 0]);
        assert_eq!(e.sum(&[1], false).unwrap().to_vec(), vec![0.0, 0.0]);
        assert!(e.mean(&[1], false).unwrap().to_vec()[0].is_nan());
    }

    #[test]
    fn errors() {
        let x = Tensor::zeros(&[2, 3]);
        let e = x.sum(&[], false).unwrap_err().to_string();
        assert!(e.contains("sum") && e.contains("sum_all"), "{e}");
        let e = x.mean(&[1, -1], false).unwrap_err().to_string();
        assert!(e.contains("mean") && e.contains("repeated"), "{e}");
        assert!(x.sum(&[2], false).is_err());
        let e = Tensor::zeros(&[3, 0])
            .max(1, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max") && e.contains("[3, 0]"), "{e}");
        assert!(x.argmax(-3).is_err());
    }

    #[test]
    fn max_gradient_goes_to_the_first_maximum() {
        let x = t(&[1.0, 5.0, 5.0, 2.0], &[1, 4]).with_requires_grad(true);
        let g = x
            .max(1, false)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec(), vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn gradcheck_in_several_shapes() {
        let mut rng = Rng::new(6);
        let opts = GradcheckOptions::default();
        let cases: [(&[usize], &[isize]); 6] = [
            (&[7], &[0]),
            (&[3, 5], &[1]),
            (&[3, 5], &[0, 1]),
            (&[2, 3, 4], &[0, 2]),
            (&[2, 3, 4], &[1]),
            (&[2, 1, 3, 5], &[-1, 1]),
        ];
        for (shape, axes) in cases {
            let x = Tensor::randn(shape, &mut rng);
            for keep in [false, true] {
                gradcheck("sum", |t| t[0].sum(axes, keep), &[x.clone()], &opts).unwrap();
                gradcheck("mean", |t| t[0].mean(axes, keep), &[x.clone()], &opts).unwrap();
                // Distinct values keep the max away from ties, where it is not differentiable.
                gradcheck("max", |t| t[0].max(axes[0], keep), &[x.clone()], &opts).unwrap();
            }
            gradcheck("sum_all", |t| t[0].sum_all(), &[x.clone()], &opts).unwrap();
            gradcheck("mean_all", |t| t[0].mean_all(), &[x.clone()], &opts).unwrap();
        }
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("reduce").unwrap();
        for case in fx.cases() {
            let x = fx.tensor(&case, "x").unwrap().with_requires_grad(true);
            let meta = fx.meta(&case).unwrap();
            let keep = meta["keepdim"].as_bool().unwrap_or(false);
            let axes: Vec<isize> = meta["dims"]
                .as_array()
                .map(|a| a.iter().map(|d| d.as_i64().unwrap() as isize).collect())
                .unwrap_or_default();
            let out = match meta["op"].as_str().unwrap() {
                "sum" => x.sum(&axes, keep),
                "mean" => x.mean(&axes, keep),
                "max" => x.max(axes[0], keep),
                "sum_all" => x.sum_all(),
                "mean_all" => x.mean_all(),
                other => panic!("unknown op {other} in fixture"),
            }
            .unwrap();
            assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-4, &case);
            if let Some(idx) = fx.try_tensor(&case, "indices") {
                let want: Vec<usize> = idx.to_vec().iter().map(|&v| v as usize).collect();
                assert_eq!(x.argmax(axes[0]).unwrap(), want, "{case}");
            }
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
