//! `libheapkit.so`: the C malloc API over any heapkit allocator or a peer,
//! for unmodified Linux programs.
//!
//! ```sh
//! cargo build --release -p heapkit-shim
//! LD_PRELOAD=target/release/libheapkit.so HEAPKIT_ALLOC=mimalloc python3 app.py
//! HEAPKIT_STATS=1 LD_PRELOAD=target/release/libheapkit.so sqlite3 db 'select 1'
//! ```
//!
//! # What it is for
//!
//! Comparing allocators on real programs, like for like: every backend, the
//! peers (`system` = glibc, `jemalloc`, `mimalloc`) included, is reached
//! through the same exported functions ([`export`]), the same glibc
//! edge-case layer ([`heapkit_core::capi`]) and the same one-branch dispatch
//! ([`backend`]). A difference between two backends under this library is a
//! difference between the allocators, not between the ways they were
//! plugged in.
//!
//! # How it works
//!
//! - [`export`]: `malloc`, `free`, `calloc`, `realloc`, `reallocarray`,
//!   `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`, `pvalloc`,
//!   `malloc_usable_size`, `cfree`. C++ `new`/`delete` reach them through
//!   libstdc++'s `malloc`/`free`.
//! - [`backend`]: `HEAPKIT_ALLOC` is read once, by the first allocation or
//!   by this library's constructor, whichever runs first (the dynamic loader
//!   allocates before constructors run). An unknown name prints the accepted
//!   ones and exits with status 2.
//! - [`system`], [`jemalloc`], [`mimalloc`]: the peers as
//!   [`HeapAlloc`](heapkit_core::HeapAlloc) impls.
//! - [`exit_report`]: `HEAPKIT_STATS=1` prints the backend's
//!   [`Stats`](heapkit_core::Stats) at exit without allocating.
//!
//! Threads, fork and thread exit are each backend's business (every heapkit
//! allocator registers its own `pthread_atfork` and thread-exit hooks); the
//! shim itself holds no lock and no per-thread state.
//!
//! # Costs
//!
//! Per call: one relaxed load of a byte and one jump-table branch, then the
//! backend's code inlined (heapkit allocators) or one direct call (peers).

mod backend;
mod exit_report;
mod export;
mod jemalloc;
mod mimalloc;
mod stack_text;
mod system;

/// Runs when the library is loaded, after libc is initialised: resolves the
/// backend if no allocation has yet, and registers the exit report.
extern "C" fn on_load() {
    backend::resolve();
    exit_report::register_if_requested();
    // HEAPKIT_TRACE=path records every malloc-family call (heapkit-trace);
    // the recorder flushes at exit through its own atexit handler and says
    // on stderr why when it cannot start.
    if let Some(path) = heapkit_core::os::env_var(c"HEAPKIT_TRACE") {
        if !path.is_empty() {
            heapkit_trace::record::start(path);
        }
    }
}

/// The library's constructor, in `.init_array` like a C
/// `__attribute__((constructor))`.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;
