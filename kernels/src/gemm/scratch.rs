//! Per-thread packing buffers, reused across calls so steady-state GEMMs allocate nothing.
//!
//! Like the kernels' other scratch ([`crate::scratch`]), each buffer grows straight to the largest
//! length any thread has asked for, and [`reserve`] grows it there ahead of time.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::LocalKey;

/// Floats of slack so a buffer can start on a 64-byte (cache line) boundary.
const ALIGN_FLOATS: usize = 16;

/// A per-thread packing buffer and the longest length ever asked of it (slack included).
pub(crate) struct Slot {
    buf: &'static LocalKey<RefCell<Vec<f32>>>,
    high: AtomicUsize,
}

thread_local! {
    static A_VEC: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static B_VEC: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Packed A blocks (each thread packs its own).
pub(crate) static A_BUF: Slot = Slot {
    buf: &A_VEC,
    high: AtomicUsize::new(0),
};
/// Packed B blocks (owned by the calling thread, shared read-only with the workers).
pub(crate) static B_BUF: Slot = Slot {
    buf: &B_VEC,
    high: AtomicUsize::new(0),
};

/// The cache-line-aligned window of `len` floats inside `v`, growing `v` if needed.
pub(crate) fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len + ALIGN_FLOATS {
        v.resize(len + ALIGN_FLOATS, 0.0);
    }
    let off = v.as_ptr().align_offset(64).min(ALIGN_FLOATS);
    &mut v[off..off + len]
}

/// Run `f` on an aligned scratch slice of `len` floats from `slot`. A re-entrant call on the same
/// thread (a rayon worker running another GEMM while it waits) gets a fresh allocation instead.
pub(crate) fn with<R>(slot: &'static Slot, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let target = slot.high.fetch_max(len, Ordering::Relaxed).max(len);
    slot.buf.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < target + ALIGN_FLOATS {
                v.resize(target + ALIGN_FLOATS, 0.0);
            }
            f(aligned(&mut v, len))
        }
        Err(_) => f(aligned(&mut Vec::new(), len)),
    })
}

/// Grow the calling thread's packing buffers to the largest lengths any thread has needed.
pub(crate) fn reserve() {
    for slot in [&A_BUF, &B_BUF] {
        let high = slot.high.load(Ordering::Relaxed);
        slot.buf.with(|cell| {
            if let Ok(mut v) = cell.try_borrow_mut() {
                if high > 0 && v.len() < high + ALIGN_FLOATS {
                    v.resize(high + ALIGN_FLOATS, 0.0);
                }
            }
        });
    }
}
