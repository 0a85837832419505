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
//!   takes no lock and shares no cache line: per operation it costs an
//!   uncontended swap, one `rdtscp` and 4-8 encoded bytes. Blocks are named
//!   by address; linking each free to its allocation (even across threads)
//!   is left to the [reader](crate::reader), offline. A full buffer becomes
//!   one block written with one `write(2)`.
//! - The recorder never calls `malloc`: buffers are mapped with
//!   [`os::map`], the file is written with raw `write`. The only
//!   libc calls that might allocate (registering the thread-exit key) run
//!   while the thread's buffer pointer holds the `INITIALISING` sentinel, so
//!   a re-entrant call on that thread is dropped instead of recursing.
//! - Buffers are flushed when full, when their thread exits
//!   ([`os::ThreadExitKey`]) and at process exit ([`finish`], registered
//!   with `atexit` by [`start`]), which walks a lock-protected registry of
//!   every thread buffer. A buffer is never unmapped, so a thread that keeps
//!   allocating after its exit hook ran (other TLS destructors) still
//!   records.
//! - Each buffer has a `busy` flag that its owner takes around every record
//!   (an uncontended swap) and [`finish`] takes to flush it; after `finish`
//!   the flags stay taken, so late records are dropped, never torn.
//! - In a forked child, with `%p` in the path, recording goes on into the
//!   child's own trace, starting empty (the inherited buffers hold the
//!   parent's records, which the parent writes); without `%p` the child
//!   stops recording.
//!
//! Ordering: a free is stamped *before* the backend releases the block
//! ([`on_free`]) and an allocation *after* the backend returned it, with a
//! clock that is consistent across cores (the invariant TSC, read with
//! `rdtscp`, which waits for earlier instructions). So when an address is
//! reused, its free carries an earlier time than its next allocation, which
//! is what lets the reader tell the two objects apart.

use core::ffi::{c_int, c_void, CStr};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use heapkit_core::lock::{RawSpinLock, SpinLock};
use heapkit_core::os;

use crate::format::{self, put_varint, zigzag};

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

/// Bytes of one thread buffer mapping.
const BUF_BYTES: usize = 128 << 10;
/// Offset of the block header inside the mapping; the payload follows it,
/// so a flush writes header and payload with one `write`.
const BLOCK_AT: usize = 128;
const PAYLOAD_AT: usize = BLOCK_AT + format::BLOCK_HEADER_LEN;
const PAYLOAD_CAP: usize = BUF_BYTES - PAYLOAD_AT;

/// Thread-local pointer values that are not buffers.
const NO_BUFFER: usize = 0;
const INITIALISING: usize = 1;
const UNAVAILABLE: usize = 2;

/// One thread's record buffer; lives at the start of its own mapping.
///
/// Invariants: `len <= PAYLOAD_CAP`; `payload[..len]` holds `records`
/// complete records, encoded relative to `base_ticks` / `base_addr`;
/// `prev_ticks` / `prev_addr` are the timestamp and address the next record
/// is relative to.
/// Every field but `busy` and `next` is touched only by the thread holding
/// `busy`.
#[repr(C)]
struct ThreadBuf {
    busy: AtomicBool,
    next: usize,
    thread: u32,
    records: u32,
    base_ticks: u64,
    base_addr: u64,
    prev_ticks: u64,
    prev_addr: u64,
    len: usize,
}

const _: () = assert!(core::mem::size_of::<ThreadBuf>() <= BLOCK_AT);

heapkit_core::thread_pointer! {
    /// This thread's buffer, or one of the values above (initial-exec TLS:
    /// no `__tls_get_addr` call per record inside `libheapkit.so`).
    static BUF: *mut ThreadBuf = null, symbol = "heapkit_trace_thread_buf";
}

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
    let template = path.to_bytes_with_nul();
    if template.len() > TEMPLATE_CAP {
        os::write_stderr(b"heapkit-trace: HEAPKIT_TRACE path too long\n");
        return false;
    }
    // SAFETY: written once, here, before recording is on and before the
    // fork handler that reads it is registered.
    unsafe { (&mut *TEMPLATE.0.get())[..template.len()].copy_from_slice(template) };
    if !open_trace(os::process_id(), true) {
        return false;
    }
    os::register_atfork(fork_prepare, fork_parent, fork_child);
    os::register_at_exit(finish_at_exit);
    ENABLED.store(true, Ordering::Release);
    true
}

/// The `HEAPKIT_TRACE` path as given (with `%p`), NUL-terminated.
struct PathTemplate(core::cell::UnsafeCell<[u8; TEMPLATE_CAP]>);
// SAFETY: written once by `start` before any other thread or fork handler
// can read it; read-only afterwards.
unsafe impl Sync for PathTemplate {}
const TEMPLATE_CAP: usize = 4096;
static TEMPLATE: PathTemplate = PathTemplate(core::cell::UnsafeCell::new([0; TEMPLATE_CAP]));

fn template() -> &'static CStr {
    // SAFETY: `start` stored a NUL-terminated path before anything reads it.
    let bytes = unsafe { &*TEMPLATE.0.get() };
    CStr::from_bytes_until_nul(bytes).unwrap_or(c"")
}

/// True when the path names each process (`%p`).
fn per_process() -> bool {
    template().to_bytes().windows(2).any(|w| w == b"%p")
}

/// Creates this process's trace file and writes its header; `FD` and `PID`
/// then name it. Says why on stderr when it cannot (once per process tree:
/// not when the parent has the same `HEAPKIT_TRACE` and so said it).
fn open_trace(pid: u32, say_why: bool) -> bool {
    let mut expanded = [0u8; 4096];
    let Some(path) = expand_pid(template(), pid, &mut expanded) else {
        os::write_stderr(b"heapkit-trace: HEAPKIT_TRACE path too long\n");
        return false;
    };
    let fd = match os::create_append_locked(path) {
        os::LockedFile::Created(fd) => fd,
        // Another live process (typically the parent that ran this one) is
        // writing this file: leave it alone, silently (a shell script may
        // start hundreds of such children). `%p` records each process.
        os::LockedFile::HeldElsewhere => return false,
        os::LockedFile::Failed(err) => {
            if say_why {
                cannot_create(path, err);
            }
            return false;
        }
    };
    let mut header = [0u8; format::HEADER_LEN];
    header[0..8].copy_from_slice(&format::MAGIC);
    header[8..10].copy_from_slice(&format::VERSION.to_le_bytes());
    header[10..12].copy_from_slice(&(format::HEADER_LEN as u16).to_le_bytes());
    header[12..16].copy_from_slice(&pid.to_le_bytes());
    header[16..24].copy_from_slice(&os::monotonic_ns().to_le_bytes());
    header[24..32].copy_from_slice(&now_ticks().to_le_bytes());
    if !os::write_fd(fd, &header) {
        os::close_fd(fd);
        return false;
    }
    FD.store(fd, Ordering::Relaxed);
    PID.store(pid, Ordering::Relaxed);
    true
}

/// `heapkit-trace: cannot create PATH: REASON`, unless the parent process
/// runs with the same `HEAPKIT_TRACE` (it failed the same way and said so).
#[cold]
fn cannot_create(path: &CStr, err: c_int) {
    let mut entry = [0u8; TEMPLATE_CAP + 16];
    let name = b"HEAPKIT_TRACE=";
    let value = template().to_bytes();
    entry[..name.len()].copy_from_slice(name);
    entry[name.len()..name.len() + value.len()].copy_from_slice(value);
    if os::parent_environment_has(&entry[..name.len() + value.len()]) {
        return;
    }
    let mut text = [0u8; 128];
    os::write_stderr(b"heapkit-trace: cannot create the HEAPKIT_TRACE file ");
    os::write_stderr(path.to_bytes());
    os::write_stderr(b": ");
    os::write_stderr(os::error_text(err, &mut text));
    os::write_stderr(b" (nothing is recorded)\n");
}

/// Records an allocation of `size` bytes aligned to `align` that returned
/// `ptr` (ignored if null). Call after the backend returned.
#[inline]
pub fn on_alloc(ptr: *mut u8, size: usize, align: usize, zeroed: bool) {
    if ptr.is_null() {
        return;
    }
    let Some(buf) = enter() else { return };
    let mut op = format::KIND_ALLOC;
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
    w.end();
    leave(buf);
}

/// Records a free of `ptr` (ignored if null). Call **before** the backend
/// frees it.
#[inline]
pub fn on_free(ptr: *mut u8) {
    if ptr.is_null() {
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
    let Some(buf) = enter() else { return };
    let mut w = buf.begin(format::KIND_REALLOC);
    w.addr(old);
    w.addr(new);
    w.value(size as u64);
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
    let mut threads = 0u32;
    let mut node = *REGISTRY.lock();
    while node != 0 {
        // SAFETY: registry entries are live thread buffers, never unmapped.
        let buf = unsafe { &mut *(node as *mut ThreadBuf) };
        // Take the buffer for good: its owner drops any later record.
        while buf.busy.swap(true, Ordering::Acquire) {
            os::yield_now();
        }
        flush(buf);
        threads = threads.max(buf.thread + 1);
        node = buf.next;
    }
    let mut end = [0u8; format::BLOCK_HEADER_LEN];
    end[0..4].copy_from_slice(&format::END_TAG.to_le_bytes());
    end[4..8].copy_from_slice(&threads.to_le_bytes());
    end[16..24].copy_from_slice(&now_ticks().to_le_bytes());
    end[24..32].copy_from_slice(&TOTAL_RECORDS.load(Ordering::Relaxed).to_le_bytes());
    end[32..40].copy_from_slice(&os::monotonic_ns().to_le_bytes());
    write_block(&end);
}

/// `path` with every `%p` replaced by `pid`, in `buf`; `None` if too long.
fn expand_pid<'a>(path: &'a CStr, pid: u32, buf: &'a mut [u8; 4096]) -> Option<&'a CStr> {
    let bytes = path.to_bytes();
    if !bytes.windows(2).any(|w| w == b"%p") {
        return Some(path);
    }
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut v = pid;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut len = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && bytes.get(i + 1) == Some(&b'p') {
            for k in (0..n).rev() {
                *buf.get_mut(len)? = digits[k];
                len += 1;
            }
            i += 2;
        } else {
            *buf.get_mut(len)? = bytes[i];
            len += 1;
            i += 1;
        }
    }
    *buf.get_mut(len)? = 0;
    CStr::from_bytes_with_nul(&buf[..=len]).ok()
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
    let own = BUF::get() as usize;
    let mut head = REGISTRY.lock();
    *head = 0;
    NEXT_THREAD.store(0, Ordering::Relaxed);
    if own > UNAVAILABLE {
        // SAFETY: values above UNAVAILABLE are this thread's buffer, mapped
        // for the life of the process (inherited by the child); it is not
        // busy, because fork is not called from inside a record.
        let buf = unsafe { &mut *(own as *mut ThreadBuf) };
        buf.busy.store(false, Ordering::Relaxed);
        buf.thread = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
        buf.records = 0;
        buf.len = 0;
        buf.base_ticks = now_ticks();
        buf.prev_ticks = buf.base_ticks;
        buf.next = 0;
        *head = own;
    }
    drop(head);
    TOTAL_RECORDS.store(0, Ordering::Relaxed);
    let parent_fd = FD.swap(-1, Ordering::Relaxed);
    if parent_fd >= 0 {
        os::close_fd(parent_fd);
    }
    if !open_trace(os::process_id(), false) {
        ENABLED.store(false, Ordering::Relaxed);
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
    let p = BUF::get() as usize;
    if p <= UNAVAILABLE {
        return enter_slow(p);
    }
    // SAFETY: values above UNAVAILABLE are this thread's buffer, mapped for
    // the life of the process.
    let buf = unsafe { &mut *(p as *mut ThreadBuf) };
    if buf.busy.swap(true, Ordering::Acquire) {
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
fn enter_slow(state: usize) -> Option<&'static mut ThreadBuf> {
    if state != NO_BUFFER {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    BUF::set(INITIALISING as *mut ThreadBuf);
    let mem = os::map(BUF_BYTES);
    if mem.is_null() {
        BUF::set(UNAVAILABLE as *mut ThreadBuf);
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
        })
    };
    {
        let mut head = REGISTRY.lock();
        // SAFETY: buf_ptr was initialised above and is not shared yet.
        unsafe { (*buf_ptr).next = *head };
        *head = buf_ptr as usize;
    }
    // May call calloc (pthread_setspecific): re-entrant records are dropped
    // while BUF holds INITIALISING.
    EXIT_KEY.register(thread_exit, buf_ptr.cast());
    BUF::set(buf_ptr);
    enter()
}

/// Thread-exit hook: writes out what the dying thread recorded. The buffer
/// stays registered for records the thread makes later in its teardown.
unsafe extern "C" fn thread_exit(value: *mut c_void) {
    // SAFETY: value is the ThreadBuf registered for this thread, mapped for
    // the life of the process.
    let buf = unsafe { &mut *value.cast::<ThreadBuf>() };
    if buf.busy.swap(true, Ordering::Acquire) {
        return; // finish() owns it now
    }
    flush(buf);
    leave(buf);
}

impl ThreadBuf {
    #[inline]
    fn payload(&mut self) -> *mut u8 {
        // SAFETY: the payload lies inside this buffer's mapping.
        unsafe { (self as *mut Self).cast::<u8>().add(PAYLOAD_AT) }
    }

    /// Starts a record with opcode `op` and its timestamp delta, flushing
    /// first if a longest record might not fit.
    #[inline]
    fn begin(&mut self, op: u8) -> RecordWriter<'_> {
        if self.len + format::MAX_RECORD_LEN > PAYLOAD_CAP {
            flush(self);
        }
        let now = now_ticks();
        let dt = now.saturating_sub(self.prev_ticks);
        self.prev_ticks = self.prev_ticks.max(now);
        let at = self.len;
        // SAFETY: at + MAX_RECORD_LEN <= PAYLOAD_CAP.
        unsafe { self.payload().add(at).write(op) };
        let mut w = RecordWriter {
            buf: self,
            at: at + 1,
        };
        w.value(dt);
        w
    }
}

/// Appends the fields of one record; [`RecordWriter::end`] commits it.
struct RecordWriter<'a> {
    buf: &'a mut ThreadBuf,
    at: usize,
}

impl RecordWriter<'_> {
    #[inline]
    fn value(&mut self, v: u64) {
        // SAFETY: begin() reserved MAX_RECORD_LEN bytes, enough for every
        // field of any record.
        self.at += unsafe { put_varint(self.buf.payload().add(self.at), v) };
    }

    /// A block address, as a delta from the previous one.
    #[inline]
    fn addr(&mut self, p: *mut u8) {
        let a = p as u64;
        let delta = a.wrapping_sub(self.buf.prev_addr) as i64;
        self.buf.prev_addr = a;
        self.value(zigzag(delta));
    }

    #[inline]
    fn end(self) {
        self.buf.len = self.at;
        self.buf.records += 1;
    }
}

/// Writes the buffer's records as one block (if any) and empties it. The
/// caller holds `busy`.
fn flush(buf: &mut ThreadBuf) {
    if buf.records == 0 {
        return;
    }
    let len = buf.len;
    // SAFETY: the block header and payload lie inside the buffer's mapping.
    let block = unsafe {
        core::slice::from_raw_parts_mut(
            (buf as *mut ThreadBuf).cast::<u8>().add(BLOCK_AT),
            format::BLOCK_HEADER_LEN + len,
        )
    };
    let sum = format::checksum(&block[format::BLOCK_HEADER_LEN..]);
    block[0..4].copy_from_slice(&format::BLOCK_TAG.to_le_bytes());
    block[4..8].copy_from_slice(&buf.thread.to_le_bytes());
    block[8..12].copy_from_slice(&buf.records.to_le_bytes());
    block[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    block[16..24].copy_from_slice(&buf.base_ticks.to_le_bytes());
    block[24..32].copy_from_slice(&buf.base_addr.to_le_bytes());
    block[32..36].copy_from_slice(&sum.to_le_bytes());
    block[36..40].copy_from_slice(&0u32.to_le_bytes());
    if os::process_id() == PID.load(Ordering::Relaxed) && write_block(block) {
        TOTAL_RECORDS.fetch_add(buf.records as u64, Ordering::Relaxed);
    }
    buf.len = 0;
    buf.records = 0;
    buf.base_ticks = buf.prev_ticks;
    buf.base_addr = buf.prev_addr;
}

fn write_block(bytes: &[u8]) -> bool {
    let fd: c_int = FD.load(Ordering::Relaxed);
    if fd < 0 {
        return false;
    }
    WRITE_LOCK.lock();
    let ok = os::write_fd(fd, bytes);
    // SAFETY: locked just above by this thread.
    unsafe { WRITE_LOCK.unlock() };
    ok
}

/// The recorder's clock: the time-stamp counter on x86-64 (constant rate and
/// synchronised across cores on every x86-64 CPU of the last decade), read
/// with `rdtscp`, which waits until every earlier instruction has executed,
/// so a timestamp is never taken before the call it stamps. The reader
/// converts ticks to nanoseconds with the start and end times of the trace.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn now_ticks() -> u64 {
    let mut aux = 0u32;
    // SAFETY: rdtscp has no memory-safety preconditions; aux is a valid
    // out-pointer. (Every x86-64 CPU since 2006 has it.)
    unsafe { core::arch::x86_64::__rdtscp(&mut aux) }
}

/// The recorder's clock elsewhere: CLOCK_MONOTONIC nanoseconds.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn now_ticks() -> u64 {
    os::monotonic_ns()
}

#[cfg(test)]
mod tests {
    use super::expand_pid;

    #[test]
    fn pid_expansion() {
        let mut buf = [0u8; 4096];
        assert_eq!(
            expand_pid(c"/tmp/a.hkt", 7, &mut buf).unwrap(),
            c"/tmp/a.hkt"
        );
        let mut buf = [0u8; 4096];
        assert_eq!(
            expand_pid(c"/tmp/a-%p.hkt", 40213, &mut buf).unwrap(),
            c"/tmp/a-40213.hkt"
        );
        let mut buf = [0u8; 4096];
        assert_eq!(expand_pid(c"%p%p", 0, &mut buf).unwrap(), c"00");
        let long = std::ffi::CString::new(vec![b'x'; 4094]).unwrap();
        let mut with_p = long.as_bytes().to_vec();
        with_p.extend_from_slice(b"%p");
        let with_p = std::ffi::CString::new(with_p).unwrap();
        let mut buf = [0u8; 4096];
        assert!(expand_pid(&with_p, 123, &mut buf).is_none());
    }
}
