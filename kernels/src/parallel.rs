//! The one home of threading decisions.
//!
//! rayon's pool costs a few microseconds to wake; batch-1 inference runs many kernels that take
//! about that long. Every kernel asks here whether its work is worth splitting, using the named
//! thresholds below (in units of floating-point operations, or elements for memory-bound kernels),
//! so tuning happens in one place.

/// Minimum multiply-adds (m*n*k) before a GEMM is split across threads. Measured on 2 Zen 4
/// cores: one fork-join (the m = 1 and small-m GEMM paths) pays off from about 0.5-1 M MACs.
pub const GEMM_PAR_MIN_MACS: usize = 1 << 20;
/// The same for the blocked (packed) GEMM path, which packs B and waits for all of it before
/// computing: 128^3 (2 M MACs) gains 12% on two threads, 100^3 (1 M) nothing.
pub const GEMM_BLOCKED_PAR_MIN_MACS: usize = 1 << 21;
/// Minimum elements before a memory-bound element-wise kernel is split across threads.
pub const ELEMWISE_PAR_MIN_ELEMS: usize = 1 << 16;
/// Minimum multiply-adds before a convolution (or its backward) is split across threads.
pub const CONV_PAR_MIN_MACS: usize = 1 << 18;
/// Minimum elements of a normalisation / pooling / softmax pass before it is split.
pub const ROWWISE_PAR_MIN_ELEMS: usize = 1 << 15;

/// Threads rayon will use (the global pool, set by `tlc --threads` or `RAYON_NUM_THREADS`).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// Whether `work` (in the unit of `threshold`) is worth spreading over the pool.
#[inline]
pub fn worth_splitting(work: usize, threshold: usize) -> bool {
    work >= threshold && num_threads() > 1
}

/// How many pieces to cut `work` into: at most one per `min_piece` units, at most a few per thread
/// (so uneven pieces still balance), and at least one.
#[inline]
pub fn pieces(work: usize, min_piece: usize) -> usize {
    let t = num_threads();
    if t <= 1 {
        return 1;
    }
    (work / min_piece.max(1)).clamp(1, 4 * t)
}

/// Run `f(i)` for `i in 0..n`, in parallel when `parallel` is true and on this thread otherwise.
pub fn for_each_index<F>(n: usize, parallel: bool, f: F)
where
    F: Fn(usize) + Sync + Send,
{
    if parallel && n > 1 {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
    } else {
        (0..n).for_each(f);
    }
}

/// Apply `f(chunk_index, chunk)` to consecutive chunks of `data` of `chunk_len` elements (the last
/// may be shorter), in parallel when `parallel` is true.
pub fn for_each_chunk_mut<T, F>(data: &mut [T], chunk_len: usize, parallel: bool, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    let chunk_len = chunk_len.max(1);
    if parallel && data.len() > chunk_len {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn for_each_index_visits_every_index_once() {
        for parallel in [false, true] {
            let sum = AtomicUsize::new(0);
            for_each_index(100, parallel, |i| {
                sum.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 4950);
        }
    }

    #[test]
    fn chunks_cover_the_slice() {
        let mut v = vec![0usize; 103];
        for_each_chunk_mut(&mut v, 10, true, |i, c| c.iter_mut().for_each(|x| *x = i));
        assert_eq!(v[0], 0);
        assert_eq!(v[102], 10);
        assert!(v.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
    }

    #[test]
    fn pieces_is_at_least_one() {
        assert!(pieces(0, 100) >= 1);
        assert!(pieces(1_000_000, 1) <= 4 * num_threads().max(1));
    }
}
