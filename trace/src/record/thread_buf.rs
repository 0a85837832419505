//! One thread's record buffer: the records it appends (their clock, their
//! stacks) and the blocks it writes to the trace file when full or a second
//! old ([`FLUSH_TICKS`]).

use core::ffi::c_int;
use core::sync::atomic::{AtomicBool, Ordering};

use heapkit_core::os;
use heapkit_core::os::unwind::FrameState;

use super::stacks::{stack_hash, RecordedStacks, StackMemory, StackRef};
use super::{
    countdown, mode, now_ticks_for_record, set_countdown, Mode, ASYMMETRIC, FD, FINISHED, PID,
    RATE, SAMPLED, TOTAL_RECORDS, WRITE_LOCK,
};
use crate::format::{self, put_varint, zigzag};

/// Bytes of one thread buffer mapping.
pub(super) const BUF_BYTES: usize = 128 << 10;
/// Offset of the block header inside the mapping; the payload follows it,
/// so a flush writes header and payload with one `write`.
const BLOCK_AT: usize = 128;
const PAYLOAD_AT: usize = BLOCK_AT + format::BLOCK_HEADER_LEN;
const PAYLOAD_CAP: usize = BUF_BYTES - PAYLOAD_AT;

/// One thread's record buffer; lives at the start of its own mapping.
///
/// Invariants: `len <= PAYLOAD_CAP`; `payload[..len]` holds `records`
/// complete records, encoded relative to `base_ticks` / `base_addr`;
/// `prev_ticks` / `prev_addr` are the timestamp and address the next record
/// is relative to.
/// Every field but `busy` and `next` is touched only by the thread holding
/// `busy`.
#[repr(C)]
pub(super) struct ThreadBuf {
    pub(super) busy: AtomicBool,
    pub(super) next: usize,
    pub(super) thread: u32,
    pub(super) records: u32,
    pub(super) base_ticks: u64,
    pub(super) base_addr: u64,
    pub(super) prev_ticks: u64,
    pub(super) prev_addr: u64,
    pub(super) len: usize,
    /// Sampled profiles: this thread's random state (xorshift64).
    pub(super) rng: u64,
    /// Profiles: allocations still to skip the clock for (see `begin`).
    pub(super) clock_skip: u32,
    /// Profiles: this thread's unwind rules and recorded stacks, mapped at
    /// the first stack (null before, or if that mapping failed: libgcc's
    /// unwinder then walks the stacks and each is written in full).
    pub(super) stack_memory: *mut StackMemory,
    /// Profiles: `stack_memory`'s mapping was tried.
    pub(super) stack_memory_tried: bool,
}

const _: () = assert!(core::mem::size_of::<ThreadBuf>() <= BLOCK_AT);

impl ThreadBuf {
    /// Takes the buffer for a record, on its owner thread: false if it is
    /// taken (a re-entrant call from a signal handler) or [`finish`](super::finish) has
    /// begun. [`leave`](super::leave) gives it back.
    #[inline]
    pub(super) fn take(&self) -> bool {
        if !ASYMMETRIC.load(Ordering::Relaxed) {
            return !self.busy.swap(true, Ordering::Acquire);
        }
        // Only this thread sets the flag: a signal handler that interrupts
        // between the load and the store finds it clear and leaves it
        // clear, so the load-then-store is not torn.
        if self.busy.load(Ordering::Relaxed) {
            return false;
        }
        self.busy.store(true, Ordering::Relaxed);
        // The fast side of the asymmetric fence: the store above is
        // ordered before the load below by the barrier finish() makes this
        // thread execute, or this load sees FINISHED.
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        if FINISHED.load(Ordering::Relaxed) {
            self.busy.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// A random interval in bytes, exponentially distributed with mean
    /// `RATE` (jemalloc's and tcmalloc's sampling).
    pub(super) fn next_interval(&mut self) -> isize {
        let rate = RATE.load(Ordering::Relaxed);
        if rate == 0 {
            return 0;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // u in (0, 1]
        let u = ((self.rng >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        // libm's log, not f64::ln: std's calls libm.so, whose pages every
        // process under libheapkit.so would then carry.
        (-libm::log(u) * rate as f64).min(isize::MAX as f64 / 2.0) as isize + 1
    }

    /// Profiles: decides whether the allocation of `size` bytes at `ptr`
    /// is recorded and, if so, writes its STACK record (the ALLOC or
    /// REALLOC follows, or names it: see [`StackRef`]), the stack walked
    /// from `start`. None: not sampled, record nothing.
    ///
    /// # Safety
    /// As for [`record_alloc`](super::record_alloc).
    #[inline]
    pub(super) unsafe fn profile(
        &mut self,
        start: FrameState,
        ptr: *mut u8,
        size: usize,
    ) -> Option<StackRef> {
        let weight = if mode() == Mode::ProfileSampled {
            // The caller counted `size` down to zero or below. A thread's
            // first interval is drawn when its buffer is made, after the
            // allocation that made it was counted: not a sample.
            if countdown() > 0 {
                return None;
            }
            set_countdown(self.next_interval());
            if !SAMPLED.insert(ptr as u64) {
                return None;
            }
            // The sampled block stands for size / P(sampled), with
            // P = 1 - exp(-size / rate) (as -expm1, exact for small sizes;
            // libm's, see next_interval).
            let rate = RATE.load(Ordering::Relaxed) as f64;
            let p = -libm::expm1(-(size as f64) / rate);
            (size as f64 / p.max(1e-12)) as u64
        } else {
            size as u64
        };
        // SAFETY: `start` is live (this function's contract).
        Some(unsafe { self.write_stack(start, weight) })
    }

    /// Walks the calling thread's stack from `start` and writes its STACK
    /// (or SAME_STACK) record: by the cached unwinder when the thread's
    /// stack memory could be mapped (a fresh mapping is an empty cache),
    /// else by libgcc's (from here: heapkit's frames are dropped by the
    /// reader), every stack then written in full.
    ///
    /// # Safety
    /// As for [`record_alloc`](super::record_alloc).
    #[cold]
    unsafe fn write_stack(&mut self, start: FrameState, weight: u64) -> StackRef {
        if self.stack_memory.is_null() && !self.stack_memory_tried {
            self.stack_memory_tried = true;
            // Populated: the unwind cache is looked up before it is filled
            // (see `start_profile` on pages read before written).
            self.stack_memory = os::map_populated(core::mem::size_of::<StackMemory>()).cast();
        }
        let memory = self.stack_memory;
        if memory.is_null() {
            let mut frames = [0usize; format::MAX_FRAMES];
            let n = os::backtrace(&mut frames);
            return self.write_stack_record(weight, &frames[..n], None);
        }
        // SAFETY: a non-null stack_memory is this thread's own mapping,
        // used only under the busy flag (which the caller holds); the three
        // references are to disjoint fields, taken without a reference to
        // the whole.
        let (frames, unwind, recorded) = unsafe {
            (
                &mut (*memory).frames,
                &mut (*memory).unwind,
                &mut (*memory).recorded,
            )
        };
        // The function that took `start` (the allocator entry that called
        // the recorder, or the Rust function it is inlined into) is the
        // first frame, then its callers'.
        frames[0] = start.ip();
        // SAFETY: `start` is live (this function's contract).
        let n = 1 + unsafe { os::unwind::backtrace_from(start, &mut frames[1..], unwind) };
        self.write_stack_record(weight, &frames[..n], Some(recorded))
    }

    /// Writes the STACK record of `frames`, or, when `recorded` holds its
    /// hash (remembering it there otherwise), a SAME_STACK record; in a
    /// profile of every allocation (whose weights are the sizes) nothing,
    /// the id going into the allocation's own record instead.
    #[inline(always)]
    fn write_stack_record(
        &mut self,
        weight: u64,
        frames: &[usize],
        recorded: Option<&mut RecordedStacks>,
    ) -> StackRef {
        let n = frames.len();
        if self.len + format::MAX_STACK_RECORD_LEN + format::MAX_RECORD_LEN > PAYLOAD_CAP {
            flush(self);
        }
        // The stack takes the time of the ALLOC or REALLOC record that
        // follows it: dt 0 here, no second clock read per sampled call.
        let dt = 0;
        let hash = stack_hash(frames);
        // The id of this stack's earlier STACK record, or None: it is
        // written in full (and, with a table, remembered under a new id).
        let same = recorded.and_then(|r| r.earlier_id(hash));
        if let Some(id) = same {
            if mode() == Mode::ProfileEvery {
                return StackRef::Id(id);
            }
        }
        let mut at = self.len;
        let out = self.payload();
        // SAFETY: MAX_STACK_RECORD_LEN bytes are free from `at` (checked
        // above); every field is a varint of at most 10 bytes.
        unsafe {
            let kind = if same.is_some() {
                format::KIND_SAME_STACK
            } else {
                format::KIND_STACK
            };
            out.add(at).write(kind);
            at += 1;
            at += put_varint(out.add(at), dt);
            at += put_varint(out.add(at), weight);
            if let Some(id) = same {
                at += put_varint(out.add(at), id as u64);
            } else {
                at += put_varint(out.add(at), n as u64);
                let mut prev = 0u64;
                for &f in frames {
                    at += put_varint(out.add(at), zigzag((f as u64).wrapping_sub(prev) as i64));
                    prev = f as u64;
                }
            }
        }
        self.len = at;
        self.records += 1;
        StackRef::Written
    }

    /// Unmaps the stack memory (later stacks: libgcc's unwinder, written
    /// in full) and purges the payload's whole pages. Call with `busy`
    /// held and the buffer flushed.
    pub(super) fn release_memory(&mut self) {
        debug_assert_eq!(self.len, 0);
        if !self.stack_memory.is_null() {
            // SAFETY: the mapping is this thread's own, of this size, used
            // only under the busy flag, which the caller holds; nothing
            // keeps a pointer into it past this call.
            unsafe {
                os::unmap(
                    self.stack_memory.cast(),
                    core::mem::size_of::<StackMemory>(),
                )
            };
            self.stack_memory = core::ptr::null_mut();
        }
        self.stack_memory_tried = true;
        let page = os::page_size();
        let first = PAYLOAD_AT.next_multiple_of(page);
        if first < BUF_BYTES {
            // SAFETY: [first, BUF_BYTES) is whole pages of this buffer's
            // mapping past the header and the empty payload's start; purged
            // pages read back as zero, and the payload is rewritten before
            // it is read.
            unsafe {
                os::purge(
                    (self as *mut Self).cast::<u8>().add(first),
                    BUF_BYTES - first,
                )
            };
        }
    }

    /// Forgets the stacks written so far (a forked child's new file has
    /// none of them).
    pub(super) fn forget_recorded_stacks(&mut self) {
        // SAFETY: as in `backtrace`; zero is the empty table.
        if let Some(m) = unsafe { self.stack_memory.as_mut() } {
            // SAFETY: plain data, for which all-zero bytes are valid.
            unsafe { (&raw mut m.recorded).write_bytes(0, 1) };
        }
    }

    #[inline]
    fn payload(&mut self) -> *mut u8 {
        // SAFETY: the payload lies inside this buffer's mapping.
        unsafe { (self as *mut Self).cast::<u8>().add(PAYLOAD_AT) }
    }

    /// Starts a record with opcode `op` and its timestamp delta, flushing
    /// first if a longest record might not fit.
    #[inline]
    pub(super) fn begin(&mut self, op: u8) -> RecordWriter<'_> {
        if self.len + format::MAX_RECORD_LEN > PAYLOAD_CAP {
            flush(self);
        }
        // A profile's records read the clock once in CLOCK_EVERY while the
        // thread records fast (the others take the time of the one before,
        // with dt 0): `rdtsc` was a third of a record. The reader takes a
        // record without its own read to have happened by its thread's
        // next read, and waits that long for the allocation a FREE or
        // REALLOC ends (on another thread, it may carry a later time). A
        // trace (replayed with its timing) stamps every record.
        let dt = if self.clock_skip == 0 || mode() == Mode::Trace {
            let now = now_ticks_for_record();
            let dt = now.saturating_sub(self.prev_ticks);
            self.prev_ticks = self.prev_ticks.max(now);
            // Fast (records closer than STALE_TICKS): skip the next
            // allocations' reads; slow: read at the next one.
            self.clock_skip = if dt < STALE_TICKS { CLOCK_EVERY - 1 } else { 0 };
            dt
        } else {
            self.clock_skip -= 1;
            0
        };
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

/// A profile's records read the clock once in this many while their
/// thread records fast (see [`ThreadBuf::begin`]).
const CLOCK_EVERY: u32 = 32;

/// Clock ticks between two reads under which a thread counts as recording
/// fast: 33 us or less for any clock of 1 GHz and up, so a record that
/// skipped its read is stamped at most about that early while its thread
/// keeps that pace (after a pause, up to CLOCK_EVERY records are stamped
/// before it: the reader holds a FREE until its thread's next read).
const STALE_TICKS: u64 = 1 << 15;

/// Appends the fields of one record; [`RecordWriter::end`] commits it.
pub(super) struct RecordWriter<'a> {
    buf: &'a mut ThreadBuf,
    at: usize,
}

impl RecordWriter<'_> {
    #[inline]
    pub(super) fn value(&mut self, v: u64) {
        // SAFETY: begin() reserved MAX_RECORD_LEN bytes, enough for every
        // field of any record.
        self.at += unsafe { put_varint(self.buf.payload().add(self.at), v) };
    }

    /// A block address, as a delta from the previous one.
    #[inline]
    pub(super) fn addr(&mut self, p: *mut u8) {
        let a = p as u64;
        let delta = a.wrapping_sub(self.buf.prev_addr) as i64;
        self.buf.prev_addr = a;
        self.value(zigzag(delta));
    }

    /// Commits the record; writes the block out if its first record is
    /// [`FLUSH_TICKS`] old.
    #[inline]
    pub(super) fn end(self) {
        let buf = self.buf;
        buf.len = self.at;
        buf.records += 1;
        if buf.prev_ticks.saturating_sub(buf.base_ticks) > FLUSH_TICKS {
            flush_old(buf);
        }
    }
}

/// A block is written once the clock read by one of its records is this
/// many ticks past the block's start (2^31: 0.7 s at 3 GHz, 2 s at 1 GHz),
/// full or not, at the end of that record (never between a STACK record
/// and the allocation it belongs to). A thread that allocates slowly then
/// leaves at most that much of its recent past in memory, where a SIGKILL
/// (the OOM killer's) loses it: a buffer holds 128 KiB of records, minutes
/// of a slow thread. A thread recording fast fills its block sooner.
const FLUSH_TICKS: u64 = 1 << 31;

#[cold]
#[inline(never)]
fn flush_old(buf: &mut ThreadBuf) {
    flush(buf);
}

/// Writes the buffer's records as one block (if any) and empties it. The
/// caller holds `busy`.
pub(super) fn flush(buf: &mut ThreadBuf) {
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

pub(super) fn write_block(bytes: &[u8]) -> bool {
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
