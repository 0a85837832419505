//! The trace file: the path as given (`%p` for the process id), creating
//! the file (locked, so a child exec'd by a recording process leaves its
//! parent's trace alone) and writing its header.

use core::ffi::{c_int, CStr};
use core::sync::atomic::Ordering;

use heapkit_core::os;

use super::{mode, now_ticks, Mode, FD, PID};
use crate::format;

/// The environment variable that named the file: `HEAPKIT_TRACE`, or
/// `HEAPKIT_PROFILE` for a heap profile (the mode is set before the file
/// is opened).
fn variable() -> &'static [u8] {
    match mode() {
        Mode::Trace => b"HEAPKIT_TRACE",
        Mode::ProfileEvery | Mode::ProfileSampled => b"HEAPKIT_PROFILE",
    }
}

/// `heapkit-trace: <variable> path too long`.
#[cold]
fn path_too_long() {
    os::write_stderr(b"heapkit-trace: ");
    os::write_stderr(variable());
    os::write_stderr(b" path too long\n");
}

/// The `HEAPKIT_TRACE` (or `HEAPKIT_PROFILE`) path as given (with `%p`),
/// NUL-terminated.
struct PathTemplate(core::cell::UnsafeCell<[u8; TEMPLATE_CAP]>);
// SAFETY: written once by `start` before any other thread or fork handler
// can read it; read-only afterwards.
unsafe impl Sync for PathTemplate {}
const TEMPLATE_CAP: usize = 4096;
static TEMPLATE: PathTemplate = PathTemplate(core::cell::UnsafeCell::new([0; TEMPLATE_CAP]));

/// Keeps `path` as the template [`open_trace`] expands; false (said on
/// stderr) when it is too long.
///
/// # Safety
/// Called once, before recording is on and before the fork handler that
/// reads the template is registered: nothing reads it meanwhile.
pub(super) unsafe fn set_template(path: &CStr) -> bool {
    let template = path.to_bytes_with_nul();
    if template.len() > TEMPLATE_CAP {
        path_too_long();
        return false;
    }
    // SAFETY: no reader yet (this function's contract); the slice is within
    // the array (length checked above).
    unsafe { (&mut *TEMPLATE.0.get())[..template.len()].copy_from_slice(template) };
    true
}

fn template() -> &'static CStr {
    // SAFETY: `start` stored a NUL-terminated path before anything reads it.
    let bytes = unsafe { &*TEMPLATE.0.get() };
    CStr::from_bytes_until_nul(bytes).unwrap_or(c"")
}

/// True when the path names each process (`%p`).
pub(super) fn per_process() -> bool {
    template().to_bytes().windows(2).any(|w| w == b"%p")
}

/// Creates this process's trace file and writes its header; `FD` and `PID`
/// then name it. Says why on stderr when it cannot (once per process tree:
/// not when the parent has the same `HEAPKIT_TRACE` and so said it).
pub(super) fn open_trace(pid: u32, say_why: bool) -> bool {
    let mut expanded = [0u8; 4096];
    let Some(path) = expand_pid(template(), pid, &mut expanded) else {
        path_too_long();
        return false;
    };
    let fd = match os::create_append_locked(path) {
        os::LockedFile::Created(fd) => fd,
        // Another live process (typically the parent that ran this one) is
        // writing this file: leave it alone, silently (a shell script may
        // start hundreds of such children). `%p` records each process.
        os::LockedFile::HeldElsewhere => return false,
        os::LockedFile::Failed(err) => {
            if say_why {
                cannot_create(path, err);
            }
            return false;
        }
    };
    let mut header = [0u8; format::HEADER_LEN];
    header[0..8].copy_from_slice(&format::MAGIC);
    header[8..10].copy_from_slice(&format::VERSION.to_le_bytes());
    header[10..12].copy_from_slice(&(format::HEADER_LEN as u16).to_le_bytes());
    header[12..16].copy_from_slice(&pid.to_le_bytes());
    header[16..24].copy_from_slice(&os::monotonic_ns().to_le_bytes());
    header[24..32].copy_from_slice(&now_ticks().to_le_bytes());
    if !os::write_fd(fd, &header) {
        os::close_fd(fd);
        return false;
    }
    FD.store(fd, Ordering::Relaxed);
    PID.store(pid, Ordering::Relaxed);
    true
}

/// `heapkit-trace: cannot create PATH: REASON`, unless the parent process
/// runs with the same `HEAPKIT_TRACE` (or `HEAPKIT_PROFILE`): it failed the
/// same way and said so.
#[cold]
fn cannot_create(path: &CStr, err: c_int) {
    let mut entry = [0u8; TEMPLATE_CAP + 32];
    let name = variable();
    let value = template().to_bytes();
    let len = name.len() + 1 + value.len();
    entry[..name.len()].copy_from_slice(name);
    entry[name.len()] = b'=';
    entry[name.len() + 1..len].copy_from_slice(value);
    if os::parent_environment_has(&entry[..len]) {
        return;
    }
    let mut text = [0u8; 128];
    os::write_stderr(b"heapkit-trace: cannot create the ");
    os::write_stderr(name);
    os::write_stderr(b" file ");
    os::write_stderr(path.to_bytes());
    os::write_stderr(b": ");
    os::write_stderr(os::error_text(err, &mut text));
    os::write_stderr(b" (nothing is recorded)\n");
}

/// `path` with every `%p` replaced by `pid`, in `buf`; `None` if too long.
fn expand_pid<'a>(path: &'a CStr, pid: u32, buf: &'a mut [u8; 4096]) -> Option<&'a CStr> {
    let bytes = path.to_bytes();
    if !bytes.windows(2).any(|w| w == b"%p") {
        return Some(path);
    }
    let mut digits = [0u8; 20];
    let pid = heapkit_core::options::format_number(u64::from(pid), &mut digits);
    let mut len = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && bytes.get(i + 1) == Some(&b'p') {
            for &d in pid {
                *buf.get_mut(len)? = d;
                len += 1;
            }
            i += 2;
        } else {
            *buf.get_mut(len)? = bytes[i];
            len += 1;
            i += 1;
        }
    }
    *buf.get_mut(len)? = 0;
    CStr::from_bytes_with_nul(&buf[..=len]).ok()
}

#[cfg(test)]
mod tests {
    use super::expand_pid;

    #[test]
    fn pid_expansion() {
        let mut buf = [0u8; 4096];
        assert_eq!(
            expand_pid(c"/tmp/a.hkt", 7, &mut buf).unwrap(),
            c"/tmp/a.hkt"
        );
        let mut buf = [0u8; 4096];
        assert_eq!(
            expand_pid(c"/tmp/a-%p.hkt", 40213, &mut buf).unwrap(),
            c"/tmp/a-40213.hkt"
        );
        let mut buf = [0u8; 4096];
        assert_eq!(expand_pid(c"%p%p", 0, &mut buf).unwrap(), c"00");
        let long = std::ffi::CString::new(vec![b'x'; 4094]).unwrap();
        let mut with_p = long.as_bytes().to_vec();
        with_p.extend_from_slice(b"%p");
        let with_p = std::ffi::CString::new(with_p).unwrap();
        let mut buf = [0u8; 4096];
        assert!(expand_pid(&with_p, 123, &mut buf).is_none());
    }
}
