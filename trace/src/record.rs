//! The recorder: writes every heap operation of the running process to a
//! trace file, from inside `malloc`.
//!
//! The LD_PRELOAD shim calls [`start`] once at start-up when
//! `HEAPKIT_TRACE=path` is set, and then, after (allocations) or before
//! (frees) each call into its backend, one of [`on_alloc`], [`on_free`],
//! [`on_realloc`] behind an [`enabled`] test:
//!
//! ```no_run
//! use heapkit_trace::record;
//! # let (ptr, size) = (core::ptr::null_mut::<u8>(), 8);
//! if record::start(c"/tmp/app.hkt") { /* every thread now records */ }
//! if record::enabled() {
//!     record::on_alloc(ptr, size, 16, false);
//! }
//! ```
//!
//! # How it stays out of the way
//!
//! - Each thread appends records to its own buffer (a 128 KiB `os::map`
//!   mapping found through a `const` thread-local pointer), so recording
//!   takes no lock and shares no cache line: per operation it costs a
//!   flag set (below), one clock read and 4-8 encoded bytes. Blocks are named
//!   by address; linking each free to its allocation (even across threads)
//!   is left to the [reader](crate::reader), offline. A full buffer becomes
//!   one block written with one `write(2)`.
//! - The recorder never calls `malloc`: buffers are mapped with
//!   [`os::map`], the file is written with raw `write`. The only
//!   libc calls that might allocate (registering the thread-exit key) run
//!   while the thread's buffer slot is `BufSlot::Initialising`, so
//!   a re-entrant call on that thread is dropped instead of recursing.
//! - Buffers are flushed when full, when a record ends about a second
//!   after the block's start (so a killed process loses at most that much
//!   of a thread's recent records, not a buffer's worth: minutes of a
//!   slow thread; see `thread_buf::FLUSH_TICKS`), when their thread exits
//!   ([`os::ThreadExitKey`]) and at process exit ([`finish`], registered
//!   with `atexit` by [`start`]), which walks a lock-protected registry of
//!   every thread buffer. A buffer is never unmapped (its exit hook unmaps
//!   the thread's stack memory and purges the payload's pages), so a
//!   thread that keeps allocating after its exit hook ran (other TLS
//!   destructors) still records.
//! - Each buffer has a `busy` flag that its owner sets around every record
//!   and [`finish`] waits on before it flushes the buffer; records that
//!   begin after `finish` did are dropped, never torn. Where the kernel has
//!   `membarrier` (Linux 4.14), the owner's side is a plain store, a
//!   compiler fence and a load of `FINISHED` (an asymmetric fence: `finish`
//!   sets `FINISHED` and makes every thread execute a barrier before it
//!   looks at the flags, so it either sees an owner's flag or the owner
//!   sees `FINISHED`); elsewhere an atomic swap, which drains the store
//!   buffer and cost a memset-heavy program a quarter of its record path.
//! - In a forked child, with `%p` in the path, recording goes on into the
//!   child's own trace, starting empty (the inherited buffers hold the
//!   parent's records, which the parent writes); without `%p` the child
//!   stops recording.
//!
//! Ordering: a free is stamped *before* the backend releases the block
//! ([`on_free`]) and an allocation *after* the backend returned it, with a
//! clock that is consistent across cores (the invariant TSC, read with a
//! plain `rdtsc`, which the CPU may run a little early or late: see
//! `now_ticks_for_record`). The reader puts the few records that come out
//! in the wrong order by address: an allocation at an address still live
//! waits for the free that releases it, a free of an address not live
//! waits a moment for the allocation on another thread that produced it.
//! The two objects at a reused address stay apart.

use core::ffi::{c_void, CStr};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use heapkit_core::lock::{RawSpinLock, SpinLock};
use heapkit_core::os;
use heapkit_core::os::unwind::FrameState;

use crate::format;

mod clock;
mod profile;
mod sampled_set;
mod stacks;
mod thread_buf;
mod trace_file;

use sampled_set::SAMPLED;
use stacks::StackRef;
use thread_buf::{flush, write_block, ThreadBuf, BUF_BYTES};

use clock::{now_ticks, now_ticks_for_record};
use profile::{
    count_down, countdown, mode, set_countdown, write_meta_maps, write_meta_mode, Mode, RATE,
};
pub use profile::{sampled_alloc, sampled_free, sampled_may_hold, sampled_profile, start_profile};
use trace_file::{open_trace, per_process, set_template};

static ENABLED: AtomicBool = AtomicBool::new(false);
static STARTED: AtomicBool = AtomicBool::new(false);
static FINISHED: AtomicBool = AtomicBool::new(false);
static FD: AtomicI32 = AtomicI32::new(-1);
static PID: AtomicU32 = AtomicU32::new(0);
static NEXT_THREAD: AtomicU32 = AtomicU32::new(0);
static TOTAL_RECORDS: AtomicU64 = AtomicU64::new(0);
/// Serialises writes to the file so that a block is never split by another.
static WRITE_LOCK: RawSpinLock = RawSpinLock::new();
/// Head of the singly linked list of every thread buffer (address, 0 = none).
/// Buffers are pushed, never removed.
static REGISTRY: SpinLock<usize> = SpinLock::new(0);
static EXIT_KEY: os::ThreadExitKey = os::ThreadExitKey::new();
/// Records dropped (re-entrancy, buffer busy, memory exhaustion).
static DROPPED: AtomicUsize = AtomicUsize::new(0);

heapkit_core::thread_pointer! {
    /// This thread's [`BufSlot`], as a pointer (initial-exec TLS: no
    /// `__tls_get_addr` call per record inside `libheapkit.so`).
    static BUF: *mut ThreadBuf = null, symbol = "heapkit_trace_thread_buf";
}

/// What a thread's buffer slot (`BUF`) holds: its buffer, or why it has
/// none. Stored as one pointer-sized word (the three states are the
/// addresses 0, 1 and 2, which no mapping has), so the fast path's test
/// is one compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufSlot {
    /// No buffer yet: the thread's next record creates one.
    Empty,
    /// Being created: records made meanwhile (by the calls the creation
    /// makes, which may allocate) are dropped, not recursed into.
    Initialising,
    /// Could not be created (no memory): the thread's records are dropped.
    Unavailable,
    /// The thread's buffer, mapped for the life of the process.
    Ready(*mut ThreadBuf),
}

impl BufSlot {
    /// The calling thread's slot.
    #[inline(always)]
    fn current() -> BufSlot {
        match BUF::get() as usize {
            0 => BufSlot::Empty,
            1 => BufSlot::Initialising,
            2 => BufSlot::Unavailable,
            _ => BufSlot::Ready(BUF::get()),
        }
    }

    /// Makes `self` the calling thread's slot.
    fn store(self) {
        BUF::set(match self {
            BufSlot::Empty => core::ptr::null_mut(),
            BufSlot::Initialising => core::ptr::without_provenance_mut(1),
            BufSlot::Unavailable => core::ptr::without_provenance_mut(2),
            BufSlot::Ready(buf) => buf,
        });
    }
}

/// The owners of thread buffers take them with the asymmetric fence (see
/// the module docs): `membarrier` was registered. Changed only while one
/// thread runs (at start, before recording is on; in a forked child).
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);

/// Whether recording is on. One `Relaxed` load: test it before calling any
/// other function of this module.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Starts recording into a new file at `path` (truncated): writes the
/// header, registers [`finish`] with `atexit` and a fork handler, then
/// turns recording on. `%p` in `path` is replaced by the process id, so
/// every process of a program that runs others gets its own trace. Returns
/// `false` (and records nothing) if the file cannot be created, another
/// live process is recording into it (it is `flock`ed: a program exec'd
/// by a recording process must not truncate its parent's trace), or
/// recording was already started.
///
/// Call it once, early (the shim's initialiser). The registrations may
/// call `malloc`; recording is still off while they run.
pub fn start(path: &CStr) -> bool {
    if STARTED.swap(true, Ordering::AcqRel) {
        return false;
    }
    // SAFETY: the one call (`STARTED` above), before recording is on and
    // before the fork handler that reads the template is registered.
    if !unsafe { set_template(path) } {
        return false;
    }
    if !open_trace(os::process_id(), true) {
        return false;
    }
    os::register_atfork(fork_prepare, fork_parent, fork_child);
    os::register_at_exit(finish_at_exit);
    ASYMMETRIC.store(os::register_barrier_all_threads(), Ordering::Relaxed);
    ENABLED.store(true, Ordering::Release);
    true
}

/// Records an allocation of `size` bytes aligned to `align` that returned
/// `ptr` (ignored if null). Call after the backend returned.
///
/// A sampled profile's unsampled call ends in this inline part (a
/// countdown); the rest is out of line.
// The pointers are recorded as addresses, never dereferenced.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
#[inline]
pub fn on_alloc(ptr: *mut u8, size: usize, align: usize, zeroed: bool) {
    if ptr.is_null() {
        return;
    }
    if mode() == Mode::ProfileSampled && !count_down(size) {
        return;
    }
    // SAFETY: taken in the frame that makes this call (this function is
    // inlined into its caller, or is itself that frame).
    unsafe { record_alloc(FrameState::here(), ptr, size, align, zeroed) };
}

/// Records an allocation (a profile: with the stack from `start` out).
///
/// # Safety
/// `start` was taken on this thread in a frame that is still live (see
/// `os::unwind::backtrace_from`).
#[inline(never)]
unsafe fn record_alloc(start: FrameState, ptr: *mut u8, size: usize, align: usize, zeroed: bool) {
    let Some(buf) = enter() else {
        if mode() == Mode::ProfileSampled {
            // No buffer (re-entrant call, no memory): the next sample is
            // due in a mean interval, not at the next allocation.
            set_countdown(RATE.load(Ordering::Relaxed) as isize);
        }
        return;
    };
    let stack = if mode() == Mode::Trace {
        StackRef::Written
    } else {
        // SAFETY: `start` is live (this function's contract).
        match unsafe { buf.profile(start, ptr, size) } {
            Some(stack) => stack,
            None => {
                leave(buf);
                return;
            }
        }
    };
    let mut op = format::KIND_ALLOC;
    if let StackRef::Id(_) = stack {
        op |= format::FLAG_STACK_ID;
    }
    if zeroed {
        op |= format::FLAG_ZEROED;
    }
    let aligned = align > format::DEFAULT_ALIGN;
    if aligned {
        op |= format::FLAG_ALIGNED;
    }
    let mut w = buf.begin(op);
    w.addr(ptr);
    w.value(size as u64);
    if aligned {
        w.value(align.trailing_zeros() as u64);
    }
    if let StackRef::Id(id) = stack {
        w.value(u64::from(id));
    }
    w.end();
    leave(buf);
}

/// Records a free of `ptr` (ignored if null). Call **before** the backend
/// frees it.
///
/// A sampled profile's free of a block that was not sampled ends in this
/// inline part (one load from the set's filter); the rest is out of line.
#[inline]
pub fn on_free(ptr: *mut u8) {
    if ptr.is_null() {
        return;
    }
    if mode() == Mode::ProfileSampled && !SAMPLED.may_hold(ptr as u64) {
        return;
    }
    record_free(ptr);
}

#[inline(never)]
fn record_free(ptr: *mut u8) {
    if mode() == Mode::ProfileSampled && !SAMPLED.remove(ptr as u64) {
        return;
    }
    let Some(buf) = enter() else { return };
    let mut w = buf.begin(format::KIND_FREE);
    w.addr(ptr);
    w.end();
    leave(buf);
}

/// Records `realloc(old, size) == new`; call after the backend returned.
/// Handles the C edge cases: a failed realloc (null `new`, non-zero
/// `size`) keeps `old` alive and records nothing; `realloc(p, 0)` returning
/// null records a free; `realloc(NULL, n)` records an allocation.
// The pointers are recorded as addresses, never dereferenced.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
#[inline]
pub fn on_realloc(old: *mut u8, new: *mut u8, size: usize) {
    if new.is_null() && size != 0 {
        return;
    }
    if old.is_null() {
        on_alloc(new, size, 0, false);
        return;
    }
    if new.is_null() {
        on_free(old);
        return;
    }
    if mode() == Mode::ProfileSampled {
        // A sampled profile sees a realloc as the end of the old block (if
        // it was sampled) and a new allocation (sampled or not).
        on_free(old);
        on_alloc(new, size, 0, false);
        return;
    }
    let start = FrameState::here();
    let Some(buf) = enter() else { return };
    let stack = if mode() == Mode::ProfileEvery {
        // SAFETY: `start` was taken in this frame (or the one this is
        // inlined into), which makes the call.
        match unsafe { buf.profile(start, new, size) } {
            Some(stack) => stack,
            None => {
                leave(buf);
                return;
            }
        }
    } else {
        StackRef::Written
    };
    let mut op = format::KIND_REALLOC;
    if let StackRef::Id(_) = stack {
        op |= format::FLAG_STACK_ID;
    }
    let mut w = buf.begin(op);
    w.addr(old);
    w.addr(new);
    w.value(size as u64);
    if let StackRef::Id(id) = stack {
        w.value(u64::from(id));
    }
    w.end();
    leave(buf);
}

/// Number of operations the recorder had to drop (re-entrant calls during
/// a thread's first record, records racing with [`finish`], no memory for
/// a thread buffer).
pub fn dropped() -> usize {
    DROPPED.load(Ordering::Relaxed)
}

/// Flushes every thread's buffer and writes the end block. Runs at process
/// exit (registered by [`start`]); idempotent; does nothing in a forked
/// child. Records arriving afterwards are dropped.
pub fn finish() {
    // The pid test comes first: a vfork child shares this memory with its
    // parent and must change nothing of the parent's recording.
    if !STARTED.load(Ordering::Acquire) || os::process_id() != PID.load(Ordering::Relaxed) {
        return;
    }
    if FINISHED.swap(true, Ordering::AcqRel) {
        return;
    }
    ENABLED.store(false, Ordering::Relaxed);
    let asymmetric = ASYMMETRIC.load(Ordering::Relaxed);
    if asymmetric {
        // Every owner now either has its busy flag visible here or sees
        // FINISHED at its next record (registered, so this cannot fail but
        // for a kernel bug: then a record racing with this one could be
        // torn, and nothing else).
        os::barrier_all_threads();
    }
    let mut threads = 0u32;
    let mut node = *REGISTRY.lock();
    while node != 0 {
        // SAFETY: registry entries are live thread buffers, never unmapped.
        let buf = unsafe { &mut *(node as *mut ThreadBuf) };
        if asymmetric {
            // Wait for a record in flight; later ones see FINISHED and
            // leave the buffer alone.
            while buf.busy.load(Ordering::Acquire) {
                os::yield_now();
            }
        } else {
            // Take the buffer for good: its owner drops any later record.
            while buf.busy.swap(true, Ordering::Acquire) {
                os::yield_now();
            }
        }
        flush(buf);
        threads = threads.max(buf.thread + 1);
        node = buf.next;
    }
    if mode() != Mode::Trace {
        write_meta_maps();
    }
    let mut end = [0u8; format::BLOCK_HEADER_LEN];
    end[0..4].copy_from_slice(&format::END_TAG.to_le_bytes());
    end[4..8].copy_from_slice(&threads.to_le_bytes());
    end[16..24].copy_from_slice(&now_ticks().to_le_bytes());
    end[24..32].copy_from_slice(&TOTAL_RECORDS.load(Ordering::Relaxed).to_le_bytes());
    end[32..40].copy_from_slice(&os::monotonic_ns().to_le_bytes());
    write_block(&end);
}

extern "C" fn finish_at_exit() {
    finish();
}

/// Before `fork`: hold the registry and write locks so the child does not
/// inherit them taken by a thread that does not exist there.
unsafe extern "C" fn fork_prepare() {
    if ENABLED.load(Ordering::Relaxed) {
        REGISTRY.raw().lock();
        WRITE_LOCK.lock();
    }
}

unsafe extern "C" fn fork_parent() {
    if ENABLED.load(Ordering::Relaxed) {
        release_fork_locks();
    }
}

/// In the child: with `%p` in the path the child records into a trace of
/// its own (its pid), starting empty; without, it stops recording (the
/// file is the parent's).
unsafe extern "C" fn fork_child() {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    release_fork_locks();
    if !per_process() {
        ENABLED.store(false, Ordering::Relaxed);
        return;
    }
    // Only the forking thread exists here. Its buffer (if any) holds the
    // parent's records, which the parent writes: empty it, make it thread 0
    // and the only registered buffer. Other threads' buffers are dropped
    // from the registry (their `busy` flags may be stuck taken).
    let own = BufSlot::current();
    let mut head = REGISTRY.lock();
    *head = 0;
    NEXT_THREAD.store(0, Ordering::Relaxed);
    if let BufSlot::Ready(own) = own {
        // SAFETY: a ready slot holds this thread's buffer, mapped for the
        // life of the process (inherited by the child); it is not busy,
        // because fork is not called from inside a record.
        let buf = unsafe { &mut *own };
        buf.busy.store(false, Ordering::Relaxed);
        buf.forget_recorded_stacks();
        buf.thread = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
        buf.records = 0;
        buf.len = 0;
        buf.base_ticks = now_ticks();
        buf.prev_ticks = buf.base_ticks;
        // The next record's address is a delta from prev_addr; the block
        // header must name the same base.
        buf.base_addr = buf.prev_addr;
        buf.next = 0;
        *head = own as usize;
    }
    drop(head);
    // The registration belongs to the parent's address space; only this
    // thread runs, so the protocol may change here.
    ASYMMETRIC.store(os::register_barrier_all_threads(), Ordering::Relaxed);
    TOTAL_RECORDS.store(0, Ordering::Relaxed);
    let parent_fd = FD.swap(-1, Ordering::Relaxed);
    if parent_fd >= 0 {
        os::close_fd(parent_fd);
    }
    if !open_trace(os::process_id(), false) {
        ENABLED.store(false, Ordering::Relaxed);
        return;
    }
    if mode() != Mode::Trace {
        write_meta_mode();
        write_meta_maps();
    }
}

fn release_fork_locks() {
    // SAFETY: fork_prepare took both locks on this thread (the parent's
    // forking thread, or its copy in the child).
    unsafe {
        WRITE_LOCK.unlock();
        REGISTRY.raw().unlock();
    }
}

/// Takes the calling thread's buffer, creating it on first use; `None`
/// drops the record (re-entrant call, buffer taken by `finish`, no memory).
#[inline]
fn enter() -> Option<&'static mut ThreadBuf> {
    let BufSlot::Ready(p) = BufSlot::current() else {
        return enter_slow(BufSlot::current());
    };
    // SAFETY: a ready slot holds this thread's buffer, mapped for the life
    // of the process.
    let buf = unsafe { &mut *p };
    if !buf.take() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(buf)
}

#[inline]
fn leave(buf: &mut ThreadBuf) {
    buf.busy.store(false, Ordering::Release);
}

#[cold]
#[inline(never)]
fn enter_slow(slot: BufSlot) -> Option<&'static mut ThreadBuf> {
    if slot != BufSlot::Empty {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    BufSlot::Initialising.store();
    let mem = os::map(BUF_BYTES);
    if mem.is_null() {
        BufSlot::Unavailable.store();
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let thread = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    let now = now_ticks();
    let buf_ptr = mem.cast::<ThreadBuf>();
    // SAFETY: mem is a fresh, page-aligned mapping larger than ThreadBuf.
    unsafe {
        buf_ptr.write(ThreadBuf {
            busy: AtomicBool::new(false),
            next: 0,
            thread,
            records: 0,
            base_ticks: now,
            base_addr: 0,
            prev_ticks: now,
            prev_addr: 0,
            len: 0,
            rng: (mem as u64) ^ now ^ 0x9e37_79b9_7f4a_7c15,
            clock_skip: 0,
            stack_memory: core::ptr::null_mut(),
            stack_memory_tried: false,
        })
    };
    // SAFETY: initialised just above, not shared yet.
    set_countdown(unsafe { (*buf_ptr).next_interval() });
    {
        let mut head = REGISTRY.lock();
        // SAFETY: buf_ptr was initialised above and is not shared yet.
        unsafe { (*buf_ptr).next = *head };
        *head = buf_ptr as usize;
    }
    // May call calloc (pthread_setspecific): re-entrant records are dropped
    // while the slot is `Initialising`.
    EXIT_KEY.register(thread_exit, buf_ptr.cast());
    BufSlot::Ready(buf_ptr).store();
    enter()
}

/// Thread-exit hook: writes out what the dying thread recorded and gives
/// back its memory but the buffer's first page: the stack memory (unwind
/// rules, written stacks; about 130 KiB) is unmapped and the payload's
/// pages purged. The buffer stays registered, and mapped, for records the
/// thread makes later in its teardown (other libraries' thread-exit hooks
/// free memory too): those take libgcc's unwinder and are written in full.
unsafe extern "C" fn thread_exit(value: *mut c_void) {
    // SAFETY: value is the ThreadBuf registered for this thread, mapped for
    // the life of the process.
    let buf = unsafe { &mut *value.cast::<ThreadBuf>() };
    if !buf.take() {
        return; // finish() owns it now
    }
    flush(buf);
    buf.release_memory();
    leave(buf);
}
