//! A replay plan: a trace decoded once, by the parent, into the flat array
//! of fixed-size operations that the replay cells execute.
//!
//! Why a file: a cell must not decode the trace itself. Decoding allocates
//! (vectors, hash maps) through the very allocator being measured, and the
//! memory it frees before the replay starts is recycled during the replay,
//! differently by every allocator, which would skew peak RSS and
//! fragmentation. A cell instead maps the plan read-only (`memmap2`; not
//! heap memory), touches every page before the clock starts, and keeps its
//! per-object table in an anonymous mapping, so the allocator under test
//! starts the replay with an almost empty heap.
//!
//! Layout (native endianness: written and read on the same machine):
//!
//! ```text
//! 0    magic        b"HKPLAN01"
//! 8    threads      u64
//! 16   objects      u64
//! 24   ops          u64   total PlanOps
//! 32   replayable   u64   ops that are not skips
//! 40   peak_live    u64   the trace's peak live bytes
//! 48   reserved     [u64; 2]
//! 64   op counts    [u64; threads]
//! ...  ops          [PlanOp; ops], thread after thread
//! ```

use std::io::Write as _;
use std::path::Path;

use heapkit_trace::{schedule, summary::Summary, Op, Trace};

use crate::error::{Error, Result};

const MAGIC: [u8; 8] = *b"HKPLAN01";
const HEADER: usize = 64;

/// Operation kinds of a [`PlanOp`].
pub mod kind {
    /// A free of a block from before recording: not replayed.
    pub const SKIP: u8 = 0;
    /// Allocate object `obj` of `size` bytes.
    pub const ALLOC: u8 = 1;
    /// Free object `obj` (`size` bytes).
    pub const FREE: u8 = 2;
    /// Reallocate object `obj` (`size` bytes) to `new_size` bytes as `new_obj`.
    pub const REALLOC: u8 = 3;
}

/// One operation, with everything its execution needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOp {
    /// ALLOC: requested size; FREE / REALLOC: size of the object ended.
    pub size: u64,
    /// REALLOC: new size.
    pub new_size: u64,
    /// Position in the trace's global schedule (ordered replay).
    pub seq: u64,
    /// ALLOC: object created; FREE / REALLOC: object ended.
    pub obj: u32,
    /// REALLOC: object created.
    pub new_obj: u32,
    /// One of [`kind`].
    pub kind: u8,
    /// ALLOC: zeroed (calloc).
    pub zeroed: u8,
    /// log2 of the layout's alignment (at least 4: 16 bytes).
    pub align_log2: u8,
    _pad: [u8; 5],
}

const _: () = assert!(std::mem::size_of::<PlanOp>() == 40);

/// What the parent learns while writing a plan.
#[derive(Debug, Clone)]
pub struct PlanInfo {
    /// The trace's summary.
    pub summary: Summary,
}

/// Decodes `trace` into a plan file at `path`.
pub fn write(trace: &Trace, path: &Path) -> Result<PlanInfo> {
    let summary = Summary::of(trace).map_err(Error::new)?;
    let order = schedule::schedule(trace).map_err(Error::new)?;
    let mut align: Vec<u8> = trace.objects.iter().map(|o| o.align_log2.max(4)).collect();
    let mut seqs: Vec<Vec<u64>> = trace.threads.iter().map(|t| vec![0; t.len()]).collect();
    for (n, &(t, i)) in order.iter().enumerate() {
        seqs[t as usize][i as usize] = n as u64;
        // A realloc keeps its block's alignment; the schedule visits old first.
        if let Op::Realloc { old, new, .. } = trace.threads[t as usize][i as usize].op {
            align[new as usize] = align[old as usize];
        }
    }
    drop(order);
    let file = std::fs::File::create(path)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", path.display())))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut header = Vec::with_capacity(HEADER + 8 * trace.threads.len());
    header.extend_from_slice(&MAGIC);
    for v in [
        trace.threads.len() as u64,
        trace.objects.len() as u64,
        trace.op_count() as u64,
        summary.replayable_ops() as u64,
        summary.peak_live_bytes,
        0,
        0,
    ] {
        header.extend_from_slice(&v.to_ne_bytes());
    }
    for t in &trace.threads {
        header.extend_from_slice(&(t.len() as u64).to_ne_bytes());
    }
    let io = |e: std::io::Error| Error::new(format!("cannot write {}: {e}", path.display()));
    out.write_all(&header).map_err(io)?;
    let size_of = |obj: u32| trace.objects[obj as usize].size;
    for (t, events) in trace.threads.iter().enumerate() {
        for (i, e) in events.iter().enumerate() {
            let mut op = PlanOp {
                seq: seqs[t][i],
                ..PlanOp::default()
            };
            match e.op {
                Op::Alloc {
                    obj, size, zeroed, ..
                } => {
                    (op.kind, op.obj, op.size, op.zeroed) = (kind::ALLOC, obj, size, zeroed as u8);
                    op.align_log2 = align[obj as usize];
                }
                Op::ReallocUnknown { new, size } => {
                    (op.kind, op.obj, op.size) = (kind::ALLOC, new, size);
                    op.align_log2 = align[new as usize];
                }
                Op::Free { obj } => {
                    (op.kind, op.obj, op.size) = (kind::FREE, obj, size_of(obj));
                    op.align_log2 = align[obj as usize];
                }
                Op::Realloc { old, new, size } => {
                    (op.kind, op.obj, op.new_obj) = (kind::REALLOC, old, new);
                    (op.size, op.new_size) = (size_of(old), size);
                    op.align_log2 = align[old as usize];
                }
                Op::FreeUnknown => op.kind = kind::SKIP,
            }
            out.write_all(as_bytes(&op)).map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    Ok(PlanInfo { summary })
}

fn as_bytes(op: &PlanOp) -> &[u8] {
    // SAFETY: PlanOp is repr(C) plain old data of 40 bytes with explicit
    // padding (`_pad`), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((op as *const PlanOp).cast(), 40) }
}

/// A plan mapped read-only by a replay cell.
pub struct Plan {
    map: memmap2::Mmap,
    /// Per thread: (first op index, op count).
    pub threads: Vec<(usize, usize)>,
    /// Number of objects.
    pub objects: usize,
    /// Operations that are not skips.
    pub replayable: u64,
    /// The trace's peak live bytes.
    pub peak_live: u64,
}

impl Plan {
    /// Maps and checks the plan at `path`.
    pub fn open(path: &Path) -> Result<Plan> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::new(format!("cannot open plan {}: {e}", path.display())))?;
        // SAFETY: read-only mapping of a file the parent wrote and no one
        // changes while the cell runs.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::new(format!("cannot map plan {}: {e}", path.display())))?;
        let word = |i: usize| -> u64 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&map[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(b)
        };
        if map.len() < HEADER || map[..8] != MAGIC {
            return Err(Error::new("not a replay plan"));
        }
        let threads = word(1) as usize;
        let ops = word(3) as usize;
        let table_end = HEADER + threads * 8;
        if map.len() != table_end + ops * 40 {
            return Err(Error::new("replay plan has the wrong length"));
        }
        let mut list = Vec::with_capacity(threads);
        let mut first = 0;
        for t in 0..threads {
            let n = word(HEADER / 8 + t) as usize;
            list.push((first, n));
            first += n;
        }
        if first != ops {
            return Err(Error::new("replay plan thread table does not add up"));
        }
        Ok(Plan {
            objects: word(2) as usize,
            replayable: word(4),
            peak_live: word(5),
            threads: list,
            map,
        })
    }

    /// Every operation, thread after thread.
    pub fn ops(&self) -> &[PlanOp] {
        let start = HEADER + self.threads.len() * 8;
        let bytes = &self.map[start..];
        // SAFETY: the mapping is page-aligned and `start` a multiple of 8,
        // so the pointer is aligned for PlanOp; `open` checked the length;
        // any bit pattern is a valid PlanOp (integers only).
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / 40) }
    }

    /// Reads every page, so the plan is resident before the clock starts.
    pub fn prefault(&self) -> u64 {
        let mut sum = 0u64;
        for i in (0..self.map.len()).step_by(4096) {
            // SAFETY: i < len; a volatile read keeps the loop.
            sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(&self.map[i]) } as u64);
        }
        sum
    }
}
