//! The one home of threading decisions.
//!
//! rayon's pool costs a few microseconds to wake; batch-1 inference runs many kernels that take
//! about that long. Every kernel asks here whether its work is worth splitting, using the named
//! thresholds below (in units of floating-point operations, or elements for memory-bound kernels),
//! so tuning happens in one place.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Minimum multiply-adds (m*n*k) before a GEMM is split across threads. Measured on 2 Zen 4
/// cores: one fork-join (the m = 1 and small-m GEMM paths) pays off from about 0.5-1 M MACs.
pub const GEMM_PAR_MIN_MACS: usize = 1 << 20;
/// The same for the blocked (packed) GEMM path, which packs B and waits for all of it before
/// computing: 128^3 (2 M MACs) gains 12% on two threads, 100^3 (1 M) nothing.
pub const GEMM_BLOCKED_PAR_MIN_MACS: usize = 1 << 21;
/// Minimum elements before a memory-bound element-wise kernel is split across threads.
pub const ELEMWISE_PAR_MIN_ELEMS: usize = 1 << 16;
/// Minimum elements before a transcendental point-wise kernel (exp, erf, tanh: GELU, SiLU,
/// sigmoid, ...) is split: each element costs tens of instructions, not one load and store, so
/// smaller inputs than [`ELEMWISE_PAR_MIN_ELEMS`] already repay the pool's wake-up.
pub const TRANSCENDENTAL_PAR_MIN_ELEMS: usize = 1 << 14;
/// Minimum multiply-adds before a convolution (or its backward) is split across threads.
pub const CONV_PAR_MIN_MACS: usize = 1 << 18;
/// Minimum elements of a normalisation / pooling / softmax pass before it is split.
pub const ROWWISE_PAR_MIN_ELEMS: usize = 1 << 15;
/// Minimum multiply-adds (batch * heads * Lq * Lk * (d + dv)) before attention spreads its
/// (batch, head, query-block) tasks over the pool. A 12-head, 32-token BERT layer (~0.8M) splits;
/// an 8-token one (~50k, a few microseconds) stays on the calling thread.
pub const ATTENTION_PAR_MIN_MACS: usize = 1 << 18;
/// Minimum elements of one parallel piece of a normalisation / pooling pass (so a split pass
/// makes a few pieces per thread, each worth a task).
pub const ROWWISE_MIN_PIECE_ELEMS: usize = 1 << 13;

thread_local! {
    /// Set inside [`serial`]: this thread's kernels stay off the pool.
    static SERIAL: Cell<bool> = const { Cell::new(false) };
    /// Times this thread handed work to the pool ([`note_fork`]).
    static FORKS: Cell<u64> = const { Cell::new(0) };
}

/// Note that this thread hands work to the pool. The helpers below call it when they go
/// parallel, and so does every kernel that forks through rayon directly: whether an inference
/// forks at all then depends on its shapes and thread count alone, where whether another thread
/// happened to run a job depended on the scheduler ([`with_pool_awake`]).
#[inline]
pub fn note_fork() {
    FORKS.with(|f| f.set(f.get() + 1));
}

/// How many times this thread has noted a fork.
fn forks() -> u64 {
    FORKS.with(Cell::get)
}

/// Threads the kernels will use: rayon's (the global pool, set by `tlc --threads` or
/// `RAYON_NUM_THREADS`, or the pool `install`ed around the caller), or 1 inside [`serial`].
pub fn num_threads() -> usize {
    if SERIAL.with(Cell::get) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Run `f` with every kernel it calls on this thread: [`num_threads`] reads 1 meanwhile, so no
/// kernel splits its work (an inference too small for any kernel to split skips the hand-off to
/// the pool this way; see [`with_pool_awake`]).
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
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
        note_fork();
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
        note_fork();
        data.par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

/// How many pieces a normalisation / pooling pass over `work` elements should be cut into: 1
/// (stay on this thread) below [`ROWWISE_PAR_MIN_ELEMS`], else pieces of at least
/// [`ROWWISE_MIN_PIECE_ELEMS`].
pub fn rowwise_pieces(work: usize) -> usize {
    if worth_splitting(work, ROWWISE_PAR_MIN_ELEMS) {
        pieces(work, ROWWISE_MIN_PIECE_ELEMS)
    } else {
        1
    }
}

/// Apply `f(first_item, run)` to `data` cut into about `pieces` runs of whole items of
/// `item_len` elements (planes, rows), in parallel; with `pieces <= 1`, once over all of `data`
/// on this thread.
pub fn for_each_item_run_mut<T, F>(data: &mut [T], item_len: usize, pieces: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    let items = data.len() / item_len.max(1);
    if pieces <= 1 || items < 2 {
        f(0, data);
        return;
    }
    let per = items.div_ceil(pieces).max(1);
    for_each_chunk_mut(data, per * item_len.max(1), true, |i, c| f(i * per, c));
}

/// `len` items cut into at most `pieces` ranges of whole units of `unit` items (a tile's rows, a
/// GEMM's column panel; only the last unit may be short), their unit counts differing by at most
/// one; fewer ranges when there are fewer units, and always at least one. Equal ranges would end
/// most of them in a sliver of a unit, which costs a whole tile's loads for a fraction of its
/// work.
#[derive(Clone, Copy, Debug)]
pub struct UnitRanges {
    len: usize,
    unit: usize,
    units: usize,
    count: usize,
}

impl UnitRanges {
    pub fn new(len: usize, unit: usize, pieces: usize) -> UnitRanges {
        let unit = unit.max(1);
        let units = len.div_ceil(unit);
        UnitRanges {
            len,
            unit,
            units,
            count: pieces.clamp(1, units.max(1)),
        }
    }

    /// How many ranges there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Range `r` (`r < count()`) of the items.
    pub fn range(&self, r: usize) -> std::ops::Range<usize> {
        let edge = |r: usize| (r * self.units / self.count * self.unit).min(self.len);
        edge(r)..edge(r + 1)
    }
}

/// Run `f` on a pool thread while the pool's other threads stay awake, polling for the jobs its
/// kernels fork, until `f` returns; with one thread, run it here. Returns `f`'s result and
/// whether `f`'s thread forked any work ([`note_fork`]; if not, [`serial`] would have run it as
/// fast without the hand-off). A kernel forks on the thread that calls it, so the forks of `f`'s
/// own kernels are counted, whatever other threads do meanwhile.
///
/// An idle rayon worker sleeps after a few dozen polls, and waking it costs a futex hand-off:
/// a batch-1 inference alternates parallel kernels with serial ones a few microseconds long, so
/// every parallel kernel after a serial stretch paid that wake-up (a TLC-collapsed ResNet-18's
/// 64->128 3x3/2 conv took 0.045 ms in the network on two threads, 0.024 ms in a loop of its
/// own). The cost is the other cores busy-polling for the duration of `f`, as OpenMP runtimes
/// and ONNX Runtime's intra-op pool do. Each empty poll gives the core back to the OS scheduler
/// (`sched_yield`, a fraction of a microsecond when nothing else wants it): when another process
/// takes a core, a pure spin held the core the runner or the worker with the work was queued
/// for, for a whole time slice.
pub fn with_pool_awake<R: Send>(f: impl FnOnce() -> R + Send) -> (R, bool) {
    let threads = num_threads();
    if threads <= 1 {
        return (f(), false);
    }
    let done = AtomicBool::new(false);
    rayon::scope(|_| {
        let runner = rayon::current_thread_index();
        let (r, ()) = rayon::join(
            || {
                // Set also when `f` panics: `join` waits for the keepers before it unwinds.
                let _done = SetOnDrop(&done);
                let before = forks();
                let r = f();
                (r, forks() != before)
            },
            || stay_awake(runner, &done, threads - 1),
        );
        r
    })
}

/// Sets its flag when dropped, by a return or an unwind alike.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Poll the pool for work until `done`, on `extra` threads (this one and `extra - 1` more, each
/// taking a forked half). The runner itself may pop one of these jobs while it waits inside a
/// kernel: it must return at once, or it would poll for its own completion.
fn stay_awake(runner: Option<usize>, done: &AtomicBool, extra: usize) {
    if extra == 0 || rayon::current_thread_index() == runner {
        return;
    }
    if extra > 1 {
        let half = extra / 2;
        rayon::join(
            || stay_awake(runner, done, extra - half),
            || stay_awake(runner, done, half),
        );
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::thread::yield_now();
        }
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
    fn item_runs_cover_whole_items() {
        for len in [10usize, 1 << 16] {
            let mut v = vec![usize::MAX; len * 3];
            for_each_item_run_mut(&mut v, 3, len / 1000 + 1, |first, run| {
                assert_eq!(run.len() % 3, 0);
                run.iter_mut()
                    .enumerate()
                    .for_each(|(j, x)| *x = first + j / 3);
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i / 3));
        }
    }

    #[test]
    fn pieces_is_at_least_one() {
        assert!(pieces(0, 100) >= 1);
        assert!(pieces(1_000_000, 1) <= 4 * num_threads().max(1));
    }

    /// The keep-awake wrapper returns `f`'s result with every forked job run once, from outside
    /// the pool and from inside it, on 1-4 threads, also when the inferences themselves run in
    /// parallel (the runner may pop a keeper job and must not poll for itself).
    #[test]
    fn pool_awake_runs_the_work_and_returns() {
        let work = || {
            let sum = AtomicUsize::new(0);
            for _ in 0..50 {
                for_each_index(64, true, |i| {
                    sum.fetch_add(i, Ordering::Relaxed);
                });
            }
            sum.into_inner()
        };
        for threads in 1..=4 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            assert_eq!(pool.install(|| with_pool_awake(work)).0, 50 * 2016);
            let nested: Vec<usize> = pool.install(|| {
                use rayon::prelude::*;
                (0..8)
                    .into_par_iter()
                    .map(|_| with_pool_awake(work).0)
                    .collect()
            });
            assert!(nested.iter().all(|&s| s == 50 * 2016), "{nested:?}");
        }
        assert_eq!(with_pool_awake(work).0, 50 * 2016);
    }

    /// Unit ranges cover the items in order, start on whole units, and balance them.
    #[test]
    fn unit_ranges_are_whole_and_balanced() {
        for (len, unit, pieces) in [
            (784, 16, 8),
            (49, 16, 8),
            (196, 6, 8),
            (7, 16, 2),
            (0, 6, 4),
        ] {
            let r = UnitRanges::new(len, unit, pieces);
            assert_eq!(r.count(), pieces.min(len.div_ceil(unit)).max(1));
            let mut next = 0;
            let mut units = Vec::new();
            for i in 0..r.count() {
                let range = r.range(i);
                assert_eq!(range.start, next);
                assert!(range.start.is_multiple_of(unit) && (len == 0 || !range.is_empty()));
                units.push(range.len().div_ceil(unit));
                next = range.end;
            }
            assert_eq!(next, len);
            let (lo, hi) = (units.iter().min().unwrap(), units.iter().max().unwrap());
            assert!(hi - lo <= 1, "{len} in units of {unit}: {units:?}");
        }
    }

    /// A panic in the work reaches the caller instead of leaving the keepers polling for ever
    /// (`join` waits for them before it unwinds), on 2-4 threads.
    #[test]
    fn pool_awake_passes_a_panic_on() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for threads in 2..=4 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pool.install(|| {
                        with_pool_awake(|| {
                            for_each_index(64, true, |i| assert!(i != 40, "task 40 fails"));
                        })
                    })
                }));
                tx.send(caught.is_err()).unwrap();
            }
        });
        for threads in 2..=4 {
            let got = rx.recv_timeout(std::time::Duration::from_secs(60));
            assert_eq!(
                got,
                Ok(true),
                "{threads} threads: the panic did not come back"
            );
        }
    }

    /// Inside `serial` the kernels see one thread (restored after, also after a panic), and
    /// work that forks nothing reports so; work that forks reports that.
    #[test]
    fn serial_hides_the_pool_and_quiet_work_needs_no_help() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            assert_eq!(num_threads(), 2);
            assert_eq!(serial(num_threads), 1);
            let caught = std::panic::catch_unwind(|| serial(|| panic!("inside")));
            assert!(caught.is_err());
            assert_eq!(num_threads(), 2);
            let (n, forked) = with_pool_awake(|| {
                serial(|| {
                    let sum = AtomicUsize::new(0);
                    for_each_index(1000, worth_splitting(1000, 1), |i| {
                        sum.fetch_add(i, Ordering::Relaxed);
                    });
                    sum.into_inner()
                })
            });
            assert_eq!((n, forked), (499_500, false));
            // Forking work says so every time, whichever thread ran its jobs.
            for _ in 0..20 {
                let ((), forked) = with_pool_awake(|| for_each_index(2, true, |_| {}));
                assert!(forked);
            }
        });
    }
}
