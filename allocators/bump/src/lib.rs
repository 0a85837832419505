//! heapkit-bump: allocation by pointer bumping, in two shapes.
//!
//! Bump allocation is the cheapest allocation there is: a block is "the next
//! `size` bytes", found by adding to a pointer and comparing with the end of
//! the current chunk. What it gives up is reuse: a bump allocator cannot
//! free one block in the middle of others. This crate offers the two
//! designs that make that trade pay:
//!
//! | | [`Bump`] | [`Arena`] |
//! |---|---|---|
//! | what | a `#[global_allocator]` | a value you create and pass around |
//! | scope | the whole program, every thread | one unit of work, one thread at a time |
//! | memory comes back | never (except a thread's last block) | all at once: `reset`, `rewind`, drop |
//! | `Drop` of values | runs as usual (it is the global allocator) | **not run** by the arena |
//! | use it for | short-lived batch programs: compilers, code generators, CLI tools that allocate, compute and exit | per-request / per-frame / per-pass scratch data in long-running programs |
//! | do not use it for | servers, long loops: memory only grows | values owning resources that need `Drop` |
//!
//! # `Bump`: the whole program bump-allocates
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: heapkit_bump::Bump = heapkit_bump::Bump::new();
//!
//! fn main() {
//!     let v: Vec<u32> = (0..100).collect();
//!     assert_eq!(v.iter().sum::<u32>(), 4950);
//! }
//! ```
//!
//! Each thread bumps through its own chunks (no locks, no atomics on the
//! fast path); a thread's most recent block can be freed or resized in
//! place, so a growing `Vec` or `String` that nobody allocated after is
//! extended without a copy. See [`bump`] for the costs.
//!
//! # `Arena`: scratch memory with one free
//!
//! ```
//! use heapkit_bump::Arena;
//!
//! fn handle(arena: &Arena, line: &str) -> usize {
//!     let words: Vec<&str> = line.split_whitespace().map(|w| &*arena.alloc_str(w)).collect();
//!     words.len()
//! }
//!
//! let mut arena = Arena::new();
//! for line in ["a b c", "d e"] {
//!     let n = handle(&arena, line);
//!     assert!(n >= 2);
//!     arena.reset(); // everything from this line is gone; the chunk stays
//! }
//! ```
//!
//! Collections can live in the arena through `allocator_api2`, re-exported
//! here so that the version matches the one `Arena` implements (a separate
//! `cargo add allocator-api2` may pick an incompatible major version):
//!
//! ```
//! use heapkit_bump::{allocator_api2::vec::Vec, Arena};
//!
//! let arena = Arena::new();
//! let mut v = Vec::new_in(&arena);
//! v.extend([1u8, 2, 3]);
//! assert_eq!(v.len(), 3);
//! ```
//!
//! See [`arena`] for the costs.

pub mod arena;
pub mod bump;

/// The `allocator_api2` crate that [`Arena`] implements `Allocator` for
/// (use its `vec::Vec`, `boxed::Box`, ... with `new_in(&arena)`).
pub use allocator_api2;
pub use arena::{Arena, Checkpoint};
pub use bump::Bump;
/// The contract and the statistics type, re-exported so that reading
/// [`stats`] needs no other dependency.
pub use heapkit_core::{HeapAlloc, Stats};

/// The global [`Bump`] allocator's statistics (every thread's counts, exact
/// for the calling thread and for exited ones), whether or not it is the
/// global allocator. [`Arena`]s count their own (`Arena::allocated_bytes`).
///
/// ```
/// use core::alloc::Layout;
/// use heapkit_bump::{HeapAlloc, Bump};
///
/// let before = heapkit_bump::stats();
/// let a = Bump::new();
/// let p = a.allocate(Layout::from_size_align(1000, 8).unwrap());
/// let after = heapkit_bump::stats();
/// assert_eq!(after.allocs, before.allocs + 1);
/// assert!(after.live_bytes >= before.live_bytes + 1000);
/// // SAFETY: p is a live block of `a`.
/// unsafe { a.free(p) };
/// assert_eq!(heapkit_bump::stats().live_bytes, before.live_bytes);
/// ```
pub fn stats() -> Stats {
    HeapAlloc::stats(&Bump::new())
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
