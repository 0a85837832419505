//! [`Arena`]: a per-request region that frees everything at once.
//!
//! An `Arena` hands out memory by bumping a pointer through chunks it maps
//! from the OS, and gives it all back in one step: [`Arena::reset`] (keeps
//! the largest chunk for the next request), [`Arena::rewind`] to a
//! [`Checkpoint`], or dropping the arena. Individual values are never freed,
//! except that the most recent allocation can be freed, grown or shrunk in
//! place through the [`Allocator`](allocator_api2::alloc::Allocator) impl,
//! which is what makes `Vec::push` in an arena cheap.
//!
//! Use it when a unit of work (a request, a frame, a compiler pass, a parse)
//! builds many values that all die together. Unlike the global
//! [`Bump`](crate::Bump), it does not make the whole program's footprint
//! grow: the memory comes back at every reset.
//!
//! # Drop is not run
//!
//! Like `bumpalo`, an arena **does not run `Drop`** for the values it holds:
//! reset, rewind and drop release the memory without looking at what is in
//! it. Put plain data in it (numbers, `&str`, slices, structs of
//! references), or values whose destructor only frees memory that lives in
//! the same arena (an `allocator_api2` `Vec` in the arena). A `String` or
//! `Box` from the global allocator put in an arena leaks its heap buffer.
//!
//! # Where the chunks come from
//!
//! Chunks are mapped with `heapkit_core::os` directly, not through the global
//! allocator: an arena then works under any global allocator (including
//! [`Bump`](crate::Bump), which would never reuse them), fresh chunks are
//! known to be zero (so [`allocate_zeroed`] skips the memset), and reset can
//! keep a chunk without asking anyone. The cost is a `mmap` per new chunk;
//! chunk sizes double from 16 KiB, and `reset` keeps the largest, so a
//! request loop reaches a steady state with no system call at all.
//!
//! # Example
//!
//! ```
//! use heapkit_bump::Arena;
//! use allocator_api2::vec::Vec;
//!
//! #[derive(Debug)]
//! struct Token<'a> {
//!     text: &'a str,
//!     line: u32,
//! }
//!
//! let mut arena = Arena::new();
//! for request in ["let x = 1;", "print x;"] {
//!     // Everything in this block is allocated in the arena...
//!     let mut tokens = Vec::new_in(&arena);
//!     for word in request.split(' ') {
//!         let text = arena.alloc_str(word);
//!         tokens.push(arena.alloc(Token { text, line: 1 }));
//!     }
//!     assert_eq!(tokens[0].text, request.split(' ').next().unwrap());
//!     drop(tokens);
//!     // ...and freed at once here; the chunk is kept for the next request.
//!     arena.reset();
//! }
//! ```
//!
//! Checkpoints undo part of the work:
//!
//! ```
//! use heapkit_bump::Arena;
//!
//! let mut arena = Arena::new();
//! let names = arena.alloc_slice_copy(&["ann", "bob"]);
//! assert_eq!(names.len(), 2);
//! let before = arena.allocated_bytes();
//! let cp = arena.checkpoint();
//! let scratch = arena.alloc_slice_fill_with(1000, |i| i as u64);
//! assert_eq!(scratch[999], 999);
//! // `names` and `scratch` can no longer be used: rewind takes &mut self.
//! arena.rewind(cp);
//! assert_eq!(arena.allocated_bytes(), before);
//! ```
//!
//! [`allocate_zeroed`]: allocator_api2::alloc::Allocator::allocate_zeroed

mod allocator;
mod chunk;
#[cfg(test)]
mod tests;

use core::alloc::Layout;
use core::cell::Cell;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use chunk::Chunk;

/// Blocks occupy whole words of this size, so the bump pointer stays
/// aligned to it.
const WORD: usize = 8;

/// `size` rounded up to a multiple of [`WORD`]. No overflow: sizes from a
/// Layout are at most isize::MAX.
#[inline(always)]
const fn round_to_word(size: usize) -> usize {
    size.wrapping_add(WORD - 1) & !(WORD - 1)
}

/// Usable bytes of an arena's first chunk (about; rounded to pages).
pub const FIRST_CHUNK: usize = 16 << 10;
/// Chunks stop doubling at this size (bigger requests still get a chunk of
/// their own size).
pub const MAX_GROWTH_CHUNK: usize = 64 << 20;

/// A region of memory that frees everything at once; see the
/// [module documentation](self).
///
/// `Arena` is `Send` but not `Sync`: allocating takes `&self` through
/// interior mutability, so share it between threads by giving each thread
/// its own.
pub struct Arena {
    /// Next free address in the current chunk.
    cur: Cell<usize>,
    /// One past the usable end of the current chunk.
    end: Cell<usize>,
    /// Bytes of the current chunk in `[max(cur, dirty_until), end)` are zero.
    dirty_until: Cell<usize>,
    /// The newest chunk (null: none).
    chunk: Cell<*mut Chunk>,
    /// Bytes handed out from chunks older than the current one.
    used_before: Cell<usize>,
    /// Bytes mapped for all chunks.
    capacity: Cell<usize>,
    /// Usable size to ask for at the next new chunk.
    next_chunk: Cell<usize>,
    /// Values in the arena may be anything; the arena never touches them.
    _not_sync: PhantomData<*mut u8>,
}
// Invariants: with no chunk, cur == 1 and end == 0 (the sentinel: every
// request fails the fit test, no null check needed); otherwise
// start(chunk) <= cur <= end == chunk::end(chunk) and cur is WORD-aligned
// (chunk starts are 16-aligned and every block is a whole number of words). Every address handed out
// is below cur or in an older chunk.

// SAFETY: the arena exclusively owns its chunks; values in it are never
// accessed or dropped by the arena, and references to them borrow the arena,
// so it cannot move to another thread while they exist.
unsafe impl Send for Arena {}

/// A position in an [`Arena`] to [`rewind`](Arena::rewind) to.
#[derive(Clone, Copy, Debug)]
pub struct Checkpoint {
    chunk: *mut Chunk,
    cur: usize,
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

impl Arena {
    /// An empty arena; the first allocation maps its first chunk.
    pub const fn new() -> Self {
        Self {
            cur: Cell::new(1),
            end: Cell::new(0),
            dirty_until: Cell::new(0),
            chunk: Cell::new(ptr::null_mut()),
            used_before: Cell::new(0),
            capacity: Cell::new(0),
            next_chunk: Cell::new(FIRST_CHUNK),
            _not_sync: PhantomData,
        }
    }

    /// An arena whose first chunk holds at least `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        let a = Self::new();
        a.next_chunk.set(bytes.max(FIRST_CHUNK));
        a
    }

    /// Allocates memory for `layout`, or `None` if the OS refuses.
    #[inline(always)]
    pub fn try_alloc_layout(&self, layout: Layout) -> Option<NonNull<u8>> {
        let (p, new_cur) = self.bump_target(layout);
        if new_cur > self.end.get() {
            return self.alloc_slow(layout);
        }
        self.cur.set(new_cur);
        // SAFETY: p >= cur >= start of a mapped chunk, so it is not null.
        Some(unsafe { NonNull::new_unchecked(p as *mut u8) })
    }

    /// Allocates memory for `layout`; aborts through
    /// `std::alloc::handle_alloc_error` if the OS refuses.
    #[inline(always)]
    pub fn alloc_layout(&self, layout: Layout) -> NonNull<u8> {
        // The fast path of try_alloc_layout again, so that no Option (and no
        // null test) survives on it.
        let (p, new_cur) = self.bump_target(layout);
        if new_cur > self.end.get() {
            return self.alloc_layout_slow(layout);
        }
        self.cur.set(new_cur);
        // SAFETY: p >= cur >= start of a mapped chunk, so it is not null.
        unsafe { NonNull::new_unchecked(p as *mut u8) }
    }

    /// Where a block for `layout` would start and where the bump pointer
    /// would move. No overflow: cur is a user-space address (< 2^47) or 1,
    /// and a Layout keeps size + align - 1 <= isize::MAX. cur is 8-aligned
    /// (sizes round up to words), so alignments up to 8 cost nothing.
    #[inline(always)]
    fn bump_target(&self, layout: Layout) -> (usize, usize) {
        let cur = self.cur.get();
        let align = layout.align();
        let p = if align <= WORD {
            cur
        } else {
            cur.wrapping_add(align - 1) & !(align - 1)
        };
        (p, p.wrapping_add(round_to_word(layout.size())))
    }

    #[cold]
    #[inline(never)]
    fn alloc_layout_slow(&self, layout: Layout) -> NonNull<u8> {
        match self.alloc_slow(layout) {
            Some(p) => p,
            None => std::alloc::handle_alloc_error(layout),
        }
    }

    /// Allocates zeroed memory for `layout`; memory never handed out since
    /// its chunk was mapped is not memset again.
    #[inline]
    pub fn try_alloc_layout_zeroed(&self, layout: Layout) -> Option<NonNull<u8>> {
        let p = self.try_alloc_layout(layout)?;
        let addr = p.as_ptr() as usize;
        let dirty = self.dirty_until.get();
        if addr < dirty {
            // SAFETY: the first min(size, dirty - addr) bytes of the new block
            // are ours.
            unsafe { p.as_ptr().write_bytes(0, (dirty - addr).min(layout.size())) };
        }
        Some(p)
    }

    /// Moves `value` into the arena. Its `Drop` never runs.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc<T>(&self, value: T) -> &mut T {
        if core::mem::size_of::<T>() == 0 {
            core::mem::forget(value);
            // SAFETY: a dangling, aligned pointer is a valid zero-size value,
            // and no one else can observe it.
            return unsafe { &mut *NonNull::<T>::dangling().as_ptr() };
        }
        let p = self.alloc_layout(Layout::new::<T>()).cast::<T>();
        // SAFETY: p is fresh, aligned memory for a T that only this
        // reference will ever reach.
        unsafe {
            p.as_ptr().write(value);
            &mut *p.as_ptr()
        }
    }

    /// Copies `src` into the arena.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> &mut [T] {
        let p = self.alloc_array::<T>(src.len());
        // SAFETY: p has room for src.len() Ts and does not overlap src.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), src.len());
            core::slice::from_raw_parts_mut(p.as_ptr(), src.len())
        }
    }

    /// Allocates a slice of `len` values, the `i`th being `f(i)`. If `f`
    /// panics, the values already made are leaked (not dropped).
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill_with<T, F: FnMut(usize) -> T>(&self, len: usize, mut f: F) -> &mut [T] {
        let p = self.alloc_array::<T>(len);
        for i in 0..len {
            // SAFETY: i < len, inside the fresh array; the space is reserved
            // before f runs, so f may use the arena too.
            unsafe { p.as_ptr().add(i).write(f(i)) };
        }
        // SAFETY: all len elements were written.
        unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), len) }
    }

    /// Copies `s` into the arena.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_str(&self, s: &str) -> &mut str {
        let bytes = self.alloc_slice_copy(s.as_bytes());
        // SAFETY: a copy of valid UTF-8.
        unsafe { core::str::from_utf8_unchecked_mut(bytes) }
    }

    #[inline]
    fn alloc_array<T>(&self, len: usize) -> NonNull<T> {
        let Ok(layout) = Layout::array::<T>(len) else {
            panic!("heapkit_bump::Arena: array of {len} elements overflows isize");
        };
        if layout.size() == 0 {
            return NonNull::dangling();
        }
        self.alloc_layout(layout).cast()
    }

    /// Bytes handed out since the arena was made, reset or rewound
    /// (including alignment padding and the abandoned ends of older
    /// chunks' last allocations, excluding the unused rest of chunks).
    /// Unlike `bumpalo::Bump::allocated_bytes`, this is not the capacity:
    /// see [`Arena::capacity_bytes`].
    pub fn allocated_bytes(&self) -> usize {
        let c = self.chunk.get();
        if c.is_null() {
            0
        } else {
            self.used_before.get() + (self.cur.get() - chunk::start(c))
        }
    }

    /// Bytes mapped from the OS for this arena's chunks.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity.get()
    }

    /// The current position, to [`rewind`](Arena::rewind) to later.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            chunk: self.chunk.get(),
            cur: self.cur.get(),
        }
    }

    /// Frees everything allocated after `cp`; allocations made before it
    /// keep their contents. Chunks mapped after `cp` are unmapped.
    /// "Allocated after" includes what earlier blocks gained after `cp`: a
    /// block grown in place (or moved by `grow`) since then keeps only what
    /// lay below the checkpoint.
    ///
    /// Taking `&mut self` proves no reference into the arena is alive, so
    /// nothing can observe the memory being reused: what survives is only
    /// reachable again through raw pointers kept by the caller (or
    /// re-derived from indices into memory it allocated before `cp`).
    /// Rewinding to a position after the current one in the same chunk is
    /// allowed (it skips memory).
    ///
    /// # Panics
    /// If `cp` was not taken from this arena, or its chunk was already
    /// released by a [`reset`](Arena::reset) or an earlier rewind to an
    /// older checkpoint.
    pub fn rewind(&mut self, cp: Checkpoint) {
        if cp.chunk.is_null() {
            return self.reset();
        }
        let mut c = self.chunk.get();
        while !c.is_null() && c != cp.chunk {
            // SAFETY: c is a live chunk of this arena.
            c = unsafe { (*c).prev };
        }
        // SAFETY: if found, c is a live chunk of this arena.
        let in_bounds =
            !c.is_null() && chunk::start(c) <= cp.cur && cp.cur <= unsafe { chunk::end(c) };
        assert!(
            in_bounds,
            "heapkit_bump::Arena::rewind: checkpoint not from this arena or already released"
        );
        let target = cp.chunk;
        let mut high_water = self.cur.get().max(self.dirty_until.get());
        let mut c = self.chunk.get();
        while c != target {
            // SAFETY: c is a live chunk newer than target; nothing points
            // into it (&mut self).
            unsafe {
                let prev = (*c).prev;
                self.capacity.set(self.capacity.get() - (*c).map_size);
                chunk::unmap(c);
                c = prev;
                high_water = (*c).high_water;
                self.used_before.set(self.used_before.get() - (*c).used);
            }
        }
        self.chunk.set(target);
        // SAFETY: target is live.
        self.end.set(unsafe { chunk::end(target) });
        self.dirty_until.set(high_water);
        self.cur.set(cp.cur);
    }

    /// Frees everything, keeping the largest chunk for reuse (its memory is
    /// not returned to the OS and not cleared; zeroed allocations clear what
    /// they need).
    pub fn reset(&mut self) {
        let current = self.chunk.get();
        if current.is_null() {
            return;
        }
        // SAFETY: current is live.
        if unsafe { (*current).prev }.is_null() {
            // One chunk (the steady state of a request loop): rewind it.
            self.dirty_until
                .set(self.cur.get().max(self.dirty_until.get()));
            self.cur.set(chunk::start(current));
            return;
        }
        // SAFETY: current is live; record its high-water mark like an older
        // chunk's.
        unsafe { (*current).high_water = self.cur.get().max(self.dirty_until.get()) };
        let mut largest = current;
        let mut c = current;
        while !c.is_null() {
            // SAFETY: c and largest are live chunks of this arena.
            unsafe {
                if (*c).map_size > (*largest).map_size {
                    largest = c;
                }
                c = (*c).prev;
            }
        }
        let mut c = current;
        while !c.is_null() {
            // SAFETY: c is live; nothing points into the arena (&mut self).
            unsafe {
                let prev = (*c).prev;
                if c != largest {
                    chunk::unmap(c);
                }
                c = prev;
            }
        }
        // SAFETY: largest is live and now the only chunk.
        unsafe {
            (*largest).prev = ptr::null_mut();
            self.capacity.set((*largest).map_size);
            self.end.set(chunk::end(largest));
            self.dirty_until.set((*largest).high_water);
        }
        self.chunk.set(largest);
        self.cur.set(chunk::start(largest));
        self.used_before.set(0);
    }

    /// Maps a new chunk for `layout` and retries.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout) -> Option<NonNull<u8>> {
        let wanted = round_to_word(layout.size()).checked_add(layout.align())?;
        let usable = self.next_chunk.get().max(wanted);
        let old = self.chunk.get();
        let new = chunk::map(usable, old);
        if new.is_null() {
            return None;
        }
        if !old.is_null() {
            // SAFETY: old is live; it stops being current.
            unsafe {
                (*old).high_water = self.cur.get().max(self.dirty_until.get());
                (*old).used = self.cur.get() - chunk::start(old);
                self.used_before.set(self.used_before.get() + (*old).used);
            }
        }
        // SAFETY: new is live.
        let map_size = unsafe { (*new).map_size };
        self.capacity.set(self.capacity.get() + map_size);
        self.next_chunk
            .set((map_size * 2).min(MAX_GROWTH_CHUNK.max(self.next_chunk.get())));
        self.chunk.set(new);
        self.cur.set(chunk::start(new));
        // SAFETY: new is live.
        self.end.set(unsafe { chunk::end(new) });
        self.dirty_until.set(0);
        self.try_alloc_layout(layout)
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let mut c = self.chunk.get();
        while !c.is_null() {
            // SAFETY: c is live; the arena is going away and every reference
            // into it has ended.
            unsafe {
                let prev = (*c).prev;
                chunk::unmap(c);
                c = prev;
            }
        }
    }
}
