//! [`StackText`]: a fixed-capacity text buffer on the stack, for messages
//! the shim must print without allocating (the unknown-backend error, the
//! `HEAPKIT_STATS=1` report).
//!
//! It implements `core::fmt::Write` and silently truncates what does not
//! fit, so formatting can never fail half-way or allocate.
//!
//! ```ignore
//! use core::fmt::Write;
//! let mut line = StackText::<64>::new();
//! let _ = write!(line, "live={}", 42);
//! assert_eq!(line.as_bytes(), b"live=42");
//! ```

use core::fmt;

/// Up to `N` bytes of text, truncated beyond that.
pub struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// Appends raw bytes (truncating).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let room = N - self.len;
        let take = bytes.len().min(room);
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + take),
            bytes.get(..take),
        ) {
            dst.copy_from_slice(src);
            self.len += take;
        }
    }

    /// The text as a C string: a NUL is appended, or, if the buffer is
    /// full, written over the last byte.
    pub fn nul_terminated(&mut self) -> *const core::ffi::c_char {
        if self.len < N {
            self.len += 1;
        }
        if let Some(last) = self.len.checked_sub(1).and_then(|i| self.buf.get_mut(i)) {
            *last = 0;
        }
        self.buf.as_ptr().cast()
    }

    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl<const N: usize> fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}
