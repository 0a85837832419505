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
//! through the same exported functions (`export`), the same glibc
//! edge-case layer ([`heapkit_core::capi`]) and the same one-branch dispatch
//! (`backend`). A difference between two backends under this library is a
//! difference between the allocators, not between the ways they were
//! plugged in.
//!
//! # How it works
//!
//! - `export`: `malloc`, `free`, `calloc`, `realloc`, `reallocarray`,
//!   `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`, `pvalloc`,
//!   `malloc_usable_size`, `cfree`.
//! - `cxx`: C++'s `operator new`/`delete` in every form; a `new` without
//!   memory hands over to the C++ runtime's operator, which throws.
//! - `introspect`: `mallinfo2`, `mallinfo`, `malloc_trim`, `mallopt`,
//!   `malloc_stats`, `malloc_info` over the selected backend.
//! - `jemalloc_api`: jemalloc's own API (`mallocx`, `rallocx`, `xallocx`,
//!   `sallocx`, `dallocx`, `sdallocx`, `nallocx`, `mallctl` and its MIB
//!   forms, `malloc_stats_print`), for programs linked against
//!   `libjemalloc.so` (Debian's `redis-server`): their calls reach the
//!   selected backend, not a jemalloc that serves nothing.
//! - `backend`: `HEAPKIT_ALLOC` is read once, by the first allocation or
//!   by this library's constructor, whichever runs first (the dynamic loader
//!   allocates before constructors run). An unknown name prints the accepted
//!   ones and exits with status 2. `HEAPKIT_HARDEN=1` picks the backend's
//!   hardened mode (sizeclass, slab, pool).
//! - `system`, `jemalloc`, `mimalloc`: the peers as
//!   [`HeapAlloc`](heapkit_core::HeapAlloc) impls.
//! - `exit_report`: `HEAPKIT_STATS=1` prints the backend's
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
//! No `errno` save (heapkit's allocators keep `errno` around the system
//! calls of their slow paths) and no recorder test (the recorder's bit
//! lives in the same byte as the backend id). Every heapkit allocator finds
//! its thread state through an initial-exec TLS slot
//! (`heapkit_core::thread_pointer!`), so no `__tls_get_addr` call either.
//!
//! # TLS model
//!
//! The default build uses initial-exec TLS: right for `LD_PRELOAD` and for
//! linking, and for `dlopen` while glibc's static TLS surplus has room for
//! heapkit's five 8-byte slots. Build with `--features dlopen-tls` for a
//! library that must be `dlopen`ed where it has not (every slot is then an
//! ordinary `thread_local!`, one `__tls_get_addr` call per operation).

mod backend;
mod cxx;
mod exit_report;
mod export;
mod glibc;
mod introspect;
#[cfg(feature = "peers")]
mod jemalloc;
mod jemalloc_api;
#[cfg(feature = "peers")]
mod mimalloc;
mod stack_text;
mod system;

/// Runs when the library is loaded, after libc is initialised: resolves the
/// backend if no allocation has yet, and registers the exit report.
extern "C" fn on_load() {
    let id = backend::resolve();
    let skipped = skip_peer_constructors(id);
    exit_report::register_if_requested();
    if heapkit_core::options::get().verbose {
        // HEAPKIT_VERBOSE=1: say what runs, with which options.
        heapkit_core::os::write_stderr(b"heapkit: libheapkit.so backend=");
        heapkit_core::os::write_stderr(backend::name(id).as_bytes());
        heapkit_core::os::write_stderr(b"\n");
        heapkit_core::options::write_summary();
        match skipped {
            Some(true) => heapkit_core::os::write_stderr(
                b"heapkit: the peers' constructors were skipped (jemalloc, mimalloc)\n",
            ),
            Some(false) => heapkit_core::os::write_stderr(
                b"heapkit: the peers' constructors ran (not where expected in .init_array)\n",
            ),
            None => {}
        }
        if matches!(backend::name(id), "system" | "jemalloc" | "mimalloc") {
            heapkit_core::os::write_stderr(
                b"heapkit: (the options apply to heapkit's own backends, not to this peer)\n",
            );
        }
    }
    // HEAPKIT_TRACE=path records every malloc-family call (heapkit-trace);
    // the recorder flushes at exit through its own atexit handler and says
    // on stderr why when it cannot start.
    // HEAPKIT_PROFILE=path is a heap profile: the same recorder, with call
    // stacks, sampling allocations by bytes (HEAPKIT_PROFILE_RATE, mean
    // bytes between samples, default 512 KiB; 0 records every allocation).
    let profile = heapkit_core::os::env_var(c"HEAPKIT_PROFILE").filter(|p| !p.is_empty());
    let started = match profile {
        Some(path) => {
            let rate = match heapkit_core::os::env_var(c"HEAPKIT_PROFILE_RATE") {
                None => DEFAULT_PROFILE_RATE,
                Some(v) => match heapkit_core::options::parse_number(v.to_bytes()) {
                    Some(n) => n,
                    None => {
                        heapkit_core::os::write_stderr(
                            b"heapkit: HEAPKIT_PROFILE_RATE is not a number of bytes; using 524288\n",
                        );
                        DEFAULT_PROFILE_RATE
                    }
                },
            };
            heapkit_trace::record::start_profile(path, rate)
        }
        None => match heapkit_core::os::env_var(c"HEAPKIT_TRACE") {
            Some(path) if !path.is_empty() => heapkit_trace::record::start(path),
            _ => false,
        },
    };
    if started {
        // Runs after the recorder's own child handler, which stops
        // recording in a forked child: the child's calls go fast again.
        heapkit_core::os::register_atfork(no_op, no_op, stop_tracing_in_child);
        backend::set_traced(true);
    }
}

/// With the peers linked in (`peers` feature), skips their constructors
/// unless one of them is backend `id`; returns whether they were skipped
/// (`None`: not tried, as when a peer runs or none is linked in).
#[cfg(feature = "peers")]
fn skip_peer_constructors(id: u8) -> Option<bool> {
    if matches!(backend::name(id), "jemalloc" | "mimalloc") {
        return None;
    }
    // The entries after on_load are the peers' (the static C libraries are
    // linked after every Rust object), and each peer initialises itself on
    // its first call, should one come while another backend runs.
    // SAFETY: on_load is this library's constructor and is running (its
    // only caller), so the entries it replaces have not run yet.
    Some(unsafe { heapkit_core::os::constructors::skip_after(on_load, PEER_CONSTRUCTORS) })
}

/// Without the peers there is nothing after [`on_load`] to skip.
#[cfg(not(feature = "peers"))]
fn skip_peer_constructors(_id: u8) -> Option<bool> {
    None
}

/// How many `.init_array` entries follow [`on_load`]: jemalloc's
/// `jemalloc_constructor` and mimalloc's `mi_process_attach`. Skipped
/// unless one of them is the backend: they cost every process that loads
/// the library 57 page faults and about 0.23 ms (a fifth of a preloaded
/// `/bin/true`), and jemalloc's `fork` handlers on every fork after (see
/// `heapkit_core::os::constructors`).
#[cfg(feature = "peers")]
const PEER_CONSTRUCTORS: usize = 2;

/// Mean bytes between two sampled allocations of a heap profile.
const DEFAULT_PROFILE_RATE: u64 = 512 << 10;

unsafe extern "C" fn no_op() {}

/// `_exit` as libc's, after writing the trace when this process records:
/// `sh -c` wrappers and children forked without exec leave through `_exit`,
/// which runs no atexit handler, so their traces would lack the records
/// still buffered and the end block. Only the program's own calls (through
/// the PLT) land here, never libc's internal ones; a vfork child (shared
/// memory, another pid) changes nothing of its parent's recording.
#[no_mangle]
pub extern "C" fn _exit(status: core::ffi::c_int) -> ! {
    if heapkit_trace::record::enabled() {
        heapkit_trace::record::finish();
    }
    heapkit_core::os::exit_immediately(status)
}

/// `_Exit`: C99's name for `_exit`.
#[no_mangle]
pub extern "C" fn _Exit(status: core::ffi::c_int) -> ! {
    _exit(status)
}

unsafe extern "C" fn stop_tracing_in_child() {
    if !heapkit_trace::record::enabled() {
        backend::set_traced(false);
    }
}

/// The library's constructor, in `.init_array` like a C
/// `__attribute__((constructor))`.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;
