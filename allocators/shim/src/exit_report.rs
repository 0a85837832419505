//! `HEAPKIT_STATS=1` (or `true`, `yes`, `on`): print the backend's statistics to stderr at exit.
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

use core::ffi::CStr;
use core::fmt::Write;
use core::sync::atomic::{AtomicI32, Ordering::Relaxed};

use heapkit_core::Stats;

use heapkit_core::{os, HeapAlloc};

use crate::backend::{self, with_backend};
use crate::stack_text::StackText;

/// Where the report goes: a duplicate of stderr (or stderr itself if it
/// could not be duplicated).
static REPORT_FD: AtomicI32 = AtomicI32::new(2);

/// Whether a boolean environment variable's value means on: `1`, `true`,
/// `yes`, `on` (any case) are on; unset, empty, `0`, `false`, `no`, `off`
/// are off; anything else is `None`.
fn flag_value(value: Option<&CStr>) -> Option<bool> {
    match value.map(CStr::to_bytes) {
        None | Some(b"") => Some(false),
        Some(v) => heapkit_core::options::parse_flag(v),
    }
}

/// Registers the exit report if `HEAPKIT_STATS` is on; an unrecognised
/// value stops the program with one line, like an unknown `HEAPKIT_ALLOC`.
pub fn register_if_requested() {
    let value = os::env_var(c"HEAPKIT_STATS");
    let Some(on) = flag_value(value) else {
        let mut line = StackText::<256>::new();
        let _ = line.write_str("heapkit: HEAPKIT_STATS=\"");
        line.push_bytes(value.map_or(&[][..], CStr::to_bytes));
        let _ = line.write_str("\" is not a flag; use 1/true/yes/on or 0/false/no/off\n");
        os::write_stderr(line.as_bytes());
        os::exit_immediately(2);
    };
    if on {
        if let Some(fd) = os::dup_cloexec(2, 64) {
            REPORT_FD.store(fd, Relaxed);
        }
        os::register_at_exit(print);
    }
}

extern "C" fn print() {
    let id = backend::SELECTED.load(Relaxed) & backend::ID_MASK;
    let stats = with_backend!(|a| a.stats());
    let mut line = StackText::<1024>::new();
    let _ = write!(line, "heapkit: backend={}", backend::name(id));
    match measured_by_peer(id) {
        // heapkit's own allocators count everything.
        None => {
            let _ = write!(line, " {stats}");
        }
        Some(measured) => {
            for (name, value) in Stats::FIELDS.iter().zip(stats.values()) {
                if measured.contains(name) {
                    let _ = write!(line, " {name}={value}");
                }
            }
            let what = if measured.is_empty() {
                "counts"
            } else {
                "other counts"
            };
            let _ = write!(line, " ({what}: not available from this peer)");
        }
    }
    let _ = writeln!(line);
    os::write_fd(REPORT_FD.load(Relaxed), line.as_bytes());
}

/// The `Stats` fields a peer really measures (`None`: a heapkit backend,
/// which measures all): the rest would be made-up zeros, so the report
/// leaves them out and says so.
fn measured_by_peer(id: u8) -> Option<&'static [&'static str]> {
    match id {
        backend::SYSTEM => Some(&["live_bytes", "mapped_bytes", "resident_bytes"]),
        #[cfg(feature = "peers")]
        backend::JEMALLOC if crate::jemalloc::has_stats() => {
            Some(&["live_bytes", "mapped_bytes", "resident_bytes"])
        }
        #[cfg(feature = "peers")]
        backend::JEMALLOC => Some(&["resident_bytes"]),
        #[cfg(feature = "peers")]
        backend::MIMALLOC => Some(&["mapped_bytes", "peak_mapped_bytes", "resident_bytes"]),
        _ => None,
    }
}
