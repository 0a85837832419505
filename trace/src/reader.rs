//! Reading and validating `.hkt` traces.
//!
//! [`Trace::open`] maps the file with `memmap2` (a trace of a long run is
//! hundreds of megabytes; nothing is copied before decoding) and
//! [`Trace::parse`] decodes and checks every byte against the
//! [format](crate::format). The result is one [`Event`] list per recorded
//! thread, with object ids renumbered densely (`0..objects.len()`) so a
//! replay can keep per-object state in a plain array.
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
}

/// A decoded, validated trace.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Process id of the recorded process.
    pub pid: u32,
    /// When recording started (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// When recording ended.
    pub end_ns: u64,
    /// Per recorded thread, its operations in order.
    pub threads: Vec<Vec<Event>>,
    /// Every object, by dense index.
    pub objects: Vec<Object>,
}

/// An event before object ids are resolved.
struct RawEvent {
    offset: usize,
    ts: u64,
    kind: u8,
    zeroed: bool,
    align_log2: u8,
    a: u64,
    b: u64,
    size: u64,
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

impl Trace {
    /// Maps the file at `path` and parses it.
    pub fn open(path: &Path) -> Result<Trace, Box<dyn std::error::Error + Send + Sync>> {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot open trace {}: {e}", path.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(Box::new(TraceError {
                offset: 0,
                message: "empty file (truncated before the header)".into(),
            }));
        }
        // SAFETY: the mapping is read-only; a trace being rewritten while we
        // read it could show torn bytes, which the validation below reports.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| format!("cannot map trace {}: {e}", path.display()))?;
        Ok(Trace::parse(&map)?)
    }

    /// Decodes and validates a whole trace held in memory.
    pub fn parse(bytes: &[u8]) -> Result<Trace, TraceError> {
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
        if version != format::VERSION {
            return err(
                8,
                format!(
                    "unsupported format version {version} (this reader reads version {})",
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
            pid: le_u32(bytes, 24),
            start_ns: le_u64(bytes, 16),
            ..Trace::default()
        };
        let mut raw: Vec<Vec<RawEvent>> = Vec::new();
        let mut pos = format::HEADER_LEN;
        let mut total: u64 = 0;
        loop {
            if pos == bytes.len() {
                return err(
                    pos,
                    "truncated: the end block is missing (did the process exit through exit()?)",
                );
            }
            if bytes.len() - pos < format::BLOCK_HEADER_LEN {
                return err(pos, "truncated inside a block header");
            }
            let tag = le_u32(bytes, pos);
            let thread = le_u32(bytes, pos + 4);
            let records = le_u32(bytes, pos + 8);
            let len = le_u32(bytes, pos + 12) as usize;
            let base_ns = le_u64(bytes, pos + 16);
            let base_id = le_u64(bytes, pos + 24);
            if tag == format::END_TAG {
                if records != 0 || len != 0 {
                    return err(pos, "end block with a payload");
                }
                if base_id != total {
                    return err(
                        pos,
                        format!("end block counts {base_id} records, the blocks hold {total}"),
                    );
                }
                if pos + format::BLOCK_HEADER_LEN != bytes.len() {
                    return err(pos + format::BLOCK_HEADER_LEN, "data after the end block");
                }
                trace.end_ns = base_ns;
                break;
            }
            if tag != format::BLOCK_TAG {
                return err(pos, format!("bad block tag {tag:#010x}"));
            }
            if thread > 1 << 20 {
                return err(pos + 4, format!("implausible thread index {thread}"));
            }
            let payload = pos + format::BLOCK_HEADER_LEN;
            if bytes.len() - payload < len {
                return err(bytes.len(), "truncated inside a block payload");
            }
            let sum = format::checksum(&bytes[payload..payload + len]);
            if sum != le_u32(bytes, pos + 32) {
                return err(pos + 32, "block checksum mismatch (corrupt payload)");
            }
            let list = {
                let t = thread as usize;
                if raw.len() <= t {
                    raw.resize_with(t + 1, Vec::new);
                }
                &mut raw[t]
            };
            if let Some(last) = list.last() {
                if base_ns < last.ts {
                    return err(pos + 16, "block starts before the thread's previous record");
                }
            }
            decode_block(bytes, payload, len, records, base_ns, base_id, list)?;
            total += records as u64;
            pos = payload + len;
        }
        resolve(&mut trace, raw)?;
        Ok(trace)
    }

    /// Number of operations of every kind.
    pub fn op_count(&self) -> usize {
        self.threads.iter().map(Vec::len).sum()
    }
}

fn decode_block(
    bytes: &[u8],
    payload: usize,
    len: usize,
    records: u32,
    base_ns: u64,
    base_id: u64,
    out: &mut Vec<RawEvent>,
) -> Result<(), TraceError> {
    let mut c = Cursor {
        bytes,
        pos: payload,
        end: payload + len,
    };
    let mut ts = base_ns;
    let mut prev = base_id;
    let mut id = |c: &mut Cursor<'_>| -> Result<u64, TraceError> {
        let at = c.pos;
        let v = prev.wrapping_add(unzigzag(c.varint()?) as u64);
        if v == 0 {
            return err(at, "object id 0");
        }
        prev = v;
        Ok(v)
    };
    for _ in 0..records {
        let offset = c.pos;
        let opcode = c.byte()?;
        if opcode & !(format::KIND_MASK | format::FLAG_ZEROED | format::FLAG_ALIGNED) != 0 {
            return err(offset, format!("bad opcode {opcode:#04x}"));
        }
        let kind = opcode & format::KIND_MASK;
        let zeroed = opcode & format::FLAG_ZEROED != 0;
        let aligned = opcode & format::FLAG_ALIGNED != 0;
        if (zeroed || aligned) && kind != format::KIND_ALLOC {
            return err(
                offset,
                format!("flags on a non-allocation opcode {opcode:#04x}"),
            );
        }
        let dt = c.varint()?;
        ts = ts
            .checked_add(dt)
            .ok_or(())
            .or_else(|_| err(offset, "timestamp overflows"))?;
        let mut e = RawEvent {
            offset,
            ts,
            kind,
            zeroed,
            align_log2: 0,
            a: 0,
            b: 0,
            size: 0,
        };
        match kind {
            format::KIND_ALLOC => {
                e.a = id(&mut c)?;
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
            format::KIND_FREE => e.a = id(&mut c)?,
            format::KIND_REALLOC => {
                e.a = id(&mut c)?;
                e.b = id(&mut c)?;
                e.size = c.varint()?;
            }
            format::KIND_FREE_UNKNOWN => {}
            format::KIND_REALLOC_UNKNOWN => {
                e.b = id(&mut c)?;
                e.size = c.varint()?;
            }
            _ => return err(offset, format!("bad record kind {kind}")),
        }
        out.push(e);
    }
    if c.pos != c.end {
        return err(c.pos, "block payload longer than its records");
    }
    Ok(())
}

/// Renumbers object ids densely and checks every free names an object
/// allocated once and ended at most once.
fn resolve(trace: &mut Trace, raw: Vec<Vec<RawEvent>>) -> Result<(), TraceError> {
    let mut index: HashMap<u64, u32> = HashMap::new();
    for e in raw.iter().flatten() {
        let created = match e.kind {
            format::KIND_ALLOC => e.a,
            format::KIND_REALLOC | format::KIND_REALLOC_UNKNOWN => e.b,
            _ => continue,
        };
        let next = trace.objects.len();
        if next >= u32::MAX as usize {
            return err(e.offset, "more than 2^32 objects");
        }
        if index.insert(created, next as u32).is_some() {
            return err(e.offset, format!("object id {created:#x} allocated twice"));
        }
        let align_log2 = if e.kind == format::KIND_ALLOC {
            e.align_log2
        } else {
            0
        };
        trace.objects.push(Object {
            size: e.size,
            align_log2,
        });
    }
    let mut ended = vec![false; trace.objects.len()];
    let mut end = |raw_id: u64, offset: usize| -> Result<u32, TraceError> {
        let Some(&obj) = index.get(&raw_id) else {
            return err(
                offset,
                format!("free of object id {raw_id:#x} that was never allocated"),
            );
        };
        if std::mem::replace(&mut ended[obj as usize], true) {
            return err(offset, format!("object id {raw_id:#x} freed twice"));
        }
        Ok(obj)
    };
    trace.threads = Vec::with_capacity(raw.len());
    for list in raw {
        let mut events = Vec::with_capacity(list.len());
        for e in list {
            let op = match e.kind {
                format::KIND_ALLOC => Op::Alloc {
                    obj: index[&e.a],
                    size: e.size,
                    align_log2: e.align_log2,
                    zeroed: e.zeroed,
                },
                format::KIND_FREE => Op::Free {
                    obj: end(e.a, e.offset)?,
                },
                format::KIND_REALLOC => Op::Realloc {
                    old: end(e.a, e.offset)?,
                    new: index[&e.b],
                    size: e.size,
                },
                format::KIND_FREE_UNKNOWN => Op::FreeUnknown,
                _ => Op::ReallocUnknown {
                    new: index[&e.b],
                    size: e.size,
                },
            };
            events.push(Event { ts: e.ts, op });
        }
        trace.threads.push(events);
    }
    Ok(())
}
