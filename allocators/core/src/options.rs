//! Run-time options: a few documented environment variables, read once,
//! without allocating, the first time an allocator's slow path asks.
//!
//! | variable | default | what it sets |
//! |---|---|---|
//! | `HEAPKIT_PURGE_DELAY_MS` | 20 | sizeclass: how long a free page stays resident before it is purged |
//! | `HEAPKIT_LARGE_CACHE_MB` | 64 | every allocator: bytes of freed large blocks kept mapped for reuse, at least (the cache may hold up to half the bytes of live large blocks when that is more; 0: no cache) |
//! | `HEAPKIT_LARGE_DECAY_MS` | 250 | every allocator: how long a cached large block is kept |
//! | `HEAPKIT_BACKGROUND_PURGE_MS` | 0 (off) | sizeclass and slab: a background thread ([`crate::background`]) wakes this often to give back what an idle program holds (decayed free pages, emptied pages and abandoned segments, depot magazines, empty slabs, expired large blocks) |
//! | `HEAPKIT_QUARANTINE_KB` | 0 (off) | hardened sizeclass: bytes of freed small blocks each thread holds back before they can be reused, filled with a pattern checked when they leave (a write after free is reported) |
//! | `HEAPKIT_HUGE_PAGES` | off | every allocator: ask the kernel for transparent huge pages (`MADV_HUGEPAGE`) on segment reservations and large blocks: far fewer page faults and TLB misses, at the price of resident memory in 2 MiB steps |
//! | `HEAPKIT_VERBOSE` | off | `libheapkit.so`: print the backend and these options at start |
//!
//! Rust programs set them the same way (they are read from the process
//! environment at the first slow path); the defaults are the `DEFAULT_*`
//! constants below. A value that is not a number is reported with one line
//! on stderr and the default is used: a tuning knob never stops a program.
//!
//! ```
//! use heapkit_core::options;
//! let o = options::get();
//! assert!(o.large_cache_bytes <= 1 << 40);
//! assert_eq!(options::DEFAULT_PURGE_DELAY_MS, 20);
//! ```

use core::ffi::CStr;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::once::RunOnce;
use crate::os;

/// Default of `HEAPKIT_PURGE_DELAY_MS`.
pub const DEFAULT_PURGE_DELAY_MS: u64 = 20;
/// Default of `HEAPKIT_LARGE_CACHE_MB`.
pub const DEFAULT_LARGE_CACHE_MB: u64 = 64;
/// Default of `HEAPKIT_LARGE_DECAY_MS`.
pub const DEFAULT_LARGE_DECAY_MS: u64 = 250;
/// Default of `HEAPKIT_BACKGROUND_PURGE_MS` (0: no background purger).
pub const DEFAULT_BACKGROUND_PURGE_MS: u64 = 0;
/// Default of `HEAPKIT_QUARANTINE_KB` (0: no quarantine).
pub const DEFAULT_QUARANTINE_KB: u64 = 0;

/// The options in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Nanoseconds a free page stays resident (sizeclass).
    pub purge_delay_ns: u64,
    /// Bytes of freed large blocks kept mapped.
    pub large_cache_bytes: usize,
    /// Nanoseconds a cached large block is kept.
    pub large_decay_ns: u64,
    /// Nanoseconds between the background purger's rounds (0: no purger).
    pub background_purge_ns: u64,
    /// Bytes of freed blocks a hardened thread holds back (0: none).
    pub quarantine_bytes: usize,
    /// Ask for transparent huge pages on reservations and large blocks.
    pub huge_pages: bool,
    /// Print the backend and the options at start (the shim).
    pub verbose: bool,
}

/// One option: its variable, its default, its unit's scale to the stored
/// value, and the bound that keeps arithmetic safe.
struct Knob {
    name: &'static CStr,
    default: u64,
    scale: u64,
    max: u64,
}

const PURGE_DELAY: Knob = Knob {
    name: c"HEAPKIT_PURGE_DELAY_MS",
    default: DEFAULT_PURGE_DELAY_MS,
    scale: 1_000_000,
    max: 3_600_000,
};
const LARGE_CACHE: Knob = Knob {
    name: c"HEAPKIT_LARGE_CACHE_MB",
    default: DEFAULT_LARGE_CACHE_MB,
    scale: 1 << 20,
    max: 1 << 20,
};
const LARGE_DECAY: Knob = Knob {
    name: c"HEAPKIT_LARGE_DECAY_MS",
    default: DEFAULT_LARGE_DECAY_MS,
    scale: 1_000_000,
    max: 3_600_000,
};

const BACKGROUND_PURGE: Knob = Knob {
    name: c"HEAPKIT_BACKGROUND_PURGE_MS",
    default: DEFAULT_BACKGROUND_PURGE_MS,
    scale: 1_000_000,
    max: 3_600_000,
};
const QUARANTINE: Knob = Knob {
    name: c"HEAPKIT_QUARANTINE_KB",
    default: DEFAULT_QUARANTINE_KB,
    scale: 1 << 10,
    max: 1 << 20,
};

/// Whether the options have been read.
static READ: RunOnce = RunOnce::new();
static PURGE_DELAY_NS: AtomicU64 = AtomicU64::new(DEFAULT_PURGE_DELAY_MS * 1_000_000);
static LARGE_CACHE_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_LARGE_CACHE_MB << 20);
static LARGE_DECAY_NS: AtomicU64 = AtomicU64::new(DEFAULT_LARGE_DECAY_MS * 1_000_000);
static BACKGROUND_PURGE_NS: AtomicU64 = AtomicU64::new(DEFAULT_BACKGROUND_PURGE_MS * 1_000_000);
static QUARANTINE_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_QUARANTINE_KB << 10);
static VERBOSE: AtomicU8 = AtomicU8::new(0);
static HUGE_PAGES: AtomicU8 = AtomicU8::new(0);

/// The options, read from the environment on the first call. Cheap after
/// that (four relaxed loads); call it from slow paths.
pub fn get() -> Options {
    if !READ.is_done() {
        // A thread that finds another reading them keeps the defaults
        // (already in the atomics) until it is done: what that thread
        // stores when no variable is set.
        READ.run(read_environment);
    }
    Options {
        purge_delay_ns: PURGE_DELAY_NS.load(Ordering::Relaxed),
        large_cache_bytes: LARGE_CACHE_BYTES.load(Ordering::Relaxed) as usize,
        large_decay_ns: LARGE_DECAY_NS.load(Ordering::Relaxed),
        background_purge_ns: BACKGROUND_PURGE_NS.load(Ordering::Relaxed),
        quarantine_bytes: QUARANTINE_BYTES.load(Ordering::Relaxed) as usize,
        huge_pages: HUGE_PAGES.load(Ordering::Relaxed) != 0,
        verbose: VERBOSE.load(Ordering::Relaxed) != 0,
    }
}

fn read_environment() {
    PURGE_DELAY_NS.store(read_knob(&PURGE_DELAY), Ordering::Relaxed);
    LARGE_CACHE_BYTES.store(read_knob(&LARGE_CACHE), Ordering::Relaxed);
    LARGE_DECAY_NS.store(read_knob(&LARGE_DECAY), Ordering::Relaxed);
    BACKGROUND_PURGE_NS.store(read_knob(&BACKGROUND_PURGE), Ordering::Relaxed);
    QUARANTINE_BYTES.store(read_knob(&QUARANTINE), Ordering::Relaxed);
    let verbose =
        os::env_var(c"HEAPKIT_VERBOSE").is_some_and(|v| parse_flag(v.to_bytes()) == Some(true));
    VERBOSE.store(u8::from(verbose), Ordering::Relaxed);
    HUGE_PAGES.store(
        u8::from(read_flag(c"HEAPKIT_HUGE_PAGES")),
        Ordering::Relaxed,
    );
}

/// A flag option: on for the usual true words, off when unset or empty or
/// for the false words, off with a one-line warning for anything else.
fn read_flag(name: &CStr) -> bool {
    let Some(value) = os::env_var(name).filter(|v| !v.to_bytes().is_empty()) else {
        return false;
    };
    parse_flag(value.to_bytes()).unwrap_or_else(|| {
        os::write_stderr(b"heapkit: ignoring ");
        os::write_stderr(name.to_bytes());
        os::write_stderr(b"=");
        os::write_stderr(value.to_bytes());
        os::write_stderr(b" (not 1/true/yes/on or 0/false/no/off); it stays off\n");
        false
    })
}

/// The knob's value from the environment, scaled, or its default (with a
/// one-line warning when the variable is set but not a number in range).
fn read_knob(knob: &Knob) -> u64 {
    let Some(value) = os::env_var(knob.name).filter(|v| !v.to_bytes().is_empty()) else {
        return knob.default * knob.scale;
    };
    match parse_number(value.to_bytes()) {
        Some(n) if n <= knob.max => n * knob.scale,
        _ => {
            os::write_stderr(b"heapkit: ignoring ");
            os::write_stderr(knob.name.to_bytes());
            os::write_stderr(b"=");
            os::write_stderr(value.to_bytes());
            os::write_stderr(b" (not a whole number in range); using the default\n");
            knob.default * knob.scale
        }
    }
}

/// A decimal whole number, or `None`.
pub fn parse_number(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// A flag: `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off` (any case),
/// else `None`.
pub fn parse_flag(text: &[u8]) -> Option<bool> {
    const ON: [&[u8]; 4] = [b"1", b"true", b"yes", b"on"];
    const OFF: [&[u8]; 4] = [b"0", b"false", b"no", b"off"];
    let is = |words: &[&[u8]]| words.iter().any(|w| w.eq_ignore_ascii_case(text));
    if is(&ON) {
        Some(true)
    } else if is(&OFF) {
        Some(false)
    } else {
        None
    }
}

/// Writes `NAME=value (default|set)` lines for every option to stderr,
/// without allocating (the shim's `HEAPKIT_VERBOSE=1`).
pub fn write_summary() {
    let o = get();
    for (knob, stored) in [
        (&PURGE_DELAY, o.purge_delay_ns),
        (&LARGE_CACHE, o.large_cache_bytes as u64),
        (&LARGE_DECAY, o.large_decay_ns),
        (&BACKGROUND_PURGE, o.background_purge_ns),
        (&QUARANTINE, o.quarantine_bytes as u64),
    ] {
        let value = stored / knob.scale;
        let mut digits = [0u8; 20];
        os::write_stderr(b"heapkit: ");
        os::write_stderr(knob.name.to_bytes());
        os::write_stderr(b"=");
        os::write_stderr(format_number(value, &mut digits));
        os::write_stderr(if value == knob.default {
            b" (default)\n"
        } else {
            b" (set)\n"
        });
    }
    os::write_stderr(if o.huge_pages {
        b"heapkit: HEAPKIT_HUGE_PAGES=1 (set)\n"
    } else {
        b"heapkit: HEAPKIT_HUGE_PAGES=0 (default)\n"
    });
}

/// `n` in decimal, in `buf`, without allocating (for messages and paths
/// written from inside an allocator).
pub fn format_number(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_flags() {
        assert_eq!(parse_number(b"0"), Some(0));
        assert_eq!(parse_number(b"250"), Some(250));
        assert_eq!(parse_number(b""), None);
        assert_eq!(parse_number(b"12ms"), None);
        assert_eq!(parse_number(b"-1"), None);
        assert_eq!(parse_number(b"99999999999999999999"), None);
        assert_eq!(parse_flag(b"YES"), Some(true));
        assert_eq!(parse_flag(b"off"), Some(false));
        assert_eq!(parse_flag(b"2"), None);
        let mut buf = [0u8; 20];
        assert_eq!(format_number(0, &mut buf), b"0");
        assert_eq!(format_number(u64::MAX, &mut buf), b"18446744073709551615");
    }

    #[test]
    fn defaults_without_variables() {
        // The test process does not set them (a run that does would show
        // here as a failure naming the variable).
        for (name, _) in [("HEAPKIT_PURGE_DELAY_MS", 0), ("HEAPKIT_LARGE_CACHE_MB", 0)] {
            if std::env::var_os(name).is_some() {
                return;
            }
        }
        let o = get();
        assert_eq!(o.purge_delay_ns, DEFAULT_PURGE_DELAY_MS * 1_000_000);
        assert_eq!(o.large_cache_bytes, (DEFAULT_LARGE_CACHE_MB as usize) << 20);
        assert_eq!(o.large_decay_ns, DEFAULT_LARGE_DECAY_MS * 1_000_000);
    }
}
