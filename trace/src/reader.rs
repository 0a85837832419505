//! Reading and validating `.hkt` traces.
//!
//! [`Trace::open`] maps the file with `memmap2` (a trace of a long run is
//! hundreds of megabytes; nothing is copied before decoding) and
//! [`Trace::parse`] decodes and checks every byte against the
//! [format](mod@crate::format). Then it links every free and realloc to the
//! allocation it ends: the records of all threads are taken in time order
//! with a map of live addresses (an allocation at a still-live address
//! waits for that address's free, as the format explains). The result is
//! one [`Event`] list per recorded thread naming **objects** by dense
//! index (`0..objects.len()`), so a replay keeps per-object state in a
//! plain array. Cost: O(n log t) time for n records over t threads, and a
//! hash map entry per live block.
//!
//! A bad trace never panics the reader: it yields a [`TraceError`] that names
//! the byte offset where decoding stopped and why.
//!
//! ```
//! use heapkit_trace::Trace;
//! // A header cut short after the version field:
//! let err = Trace::parse(b"HKTRACE\0\x01\x00").unwrap_err();
//! assert_eq!(err.offset, 10);
//! assert!(err.to_string().contains("truncated"));
//! // A version this reader does not know:
//! let err = Trace::parse(b"HKTRACE\0\x07\x00").unwrap_err();
//! assert_eq!(err.offset, 8);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::format::{self, unzigzag};

mod resolve;
use resolve::resolve;

/// Why a trace could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// Byte offset in the file where the problem was found.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad trace at byte offset {}: {}",
            self.offset, self.message
        )
    }
}

impl std::error::Error for TraceError {}

fn err<T>(offset: usize, message: impl Into<String>) -> Result<T, TraceError> {
    Err(TraceError {
        offset: offset as u64,
        message: message.into(),
    })
}

/// One heap operation, with objects named by dense index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `obj` was allocated: `size` bytes, alignment `1 << align_log2`
    /// (0 = the default, 16), zeroed for calloc.
    Alloc {
        /// Object index.
        obj: u32,
        /// Requested bytes.
        size: u64,
        /// log2 of the alignment, 0 for the default.
        align_log2: u8,
        /// calloc.
        zeroed: bool,
    },
    /// `obj` was freed.
    Free {
        /// Object index.
        obj: u32,
    },
    /// `old` was reallocated to `size` bytes, becoming `new`.
    Realloc {
        /// The object that ends.
        old: u32,
        /// The object that begins.
        new: u32,
        /// New requested size.
        size: u64,
    },
    /// A pointer the trace never saw allocated was freed.
    FreeUnknown,
    /// A pointer the trace never saw allocated was reallocated to `size`
    /// bytes, becoming `new`.
    ReallocUnknown {
        /// The object that begins.
        new: u32,
        /// Requested size.
        size: u64,
    },
}

impl Op {
    /// The object this operation must wait for (it ends it), if any.
    #[inline]
    pub fn ends(&self) -> Option<u32> {
        match *self {
            Op::Free { obj } => Some(obj),
            Op::Realloc { old, .. } => Some(old),
            _ => None,
        }
    }

    /// The object this operation creates, if any.
    #[inline]
    pub fn creates(&self) -> Option<u32> {
        match *self {
            Op::Alloc { obj, .. } => Some(obj),
            Op::Realloc { new, .. } | Op::ReallocUnknown { new, .. } => Some(new),
            _ => None,
        }
    }
}

/// One recorded operation and when it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts: u64,
    /// What happened.
    pub op: Op,
}

/// What is known of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Object {
    /// Requested size.
    pub size: u64,
    /// log2 of the alignment (0 = default).
    pub align_log2: u8,
    /// Index of its allocation's call stack in [`Trace::stacks`], or
    /// [`NO_STACK`] (plain traces).
    pub stack: u32,
    /// Bytes this object stands for in a sampled profile (its size when
    /// every allocation was recorded); 0 without a stack.
    pub weight: u64,
}

/// [`Object::stack`] of an object recorded without a stack.
pub const NO_STACK: u32 = u32::MAX;

impl Object {
    /// An object of a plain trace: no stack, no weight.
    pub const fn new(size: u64, align_log2: u8) -> Object {
        Object {
            size,
            align_log2,
            stack: NO_STACK,
            weight: 0,
        }
    }
}

/// A decoded, validated trace.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Process id of the recorded process.
    pub pid: u32,
    /// When recording started (CLOCK_MONOTONIC ns; event times use the
    /// same clock).
    pub start_ns: u64,
    /// When recording ended.
    pub end_ns: u64,
    /// Per recorded thread, its operations in order.
    pub threads: Vec<Vec<Event>>,
    /// Every object, by dense index.
    pub objects: Vec<Object>,
    /// The distinct call stacks of a profile (return addresses, innermost
    /// first).
    pub stacks: Vec<Vec<u64>>,
    /// The text of the metadata blocks (a profile's mode line and the
    /// process's memory map), in file order.
    pub meta: String,
}

/// A record before addresses are resolved to objects.
struct RawEvent {
    offset: usize,
    ticks: u64,
    /// The record read the clock (`dt` > 0); else it carries the time of
    /// an earlier record of its thread, and happened at or before the next
    /// record that read it (a profile's recorder skips reads while its
    /// thread records fast).
    fresh: bool,
    kind: u8,
    zeroed: bool,
    align_log2: u8,
    /// ALLOC / FREE: the address; REALLOC: the old address.
    a: u64,
    /// REALLOC: the new address.
    b: u64,
    size: u64,
    /// The STACK record before it: (stack index, weight).
    stack: Option<(u32, u64)>,
}

/// Distinct stacks, numbered as first seen.
#[derive(Default)]
struct StackTable {
    index: HashMap<Vec<u64>, u32>,
    stacks: Vec<Vec<u64>>,
}

impl StackTable {
    fn intern(&mut self, frames: Vec<u64>) -> u32 {
        if let Some(&i) = self.index.get(&frames) {
            return i;
        }
        let i = self.stacks.len() as u32;
        self.stacks.push(frames.clone());
        self.index.insert(frames, i);
        i
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, TraceError> {
        if self.pos >= self.end {
            return err(self.pos, "record runs past the end of its block");
        }
        let b = self.bytes[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, TraceError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return err(start, "varint overflows 64 bits");
            }
            value |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        err(start, "varint longer than 10 bytes")
    }
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The trace file at `path`, mapped read-only; one-line errors for a
/// directory, an unreadable or an empty file.
fn map_trace(path: &Path) -> Result<memmap2::Mmap, Box<dyn std::error::Error + Send + Sync>> {
    if path.is_dir() {
        return Err(format!("{} is a directory, not a trace file", path.display()).into());
    }
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot open trace {}: {e}", path.display()))?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(Box::new(TraceError {
            offset: 0,
            message: "empty file (truncated before the header)".into(),
        }));
    }
    // SAFETY: the mapping is read-only; a trace being rewritten while we
    // read it could show torn bytes, which the validation reports.
    unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| format!("cannot map trace {}: {e}", path.display()).into())
}

impl Trace {
    /// Maps the file at `path` and parses it.
    pub fn open(path: &Path) -> Result<Trace, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Trace::parse(&map_trace(path)?)?)
    }

    /// Maps the file at `path` and parses it, salvaging a trace whose
    /// process died before writing its end block ([`Trace::parse_salvaging`]):
    /// the trace and, when salvaged, a one-line warning.
    pub fn open_salvaging(
        path: &Path,
    ) -> Result<(Trace, Option<String>), Box<dyn std::error::Error + Send + Sync>> {
        Ok(Trace::parse_salvaging(&map_trace(path)?)?)
    }

    /// Decodes and validates a whole trace held in memory.
    pub fn parse(bytes: &[u8]) -> Result<Trace, TraceError> {
        Trace::parse_inner(bytes, false).map(|(trace, _)| trace)
    }

    /// Like [`Trace::parse`], but a trace cut short (the process was
    /// killed, or left through `_exit` where the shim could not see it) is
    /// read up to its last complete, intact block instead of rejected. The
    /// records still in the process's buffers are lost; the warning says
    /// where the trace stops and why. Without an end block the clock rate
    /// is measured on this machine (exact when read where it was recorded).
    /// A header that is not a trace's is still an error.
    pub fn parse_salvaging(bytes: &[u8]) -> Result<(Trace, Option<String>), TraceError> {
        Trace::parse_inner(bytes, true)
    }

    fn parse_inner(bytes: &[u8], salvage: bool) -> Result<(Trace, Option<String>), TraceError> {
        if bytes.len() < 8 || bytes[..8] != format::MAGIC {
            let n = bytes.len().min(8);
            if bytes[..n] != format::MAGIC[..n] {
                return err(0, "not a heapkit trace (bad magic)");
            }
            return err(n, "truncated inside the file header");
        }
        if bytes.len() < 10 {
            return err(bytes.len(), "truncated inside the file header");
        }
        let version = le_u16(bytes, 8);
        if !(format::OLDEST_VERSION..=format::VERSION).contains(&version) {
            return err(
                8,
                format!(
                    "unsupported format version {version} (this reader reads versions {} to {})",
                    format::OLDEST_VERSION,
                    format::VERSION
                ),
            );
        }
        if bytes.len() < format::HEADER_LEN {
            return err(bytes.len(), "truncated inside the file header");
        }
        if le_u16(bytes, 10) as usize != format::HEADER_LEN {
            return err(10, "header length is not 32");
        }
        let mut trace = Trace {
            pid: le_u32(bytes, 12),
            start_ns: le_u64(bytes, 16),
            ..Trace::default()
        };
        let start_ticks = le_u64(bytes, 24);
        let mut raw: Vec<Vec<RawEvent>> = Vec::new();
        // Per thread: the stack table index of each of its STACK records, in
        // order (what SAME_STACK ids name).
        let mut thread_stacks: Vec<Vec<u32>> = Vec::new();
        let mut pos = format::HEADER_LEN;
        let mut total: u64 = 0;
        let mut warning = None;
        let mut stacks = StackTable::default();
        // In salvage mode a broken block ends the trace where it starts.
        macro_rules! stop {
            ($at:expr, $msg:expr) => {{
                let e: TraceError = TraceError {
                    offset: ($at) as u64,
                    message: $msg.into(),
                };
                if !salvage {
                    return Err(e);
                }
                warning = Some(format!(
                    "salvaged: read {total} records in complete blocks up to byte {pos}, \
                     then {e}; records the process had not yet written are missing"
                ));
                break raw
                    .iter()
                    .filter_map(|t| t.last().map(|e| e.ticks))
                    .max()
                    .unwrap_or(start_ticks);
            }};
        }
        let end_ticks = loop {
            if pos == bytes.len() {
                stop!(
                    pos,
                    "the end block is missing (the process was killed, or left \
                     through _exit)"
                );
            }
            if bytes.len() - pos < format::BLOCK_HEADER_LEN {
                stop!(pos, "truncated inside a block header");
            }
            let tag = le_u32(bytes, pos);
            let thread = le_u32(bytes, pos + 4);
            let records = le_u32(bytes, pos + 8);
            let len = le_u32(bytes, pos + 12) as usize;
            let base_ticks = le_u64(bytes, pos + 16);
            let base_addr = le_u64(bytes, pos + 24);
            if tag == format::END_TAG {
                if records != 0 || len != 0 {
                    return err(pos, "end block with a payload");
                }
                if base_addr != total {
                    return err(
                        pos + 24,
                        format!("end block counts {base_addr} records, the blocks hold {total}"),
                    );
                }
                if pos + format::BLOCK_HEADER_LEN != bytes.len() {
                    return err(pos + format::BLOCK_HEADER_LEN, "data after the end block");
                }
                trace.end_ns = le_u64(bytes, pos + 32);
                if trace.end_ns < trace.start_ns || base_ticks < start_ticks {
                    return err(pos + 16, "the trace ends before it starts");
                }
                break base_ticks;
            }
            if tag == format::META_TAG {
                let payload = pos + format::BLOCK_HEADER_LEN;
                if records != 0 || bytes.len() - payload < len {
                    stop!(pos, "bad metadata block");
                }
                let text = &bytes[payload..payload + len];
                if format::checksum(text) != le_u32(bytes, pos + 32) {
                    stop!(pos + 32, "metadata block checksum mismatch");
                }
                trace.meta.push_str(&String::from_utf8_lossy(text));
                pos = payload + len;
                continue;
            }
            if tag != format::BLOCK_TAG {
                stop!(pos, format!("bad block tag {tag:#010x}"));
            }
            if thread > format::MAX_THREADS {
                stop!(pos + 4, format!("implausible thread index {thread}"));
            }
            let payload = pos + format::BLOCK_HEADER_LEN;
            if bytes.len() - payload < len {
                stop!(bytes.len(), "truncated inside a block payload");
            }
            let sum = format::checksum(&bytes[payload..payload + len]);
            if sum != le_u32(bytes, pos + 32) {
                stop!(pos + 32, "block checksum mismatch (corrupt payload)");
            }
            let t = thread as usize;
            if raw.len() <= t {
                raw.resize_with(t + 1, Vec::new);
                thread_stacks.resize_with(t + 1, Vec::new);
            }
            if raw[t].last().is_some_and(|last| base_ticks < last.ticks) {
                stop!(pos + 16, "block starts before the thread's previous record");
            }
            let before = raw[t].len();
            let stacks_before = thread_stacks[t].len();
            let decoded = decode_block(
                bytes,
                payload,
                len,
                records,
                (base_ticks, base_addr),
                &mut raw[t],
                (&mut stacks, &mut thread_stacks[t]),
            );
            if let Err(e) = decoded {
                raw[t].truncate(before);
                thread_stacks[t].truncate(stacks_before);
                stop!(e.offset, e.message);
            }
            total += records as u64;
            pos = payload + len;
        };
        // Ticks -> ns, from the (ticks, ns) pairs at both ends; a salvaged
        // trace has no end pair: measure the clock here.
        let span_ticks = end_ticks.saturating_sub(start_ticks);
        let ns_per_tick = if warning.is_some() {
            let rate = local_ns_per_tick();
            trace.end_ns = trace.start_ns + (span_ticks as f64 * rate) as u64;
            rate
        } else if span_ticks == 0 {
            1.0
        } else {
            (trace.end_ns - trace.start_ns) as f64 / span_ticks as f64
        };
        let start_ns = trace.start_ns;
        let to_ns = |ticks: u64| {
            start_ns.saturating_add((ticks.saturating_sub(start_ticks) as f64 * ns_per_tick) as u64)
        };
        trace.stacks = stacks.stacks;
        resolve(&mut trace, raw, to_ns)?;
        Ok((trace, warning))
    }

    /// Number of operations of every kind.
    pub fn op_count(&self) -> usize {
        self.threads.iter().map(Vec::len).sum()
    }
}

/// Nanoseconds per tick of the recorder's clock on this machine: the TSC
/// against CLOCK_MONOTONIC over 20 ms on x86-64, 1.0 elsewhere (the
/// recorder's clock is then nanoseconds). Measured once per process: every
/// salvaged trace slept the 20 ms again (a test that salvages 4,000
/// truncations of one trace waited 85 s).
fn local_ns_per_tick() -> f64 {
    static RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RATE.get_or_init(measure_ns_per_tick)
}

/// [`local_ns_per_tick`]'s measurement.
fn measure_ns_per_tick() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        let t0 = std::time::Instant::now();
        // SAFETY: rdtsc has no preconditions.
        let c0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: as above.
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = t0.elapsed().as_nanos() as f64;
        if c1 > c0 {
            return ns / (c1 - c0) as f64;
        }
    }
    1.0
}

fn decode_block(
    bytes: &[u8],
    payload: usize,
    len: usize,
    records: u32,
    (base_ticks, base_addr): (u64, u64),
    out: &mut Vec<RawEvent>,
    // The interned stacks, and this thread's STACK records' indices in it.
    (stacks, thread_stacks): (&mut StackTable, &mut Vec<u32>),
) -> Result<(), TraceError> {
    let mut pending: Option<(u32, u64)> = None;
    let mut c = Cursor {
        bytes,
        pos: payload,
        end: payload + len,
    };
    let mut ticks = base_ticks;
    let mut prev = base_addr;
    let mut addr = |c: &mut Cursor<'_>| -> Result<u64, TraceError> {
        let at = c.pos;
        let v = prev.wrapping_add(unzigzag(c.varint()?) as u64);
        if v == 0 {
            return err(at, "null block address");
        }
        prev = v;
        Ok(v)
    };
    for _ in 0..records {
        let offset = c.pos;
        let opcode = c.byte()?;
        if opcode
            & !(format::KIND_MASK
                | format::FLAG_ZEROED
                | format::FLAG_ALIGNED
                | format::FLAG_STACK_ID)
            != 0
        {
            return err(offset, format!("bad opcode {opcode:#04x}"));
        }
        let kind = opcode & format::KIND_MASK;
        let zeroed = opcode & format::FLAG_ZEROED != 0;
        let aligned = opcode & format::FLAG_ALIGNED != 0;
        let stack_id = opcode & format::FLAG_STACK_ID != 0;
        if (zeroed || aligned) && kind != format::KIND_ALLOC
            || stack_id && kind != format::KIND_ALLOC && kind != format::KIND_REALLOC
        {
            return err(
                offset,
                format!("flags on a non-allocation opcode {opcode:#04x}"),
            );
        }
        let dt = c.varint()?;
        ticks = match ticks.checked_add(dt) {
            Some(t) => t,
            None => return err(offset, "timestamp overflows"),
        };
        let mut e = RawEvent {
            offset,
            ticks,
            fresh: dt > 0,
            kind,
            zeroed,
            align_log2: 0,
            a: 0,
            b: 0,
            size: 0,
            stack: None,
        };
        match kind {
            format::KIND_STACK => {
                let weight = c.varint()?;
                let n = c.varint()? as usize;
                if n > format::MAX_FRAMES {
                    return err(offset, format!("stack of {n} frames"));
                }
                let mut frames = Vec::with_capacity(n);
                let mut prev_frame = 0u64;
                for _ in 0..n {
                    prev_frame = prev_frame.wrapping_add(unzigzag(c.varint()?) as u64);
                    frames.push(prev_frame);
                }
                let id = stacks.intern(frames);
                thread_stacks.push(id);
                pending = Some((id, weight));
                continue;
            }
            format::KIND_SAME_STACK => {
                let weight = c.varint()?;
                let at = c.pos;
                let n = c.varint()?;
                let Some(&id) = usize::try_from(n).ok().and_then(|n| thread_stacks.get(n)) else {
                    return err(
                        at,
                        format!("reference to stack {n}, which the thread has not recorded"),
                    );
                };
                pending = Some((id, weight));
                continue;
            }
            format::KIND_ALLOC => {
                e.a = addr(&mut c)?;
                e.size = c.varint()?;
                if aligned {
                    let at = c.pos;
                    let log = c.varint()?;
                    if !(5..=40).contains(&log) {
                        return err(at, format!("bad alignment log2 {log}"));
                    }
                    e.align_log2 = log as u8;
                }
            }
            format::KIND_FREE => e.a = addr(&mut c)?,
            format::KIND_REALLOC => {
                e.a = addr(&mut c)?;
                e.b = addr(&mut c)?;
                e.size = c.varint()?;
            }
            _ => return err(offset, format!("bad record kind {kind}")),
        }
        if stack_id {
            // The stack named in the record, weighing the record's size.
            let at = c.pos;
            let n = c.varint()?;
            let Some(&id) = usize::try_from(n).ok().and_then(|n| thread_stacks.get(n)) else {
                return err(
                    at,
                    format!("reference to stack {n}, which the thread has not recorded"),
                );
            };
            if pending.is_some() {
                return err(offset, "an allocation with two stacks");
            }
            e.stack = Some((id, e.size));
        } else if kind != format::KIND_FREE {
            e.stack = pending.take();
        }
        out.push(e);
    }
    if c.pos != c.end {
        return err(c.pos, "block payload longer than its records");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
