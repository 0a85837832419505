//! `allocator_api2::alloc::Allocator` for `&Arena`, so collections live in
//! an arena: `allocator_api2::vec::Vec::new_in(&arena)`.
//!
//! `deallocate`, `grow` and `shrink` work in place when the block is the
//! arena's most recent allocation (the usual case for a growing `Vec`):
//! the bump pointer moves with the block. Otherwise `deallocate` does
//! nothing and `grow` copies to a new block.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use allocator_api2::alloc::{AllocError, Allocator};

use super::{round_to_word, Arena};

impl Arena {
    /// Moves the bump pointer to the end of `ptr..ptr+new_size` if
    /// `ptr..ptr+old_size` is the most recent allocation, `ptr` suits
    /// `align` and the new end fits the chunk.
    #[inline]
    fn resize_last(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        align: usize,
    ) -> bool {
        // Blocks occupy whole words (see Arena::bump_target).
        let (old_size, new_size) = (round_to_word(old_size), round_to_word(new_size));
        let p = ptr.as_ptr() as usize;
        let cur = self.cur.get();
        if p.wrapping_add(old_size) != cur || p & (align - 1) != 0 || new_size > self.end.get() - p
        {
            return false;
        }
        self.cur.set(p + new_size);
        if p + new_size < cur && cur > self.dirty_until.get() {
            self.dirty_until.set(cur);
        }
        true
    }
}

// SAFETY: blocks come from disjoint ranges of the arena's chunks and stay
// valid until the arena is reset, rewound (both need &mut Arena, impossible
// while this &Arena is alive) or dropped; in-place resizing only touches the
// most recent block; copies stay within both blocks.
unsafe impl Allocator for &Arena {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        match self.try_alloc_layout(layout) {
            Some(p) => Ok(NonNull::slice_from_raw_parts(p, layout.size())),
            None => Err(AllocError),
        }
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        match self.try_alloc_layout_zeroed(layout) {
            Some(p) => Ok(NonNull::slice_from_raw_parts(p, layout.size())),
            None => Err(AllocError),
        }
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let p = ptr.as_ptr() as usize;
        let cur = self.cur.get();
        if p.wrapping_add(round_to_word(layout.size())) == cur {
            self.cur.set(p);
            if cur > self.dirty_until.get() {
                self.dirty_until.set(cur);
            }
        }
    }

    #[inline]
    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if self.resize_last(
            ptr,
            old_layout.size(),
            new_layout.size(),
            new_layout.align(),
        ) {
            return Ok(NonNull::slice_from_raw_parts(ptr, new_layout.size()));
        }
        let new = Allocator::allocate(self, new_layout)?;
        // SAFETY: both blocks are live and distinct; old_layout.size() is
        // within both (the caller guarantees new >= old).
        unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), new.cast().as_ptr(), old_layout.size()) };
        Ok(new)
    }

    #[inline]
    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let (old, new) = (old_layout.size(), new_layout.size());
        if self.resize_last(ptr, old, new, new_layout.align()) {
            // The extension was above the old bump pointer: only what lies
            // below the dirty mark needs clearing.
            let from = ptr.as_ptr() as usize + old;
            let dirty = self.dirty_until.get();
            if from < dirty {
                // SAFETY: from..min(dirty, end of block) is inside the grown
                // block.
                unsafe { (from as *mut u8).write_bytes(0, (dirty - from).min(new - old)) };
            }
            return Ok(NonNull::slice_from_raw_parts(ptr, new));
        }
        let block = Allocator::allocate_zeroed(self, new_layout)?;
        // SAFETY: both blocks are live and distinct; old <= new.
        unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), block.cast().as_ptr(), old) };
        Ok(block)
    }

    #[inline]
    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let new = new_layout.size();
        if ptr.as_ptr() as usize & (new_layout.align() - 1) == 0 {
            // Give the tail back if this is the last block; stay either way.
            let _ = self.resize_last(ptr, old_layout.size(), new, new_layout.align());
            return Ok(NonNull::slice_from_raw_parts(ptr, new));
        }
        let block = Allocator::allocate(self, new_layout)?;
        // SAFETY: both blocks are live and distinct; new <= old.
        unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), block.cast().as_ptr(), new) };
        Ok(block)
    }
}
