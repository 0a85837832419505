//! heapkit-profile: a heap profile of a Rust program, with one line.
//!
//! **What it is for.** Your program's memory grows and you want to know
//! where it goes: which call stacks hold the bytes that are still live at
//! exit (leaks), what was live at the peak, which sites allocate the most,
//! which allocations are freed right away. [`Profiled`] wraps any
//! `GlobalAlloc` (heapkit's or `std::alloc::System`) and drives the same
//! recorder as `HEAPKIT_PROFILE` under `libheapkit.so`: when the program
//! runs with `HEAPKIT_PROFILE=path` (`%p` = pid), allocations are sampled
//! by bytes (`HEAPKIT_PROFILE_RATE`, the mean bytes between samples,
//! default 512 KiB as in jemalloc and tcmalloc; 0 records every allocation)
//! with their call stacks, and `heapkit-bench profile --read path` prints
//! what was live at exit by stack and writes flame graphs, a pprof profile
//! and a Markdown summary.
//!
//! **What it costs.** Without `HEAPKIT_PROFILE`, one relaxed load per call
//! more than the wrapped allocator. Sampled, a byte countdown per
//! allocation and, for a free, one load from a 256 KiB filter; a sample
//! walks the stack with heapkit's cached DWARF unwinder (no frame pointers
//! needed) and writes a record to a per-thread buffer. Under
//! `libheapkit.so`: 1.03-1.05x the unprofiled time on an allocation-heavy
//! python3 run (sqlite3 1.01x, a C stress program that allocates 25 GiB/s
//! 1.00-1.02x, one noisy run 1.09x), 1.89-1.96x recording every allocation (sqlite3 1.15-1.16x,
//! the C stress program 1.38-1.46x; `reports/profile-overhead-20261127-c`).
//! The recorder never allocates through the global allocator (its buffers
//! are its own mappings), so it cannot recurse.
//!
//! ```no_run
//! use heapkit_profile::Profiled;
//!
//! #[global_allocator]
//! static GLOBAL: Profiled<std::alloc::System> = Profiled::new(std::alloc::System);
//!
//! fn main() {
//!     let v: Vec<u8> = vec![0; 1 << 20];
//!     std::mem::forget(v); // shows up in the leak report
//! }
//! ```
//!
//! ```sh
//! HEAPKIT_PROFILE=app-%p.hkt cargo run --release
//! heapkit-bench profile --read app-*.hkt
//! ```
//!
//! Build with debug information (`debug = 1` or more in the profile) for
//! function names with `file:line`. Linux x86-64.

use core::alloc::{GlobalAlloc, Layout};
use heapkit_core::once::RunOnce;
use heapkit_core::os;

use heapkit_trace::record;

/// The default mean bytes between two sampled allocations.
pub const DEFAULT_RATE: u64 = 512 << 10;

/// Whether the recorder was started from the environment.
static STARTED: RunOnce = RunOnce::new();

/// A `GlobalAlloc` that records a heap profile of the program when
/// `HEAPKIT_PROFILE` is set (see the module docs).
pub struct Profiled<A> {
    inner: A,
}

impl<A> Profiled<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        Profiled { inner }
    }
}

/// Reads `HEAPKIT_PROFILE` and starts the recorder. Allocations made while
/// it starts (registering the exit handler may allocate) are not recorded.
fn start_from_environment() {
    if let Some(path) = os::env_var(c"HEAPKIT_PROFILE").filter(|p| !p.is_empty()) {
        let rate = os::env_var(c"HEAPKIT_PROFILE_RATE")
            .and_then(|v| heapkit_core::options::parse_number(v.to_bytes()))
            .unwrap_or(DEFAULT_RATE);
        record::start_profile(path, rate);
    }
}

#[inline]
fn ready() -> bool {
    if !STARTED.is_done() {
        STARTED.run(start_from_environment);
    }
    record::enabled()
}

// SAFETY: every method forwards to `inner` with the same arguments and
// returns what it returned; the recorder only reads the pointers and never
// allocates through the global allocator.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Profiled<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout contract passes through.
        let p = unsafe { self.inner.alloc(layout) };
        if ready() {
            record::on_alloc(p, layout.size(), layout.align(), false);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        if ready() {
            record::on_alloc(p, layout.size(), layout.align(), true);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Recorded before the block is released (another thread may get it).
        if record::enabled() {
            record::on_free(ptr);
        }
        // SAFETY: ptr is a live block of inner with this layout (caller).
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract passes through.
        let q = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if record::enabled() {
            record::on_realloc(ptr, q, new_size);
        }
        q
    }
}
