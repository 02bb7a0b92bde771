//! Per-thread scratch buffers (patch tiles, padded planes, staged outputs), reused across calls
//! so steady-state convolution allocates nothing.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::LocalKey;

type Slot = LocalKey<RefCell<Vec<f32>>>;

/// The largest length each kind of slot has been asked for, on any thread. A thread's buffer grows
/// straight to it, so once warm-up has seen every size, whichever tasks rayon later hands a
/// thread fit without allocating.
static TILE_HIGH: AtomicUsize = AtomicUsize::new(0);
static STAGE_HIGH: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Task-level buffers: one patch tile or padded plane at a time.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Call-level buffers: outputs staged by parallel tasks before they are copied into place.
    static STAGE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on a slice of `len` floats from `slot` (contents unspecified).
///
/// The buffer is taken out of the slot while `f` runs: if rayon runs another convolution task on
/// this thread meanwhile (work stealing inside a nested join), that task finds the slot empty and
/// allocates its own instead of aliasing this one; the larger buffer is kept afterwards.
fn with_slot<R>(
    slot: &'static Slot,
    high: &AtomicUsize,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = slot.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let target = high.fetch_max(len, Ordering::Relaxed).max(len);
    if buf.len() < target {
        buf.resize(target, 0.0);
    }
    let r = f(&mut buf[..len]);
    slot.with(|s| {
        let mut kept = s.borrow_mut();
        if kept.len() < buf.len() {
            *kept = buf;
        }
    });
    r
}

/// A task-level scratch slice of `len` floats (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_slot(&TILE, &TILE_HIGH, len, f)
}

/// A call-level staging slice of `len` floats (contents unspecified), separate from the
/// task-level one so tasks running on the calling thread do not take it.
pub(crate) fn with_staging<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_slot(&STAGE, &STAGE_HIGH, len, f)
}
