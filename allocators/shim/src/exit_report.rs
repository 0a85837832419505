//! `HEAPKIT_STATS=1`: print the backend's statistics to stderr at exit.
//!
//! The report is formatted into a [`StackText`] on the stack and written
//! with one `write(2)`, so it allocates nothing even though it runs while
//! the process is tearing down. It goes to a private duplicate of stderr
//! taken at load time, because some programs (coreutils, via gnulib's
//! `close_stdout`) close stderr in their own `atexit` handler. One line:
//!
//! ```text
//! heapkit: backend=jemalloc live_bytes=81920 peak_live_bytes=0 mapped_bytes=... os_purges=0
//! ```
//!
//! Peers fill what they expose cheaply (glibc: `mallinfo2`; jemalloc:
//! `stats.allocated`/`stats.mapped` when built with statistics; mimalloc:
//! committed bytes); the other fields stay zero.

use core::fmt::Write;
use core::sync::atomic::{AtomicI32, Ordering::Relaxed};

use heapkit_core::{os, HeapAlloc};

use crate::backend::{self, with_backend};
use crate::stack_text::StackText;

/// Where the report goes: a duplicate of stderr (or stderr itself if it
/// could not be duplicated).
static REPORT_FD: AtomicI32 = AtomicI32::new(2);

/// Registers the exit report if `HEAPKIT_STATS=1`.
pub fn register_if_requested() {
    if os::env_var(c"HEAPKIT_STATS").is_some_and(|v| v.to_bytes() == b"1") {
        if let Some(fd) = os::dup_cloexec(2, 64) {
            REPORT_FD.store(fd, Relaxed);
        }
        os::register_at_exit(print);
    }
}

extern "C" fn print() {
    let id = backend::SELECTED.load(Relaxed);
    let stats = with_backend!(|a| a.stats());
    let mut line = StackText::<1024>::new();
    let _ = writeln!(line, "heapkit: backend={} {}", backend::name(id), stats);
    os::write_fd(REPORT_FD.load(Relaxed), line.as_bytes());
}
