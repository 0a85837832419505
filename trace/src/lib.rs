//! heapkit-trace: record a program's heap operations once, replay them
//! against any allocator.
//!
//! - [`record`]: the recorder the LD_PRELOAD shim drives when
//!   `HEAPKIT_TRACE=out.hkt` is set. It never allocates through `malloc`.
//!   The `heapkit-profile` crate drives it from a `GlobalAlloc` wrapper,
//!   for a heap profile of a Rust program (`HEAPKIT_PROFILE=path`).
//! - [`format`](mod@format): the versioned `.hkt` binary format, specified in its docs.
//! - [`Trace`] ([`reader`]): maps, decodes and validates a trace; errors
//!   name the byte offset.
//! - [`schedule`]: one global order of a trace's threads, which defines its
//!   peak live bytes; [`summary`]: what `heapkit-bench trace info` prints.
//!
//! ```sh
//! HEAPKIT_TRACE=out.hkt LD_PRELOAD=target/release/libheapkit.so python3 app.py
//! ```

pub mod format;
pub mod reader;
pub mod record;
pub mod schedule;
pub mod summary;

pub use reader::{Event, Object, Op, Trace, TraceError};
