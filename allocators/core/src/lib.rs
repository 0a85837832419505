//! heapkit-core: the contract every heapkit allocator implements, and the
//! pieces they share.
//!
//! - [`HeapAlloc`]: allocate, allocate_zeroed, deallocate (sized), free
//!   (unsized), usable_size, reallocate, stats. [`global_alloc!`] derives
//!   `GlobalAlloc` from it and [`capi`] derives the C malloc API.
//! - [`os`]: every OS call (mmap, munmap, mremap, madvise, pthread keys and
//!   atfork), counted, never allocating.
//! - [`segment`]: 4 MiB-aligned, tagged segments, so `free(ptr)` finds its
//!   owner by masking.
//! - [`large`]: the shared path for blocks above the size classes, and
//!   the mapping of segment spans.
//! - [`reservation`]: address space mapped ahead, carved into segment spans
//!   without a syscall.
//! - [`background`]: the optional background purger thread.
//! - [`size_class`]: the `const` class table.
//! - [`stats`]: one [`Stats`] shape, counted per thread and merged on read.
//! - [`list`]: the intrusive doubly linked list of pages, segments, slabs.
//! - [`lock`]: a spin lock for slow paths.
//! - [`thread_slots`]: storage for per-thread state outside the TLS block.
//! - [`misuse`]: one-line reports of detected heap misuse, then abort.
//! - [`harden`]: the hardening policies ([`harden::Fast`],
//!   [`harden::Hardened`]) allocators are generic over.
//!
//! Rules every allocator keeps: nothing inside allocates through the global
//! allocator, nothing panics across the allocator boundary (exhaustion is a
//! null return), and every `unsafe` block states why it is sound.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod background;
pub mod capi;
mod contract;
pub mod harden;
pub mod large;
pub mod list;
pub mod lock;
pub mod misuse;
pub mod once;
pub mod options;
pub mod os;
pub mod reservation;
pub mod segment;
pub mod size_class;
pub mod stats;
#[cfg(test)]
mod testing;
pub mod thread_slots;

pub use contract::{realloc_by_copy, HeapAlloc};
pub use stats::{GlobalStats, Stats, ThreadStats};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
