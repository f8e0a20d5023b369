//! A global allocator that counts, per thread, the bytes allocated minus the bytes freed.
//!
//! The script worker reads its thread's count before a callback and checks it as the
//! callback runs, so one callback cannot take all memory (a loop that grows a string or an
//! array without end is stopped). Rhai's own container limits re-measure a container on every
//! change, which makes building one quadratic; this costs two thread-local additions per
//! allocation. The `wshost` binary installs it; a program embedding wshost may too:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: wshost::CountingAllocator = wshost::CountingAllocator;
//! ```
//!
//! Without it the memory budget is not enforced.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn add(n: i64) {
    // During thread teardown the thread-local may be gone: then do not count.
    let _ = NET.try_with(|c| c.set(c.get().wrapping_add(n)));
}

/// Bytes allocated minus bytes freed by this thread so far.
pub fn thread_net() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

/// [`System`], counting per thread (see the module documentation).
pub struct CountingAllocator;

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
