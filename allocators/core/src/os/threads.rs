//! Threads: starting, sleeping and yielding, thread-exit destructors,
//! fork and exit handlers, and the process-wide memory barrier.

use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::keeping_errno;

/// Sleeps for `ns` nanoseconds (or until a signal interrupts).
pub fn sleep_ns(ns: u64) {
    let t = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: t is a valid timespec; the remainder is not wanted.
    keeping_errno(|| unsafe { libc::nanosleep(&t, ptr::null_mut()) });
}

/// Starts a detached thread running `body(arg as *mut c_void)` (a word the
/// caller and `body` agree on). Returns whether it started.
/// (`pthread_create` may call `malloc`: call it where re-entering the
/// allocator is safe.)
pub fn spawn_detached(body: extern "C" fn(*mut c_void) -> *mut c_void, arg: usize) -> bool {
    let mut thread: libc::pthread_t = 0;
    // SAFETY: default attributes; `body` is a valid thread entry, and the
    // argument is a plain word it interprets.
    let rc = keeping_errno(|| unsafe {
        libc::pthread_create(&mut thread, ptr::null(), body, arg as *mut c_void)
    });
    if rc != 0 {
        return false;
    }
    // SAFETY: a thread we just created and never join.
    keeping_errno(|| unsafe { libc::pthread_detach(thread) });
    true
}

/// Minor page faults the calling thread has taken so far
/// (`getrusage(RUSAGE_THREAD)`), or 0 where the kernel refuses: what the
/// tests that check a policy does not fault its memory in again count.
pub fn thread_minor_faults() -> u64 {
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct,
    // and getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `ru` is ours and lives across the call.
    let r = keeping_errno(|| unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) });
    if r != 0 {
        return 0;
    }
    ru.ru_minflt.max(0) as u64
}

/// Gives up the rest of this thread's time slice.
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` and its registration command, from
/// the kernel's `uapi/linux/membarrier.h`.
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: c_int = 1 << 4;

/// Registers this process for [`barrier_all_threads`]; whether the kernel
/// agreed (Linux 4.14 and later, unless a seccomp filter refuses). A
/// forked child must register again.
pub fn register_barrier_all_threads() -> bool {
    // SAFETY: membarrier takes two integers and touches no user memory.
    let rc = keeping_errno(|| unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
        )
    });
    rc == 0
}

/// Makes every other running thread of this process execute a full memory
/// barrier before this returns (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`):
/// the slow side of an asymmetric fence, whose fast side is a compiler
/// fence only. Needs [`register_barrier_all_threads`] first; whether it
/// worked.
pub fn barrier_all_threads() -> bool {
    // SAFETY: as in register_barrier_all_threads.
    let rc = keeping_errno(|| unsafe {
        libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0)
    });
    rc == 0
}

/// A POSIX thread-specific-data key whose destructor runs when a thread that
/// set a non-null value exits. heapkit uses it to hand a dying thread's
/// caches back: native `thread_local!` statics with `const` initialisers have
/// no destructors of their own.
pub struct ThreadExitKey {
    // 0 = not created yet; otherwise key + 1.
    key: AtomicUsize,
}

impl ThreadExitKey {
    /// A key not yet created.
    pub const fn new() -> Self {
        Self {
            key: AtomicUsize::new(0),
        }
    }

    /// Registers the calling thread: `dtor(value)` runs when it exits.
    /// Creates the key on first use; returns `false` if it cannot be created.
    ///
    /// `pthread_key_create` and `pthread_setspecific` for the first keys of a
    /// process do not allocate in glibc. `value` is only stored, never
    /// dereferenced here.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn register(&self, dtor: unsafe extern "C" fn(*mut c_void), value: *mut c_void) -> bool {
        let mut k = self.key.load(Relaxed);
        if k == 0 {
            let mut key: libc::pthread_key_t = 0;
            // SAFETY: key is a valid out-pointer; dtor is a valid function.
            if unsafe { libc::pthread_key_create(&mut key, Some(dtor)) } != 0 {
                return false;
            }
            match self
                .key
                .compare_exchange(0, key as usize + 1, Relaxed, Relaxed)
            {
                Ok(_) => k = key as usize + 1,
                Err(existing) => {
                    // SAFETY: key was created just above and never shared.
                    unsafe { libc::pthread_key_delete(key) };
                    k = existing;
                }
            }
        }
        // SAFETY: k - 1 is a key created by pthread_key_create.
        unsafe { libc::pthread_setspecific((k - 1) as libc::pthread_key_t, value) == 0 }
    }
}

impl Default for ThreadExitKey {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers fork handlers (`pthread_atfork`): `prepare` runs in the parent
/// before `fork`, `parent` and `child` after it in each process. Returns
/// `false` on failure.
pub fn register_atfork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) -> bool {
    // SAFETY: the handlers are valid functions for the life of the process.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) == 0 }
}

/// Registers `f` to run at normal process exit (`atexit`).
pub fn register_at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: f is a valid function for the life of the process.
    unsafe { libc::atexit(f) == 0 }
}
