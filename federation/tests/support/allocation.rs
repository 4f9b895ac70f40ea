//! What decoding one input costs in memory: a global allocator that counts, per thread, the
//! bytes held, so an invariant can bound the peak. Shared by the mutation tests here and the
//! cargo-fuzz targets in fuzz/ (which include this file); it becomes the global allocator of
//! whichever binary includes it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// Bytes this thread allocated and has not freed (negative when it frees another's).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The most `LIVE` reached since the last [`peak_during`] began.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: a thread being torn down still allocates, after its counters are gone.
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is handed to the system allocator unchanged; counting allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's layout, as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's layout, as given.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Both blocks may be held at once while the bytes move.
        count(new_size as isize);
        count(-(layout.size() as isize));
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns what it returned and the most bytes it held at once on this thread.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let value = f();
    let peak = PEAK.with(Cell::get);
    (value, peak.saturating_sub(before).max(0) as usize)
}

/// Asserts that decoding `input_len` bytes held at most `per_byte` bytes of memory for each
/// byte of input, plus `floor` (what any input may cost), naming `what` otherwise.
pub fn assert_bounded(what: &str, input_len: usize, peak: usize, per_byte: usize, floor: usize) {
    let limit = input_len.saturating_mul(per_byte).saturating_add(floor);
    assert!(
        peak <= limit,
        "{what}: {input_len} bytes of input took {peak} bytes of memory (limit {limit})"
    );
}
