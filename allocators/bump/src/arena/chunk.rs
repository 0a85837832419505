//! The chunks of an [`Arena`](super::Arena): page mappings from the OS,
//! linked newest-first.

use core::ptr;

use heapkit_core::os;

/// The start of every arena chunk. The usable bytes follow it up to
/// `base + map_size`.
///
/// Invariant: `prev` is the next older chunk of the same arena or null;
/// `high_water` (set when the chunk stops being current) is the highest
/// address ever handed out from it, so bytes above it are still zero.
#[repr(C)]
pub(super) struct Chunk {
    pub(super) prev: *mut Chunk,
    pub(super) map_size: usize,
    pub(super) high_water: usize,
    /// Bytes handed out from this chunk (set when it stops being current).
    pub(super) used: usize,
}

/// Bytes before the first usable byte of a chunk (keeps 16-alignment).
pub(super) const CHUNK_HEADER: usize = core::mem::size_of::<Chunk>();
const _: () = assert!(CHUNK_HEADER.is_multiple_of(16));

/// Maps a chunk with room for at least `min_usable` bytes (rounded to
/// pages); null on failure.
pub(super) fn map(min_usable: usize, prev: *mut Chunk) -> *mut Chunk {
    let Some(size) = min_usable
        .checked_add(CHUNK_HEADER)
        .and_then(os::round_to_pages)
    else {
        return ptr::null_mut();
    };
    let base = os::map(size).cast::<Chunk>();
    if !base.is_null() {
        // SAFETY: base is a fresh mapping of `size` bytes, page-aligned.
        unsafe {
            base.write(Chunk {
                prev,
                map_size: size,
                high_water: 0,
                used: 0,
            })
        };
    }
    base
}

/// The first usable address of `chunk`.
#[inline]
pub(super) fn start(chunk: *mut Chunk) -> usize {
    chunk as usize + CHUNK_HEADER
}

/// One past the last usable address of `chunk`.
///
/// # Safety
/// `chunk` must be a live chunk.
#[inline]
pub(super) unsafe fn end(chunk: *mut Chunk) -> usize {
    // SAFETY: caller guarantee.
    chunk as usize + unsafe { (*chunk).map_size }
}

/// Unmaps `chunk`.
///
/// # Safety
/// `chunk` must be a live chunk that nothing points into any more.
pub(super) unsafe fn unmap(chunk: *mut Chunk) {
    // SAFETY: caller guarantee; the mapping is exactly chunk..+map_size.
    unsafe { os::unmap(chunk.cast(), (*chunk).map_size) };
}
