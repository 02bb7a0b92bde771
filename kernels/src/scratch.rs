//! Per-thread scratch buffers (patch tiles, padded planes and rows, staged outputs, decoded
//! weights, the GEMM's packed blocks), reused across calls so steady-state kernels allocate
//! nothing.
//!
//! Each kind of slot keeps a process-wide high-water mark: the largest length any thread has asked
//! it for. A thread's buffer grows straight to that mark, and [`reserve_on_pool`] grows every
//! thread's buffers to it at once. An inference plan calls it after its first run: from then on,
//! whichever tasks rayon hands whichever thread, they fit (without it, a worker that rayon rarely
//! picks grows its buffers late, an allocation in some run long after warm-up).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::LocalKey;

/// One kind of slot: a buffer per thread and the longest length ever asked of it.
pub(crate) struct Slot {
    buf: &'static LocalKey<RefCell<Vec<f32>>>,
    high: AtomicUsize,
}

thread_local! {
    static TILE_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static STAGE_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static DECODE_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_A_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_B_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static FUSED_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Task-level buffers: one patch tile, padded plane or pooling row at a time.
static TILE: Slot = Slot::new(&TILE_BUF);
/// Call-level buffers: outputs staged by parallel tasks before they are copied into place, and
/// weights reordered for a call. Used by the thread that calls a kernel, not by its tasks.
static STAGE: Slot = Slot::new(&STAGE_BUF);
/// Blocks of 16-bit weights decoded to f32 (see [`crate::half_weights`]); a kernel holding a tile
/// or a staging buffer may decode weights meanwhile, hence a slot of its own.
static DECODE: Slot = Slot::new(&DECODE_BUF);
/// The GEMM's packed A blocks (each thread packs its own).
pub(crate) static PACK_A: Slot = Slot::new(&PACK_A_BUF);
/// The GEMM's packed B blocks (packed by the thread that runs the GEMM, read by its workers;
/// conv tasks run serial GEMMs on every pool thread, so every thread has one).
pub(crate) static PACK_B: Slot = Slot::new(&PACK_B_BUF);
/// A fused kernel's intermediate band (the layer between two fused convolutions), held by a
/// task while the kernels it calls take the other slots.
static FUSED: Slot = Slot::new(&FUSED_BUF);

/// Floats of slack so a packing buffer can start on a 64-byte (cache line) boundary.
const ALIGN_FLOATS: usize = 16;

/// The cache-line-aligned window of `len` floats inside `v`, growing `v` if needed.
pub(crate) fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len + ALIGN_FLOATS {
        v.resize(len + ALIGN_FLOATS, 0.0);
    }
    let off = v.as_ptr().align_offset(64).min(ALIGN_FLOATS);
    &mut v[off..off + len]
}

impl Slot {
    const fn new(buf: &'static LocalKey<RefCell<Vec<f32>>>) -> Slot {
        Slot {
            buf,
            high: AtomicUsize::new(0),
        }
    }

    /// Run `f` on a slice of `len` floats (contents unspecified).
    ///
    /// The buffer is taken out of the slot while `f` runs: if rayon runs another task that wants
    /// this slot on this thread meanwhile (work stealing inside a nested join), that task finds
    /// the slot empty and allocates its own instead of aliasing this one; the larger buffer is
    /// kept afterwards.
    fn with<R>(&'static self, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut buf = self.buf.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let target = self.high.fetch_max(len, Ordering::Relaxed).max(len);
        if buf.len() < target {
            buf.resize(target, 0.0);
        }
        let r = f(&mut buf[..len]);
        self.put_back(buf);
        r
    }

    /// [`Slot::with`] on a cache-line-aligned slice of `len` floats (the GEMM's packing).
    pub(crate) fn with_aligned<R>(&'static self, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        self.with(len + ALIGN_FLOATS, |buf| {
            let off = buf.as_ptr().align_offset(64).min(ALIGN_FLOATS);
            f(&mut buf[off..off + len])
        })
    }

    fn put_back(&self, buf: Vec<f32>) {
        self.buf.with(|s| {
            let mut kept = s.borrow_mut();
            if kept.len() < buf.len() {
                *kept = buf;
            }
        });
    }

    /// Grow this thread's buffer to the high-water mark.
    fn reserve(&'static self) {
        let high = self.high.load(Ordering::Relaxed);
        self.buf.with(|s| {
            // A slot in use (a reservation run from inside a kernel) is left alone.
            if let Ok(mut b) = s.try_borrow_mut() {
                if b.len() < high {
                    b.resize(high, 0.0);
                }
            }
        });
    }
}

/// A task-level scratch slice of `len` floats (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    TILE.with(len, f)
}

/// A call-level staging slice of `len` floats (contents unspecified), separate from the
/// task-level one so tasks running on the calling thread do not take it.
pub(crate) fn with_staging<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    STAGE.with(len, f)
}

/// A task-level slice of `len` floats for a fused kernel's intermediate (contents unspecified),
/// separate from the slots the kernels it calls use.
pub(crate) fn with_fused<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    FUSED.with(len, f)
}

/// A slice of `len` floats to decode 16-bit weights into (contents unspecified).
pub(crate) fn with_decoded<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    DECODE.with(len, f)
}

/// Grow the calling thread's scratch buffers — task-level, staging, decoding and the GEMM's
/// packing buffers — to the largest sizes any thread has needed so far.
pub fn reserve_this_thread() {
    for slot in [&TILE, &STAGE, &DECODE, &PACK_A, &PACK_B, &FUSED] {
        slot.reserve();
    }
}

/// [`reserve_this_thread`] for the task-level buffers on every thread of the current rayon pool
/// (the one `install`ed around the caller, else the global pool), and for all buffers on the
/// calling thread. Staging buffers are only reserved here: kernels stage on the thread that calls
/// them, and a staged output can be as large as a layer's, too much to hold on every thread.
pub fn reserve_on_pool() {
    rayon::broadcast(|_| {
        for slot in [&TILE, &DECODE, &PACK_A, &PACK_B, &FUSED] {
            slot.reserve();
        }
    });
    reserve_this_thread();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_grows_to_the_largest_size_any_thread_asked_for() {
        with_scratch(1000, |s| assert_eq!(s.len(), 1000));
        std::thread::spawn(|| {
            // A new thread's first request, however small, gets the high-water mark.
            with_scratch(10, |s| assert_eq!(s.len(), 10));
            TILE_BUF.with(|b| assert!(b.borrow().len() >= 1000));
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            reserve_this_thread();
            TILE_BUF.with(|b| assert!(b.borrow().len() >= 1000));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_nested_request_gets_its_own_buffer() {
        with_decoded(8, |outer| {
            outer.fill(1.0);
            with_decoded(8, |inner| inner.fill(2.0));
            assert!(outer.iter().all(|&v| v == 1.0));
        });
    }
}
