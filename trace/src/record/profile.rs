//! Heap profiles: what the recorder records (`HEAPKIT_TRACE`'s every call,
//! or `HEAPKIT_PROFILE`'s allocations with their stacks, every one or
//! sampled by bytes), the per-thread countdown to the next sample, and the
//! metadata blocks a profile carries (its mode, the process's memory map).

use core::ffi::CStr;
use core::sync::atomic::{AtomicU64, Ordering};

use heapkit_core::os;
use heapkit_core::os::unwind::FrameState;

use super::sampled_set::SAMPLED;
use super::thread_buf::write_block;
use super::{enabled, record_alloc, record_free, start};
use crate::format;

/// What the recorder records.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum Mode {
    /// Every call, no stacks (`HEAPKIT_TRACE`).
    Trace = 0,
    /// Every allocation with its stack, every free (`HEAPKIT_PROFILE`,
    /// rate 0).
    ProfileEvery = 1,
    /// Allocations sampled by bytes, with stacks; frees of sampled blocks.
    ProfileSampled = 2,
}

static MODE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(Mode::Trace as u8);
/// Mean bytes between samples (sampled profiles).
pub(super) static RATE: AtomicU64 = AtomicU64::new(0);

#[inline]
pub(super) fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        1 => Mode::ProfileEvery,
        2 => Mode::ProfileSampled,
        _ => Mode::Trace,
    }
}

heapkit_core::thread_pointer! {
    /// Sampled profiles: bytes this thread still allocates before its next
    /// sample, an `isize` kept in a pointer-sized initial-exec slot (no
    /// buffer to load, no atomic). Zero in a new thread, so its first
    /// allocation takes the slow path, which makes its buffer and draws
    /// its first interval.
    static COUNTDOWN: *mut u8 = null, symbol = "heapkit_trace_sample_countdown";
}

#[inline(always)]
pub(super) fn countdown() -> isize {
    COUNTDOWN::get().addr() as isize
}

#[inline(always)]
pub(super) fn set_countdown(bytes: isize) {
    COUNTDOWN::set(core::ptr::without_provenance_mut(bytes as usize));
}

/// Sampled profiles, before anything else: counts `size` down on the
/// thread's countdown; true when it reached zero (this allocation is due a
/// sample, or the thread has not drawn an interval yet). A signal handler's
/// allocation between the load and the store is counted or lost, which
/// moves one sample by its size: harmless.
#[inline(always)]
pub(super) fn count_down(size: usize) -> bool {
    let left = countdown().wrapping_sub(size as isize);
    set_countdown(left);
    left <= 0
}

/// Whether a sampled heap profile runs (`HEAPKIT_PROFILE` with a non-zero
/// rate): the shim's sampled twins then call [`sampled_alloc`] and
/// [`sampled_free`], without [`enabled`] first.
pub fn sampled_profile() -> bool {
    enabled() && mode() == Mode::ProfileSampled
}

/// A sampled profile's allocation hook, inlined into the shim's sampled
/// twins (the backend's fast path and this, per backend): an allocation
/// of `size` bytes returned `ptr` (null: failed). Counts the bytes down
/// and calls the recorder only for a sample.
// The pointers are recorded as addresses, never dereferenced.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
#[inline(always)]
pub fn sampled_alloc(ptr: *mut u8, size: usize, align: usize, zeroed: bool) {
    if count_down(size) {
        // SAFETY: taken in the frame that calls sample_alloc.
        unsafe { sample_alloc(FrameState::here(), ptr, size, align, zeroed) };
    }
}

/// A sampled profile's free hook, inlined into the shim's sampled twins:
/// call before the backend frees `ptr`. One load from the set's filter;
/// records the free of a sampled block.
#[inline(always)]
pub fn sampled_free(ptr: *mut u8) {
    if SAMPLED.may_hold(ptr as u64) {
        record_free(ptr);
    }
}

/// False when `ptr` is certainly not a sampled block (a sampled profile's
/// `realloc` takes the recording path only for those).
#[inline(always)]
pub fn sampled_may_hold(ptr: *mut u8) -> bool {
    SAMPLED.may_hold(ptr as u64)
}

/// [`sampled_alloc`]'s slow path: the countdown reached zero.
///
/// # Safety
/// As for [`record_alloc`].
#[cold]
#[inline(never)]
unsafe fn sample_alloc(start: FrameState, ptr: *mut u8, size: usize, align: usize, zeroed: bool) {
    if ptr.is_null() {
        // A failed allocation allocated nothing.
        set_countdown(countdown().wrapping_add(size as isize));
        return;
    }
    if !enabled() {
        // Recording ended (exit, or a forked child): never again.
        set_countdown(isize::MAX);
        return;
    }
    // SAFETY: `start` is live (this function's contract).
    unsafe { record_alloc(start, ptr, size, align, zeroed) };
}

/// Starts a heap profile into `path` (`%p` = pid, as [`start`]): every
/// allocation with its call stack when `rate` is 0, else allocations
/// sampled by bytes with a mean of `rate` bytes between samples (an
/// exponential interval, as jemalloc and tcmalloc sample), and the frees of
/// what was recorded. Writes the mode and the process's memory map as
/// metadata (again at exit, for libraries loaded since). Warms up the
/// unwinder here, outside any allocator call.
pub fn start_profile(path: &CStr, rate: u64) -> bool {
    let mut frames = [0usize; 4];
    let _ = os::backtrace(&mut frames);
    if rate > 0 {
        if !SAMPLED.start() {
            return false;
        }
        RATE.store(rate, Ordering::Relaxed);
        MODE.store(Mode::ProfileSampled as u8, Ordering::Relaxed);
    } else {
        MODE.store(Mode::ProfileEvery as u8, Ordering::Relaxed);
    }
    if !start(path) {
        return false;
    }
    write_meta_mode();
    write_meta_maps();
    true
}

/// The first metadata line: `mode every` or `mode sampled <rate>`.
pub(super) fn write_meta_mode() {
    let mut line = [0u8; 64];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        line[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    match mode() {
        Mode::ProfileSampled => {
            put(b"mode sampled ");
            let mut digits = [0u8; 20];
            put(heapkit_core::options::format_number(
                RATE.load(Ordering::Relaxed),
                &mut digits,
            ));
        }
        _ => put(b"mode every"),
    }
    put(b"\n");
    write_meta(&line[..len]);
}

/// The process's `/proc/self/maps` as a metadata block.
pub(super) fn write_meta_maps() {
    const CAP: usize = 4 << 20;
    let buf = os::map(CAP);
    if buf.is_null() {
        return;
    }
    // SAFETY: buf is a fresh mapping of CAP bytes; the first bytes leave
    // room for the block header.
    let text = unsafe {
        core::slice::from_raw_parts_mut(
            buf.add(format::BLOCK_HEADER_LEN),
            CAP - format::BLOCK_HEADER_LEN,
        )
    };
    let n = os::read_file(c"/proc/self/maps", text);
    let text = &text[..n];
    write_meta_in_place(buf, text);
    // SAFETY: mapped above, no longer used.
    unsafe { os::unmap(buf, CAP) };
}

/// Writes `text` as a metadata block (short texts: copied to the stack).
fn write_meta(text: &[u8]) {
    let mut block = [0u8; 256];
    let n = text.len().min(block.len() - format::BLOCK_HEADER_LEN);
    block[format::BLOCK_HEADER_LEN..format::BLOCK_HEADER_LEN + n].copy_from_slice(&text[..n]);
    let (head, _) = block.split_at_mut(format::BLOCK_HEADER_LEN + n);
    fill_meta_header(head, n);
    write_block(head);
}

/// Writes a metadata block whose payload already sits at
/// `base + BLOCK_HEADER_LEN`.
fn write_meta_in_place(base: *mut u8, text: &[u8]) {
    // SAFETY: base..+header+text is one writable mapping (the caller's).
    let block =
        unsafe { core::slice::from_raw_parts_mut(base, format::BLOCK_HEADER_LEN + text.len()) };
    fill_meta_header(block, text.len());
    write_block(block);
}

fn fill_meta_header(block: &mut [u8], len: usize) {
    let sum = format::checksum(&block[format::BLOCK_HEADER_LEN..]);
    block[0..4].copy_from_slice(&format::META_TAG.to_le_bytes());
    block[4..12].fill(0);
    block[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    block[16..32].fill(0);
    block[32..36].copy_from_slice(&sum.to_le_bytes());
    block[36..40].fill(0);
}
