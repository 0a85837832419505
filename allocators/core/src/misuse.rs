//! What heapkit does when a program misuses the heap: says so in one line
//! and stops, as glibc does.
//!
//! Detection lives where it is free or nearly so (default mode): a pointer
//! whose segment carries no heapkit tag, a large block freed twice or by an
//! interior pointer, a remote free list that loops. Each finding is a
//! [`Misuse`]; [`report`] prints
//!
//! ```text
//! heapkit: free(): double free of 0x7f3a5c000040 (large block)
//! ```
//!
//! to standard error without allocating and aborts (`SIGABRT`, so a core
//! dump or a debugger shows the caller).

use core::fmt::{self, Write};

use crate::os;

/// A kind of heap misuse heapkit detects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misuse {
    /// A pointer no heapkit allocator handed out (its segment has no
    /// heapkit tag).
    InvalidPointer,
    /// A block freed when it was already free.
    DoubleFree,
    /// A pointer into a block, not to its start.
    InteriorPointer,
    /// Bytes after the requested size were overwritten (the hardened
    /// canary).
    Overflow,
    /// A free list that loops or holds more blocks than its page: a block
    /// was freed twice (or written after its free).
    CorruptedFreeList,
    /// A freed block held back by the hardened quarantine was written.
    WriteAfterFree,
}

impl Misuse {
    fn text(self) -> &'static str {
        match self {
            Misuse::InvalidPointer => "invalid pointer",
            Misuse::DoubleFree => "double free of",
            Misuse::InteriorPointer => "pointer into the middle of a block:",
            Misuse::Overflow => "heap overflow past the end of the block at",
            Misuse::CorruptedFreeList => {
                "corrupted free list (double free or write after free?) at"
            }
            Misuse::WriteAfterFree => "write after free to the block at",
        }
    }
}

/// A fixed buffer that formats without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// A short context text formatted without allocating (for [`report`]).
pub struct Context {
    buf: [u8; 64],
    len: usize,
}

impl Context {
    /// An empty context.
    pub const fn new() -> Self {
        Context {
            buf: [0; 64],
            len: 0,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only whole `str`s are copied in, cut at a char boundary.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Context {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut n = s.len().min(self.buf.len() - self.len);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Prints `heapkit: <call>(): <what> <ptr> (<context>)` to stderr and
/// aborts. `call` is the API entry that found it (`free`, `realloc`,
/// `malloc_usable_size`; `malloc` for a corrupted list found while
/// allocating).
#[cold]
#[inline(never)]
pub fn report(call: &str, what: Misuse, ptr: *const u8, context: &str) -> ! {
    let line = format_line(call, what, ptr, context);
    os::write_stderr(&line.buf[..line.len]);
    os::abort()
}

/// [`report`] about a small block, with `<allocator>, <size>-byte class`
/// as the context (`heapkit: free(): double free of 0x... (slab, 48-byte
/// class)`).
#[cold]
#[inline(never)]
pub fn report_in_class(
    call: &str,
    what: Misuse,
    ptr: *const u8,
    allocator: &str,
    size: usize,
) -> ! {
    let mut context = Context::new();
    let _ = write!(context, "{allocator}, {size}-byte class");
    report(call, what, ptr, context.as_str())
}

/// The report line, newline included.
fn format_line(call: &str, what: Misuse, ptr: *const u8, context: &str) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    let _ = write!(line, "heapkit: {call}(): {} {ptr:p}", what.text());
    if !context.is_empty() {
        let _ = write!(line, " ({context})");
    }
    let _ = line.write_str("\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_like_glibc() {
        let line = format_line(
            "free",
            Misuse::DoubleFree,
            0x1000 as *const u8,
            "large block",
        );
        assert_eq!(
            &line.buf[..line.len],
            b"heapkit: free(): double free of 0x1000 (large block)\n"
        );
        let long = [b'x'; 400];
        let context = core::str::from_utf8(&long).unwrap();
        let line = format_line("free", Misuse::InvalidPointer, core::ptr::null(), context);
        assert_eq!(line.len, 256, "a long context is cut, not overflowed");
    }
}
