//! Shapes, strides and broadcasting rules (NumPy/PyTorch semantics).

use crate::error::{Error, Result};

/// Number of elements of a shape (1 for a scalar's empty shape).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major (C-order) strides for `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

/// The broadcast of two shapes, aligned at their trailing dimensions.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape(
                    op,
                    format!("cannot broadcast {a:?} with {b:?} (dimension {i}: {da} vs {db})"),
                ))
            }
        };
    }
    Ok(out)
}

/// Strides that read a tensor of `shape`/`strides` as if it had the (broadcast) shape `target`:
/// broadcast dimensions get stride 0.
pub fn broadcast_strides(shape: &[usize], strides: &[usize], target: &[usize]) -> Vec<usize> {
    let lead = target.len() - shape.len();
    (0..target.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 && target[i] != 1 {
                0
            } else {
                strides[i - lead]
            }
        })
        .collect()
}

/// Resolve a possibly negative axis against `rank`.
pub fn normalize_axis(op: &'static str, axis: isize, rank: usize) -> Result<usize> {
    let r = rank as isize;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(Error::invalid(
            op,
            format!("axis {axis} out of range for rank {rank}"),
        ));
    }
    Ok(a as usize)
}

/// Resolve a reshape target where at most one dimension may be -1 (inferred).
pub fn infer_reshape(op: &'static str, from: &[usize], to: &[isize]) -> Result<Vec<usize>> {
    let total = numel(from);
    let mut infer = None;
    let mut known = 1usize;
    for (i, &d) in to.iter().enumerate() {
        match d {
            -1 if infer.is_none() => infer = Some(i),
            -1 => return Err(Error::invalid(op, format!("more than one -1 in {to:?}"))),
            d if d < 0 => return Err(Error::invalid(op, format!("negative dimension in {to:?}"))),
            d => known *= d as usize,
        }
    }
    let mut out: Vec<usize> = to.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(Error::shape(
                op,
                format!("cannot reshape {from:?} into {to:?}"),
            ));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(Error::shape(
            op,
            format!("cannot reshape {from:?} ({total} elements) into {to:?} ({known} elements)"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(
            broadcast_shapes("t", &[2, 1, 3], &[4, 1]).unwrap(),
            vec![2, 4, 3]
        );
        assert_eq!(broadcast_shapes("t", &[], &[5]).unwrap(), vec![5]);
        let e = broadcast_shapes("add", &[2, 3], &[4])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("add") && e.contains("[2, 3]") && e.contains("[4]"),
            "{e}"
        );
    }

    #[test]
    fn strides_and_broadcast_strides() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(
            broadcast_strides(&[3, 1], &[1, 1], &[2, 3, 4]),
            vec![0, 1, 0]
        );
    }

    #[test]
    fn reshape_inference() {
        assert_eq!(infer_reshape("r", &[2, 6], &[3, -1]).unwrap(), vec![3, 4]);
        assert!(infer_reshape("r", &[2, 6], &[5, -1]).is_err());
        assert!(infer_reshape("r", &[2, 6], &[-1, -1]).is_err());
        assert!(infer_reshape("r", &[2, 6], &[2, 5]).is_err());
        assert_eq!(normalize_axis("a", -1, 3).unwrap(), 2);
        assert!(normalize_axis("a", 3, 3).is_err());
    }
}
