//! The blocked GEMM (BLIS loop order) and its split across threads.
//!
//! `for jc (NC columns) / for pc (KC depth): pack the B block once (panels split over threads),
//! then tasks over row chunks (or column panels when there are too few rows), each packing its own
//! A blocks (MC rows, kept in L2) and running the micro-kernel over every tile. The epilogue runs
//! on each tile right after the store of the last K block.

use super::spec::{Spec, TileEpi, TileKernel};
use super::{pack, Epilogue, MatPtr, MatRef, PackedB};
use crate::parallel::{self, GEMM_BLOCKED_PAR_MIN_MACS, GEMM_PAR_MIN_MACS};
use crate::scratch::{PACK_A, PACK_B};

/// Where B's panels come from.
#[derive(Clone, Copy)]
pub(crate) enum BSource<'a> {
    /// A strided view, packed block by block during the call.
    View(MatRef<'a>),
    /// Panels packed once ahead of time ([`super::pack_b`]).
    Packed(&'a PackedB),
}

/// One K block of one N block, as the tasks see it.
struct Block<'e> {
    /// A's panels packed ahead of time ([`super::PackedRows`], from A's row 0), or `None` to
    /// read or pack A from its view.
    a_packed: Option<&'e [f32]>,
    p0: usize,
    kc: usize,
    jc: usize,
    panels: usize,
    beta: f32,
    epi: &'e Epilogue<'e>,
}

/// Threads to use for an `m x n x k` product (1 when it is too small to pay the pool's wake-up);
/// `blocked` for the packed path, whose two fork-joins per K block need more work to pay off.
pub(crate) fn threads_for(m: usize, n: usize, k: usize, blocked: bool) -> usize {
    let macs = m.saturating_mul(n).saturating_mul(k);
    let min = if blocked {
        GEMM_BLOCKED_PAR_MIN_MACS
    } else {
        GEMM_PAR_MIN_MACS
    };
    if parallel::worth_splitting(macs, min) {
        parallel::num_threads()
    } else {
        1
    }
}

/// `C = beta * C + A * B` then `epi`, for `k > 0` and non-empty C (`a.rows x` B's columns at
/// `out`), shapes checked; A from `a_packed` when given (whole-depth panels from A's row 0:
/// [`super::PackedRows`]), `a` then only its shape.
///
/// # Safety
/// `out` is valid for reads and writes of C's elements, and they are this call's alone.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    spec: &Spec,
    a: &MatRef,
    a_packed: Option<&[f32]>,
    b: BSource,
    beta: f32,
    out: MatPtr,
    epi: &Epilogue,
    threads: usize,
) {
    let (m, k) = (a.rows, a.cols);
    let n = match b {
        BSource::View(bv) => bv.cols,
        BSource::Packed(pb) => pb.n,
    };
    let nr = spec.nr;
    let (nkb, kc) = spec.k_blocks(k);
    for jc in (0..n).step_by(spec.nc) {
        let ncb = spec.nc.min(n - jc);
        let panels = ncb.div_ceil(nr);
        for kb in 0..nkb {
            let p0 = kb * kc;
            let kcb = kc.min(k - p0);
            let blk = Block {
                a_packed,
                p0,
                kc: kcb,
                jc,
                panels,
                beta: if kb == 0 { beta } else { 1.0 },
                epi: if kb + 1 == nkb { epi } else { &[] },
            };
            let len = panels * kcb * nr;
            match b {
                BSource::Packed(pb) => {
                    let off = p0 * pb.npad + (jc / nr) * kcb * nr;
                    compute(
                        spec,
                        a,
                        &pb.data()[off..off + len],
                        &blk,
                        out,
                        m,
                        n,
                        threads,
                    );
                }
                BSource::View(bv) => PACK_B.with_aligned(len, |bb| {
                    if threads > 1 {
                        pack_and_compute(spec, a, &bv, bb, &blk, out, m, n, threads);
                    } else {
                        pack::pack_b(&bv, p0, kcb, jc, 0, nr, bb);
                        compute(spec, a, bb, &blk, out, m, n, threads);
                    }
                }),
            }
        }
    }
}

/// `C = beta * C + A * B` then `epi` for pre-packed B and at most one register tile of rows
/// (batch-1 and small-batch linear layers): one fork-join over column panel ranges, each task
/// running every K block of its panels, so each thread reads its share of the weights as one
/// sequential stream ([`run`] forks and joins once per K block: sixteen times for 4096 inputs).
///
/// # Safety
/// As [`run`].
pub(crate) unsafe fn run_packed_few_rows(
    spec: &Spec,
    a: &MatRef,
    pb: &PackedB,
    beta: f32,
    out: MatPtr,
    epi: &Epilogue,
    threads: usize,
) {
    let (m, k, n, nr) = (a.rows, a.cols, pb.n, spec.nr);
    let panels = n.div_ceil(nr);
    let (nkb, kc) = spec.k_blocks(k);
    let tasks = if threads > 1 {
        panels.min(4 * threads)
    } else {
        1
    };
    let per = panels.div_ceil(tasks);
    parallel::for_each_index(tasks, threads > 1, |t| {
        let (jp0, jp1) = (t * per, panels.min((t + 1) * per));
        for kb in 0..nkb {
            let p0 = kb * kc;
            let kcb = kc.min(k - p0);
            let blk = Block {
                a_packed: None,
                p0,
                kc: kcb,
                jc: 0,
                panels,
                beta: if kb == 0 { beta } else { 1.0 },
                epi: if kb + 1 == nkb { epi } else { &[] },
            };
            // K block p0 holds every panel, kcb * nr floats each (see `run`).
            let off = p0 * pb.npad;
            let bb = &pb.data()[off..off + panels * kcb * nr];
            if jp0 < jp1 {
                macro_kernel(spec, a, bb, &blk, out, n, (0, m), (jp0, jp1));
            }
        }
    });
}

/// Pack one B block and run its tiles in a single fork-join: every task first claims and packs
/// groups of panels until none is left, waits until all claimed groups are packed, then runs its
/// tiles. A task only ever waits for groups that running tasks have claimed, so it cannot wait on
/// a task that never started (rayon may run the tasks one after another).
#[allow(clippy::too_many_arguments)]
fn pack_and_compute(
    spec: &Spec,
    a: &MatRef,
    bv: &MatRef,
    bb: &mut [f32],
    blk: &Block,
    out: MatPtr,
    m: usize,
    n: usize,
    threads: usize,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (nr, kc) = (spec.nr, blk.kc);
    let group = blk.panels.div_ceil(4 * threads).max(1);
    let groups = blk.panels.div_ceil(group);
    let (claimed, packed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let len = bb.len();
    let base = MatPtr {
        ptr: bb.as_mut_ptr(),
        rows: 1,
        cols: len,
        row_stride: len,
    };
    let grid = TaskGrid::new(spec, m, blk.panels, threads);
    parallel::for_each_index(grid.tasks(), true, |t| {
        loop {
            let g = claimed.fetch_add(1, Ordering::Relaxed);
            if g >= groups {
                break;
            }
            let jp0 = g * group;
            let count = group.min(blk.panels - jp0);
            // SAFETY: group g is panels jp0..jp0 + count, floats jp0*kc*nr .. (jp0+count)*kc*nr
            // of `bb` (inside its len); the atomic claim hands each group to exactly one task,
            // and nobody reads `bb` before every group is packed (below).
            let chunk = unsafe {
                std::slice::from_raw_parts_mut(base.get().add(jp0 * kc * nr), count * kc * nr)
            };
            pack::pack_b(bv, blk.p0, kc, blk.jc, jp0, nr, chunk);
            packed.fetch_add(1, Ordering::Release);
        }
        let mut spins = 0u32;
        while packed.load(Ordering::Acquire) < groups {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: every group was written and released before `packed` reached `groups`
        // (acquired above); no task writes `bb` any more, so shared reads are sound.
        let bb = unsafe { std::slice::from_raw_parts(base.get() as *const f32, len) };
        grid.run(t, spec, a, bb, blk, out, m, n);
    });
}

/// How one B block's tiles are split into tasks: row chunks (each thread its own A block, B
/// panels shared) or, with too few rows for that, column panel ranges.
struct TaskGrid {
    tm: usize,
    tn: usize,
    rows_per: usize,
    panels_per: usize,
    panels: usize,
}

impl TaskGrid {
    fn new(spec: &Spec, m: usize, panels: usize, threads: usize) -> Self {
        let mr = spec.mr;
        let row_groups = m.div_ceil(mr);
        let (tm, tn) = if threads <= 1 {
            (1, 1)
        } else if row_groups >= 2 * threads {
            let tm = m.div_ceil(spec.mc).max(threads).div_ceil(threads) * threads;
            (tm.min(row_groups), 1)
        } else {
            (1, panels.min(2 * threads))
        };
        TaskGrid {
            tm,
            tn,
            rows_per: row_groups.div_ceil(tm) * mr,
            panels_per: panels.div_ceil(tn),
            panels,
        }
    }

    fn tasks(&self) -> usize {
        self.tm * self.tn
    }

    /// Task `t`'s tiles.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        t: usize,
        spec: &Spec,
        a: &MatRef,
        bb: &[f32],
        blk: &Block,
        out: MatPtr,
        m: usize,
        n: usize,
    ) {
        let (ti, tj) = (t / self.tn, t % self.tn);
        let (i0, i1) = (ti * self.rows_per, m.min((ti + 1) * self.rows_per));
        let (jp0, jp1) = (
            tj * self.panels_per,
            self.panels.min((tj + 1) * self.panels_per),
        );
        if i0 < i1 && jp0 < jp1 {
            macro_kernel(spec, a, bb, blk, out, n, (i0, i1), (jp0, jp1));
        }
    }
}

/// Run every tile of one packed B block, split into tasks when `threads > 1`.
#[allow(clippy::too_many_arguments)]
fn compute(
    spec: &Spec,
    a: &MatRef,
    bb: &[f32],
    blk: &Block,
    out: MatPtr,
    m: usize,
    n: usize,
    threads: usize,
) {
    let grid = TaskGrid::new(spec, m, blk.panels, threads);
    parallel::for_each_index(grid.tasks(), threads > 1, |t| {
        grid.run(t, spec, a, bb, blk, out, m, n)
    });
}

/// Where the micro-kernels read A from: in place when A has a unit stride, else a packed block.
#[derive(Clone, Copy)]
pub(crate) enum ASource<'a> {
    InPlace,
    /// Rows `row0..` of A at depth `p0..p0 + kc`, packed by [`pack::pack_a`].
    Packed {
        buf: &'a [f32],
        row0: usize,
        kc: usize,
    },
    /// All of A's rows from row 0 over its whole depth `k`, packed ahead of time
    /// ([`super::PackedRows`]): a K block is a run inside each panel.
    Prepacked {
        buf: &'a [f32],
        k: usize,
    },
}

impl ASource<'_> {
    /// The kernel, A pointer and A strides for the `rows`-row tile at (`row`, depth `p0`) that
    /// stores `cols` columns.
    #[inline]
    pub(crate) fn tile(
        self,
        spec: &Spec,
        a: &MatRef,
        (row, rows): (usize, usize),
        p0: usize,
        cols: usize,
    ) -> (TileKernel, *const f32, usize, usize) {
        match self {
            ASource::InPlace => {
                let kern = spec
                    .kernel_for(a.row_stride, a.col_stride, rows, cols)
                    .expect("A has a unit stride");
                let ap = a.data[row * a.row_stride + p0 * a.col_stride..].as_ptr();
                (kern, ap, a.row_stride, a.col_stride)
            }
            ASource::Prepacked { buf, k } => {
                // Panel `row / mr` (rows advance by whole panels), depth p0 on.
                let off = row * k + p0 * spec.mr;
                (
                    spec.packed_kernel(rows, cols),
                    buf[off..].as_ptr(),
                    1,
                    spec.mr,
                )
            }
            ASource::Packed { buf, row0, kc } => {
                let off = (row - row0) * kc;
                (
                    spec.packed_kernel(rows, cols),
                    buf[off..off + kc * spec.mr].as_ptr(),
                    1,
                    spec.mr,
                )
            }
        }
    }

    /// The pair tiles ([`Spec::pairs`]) for A read this way: A with unit row stride only
    /// (packed panels, or an A^T view read in place), else none.
    pub(crate) fn pairs(self, spec: &Spec, a: &MatRef) -> &'static [super::spec::PairKernel] {
        match self {
            ASource::InPlace if a.col_stride == 1 || a.row_stride != 1 => &[],
            _ => spec.pairs,
        }
    }
}

/// Whether A must be packed (neither stride is 1) for the micro-kernels to read it.
pub(crate) fn needs_packing(spec: &Spec, a: &MatRef) -> bool {
    spec.kernel_for(a.row_stride, a.col_stride, 1, spec.nr)
        .is_none()
}

/// Output columns from which the blocked path packs A even when it could read it in place:
/// packing costs about 32/n of the product there, less than the TLB and prefetch misses of
/// reading an MC x KC block spread over MC rows (or KC columns for A^T) of a large matrix.
const PACK_A_MIN_N: usize = 512;

/// Rows `i0..i1` times panels `jp0..jp1` of one B block, by MC row blocks (packing A only when
/// it has no unit stride).
#[allow(clippy::too_many_arguments)]
fn macro_kernel(
    spec: &Spec,
    a: &MatRef,
    bb: &[f32],
    blk: &Block,
    out: MatPtr,
    n: usize,
    (i0, i1): (usize, usize),
    (jp0, jp1): (usize, usize),
) {
    let (mr, nr, kc) = (spec.mr, spec.nr, blk.kc);
    let block = |ib: usize, mcb: usize, asrc: ASource| {
        let pairs = asrc.pairs(spec, a);
        let mut jp = jp0;
        while jp < jp1 {
            let col = blk.jc + jp * nr;
            // Two whole panels at once where the family has pair tiles.
            let pair = !pairs.is_empty() && jp + 1 < jp1 && col + 2 * nr <= n;
            let (count, cols) = if pair {
                (2, 2 * nr)
            } else {
                (1, nr.min(n - col))
            };
            let bp = bb[jp * kc * nr..(jp + count) * kc * nr].as_ptr();
            jp += count;
            for row in (ib..ib + mcb).step_by(mr) {
                let rows = mr.min(ib + mcb - row);
                // A pair's kernel comes from `pairs`; its A is read as a one-panel tile's.
                let (kern, ap, rsa, csa) = asrc.tile(spec, a, (row, rows), blk.p0, cols.min(nr));
                let epi = TileEpi {
                    ops: blk.epi,
                    row0: row,
                    col0: col,
                };
                // SAFETY: the tile (row..row + rows, col..col + cols) lies inside C (row < m,
                // col + cols <= n, C in bounds) and belongs to this task alone.
                let cp = unsafe { out.ptr.add(row * out.row_stride + col) };
                let (ldc, beta) = (out.row_stride, blk.beta);
                if pair {
                    // SAFETY: as below, over this panel and the next (`kc * nr` floats on,
                    // inside `bb`: jp + 1 < jp1); `pairs` serve A with unit row stride
                    // (`asrc.pairs`).
                    unsafe {
                        pairs[rows - 1](kc, ap, rsa, csa, bp, nr, kc * nr, cp, ldc, beta, epi)
                    };
                } else {
                    // SAFETY: `kern` reads A(i, p) for i < rows, p < kc, all inside A's view (or
                    // its packed copy); `bp` holds kc * nr packed floats; `kern` matches this
                    // process's ISA.
                    unsafe { kern(kc, ap, rsa, csa, bp, nr, cp, ldc, cols, beta, epi) };
                }
            }
        }
    };
    if let Some(buf) = blk.a_packed {
        for ib in (i0..i1).step_by(spec.mc) {
            block(
                ib,
                spec.mc.min(i1 - ib),
                ASource::Prepacked { buf, k: a.cols },
            );
        }
        return;
    }
    if n < PACK_A_MIN_N && !needs_packing(spec, a) {
        for ib in (i0..i1).step_by(spec.mc) {
            block(ib, spec.mc.min(i1 - ib), ASource::InPlace);
        }
        return;
    }
    let a_len = spec.mc.min(i1 - i0).div_ceil(mr) * mr * kc;
    PACK_A.with_aligned(a_len, |abuf| {
        for ib in (i0..i1).step_by(spec.mc) {
            let mcb = spec.mc.min(i1 - ib);
            pack::pack_a(a, ib, mcb, blk.p0, kc, mr, abuf);
            block(
                ib,
                mcb,
                ASource::Packed {
                    buf: abuf,
                    row0: ib,
                    kc,
                },
            );
        }
    });
}
