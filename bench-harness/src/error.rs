//! One error type for the whole tool: a one-line message for the user.
//!
//! Every fallible path in the harness returns [`Result`]; `main` prints the
//! message as `heapkit-bench: error: ...` and exits with status 2. There are no
//! panics on bad input (unknown names, unreadable or mismatched JSON).

use std::fmt;

/// A user-facing error: one line, no backtrace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

/// The harness's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an error from anything printable.
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// `fail!("...", args)` returns early with an [`Error`] built by `format!`.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error(format!($($arg)*)))
    };
}
