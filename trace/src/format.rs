//! The heapkit trace format (`.hkt`), version 3.
//!
//! A trace is what one process did with its heap: every `malloc`, `calloc`,
//! `realloc`, `free`, `memalign`... call the [`record`](crate::record)er saw,
//! grouped by the thread that made it. It is written by many threads at once
//! without a global lock on the hot path, so the file is a sequence of
//! independent, self-describing **blocks**, each holding a run of one
//! thread's records. It is read back by [`Trace`](crate::Trace).
//!
//! # Layout
//!
//! All fixed-width integers are **little-endian**. Offsets are in bytes.
//! Times are **ticks** of the recorder's clock (the TSC on x86-64, else
//! nanoseconds); the header and the end block each hold a (ticks,
//! nanoseconds) pair, from which a reader converts ticks to nanoseconds.
//!
//! ```text
//! file   := header block* end
//!
//! header (32 bytes)
//!   0   magic        [u8; 8]  b"HKTRACE\0"
//!   8   version      u16      1 to 3 (readers reject any other value)
//!   10  header_len   u16      32
//!   12  pid          u32      process id of the recorded process
//!   16  start_ns     u64      CLOCK_MONOTONIC when recording started
//!   24  start_ticks  u64      the recorder's clock at the same moment
//!
//! block (40-byte block header, then payload_len bytes of records)
//!   0   tag          u32      b"HKB1"
//!   4   thread       u32      thread index: 0, 1, 2... in order of first use
//!   8   records      u32      number of records in the payload
//!   12  payload_len  u32
//!   16  base_ticks   u64      time the first record's dt is relative to
//!   24  base_addr    u64      address the first record's address delta is relative to
//!   32  checksum     u32      [`checksum`] of the payload bytes
//!   36  reserved     u32      0
//!
//! end (a 40-byte block header with no payload, written once at exit)
//!   0   tag          u32      b"HKE1"
//!   4   thread       u32      number of threads that recorded anything
//!   8   records      u32      0
//!   12  payload_len  u32      0
//!   16  end_ticks    u64      the recorder's clock at the end
//!   24  total        u64      number of records in all blocks
//!   32  end_ns       u64      CLOCK_MONOTONIC at the same moment
//! ```
//!
//! Blocks of different threads interleave in any order (each thread flushes
//! its buffer when it fills, when the thread exits and at process exit); the
//! blocks of one thread appear in the order that thread recorded them, so a
//! reader gets each thread's records by concatenating its blocks in file
//! order. Nothing may follow the end block.
//!
//! # Records
//!
//! A record is one opcode byte followed by LEB128 varints (7 bits per byte,
//! low group first, high bit = more; at most 10 bytes for a `u64`). Signed
//! deltas are zigzag-encoded (`(d << 1) ^ (d >> 63)`).
//!
//! ```text
//! opcode byte:  bits 0-2 kind, bit 3 ZEROED (calloc), bit 4 ALIGNED,
//!               bit 5 STACK_ID, bits 6-7 zero
//!
//! kind 1 ALLOC    dt, zz(addr - prev), size [, align_log2 if ALIGNED] [, id if STACK_ID]
//! kind 2 FREE     dt, zz(addr - prev)
//! kind 3 REALLOC  dt, zz(old - prev), zz(new - old), size [, id if STACK_ID]
//! kind 4 STACK    dt, weight, n, zz(frame[0]), zz(frame[1] - frame[0]), ...
//! kind 5 SAME_STACK dt, weight, id
//! ```
//!
//! STACK (profiles, `HEAPKIT_PROFILE`) gives the call stack of the ALLOC or
//! REALLOC that follows it in the same block: `n` return addresses,
//! innermost first, and `weight`, the bytes that allocation stands for
//! (its size when every allocation is recorded; more when sampled).
//! SAME_STACK (version 2) does the same with a stack the thread recorded
//! before: `id` counts the thread's STACK records from 0 (a thread repeats
//! a few thousand stacks millions of times; a repeated stack costs 4-6
//! bytes instead of 50-300). An ALLOC or REALLOC with STACK_ID (version 3,
//! profiles of every allocation) names its stack the same way without a
//! record of its own, its weight being its size: the SAME_STACK record's
//! opcode, dt and weight were a quarter of such a profile's bytes. A
//! profile also holds **metadata blocks** (tag `HKM1`, `records` 0, the
//! payload text): a first line `mode every` or `mode sampled <mean bytes>`,
//! and the process's `/proc/self/maps`, for symbolising the frames.
//!
//! - `dt` is the time in ticks since the previous record of the same block
//!   (for the first record: since the block's `base_ticks`).
//! - `prev` is the address named last in the block (`new` for REALLOC),
//!   initially the block's `base_addr`.
//! - Blocks are named by **address**. An allocation is stamped after the
//!   allocator returned, a free before it released the block, with a clock
//!   consistent across cores but read without waiting for earlier
//!   instructions, so records of different threads that touch the same
//!   address within a few hundred cycles may carry times in the wrong
//!   order. A reader links each FREE / REALLOC to the allocation it ends by
//!   replaying the records in time order with a map of live addresses; an
//!   allocation at an address still live waits for that address's free (a
//!   realloc is stamped once, after the call, though its old block was
//!   released inside it), and a FREE or REALLOC of an address not live
//!   waits up to 50 us of trace time for that address's allocation on
//!   another thread. One still not live then names a block allocated
//!   before recording started (e.g. by the dynamic loader).
//! - A profile's recorder reads the clock for one record in 32 while its
//!   thread records fast; the others have `dt` 0 and carry the time of the
//!   read before. Such a record happened by its thread's next record with
//!   a `dt` above 0 (or the end of the recording), and a reader waits that
//!   long, plus the 50 us, before it takes a FREE or REALLOC of an address
//!   not live for a block from before the recording.
//! - `size` is the size the program asked for (`nmemb * size` for calloc).
//!   ALIGNED allocations (alignment above 16 bytes: `memalign`,
//!   `posix_memalign`, `aligned_alloc`, `valloc`) carry `log2(alignment)`.
//!   A REALLOC keeps its block's alignment.
//! - `realloc(p, 0)` that frees is recorded as FREE, `realloc(NULL, n)` as
//!   ALLOC; a failed call (null result) is not recorded.
//!
//! A typical record is 4 to 7 bytes.
//!
//! # Validation
//!
//! Readers check the magic, version, every block tag, the payload checksum,
//! that every record decodes within its block with the announced count,
//! that the end block is present and agrees with the record total, and that
//! the threads can be ordered (no allocation waits forever for its address
//! to be freed); each failure names the byte offset where it was found.

/// `b"HKTRACE\0"`: the first eight bytes of every trace.
pub const MAGIC: [u8; 8] = *b"HKTRACE\0";
/// The format version this crate writes (it reads this and
/// [`OLDEST_VERSION`]..).
pub const VERSION: u16 = 3;
/// The oldest version this crate reads (version 1 has no SAME_STACK).
pub const OLDEST_VERSION: u16 = 1;
/// Size of the file header.
pub const HEADER_LEN: usize = 32;
/// Size of a block header (and of the end block).
pub const BLOCK_HEADER_LEN: usize = 40;
/// Tag of a record block: `b"HKB1"` read as a little-endian `u32`.
pub const BLOCK_TAG: u32 = u32::from_le_bytes(*b"HKB1");
/// Tag of the end block.
pub const END_TAG: u32 = u32::from_le_bytes(*b"HKE1");
/// Tag of a metadata block: text (the profile's mode, the process's
/// `/proc/self/maps` for symbolising stacks).
pub const META_TAG: u32 = u32::from_le_bytes(*b"HKM1");

/// Record kind: an allocation (malloc, calloc, memalign...).
pub const KIND_ALLOC: u8 = 1;
/// Record kind: a free.
pub const KIND_FREE: u8 = 2;
/// Record kind: a realloc.
pub const KIND_REALLOC: u8 = 3;
/// Record kind: the call stack (and sampling weight) of the allocation
/// that follows it in the same block (profiles only).
pub const KIND_STACK: u8 = 4;
/// Record kind: the call stack of the allocation that follows, as the
/// `id`-th STACK record of the same thread (profiles, version 2).
pub const KIND_SAME_STACK: u8 = 5;
/// The longest SAME_STACK record: opcode, dt, weight, id.
pub const MAX_SAME_STACK_RECORD_LEN: usize = 1 + 3 * 10;
/// Frames a stack record holds at most.
pub const MAX_FRAMES: usize = 48;
/// The longest stack record: opcode, dt, weight, count, frames.
pub const MAX_STACK_RECORD_LEN: usize = 1 + 3 * 10 + MAX_FRAMES * 10;
/// Opcode mask of the kind.
pub const KIND_MASK: u8 = 0b111;
/// Opcode flag: the allocation is zeroed (calloc).
pub const FLAG_ZEROED: u8 = 1 << 3;
/// Opcode flag: an alignment (log2) follows the size.
pub const FLAG_ALIGNED: u8 = 1 << 4;
/// Opcode flag (ALLOC, REALLOC; version 3): the record ends with the id of
/// one of the thread's STACK records, the allocation's stack; its weight is
/// its size.
pub const FLAG_STACK_ID: u8 = 1 << 5;
/// Alignments up to this are the default and not recorded.
pub const DEFAULT_ALIGN: usize = 16;
/// The longest encoded record: opcode + five 10-byte varints (dt, address,
/// size, stack id; or dt, two addresses, size, stack id) + align byte.
pub const MAX_RECORD_LEN: usize = 1 + 5 * 10 + 1;
/// Thread indices above this are rejected as corrupt.
pub const MAX_THREADS: u32 = 1 << 20;

/// Zigzag-encodes a signed delta.
#[inline]
pub const fn zigzag(delta: i64) -> u64 {
    ((delta << 1) ^ (delta >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub const fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Writes `value` as a LEB128 varint at `out` and returns the number of
/// bytes written (1 to 10).
///
/// # Safety
/// `out` must be valid for writing 10 bytes.
#[inline]
pub unsafe fn put_varint(out: *mut u8, mut value: u64) -> usize {
    let mut n = 0;
    while value >= 0x80 {
        // SAFETY: n < 10 because a u64 has at most 10 groups of 7 bits.
        unsafe { out.add(n).write(value as u8 | 0x80) };
        value >>= 7;
        n += 1;
    }
    // SAFETY: as above; this is the last group.
    unsafe { out.add(n).write(value as u8) };
    n + 1
}

/// The block payload checksum: FNV-1a over 64-bit little-endian words
/// (the last word zero-padded), seeded with the length, folded to 32 bits
/// by xoring the halves.
/// Word-wise so that checksumming a 128 KiB block costs the recorder
/// microseconds, not a noticeable share of the traced program's time.
pub fn checksum(bytes: &[u8]) -> u32 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = (0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64).wrapping_mul(PRIME);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        hash = (hash ^ u64::from_le_bytes(b)).wrapping_mul(PRIME);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        hash = (hash ^ u64::from_le_bytes(b)).wrapping_mul(PRIME);
    }
    (hash ^ (hash >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips() {
        for d in [
            0i64,
            1,
            -1,
            63,
            -64,
            i64::MAX,
            i64::MIN,
            1 << 40,
            -(1 << 40),
        ] {
            assert_eq!(unzigzag(zigzag(d)), d);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn checksum_sees_every_byte() {
        let base = [7u8; 21];
        for i in 0..base.len() {
            let mut v = base;
            v[i] ^= 1;
            assert_ne!(checksum(&v), checksum(&base), "byte {i}");
        }
        assert_ne!(checksum(&base[..20]), checksum(&base));
        assert_ne!(checksum(&[1, 0]), checksum(&[1]));
    }

    #[test]
    fn varint_lengths() {
        let mut buf = [0u8; 10];
        for (value, len) in [(0u64, 1), (127, 1), (128, 2), (u64::MAX, 10)] {
            // SAFETY: buf has 10 bytes.
            assert_eq!(unsafe { put_varint(buf.as_mut_ptr(), value) }, len);
        }
    }
}
