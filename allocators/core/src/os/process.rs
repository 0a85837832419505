//! The process and its files: the environment, symbols, stack traces,
//! `/proc` reads, file descriptors, stderr, and ending the process.

use core::ffi::{c_int, c_void, CStr};

use super::{errno, page_size};

/// Looks up an environment variable without allocating.
pub fn env_var(name: &CStr) -> Option<&'static CStr> {
    // SAFETY: name is NUL-terminated; getenv returns null or a pointer into
    // the environment, which lives as long as nobody calls setenv on it.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        // SAFETY: getenv returned a NUL-terminated string.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

/// The next definition of `name` after the calling library in the dynamic
/// linker's search order (`dlsym(RTLD_NEXT)`), or null. For a library that
/// interposes a libc function and must still reach libc's own. May
/// allocate (through `malloc`) on failure: call it from outside the
/// allocator.
pub fn next_symbol(name: &CStr) -> *mut c_void {
    // SAFETY: name is NUL-terminated; RTLD_NEXT is a valid handle.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
}

/// Fills `frames` with the return addresses of the calling thread's stack,
/// innermost first, by DWARF unwinding (libgcc's `_Unwind_Backtrace`, which
/// reads `.eh_frame`: it works whether or not the code keeps frame
/// pointers). Returns how many were written. Does not allocate once warmed
/// up: call it once outside any allocator first (libgcc registers its
/// frame tables on the first call).
pub fn backtrace(frames: &mut [usize]) -> usize {
    struct State<'a> {
        frames: &'a mut [usize],
        len: usize,
    }
    extern "C" fn step(ctx: *mut c_void, arg: *mut c_void) -> c_int {
        // SAFETY: arg is the State passed below, alive for the whole walk.
        let state = unsafe { &mut *arg.cast::<State<'_>>() };
        // SAFETY: ctx is the unwinder's context for this frame.
        let ip = unsafe { _Unwind_GetIP(ctx) };
        if ip == 0 || state.len == state.frames.len() {
            return END_OF_STACK;
        }
        state.frames[state.len] = ip;
        state.len += 1;
        NO_REASON
    }
    const NO_REASON: c_int = 0;
    const END_OF_STACK: c_int = 5;
    extern "C" {
        fn _Unwind_Backtrace(
            trace: extern "C" fn(*mut c_void, *mut c_void) -> c_int,
            arg: *mut c_void,
        ) -> c_int;
        fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
    }
    let mut state = State { frames, len: 0 };
    // SAFETY: step only writes within state.frames; the unwinder calls it
    // synchronously on this thread.
    unsafe { _Unwind_Backtrace(step, (&raw mut state).cast()) };
    state.len
}

/// Reads the file at `path` into `buf` (as much as fits); returns the
/// bytes read, 0 on failure. No allocation: for `/proc` files read from
/// inside an allocator.
pub fn read_file(path: &CStr, buf: &mut [u8]) -> usize {
    read_file_at(path, 0, buf)
}

/// Reads the file at `path` from byte `offset` into `buf` (as much as
/// fits); returns the bytes read, 0 on failure. No allocation.
pub fn read_file_at(path: &CStr, offset: u64, buf: &mut [u8]) -> usize {
    // SAFETY: path is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return 0;
    }
    let mut len = 0;
    while len < buf.len() {
        let at = offset.saturating_add(len as u64) as libc::off_t;
        // SAFETY: the range len.. of buf is writable; fd is open.
        let got = unsafe { libc::pread(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len, at) };
        if got <= 0 {
            break;
        }
        len += got as usize;
    }
    close_fd(fd);
    len
}

/// The process's resident memory in bytes (the second field of
/// `/proc/self/statm`, in pages), or 0 if it cannot be read. Never
/// allocates.
pub fn resident_bytes() -> usize {
    statm_pages([1, 0]).0 * page_size()
}

/// The process's resident memory that no file backs (its RSS less the
/// resident pages of files and shared memory: `/proc/self/statm`'s second
/// field less its third), in bytes: the heap, stacks and other anonymous
/// mappings, not the program's code and libraries. 0 if it cannot be read.
/// Never allocates.
pub fn anonymous_resident_bytes() -> usize {
    let (resident, shared) = statm_pages([1, 2]);
    resident.saturating_sub(shared) * page_size()
}

/// Fields `which` of `/proc/self/statm` (numbers of pages), 0 for any it
/// cannot read.
fn statm_pages(which: [usize; 2]) -> (usize, usize) {
    let mut buf = [0u8; 128];
    let len = read_file(c"/proc/self/statm", &mut buf);
    let field = |n: usize| {
        buf.get(..len)
            .unwrap_or(&[])
            .split(|&b| b == b' ')
            .nth(n)
            .and_then(crate::options::parse_number)
            .unwrap_or(0) as usize
    };
    (field(which[0]), field(which[1]))
}

/// Writes all of `bytes` to standard error, ignoring failures.
pub fn write_stderr(bytes: &[u8]) {
    write_fd(2, bytes);
}

/// Writes all of `bytes` to file descriptor `fd`; returns `false` if the
/// write failed.
pub fn write_fd(fd: c_int, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: bytes is a valid readable buffer of its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// Creates (or truncates) the file at `path` for writing, opened with
/// `O_APPEND | O_CLOEXEC` so that each `write` lands whole at the end and
/// the descriptor does not leak into exec'd programs. Returns the file
/// descriptor, or -1 on failure.
pub fn create_append(path: &CStr) -> c_int {
    // SAFETY: path is NUL-terminated; open has no other preconditions.
    unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    }
}

/// What [`create_append_locked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedFile {
    /// Created (or truncated) and locked: the descriptor.
    Created(c_int),
    /// Another process holds the lock: left alone.
    HeldElsewhere,
    /// The OS refused: the `errno` value.
    Failed(c_int),
}

/// Like [`create_append`], but first takes an exclusive `flock` on the
/// file, held until the process ends (forked children share it), and only
/// then truncates it. A program exec'd by a process that is writing the
/// file must not truncate it under its parent: that is
/// [`LockedFile::HeldElsewhere`].
pub fn create_append_locked(path: &CStr) -> LockedFile {
    // SAFETY: path is NUL-terminated; open has no other preconditions.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        return LockedFile::Failed(errno());
    }
    // SAFETY: fd is a descriptor opened just above.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        close_fd(fd);
        return LockedFile::HeldElsewhere;
    }
    // SAFETY: as above; truncating a file we hold open for writing.
    if unsafe { libc::ftruncate(fd, 0) } != 0 {
        let err = errno();
        close_fd(fd);
        return LockedFile::Failed(err);
    }
    LockedFile::Created(fd)
}

/// The text of error number `err` (`strerror_r`), written into `buf`; never
/// allocates.
pub fn error_text(err: c_int, buf: &mut [u8; 128]) -> &[u8] {
    buf.fill(0);
    // SAFETY: buf is writable for its length; the XSI strerror_r writes a
    // NUL-terminated message of at most that length (or fails, leaving the
    // zeroed buffer).
    let rc = unsafe { libc::strerror_r(err, buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc != 0 || len == 0 {
        return b"unknown error";
    }
    &buf[..len]
}

/// True when the parent process's environment holds exactly the entry
/// `entry` (`NAME=value`), read from `/proc/<ppid>/environ` in chunks on the
/// stack. For messages that a whole tree of processes would otherwise
/// repeat: only the first process of the tree says it. False when the
/// parent's environment cannot be read.
pub fn parent_environment_has(entry: &[u8]) -> bool {
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    let mut path = [0u8; 32];
    path[..6].copy_from_slice(b"/proc/");
    let mut digits = [0u8; 20];
    let pid = crate::options::format_number(ppid.max(0) as u64, &mut digits);
    path[6..6 + pid.len()].copy_from_slice(pid);
    let len = 6 + pid.len();
    path[len..len + 9].copy_from_slice(b"/environ\0");
    // SAFETY: path is NUL-terminated (written just above).
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // Streaming match: `matched` bytes of `entry` match the current entry's
    // start; usize::MAX once the current entry cannot match.
    let mut matched = 0usize;
    let mut chunk = [0u8; 512];
    let mut found = false;
    'read: loop {
        // SAFETY: chunk is writable for its length; fd is open.
        let got = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if got <= 0 {
            break;
        }
        for &b in &chunk[..got as usize] {
            if b == 0 {
                if matched == entry.len() {
                    found = true;
                    break 'read;
                }
                matched = 0;
            } else if matched != usize::MAX {
                matched = if matched < entry.len() && entry[matched] == b {
                    matched + 1
                } else {
                    usize::MAX
                };
            }
        }
    }
    close_fd(fd);
    found
}

/// Closes file descriptor `fd`, ignoring failures.
pub fn close_fd(fd: c_int) {
    // SAFETY: closing a descriptor has no memory-safety preconditions.
    unsafe { libc::close(fd) };
}

/// The id of the calling process (a system call; not cached).
pub fn process_id() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// Ends the process at once with `status`, as libc's `_exit` does (the
/// `exit_group` system call, made directly so that a library exporting its
/// own `_exit` can call this from it): no `atexit` handlers, no stdio flush,
/// no allocation. For errors found before a program may run.
pub fn exit_immediately(status: c_int) -> ! {
    loop {
        // SAFETY: exit_group takes an int and does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, status) };
    }
}

/// Duplicates `fd` onto a new close-on-exec descriptor numbered `min` or
/// above (`fcntl(F_DUPFD_CLOEXEC)`); `None` on failure. Lets a report
/// written at exit survive a program that closes its own stderr first.
pub fn dup_cloexec(fd: c_int, min: c_int) -> Option<c_int> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor; no memory involved.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    (new >= 0).then_some(new)
}

/// Ends the process with `SIGABRT` (`abort`), for detected heap misuse.
pub fn abort() -> ! {
    // SAFETY: abort has no preconditions and does not return.
    unsafe { libc::abort() }
}
