//! Element-wise binary arithmetic and affine maps over slices.
//!
//! These loops are simple enough that the compiler vectorises them; large inputs are split over
//! the pool (see [`crate::parallel`]) since they are memory-bound and a second core's bandwidth helps.

use crate::parallel::{self, ELEMWISE_PAR_MIN_ELEMS};
use rayon::prelude::*;

/// The four arithmetic operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    /// `a op b`.
    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }
}

/// Elements per parallel piece: big enough to amortise a task, small enough to balance.
const PIECE: usize = 1 << 14;

#[inline(always)]
fn zip_apply(op: BinaryOp, a: &[f32], b: &[f32], out: &mut [f32]) {
    // One loop per op so each is a straight vectorisable body.
    match op {
        BinaryOp::Add => out
            .iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(o, (x, y))| *o = x + y),
        BinaryOp::Sub => out
            .iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(o, (x, y))| *o = x - y),
        BinaryOp::Mul => out
            .iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(o, (x, y))| *o = x * y),
        BinaryOp::Div => out
            .iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(o, (x, y))| *o = x / y),
    }
}

/// `out[i] = a[i] op b[i]`.
pub fn binary(op: BinaryOp, a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "binary: lengths differ"
    );
    if parallel::worth_splitting(out.len(), ELEMWISE_PAR_MIN_ELEMS) {
        parallel::note_fork();
        out.par_chunks_mut(PIECE).enumerate().for_each(|(i, o)| {
            let s = i * PIECE;
            zip_apply(op, &a[s..s + o.len()], &b[s..s + o.len()], o);
        });
    } else {
        zip_apply(op, a, b, out);
    }
}

/// `out[i] = a[i] op b`.
pub fn binary_scalar_rhs(op: BinaryOp, a: &[f32], b: f32, out: &mut [f32]) {
    assert_eq!(a.len(), out.len(), "binary_scalar_rhs: lengths differ");
    let run =
        |a: &[f32], o: &mut [f32]| o.iter_mut().zip(a).for_each(|(o, &x)| *o = op.apply(x, b));
    if parallel::worth_splitting(out.len(), ELEMWISE_PAR_MIN_ELEMS) {
        parallel::note_fork();
        out.par_chunks_mut(PIECE).enumerate().for_each(|(i, o)| {
            let s = i * PIECE;
            run(&a[s..s + o.len()], o)
        });
    } else {
        run(a, out);
    }
}

/// `out[i] = a op b[i]`.
pub fn binary_scalar_lhs(op: BinaryOp, a: f32, b: &[f32], out: &mut [f32]) {
    assert_eq!(b.len(), out.len(), "binary_scalar_lhs: lengths differ");
    out.iter_mut()
        .zip(b)
        .for_each(|(o, &y)| *o = op.apply(a, y));
}

/// `out[i] = x[i] * scale + shift`.
pub fn affine(x: &[f32], scale: f32, shift: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "affine: lengths differ");
    out.iter_mut()
        .zip(x)
        .for_each(|(o, &v)| *o = v * scale + shift);
}

/// `y[i] += alpha * x[i]` (gradient accumulation: the two branches meeting at every residual
/// block's input are activation-sized, so large inputs are split over the pool).
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: lengths differ");
    let run = |x: &[f32], y: &mut [f32]| y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x);
    if parallel::worth_splitting(y.len(), ELEMWISE_PAR_MIN_ELEMS) {
        parallel::note_fork();
        y.par_chunks_mut(PIECE).enumerate().for_each(|(i, y)| {
            let s = i * PIECE;
            run(&x[s..s + y.len()], y)
        });
    } else {
        run(x, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_match_definitions_on_large_and_small_inputs() {
        for n in [7usize, 100_003] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 13) as f32 + 1.0).collect();
            let mut out = vec![0.0; n];
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                binary(op, &a, &b, &mut out);
                assert!(out
                    .iter()
                    .enumerate()
                    .all(|(i, &o)| o == op.apply(a[i], b[i])));
                binary_scalar_rhs(op, &a, 2.5, &mut out);
                assert!(out
                    .iter()
                    .enumerate()
                    .all(|(i, &o)| o == op.apply(a[i], 2.5)));
                binary_scalar_lhs(op, 2.5, &b, &mut out);
                assert!(out
                    .iter()
                    .enumerate()
                    .all(|(i, &o)| o == op.apply(2.5, b[i])));
            }
            affine(&a, 2.0, 1.0, &mut out);
            assert!(out.iter().enumerate().all(|(i, &o)| o == a[i] * 2.0 + 1.0));
        }
    }
}
