//! Shape and layout ops: reshape, permute/transpose, squeeze/unsqueeze, expand, contiguous,
//! slice, concat, pad and roll. Views share storage where the layout allows; the rest copy.

use super::broadcast::{for_each_row, sum_to_shape};
use crate::autograd::Backward;
use crate::error::{Error, Result};
use crate::shape::{self, contiguous_strides, infer_reshape, normalize_axis, numel};
use crate::tensor::Tensor;

struct ReshapeBackward {
    from: Vec<usize>,
}

impl Backward for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, grad: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let to: Vec<isize> = self.from.iter().map(|&d| d as isize).collect();
        Ok(vec![Some(grad.reshape(&to)?)])
    }
}

struct PermuteBackward {
    inverse: Vec<usize>,
}

impl Backward for PermuteBackward {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn backward(&self, grad: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(grad.permute(&self.inverse)?)])
    }
}

struct IdentityBackward(&'static str);

impl Backward for IdentityBackward {
    fn name(&self) -> &'static str {
        self.0
    }
    fn backward(&self, grad: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(grad.clone())])
    }
}

struct ExpandBackward;

impl Backward for ExpandBackward {
    fn name(&self) -> &'static str {
        "expand"
    }
    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(sum_to_shape(grad, inputs[0].shape())?)])
    }
}

struct SliceBackward {
    axis: usize,
    start: usize,
    step: usize,
}

impl Backward for SliceBackward {
    fn name(&self) -> &'static str {
        "slice"
    }
    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let shape = inputs[0].shape();
        let mut out = vec![0.0f32; numel(shape)];
        let base = contiguous_strides(shape);
        let mut strides = base.clone();
        strides[self.axis] *= self.step;
        let offset = self.start * base[self.axis];
        copy_rows(
            &grad.contiguous_data(),
            grad.shape(),
            &mut out,
            &strides,
            offset,
        );
        Ok(vec![Some(Tensor::new_unchecked(out, shape))])
    }
}

struct ConcatBackward {
    axis: usize,
}

impl Backward for ConcatBackward {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let mut start = 0;
        inputs
            .iter()
            .map(|t| {
                let len = t.shape()[self.axis];
                let g = t
                    .requires_grad()
                    .then(|| {
                        grad.slice(self.axis as isize, start, start + len, 1)
                            .map(|s| s.contiguous())
                    })
                    .transpose();
                start += len;
                g
            })
            .collect()
    }
}

struct PadBackward {
    pads: Vec<(usize, usize)>,
}

impl Backward for PadBackward {
    fn name(&self) -> &'static str {
        "pad"
    }
    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let rank = grad.rank();
        let first = rank - self.pads.len();
        let mut g = grad.clone();
        for (i, &(before, _)) in self.pads.iter().enumerate() {
            let len = inputs[0].shape()[first + i];
            g = g.slice((first + i) as isize, before, before + len, 1)?;
        }
        Ok(vec![Some(g.contiguous())])
    }
}

struct RollBackward {
    shifts: Vec<isize>,
    axes: Vec<isize>,
}

impl Backward for RollBackward {
    fn name(&self) -> &'static str {
        "roll"
    }
    fn backward(&self, grad: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let back: Vec<isize> = self.shifts.iter().map(|s| -s).collect();
        Ok(vec![Some(grad.roll(&back, &self.axes)?)])
    }
}

/// Copy the dense row-major `src` of shape `shape` into `dst` addressed by `dst_strides` from
/// `dst_offset`.
fn copy_rows(
    src: &[f32],
    shape: &[usize],
    dst: &mut [f32],
    dst_strides: &[usize],
    dst_offset: usize,
) {
    let src_strides = contiguous_strides(shape);
    let inner = *shape.last().unwrap_or(&1);
    let inner_stride = *dst_strides.last().unwrap_or(&1);
    for_each_row(shape, [&src_strides, dst_strides], |[so, d]| {
        let d = d + dst_offset;
        if inner_stride == 1 {
            dst[d..d + inner].copy_from_slice(&src[so..so + inner]);
        } else {
            for j in 0..inner {
                dst[d + j * inner_stride] = src[so + j];
            }
        }
    });
}

impl Tensor {
    /// The same values with another shape (one dimension may be -1, inferred). A view when the
    /// tensor is contiguous, a copy otherwise.
    pub fn reshape(&self, shape: &[isize]) -> Result<Tensor> {
        let to = infer_reshape("reshape", self.shape(), shape)?;
        if to == self.shape() {
            return Ok(self.clone());
        }
        let src = if self.is_contiguous() {
            self.clone()
        } else {
            self.contiguous_raw()
        };
        let out = src.view_of(to.clone(), contiguous_strides(&to), src.storage_offset());
        Ok(Tensor::record(out, &[self], || ReshapeBackward {
            from: self.shape().to_vec(),
        }))
    }

    /// Flatten dimensions `start..` into one (`flatten(1)` turns NCHW into N x CHW).
    pub fn flatten(&self, start: usize) -> Result<Tensor> {
        if start > self.rank() {
            return Err(Error::invalid(
                "flatten",
                format!("start {start} > rank {}", self.rank()),
            ));
        }
        let mut to: Vec<isize> = self.shape()[..start].iter().map(|&d| d as isize).collect();
        to.push(numel(&self.shape()[start..]) as isize);
        self.reshape(&to)
    }

    /// Reorder dimensions: output dimension i is input dimension `perm[i]` (a view).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank
            || perm
                .iter()
                .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(
                "permute",
                format!("{perm:?} is not a permutation of {rank} dimensions"),
            ));
        }
        let shape = perm.iter().map(|&p| self.shape()[p]).collect();
        let strides = perm.iter().map(|&p| self.strides()[p]).collect();
        let out = self.view_of(shape, strides, self.storage_offset());
        let mut inverse = vec![0; rank];
        perm.iter().enumerate().for_each(|(i, &p)| inverse[p] = i);
        Ok(Tensor::record(out, &[self], || PermuteBackward { inverse }))
    }

    /// Swap two dimensions (a view).
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let (a, b) = (
            normalize_axis("transpose", a, self.rank())?,
            normalize_axis("transpose", b, self.rank())?,
        );
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Insert a dimension of size 1 at `axis` (a view).
    pub fn unsqueeze(&self, axis: isize) -> Result<Tensor> {
        let axis = normalize_axis("unsqueeze", axis, self.rank() + 1)?;
        let mut to: Vec<isize> = self.shape().iter().map(|&d| d as isize).collect();
        to.insert(axis, 1);
        self.reshape(&to)
    }

    /// Remove dimension `axis`, which must have size 1.
    pub fn squeeze(&self, axis: isize) -> Result<Tensor> {
        let axis = normalize_axis("squeeze", axis, self.rank())?;
        if self.shape()[axis] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!("dimension {axis} of {:?} is not 1", self.shape()),
            ));
        }
        let mut to: Vec<isize> = self.shape().iter().map(|&d| d as isize).collect();
        to.remove(axis);
        self.reshape(&to)
    }

    /// Broadcast to `shape` (a view with zero strides on expanded dimensions).
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor> {
        let target = shape::broadcast_shapes("expand", self.shape(), shape)?;
        if target != shape {
            return Err(Error::shape(
                "expand",
                format!("cannot expand {:?} to {shape:?}", self.shape()),
            ));
        }
        let strides = shape::broadcast_strides(self.shape(), self.strides(), shape);
        let out = self.view_of(shape.to_vec(), strides, self.storage_offset());
        Ok(Tensor::record(out, &[self], || ExpandBackward))
    }

    /// A dense copy without autograd bookkeeping.
    fn contiguous_raw(&self) -> Tensor {
        Tensor::new_unchecked(self.to_vec(), self.shape())
    }

    /// The same values laid out densely (returns `self` when already dense).
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() && self.storage().as_f32().is_some() {
            return self.clone();
        }
        Tensor::record(self.contiguous_raw(), &[self], || {
            IdentityBackward("contiguous")
        })
    }

    /// Elements `start, start + step, ...` below `end` along `axis` (a view; Python's
    /// `x[..., start:end:step, ...]`).
    pub fn slice(&self, axis: isize, start: usize, end: usize, step: usize) -> Result<Tensor> {
        let axis = normalize_axis("slice", axis, self.rank())?;
        let dim = self.shape()[axis];
        if step == 0 || start > end || end > dim {
            return Err(Error::invalid(
                "slice",
                format!("range {start}..{end} step {step} on dimension {axis} of size {dim}"),
            ));
        }
        let mut shape = self.shape().to_vec();
        shape[axis] = (end - start).div_ceil(step);
        let mut strides = self.strides().to_vec();
        let offset = self.storage_offset() + start * strides[axis];
        strides[axis] *= step;
        let out = self.view_of(shape, strides, offset);
        Ok(Tensor::record(out, &[self], || SliceBackward {
            axis,
            start,
            step,
        }))
    }

    /// Join tensors along `axis`; all other dimensions must agree.
    pub fn concat(tensors: &[&Tensor], axis: isize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::invalid("concat", "no tensors"))?;
        let axis = normalize_axis("concat", axis, first.rank())?;
        let mut shape = first.shape().to_vec();
        shape[axis] = 0;
        for t in tensors {
            let same = t.rank() == first.rank()
                && t.shape()
                    .iter()
                    .zip(first.shape())
                    .enumerate()
                    .all(|(d, (a, b))| d == axis || a == b);
            if !same {
                return Err(Error::shape(
                    "concat",
                    format!(
                        "{:?} and {:?} differ outside axis {axis}",
                        first.shape(),
                        t.shape()
                    ),
                ));
            }
            shape[axis] += t.shape()[axis];
        }
        let outer = numel(&shape[..axis]);
        let inner = numel(&shape[axis + 1..]);
        let mut out = vec![0.0f32; numel(&shape)];
        let row = shape[axis] * inner;
        let mut col = 0;
        for t in tensors {
            let d = t.contiguous_data();
            let chunk = t.shape()[axis] * inner;
            for o in 0..outer {
                out[o * row + col..o * row + col + chunk]
                    .copy_from_slice(&d[o * chunk..(o + 1) * chunk]);
            }
            col += chunk;
        }
        let out = Tensor::new_unchecked(out, &shape);
        Ok(Tensor::record(out, tensors, || ConcatBackward { axis }))
    }

    /// Pad the trailing `pads.len()` dimensions with `value`: `pads[i] = (before, after)` for
    /// dimension `rank - pads.len() + i`.
    pub fn pad(&self, pads: &[(usize, usize)], value: f32) -> Result<Tensor> {
        let rank = self.rank();
        if pads.len() > rank {
            return Err(Error::invalid(
                "pad",
                format!("{} pads for rank {rank}", pads.len()),
            ));
        }
        let first = rank - pads.len();
        let mut shape = self.shape().to_vec();
        for (i, &(b, a)) in pads.iter().enumerate() {
            shape[first + i] += b + a;
        }
        let strides = contiguous_strides(&shape);
        let offset: usize = pads
            .iter()
            .enumerate()
            .map(|(i, &(b, _))| b * strides[first + i])
            .sum();
        let mut out = vec![value; numel(&shape)];
        copy_rows(
            &self.contiguous_data(),
            self.shape(),
            &mut out,
            &strides,
            offset,
        );
        let out = Tensor::new_unchecked(out, &shape);
        Ok(Tensor::record(out, &[self], || PadBackward {
            pads: pads.to_vec(),
        }))
    }

    /// Rotate elements along each of `axes` by the matching shift (`torch.roll`): element `i`
    /// moves to `(i + shift) mod n`.
    pub fn roll(&self, shifts: &[isize], axes: &[isize]) -> Result<Tensor> {
        if shifts.len() != axes.len() {
            return Err(Error::invalid(
                "roll",
                format!("{} shifts for {} axes", shifts.len(), axes.len()),
            ));
        }
        let mut data = self.to_vec();
        let shape = self.shape().to_vec();
        for (&shift, &axis) in shifts.iter().zip(axes) {
            let ax = normalize_axis("roll", axis, self.rank())?;
            let n = shape[ax];
            if n == 0 {
                continue;
            }
            let s = shift.rem_euclid(n as isize) as usize;
            if s == 0 {
                continue;
            }
            let inner = numel(&shape[ax + 1..]);
            let outer = numel(&shape[..ax]);
            let mut rolled = vec![0.0f32; data.len()];
            for o in 0..outer {
                let base = o * n * inner;
                for i in 0..n {
                    let j = (i + s) % n;
                    rolled[base + j * inner..base + (j + 1) * inner]
                        .copy_from_slice(&data[base + i * inner..base + (i + 1) * inner]);
                }
            }
            data = rolled;
        }
        let out = Tensor::new_unchecked(data, &shape);
        Ok(Tensor::record(out, &[self], || RollBackward {
            shifts: shifts.to_vec(),
            axes: axes.to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    fn seq(shape: &[usize]) -> Tensor {
        Tensor::from_vec((0..numel(shape)).map(|x| x as f32).collect(), shape).unwrap()
    }

    #[test]
    fn views_and_copies_have_the_right_values() {
        let t = seq(&[2, 3]);
        assert_eq!(
            t.transpose(0, 1).unwrap().to_vec(),
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        assert_eq!(
            t.slice(1, 1, 3, 1).unwrap().to_vec(),
            vec![1.0, 2.0, 4.0, 5.0]
        );
        assert_eq!(
            t.slice(1, 0, 3, 2).unwrap().to_vec(),
            vec![0.0, 2.0, 3.0, 5.0]
        );
        assert_eq!(
            t.roll(&[1], &[1]).unwrap().to_vec(),
            vec![2.0, 0.0, 1.0, 5.0, 3.0, 4.0]
        );
        assert_eq!(
            Tensor::concat(&[&t, &seq(&[2, 1])], 1).unwrap().to_vec(),
            vec![0.0, 1.0, 2.0, 0.0, 3.0, 4.0, 5.0, 1.0]
        );
        let p = seq(&[1, 2]).pad(&[(1, 0), (0, 2)], -1.0).unwrap();
        assert_eq!(p.shape(), &[2, 4]);
        assert_eq!(
            p.to_vec(),
            vec![-1.0, -1.0, -1.0, -1.0, 0.0, 1.0, -1.0, -1.0]
        );
        assert_eq!(t.expand(&[2, 2, 3]).unwrap().to_vec()[6..], t.to_vec()[..]);
        assert_eq!(
            t.transpose(0, 1).unwrap().reshape(&[-1]).unwrap().to_vec(),
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        let t = seq(&[2, 3]);
        assert!(t.reshape(&[4, -1]).is_err());
        assert!(t.permute(&[0, 0]).is_err());
        assert!(t.slice(1, 2, 5, 1).is_err());
        assert!(t.slice(1, 0, 2, 0).is_err());
        assert!(t.squeeze(0).is_err());
        assert!(t.expand(&[3, 3]).is_err());
        assert!(Tensor::concat(&[&t, &seq(&[3, 3])], 1).is_err());
        assert!(Tensor::concat(&[], 0).is_err());
        assert!(t.pad(&[(1, 1); 3], 0.0).is_err());
        assert!(t.roll(&[1, 2], &[0]).is_err());
        assert!(t.transpose(0, 2).is_err());
    }

    #[test]
    fn gradcheck_layout_ops() {
        let mut rng = Rng::new(4);
        let x = Tensor::randn(&[2, 3, 4], &mut rng);
        let y = Tensor::randn(&[2, 5, 4], &mut rng);
        let o = GradcheckOptions::default();
        gradcheck("reshape", |t| t[0].reshape(&[4, -1]), &[x.clone()], &o).unwrap();
        gradcheck("permute", |t| t[0].permute(&[2, 0, 1]), &[x.clone()], &o).unwrap();
        gradcheck(
            "transpose_reshape",
            |t| t[0].transpose(0, 2)?.reshape(&[-1]),
            &[x.clone()],
            &o,
        )
        .unwrap();
        gradcheck("slice", |t| t[0].slice(2, 1, 4, 2), &[x.clone()], &o).unwrap();
        gradcheck(
            "concat",
            |t| Tensor::concat(&[&t[0], &t[1]], 1),
            &[x.clone(), y],
            &o,
        )
        .unwrap();
        gradcheck(
            "pad",
            |t| t[0].pad(&[(2, 1), (0, 3)], 0.5),
            &[x.clone()],
            &o,
        )
        .unwrap();
        gradcheck("roll", |t| t[0].roll(&[-1, 5], &[1, 2]), &[x.clone()], &o).unwrap();
        gradcheck(
            "expand",
            |t| t[0].slice(1, 0, 1, 1)?.expand(&[2, 6, 4]),
            &[x.clone()],
            &o,
        )
        .unwrap();
        gradcheck(
            "unsqueeze_squeeze",
            |t| t[0].unsqueeze(1)?.flatten(2)?.squeeze(1),
            &[x],
            &o,
        )
        .unwrap();
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("layout").unwrap();
        for case in fx.cases() {
            let x = fx.tensor(&case, "x").unwrap().with_requires_grad(true);
            let meta = fx.meta(&case).unwrap();
            let ints = |k: &str| -> Vec<isize> {
                meta[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap() as isize)
                    .collect()
            };
            let out = match meta["op"].as_str().unwrap() {
                "permute" => {
                    x.permute(&ints("perm").iter().map(|&p| p as usize).collect::<Vec<_>>())
                }
                "slice" => {
                    let a = ints("args");
                    x.slice(a[0], a[1] as usize, a[2] as usize, a[3] as usize)
                }
                "pad" => {
                    let p = ints("pads");
                    let pads: Vec<(usize, usize)> = p
                        .chunks(2)
                        .map(|c| (c[0] as usize, c[1] as usize))
                        .collect();
                    x.pad(&pads, meta["value"].as_f64().unwrap() as f32)
                }
                "roll" => x.roll(&ints("shifts"), &ints("dims")),
                other => panic!("unknown op {other}"),
            }
            .unwrap();
            assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-6, &case);
            let g = out
                .backward_with(fx.tensor(&case, "grad_out").unwrap())
                .unwrap();
            assert_close(
                g.get(&x).unwrap(),
                &fx.tensor(&case, "grad_x").unwrap(),
                1e-6,
                &case,
            );
        }
    }
}
