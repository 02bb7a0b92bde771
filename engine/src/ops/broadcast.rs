//! Walking several operands of one (broadcast) shape row by row, and reducing a broadcast
//! gradient back to an operand's shape.

use crate::error::Result;
use crate::shape::{broadcast_strides, contiguous_strides, numel};
use crate::tensor::Tensor;

/// Call `f(offsets)` once per innermost row of `shape`, where `offsets[k]` is the element offset of
/// the row's start in operand `k` (given by its per-dimension `strides[k]`, 0 for broadcast dims).
/// Rows are visited in row-major order; the row length is `shape.last()`.
pub(crate) fn for_each_row<const K: usize>(
    shape: &[usize],
    strides: [&[usize]; K],
    mut f: impl FnMut([usize; K]),
) {
    if numel(shape) == 0 {
        return;
    }
    if shape.is_empty() {
        f([0; K]);
        return;
    }
    let outer_rank = shape.len() - 1;
    let rows = numel(&shape[..outer_rank]);
    let mut idx = vec![0usize; outer_rank];
    let mut offsets = [0usize; K];
    for _ in 0..rows {
        f(offsets);
        for d in (0..outer_rank).rev() {
            idx[d] += 1;
            for k in 0..K {
                offsets[k] += strides[k][d];
            }
            if idx[d] < shape[d] {
                break;
            }
            for k in 0..K {
                offsets[k] -= strides[k][d] * shape[d];
            }
            idx[d] = 0;
        }
    }
}

/// Sum `grad` (of a broadcast shape) down to `shape`, the shape of the operand that was broadcast.
/// No autograd is recorded: this is a backward helper.
pub(crate) fn sum_to_shape(grad: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if grad.shape() == shape {
        return Ok(grad.clone());
    }
    let gshape = grad.shape().to_vec();
    let out_strides = broadcast_strides(shape, &contiguous_strides(shape), &gshape);
    let g = grad.contiguous_data();
    let g_strides = contiguous_strides(&gshape);
    let inner = *gshape.last().unwrap_or(&1);
    let inner_out_stride = *out_strides.last().unwrap_or(&0);
    let mut out = vec![0.0f32; numel(shape)];
    for_each_row(&gshape, [&g_strides, &out_strides], |[go, oo]| {
        let row = &g[go..go + inner];
        if inner_out_stride == 0 {
            out[oo] += row.iter().sum::<f32>();
        } else {
            out[oo..oo + inner]
                .iter_mut()
                .zip(row)
                .for_each(|(o, v)| *o += v);
        }
    });
    Ok(Tensor::new_unchecked(out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_to_shape_reduces_broadcast_dims() {
        let g = Tensor::from_vec((0..24).map(|x| x as f32).collect(), &[2, 3, 4]).unwrap();
        let s = sum_to_shape(&g, &[3, 1]).unwrap();
        assert_eq!(s.shape(), &[3, 1]);
        // row r of dim 1 sums g[b, r, :] over b and the last dim.
        let expect: Vec<f32> = (0..3)
            .map(|r| {
                (0..2)
                    .flat_map(|b| (0..4).map(move |c| (b * 12 + r * 4 + c) as f32))
                    .sum()
            })
            .collect();
        assert_eq!(s.to_vec(), expect);
        let total = sum_to_shape(&g, &[]).unwrap();
        assert_eq!(total.item().unwrap(), (0..24).sum::<i32>() as f32);
    }
}
