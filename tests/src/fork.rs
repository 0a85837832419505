//! `fork()` from a multi-threaded parent: while several threads are busy
//! allocating and freeing, the main thread forks; the child allocates and
//! frees (including blocks that the parent's threads allocated, though those
//! threads do not exist in the child) and `_exit`s with a status the parent
//! checks. The child also creates threads (`pthread_create`) that free and
//! allocate concurrently, and forks a grandchild that allocates. Child and
//! grandchild run under `alarm`, so one deadlocked on a lock held by a
//! vanished thread is killed by SIGALRM and the test fails instead of
//! hanging.
//!
//! The child does only allocation work and libc calls: no panics, no std
//! locks, no output. A failure is an exit code that says where it failed.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use crate::pattern::{check, fill, first_nonzero, XorShift};
use crate::threads::mixed_size;
use crate::{Block, Volume};

/// Seconds a child may run before SIGALRM kills it.
const CHILD_TIMEOUT_SECS: u32 = 20;

/// Child exit codes (0 = success).
mod code {
    pub const INHERITED_CORRUPT: i32 = 10;
    pub const NULL: i32 = 20;
    pub const MISALIGNED: i32 = 21;
    pub const CORRUPT: i32 = 22;
    pub const NOT_ZERO: i32 = 23;
    pub const REALLOC_NULL: i32 = 30;
    pub const REALLOC_LOST: i32 = 31;
    pub const BAD_LAYOUT: i32 = 40;
    pub const STD_VEC: i32 = 50;
    pub const THREAD_CREATE: i32 = 60;
    pub const GRANDCHILD: i32 = 70;
}

fn describe(code: i32) -> &'static str {
    match code {
        code::INHERITED_CORRUPT => "a block inherited from a parent thread was corrupted",
        code::NULL => "an allocation returned null",
        code::MISALIGNED => "a block was misaligned",
        code::CORRUPT => "a block's pattern was overwritten",
        code::NOT_ZERO => "alloc_zeroed returned a non-zero byte",
        code::REALLOC_NULL => "realloc returned null",
        code::REALLOC_LOST => "realloc lost the block's contents",
        code::BAD_LAYOUT => "internal: bad layout",
        code::STD_VEC => "a Vec built in the child had wrong contents",
        code::THREAD_CREATE => "pthread_create failed in the child",
        code::GRANDCHILD => "the child's own fork failed, or its child failed or hung",
        _ => "unknown exit code",
    }
}

/// Allocation work in the child (on any of its threads): check and free the
/// `inherited` blocks, then `rounds` rounds of allocating, growing and
/// freeing patterned blocks. Returns 0 or an error code. Must not panic: no
/// indexing, no unwrap, no formatting.
fn work<A: GlobalAlloc>(a: &A, inherited: &[Block], seed: u64, rounds: usize) -> i32 {
    // Free blocks allocated by the parent's threads (which do not exist
    // here), after checking them.
    for b in inherited {
        // SAFETY: the block was live in the parent at fork, so it is live in
        // the child's copy of the heap.
        if unsafe { check(b.ptr(), b.size, b.seed) }.is_err() {
            return code::INHERITED_CORRUPT;
        }
        let Ok(layout) = Layout::from_size_align(b.size, b.align) else {
            return code::BAD_LAYOUT;
        };
        // SAFETY: live block of a with this layout; freed once in the child.
        unsafe { a.dealloc(b.ptr(), layout) };
    }
    let mut rng = XorShift::new(seed);
    const SLOTS: usize = 64;
    let mut slots = [(core::ptr::null_mut::<u8>(), 0usize, 1usize, 0u64); SLOTS];
    for round in 0..rounds {
        for slot in slots.iter_mut() {
            let size = mixed_size(&mut rng, round % 8 == 0);
            let align = if rng.chance(10) {
                1 << rng.range(4, 20)
            } else {
                8
            };
            let Ok(layout) = Layout::from_size_align(size, align) else {
                return code::BAD_LAYOUT;
            };
            let zeroed = rng.chance(20);
            // SAFETY: non-zero size.
            let p = unsafe {
                if zeroed {
                    a.alloc_zeroed(layout)
                } else {
                    a.alloc(layout)
                }
            };
            if p.is_null() {
                return code::NULL;
            }
            if !(p as usize).is_multiple_of(align) {
                return code::MISALIGNED;
            }
            // SAFETY: p is live for size bytes.
            if zeroed && unsafe { first_nonzero(p, size) }.is_some() {
                return code::NOT_ZERO;
            }
            let s = rng.next();
            // SAFETY: p is live for size bytes.
            unsafe { fill(p, size, s) };
            *slot = (p, size, align, s);
        }
        // Grow a few by realloc.
        for slot in slots.iter_mut().step_by(7) {
            let (p, size, align, s) = *slot;
            let new_size = size * 2 + 100;
            let Ok(layout) = Layout::from_size_align(size, align) else {
                return code::BAD_LAYOUT;
            };
            // SAFETY: p is live with layout.
            let q = unsafe { a.realloc(p, layout, new_size) };
            if q.is_null() {
                return code::REALLOC_NULL;
            }
            // SAFETY: q is live for new_size > size bytes.
            if unsafe { check(q, size, s) }.is_err() {
                return code::REALLOC_LOST;
            }
            // SAFETY: q is live for new_size bytes.
            unsafe { fill(q, new_size, s) };
            *slot = (q, new_size, align, s);
        }
        for &(p, size, align, s) in slots.iter() {
            // SAFETY: p is live for size bytes.
            if unsafe { check(p, size, s) }.is_err() {
                return code::CORRUPT;
            }
            let Ok(layout) = Layout::from_size_align(size, align) else {
                return code::BAD_LAYOUT;
            };
            // SAFETY: p is live with layout; freed once.
            unsafe { a.dealloc(p, layout) };
        }
    }
    0
}

/// What a thread created in the child works on, and where it reports.
struct ThreadTask<'a, A> {
    a: &'a A,
    inherited: &'a [Block],
    seed: u64,
    result: i32,
}

extern "C" fn child_thread<A: GlobalAlloc>(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: arg is the &mut ThreadTask that child_work passed to
    // pthread_create; child_work joins this thread before the task goes away
    // and does not touch it meanwhile.
    let task = unsafe { &mut *arg.cast::<ThreadTask<'_, A>>() };
    task.result = work(task.a, task.inherited, task.seed, 20);
    core::ptr::null_mut()
}

/// Everything the child does: two threads created with `pthread_create`
/// and the child's main thread free the inherited blocks (a third each) and
/// allocate concurrently; then the child forks a grandchild that allocates
/// too; then a std `Vec`. Returns the exit code. Must not panic.
fn child_work<A: GlobalAlloc + Sync>(
    a: &A,
    inherited: &[Block],
    seed: u64,
    timeout_secs: u32,
) -> i32 {
    let third = inherited.len() / 3 + 1;
    let mut parts = inherited.chunks(third);
    let mine = parts.next().unwrap_or(&[]);
    let mut tasks = [
        ThreadTask {
            a,
            inherited: parts.next().unwrap_or(&[]),
            seed: seed + 1,
            result: -1,
        },
        ThreadTask {
            a,
            inherited: parts.next().unwrap_or(&[]),
            seed: seed + 2,
            result: -1,
        },
    ];
    let mut threads: [libc::pthread_t; 2] = [0; 2];
    let mut started = 0;
    for (task, thread) in tasks.iter_mut().zip(threads.iter_mut()) {
        // SAFETY: thread is a valid out pointer; the task outlives the
        // thread (joined below, before tasks is dropped).
        let r = unsafe {
            libc::pthread_create(
                thread,
                core::ptr::null(),
                child_thread::<A>,
                (task as *mut ThreadTask<'_, A>).cast(),
            )
        };
        if r != 0 {
            break;
        }
        started += 1;
    }
    let main_result = work(a, mine, seed, 40);
    for thread in threads.iter().take(started) {
        // SAFETY: a thread we created and have not joined.
        unsafe { libc::pthread_join(*thread, core::ptr::null_mut()) };
    }
    if started < 2 {
        return code::THREAD_CREATE;
    }
    if main_result != 0 {
        return main_result;
    }
    for task in &tasks {
        if task.result != 0 {
            return task.result;
        }
    }
    // A fork from the (now multi-threaded-born) child.
    // SAFETY: the grandchild only runs work (allocation and libc) and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: alarm is async-signal-safe (and not inherited over fork).
        unsafe { libc::alarm(timeout_secs) };
        let c = work(a, &[], seed + 3, 10);
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(c) };
    }
    if pid < 0 {
        return code::GRANDCHILD;
    }
    let mut status = 0;
    // SAFETY: waits for our own child; status is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return code::GRANDCHILD;
    }
    // std collections in the child (allocation failure here aborts, which
    // the parent sees as a signal).
    let v: Vec<u64> = (0..10_000u64).map(|i| i * 3).collect();
    if !v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3) {
        return code::STD_VEC;
    }
    0
}

/// Stops the busy threads when dropped, so a failing assertion in the main
/// thread does not leave the scope waiting on them forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Forks several times while threads allocate; see the module docs.
pub fn from_multithreaded_parent<A: GlobalAlloc + Sync>(a: &A, v: Volume) {
    with_child_timeout(a, v, CHILD_TIMEOUT_SECS)
}

/// [`from_multithreaded_parent`] with the child's `alarm` set to
/// `timeout_secs`.
pub fn with_child_timeout<A: GlobalAlloc + Sync>(a: &A, v: Volume, timeout_secs: u32) {
    let busy = 3;
    let forks = v.pick(8, 3);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Vec<Block>>();
    let mut failures: Vec<String> = Vec::new();
    let mut inherited: Vec<Block> = Vec::new();
    thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for t in 0..busy {
            let tx = tx.clone();
            let stop = &stop;
            s.spawn(move || {
                let mut rng = XorShift::new(0xF0 + t);
                // Hand blocks to the main thread for the child to free.
                let handed: Vec<Block> = (0..32)
                    .map(|_| {
                        let size = mixed_size(&mut rng, true);
                        Block::new(
                            a,
                            size,
                            1 << rng.below(6),
                            rng.next(),
                            false,
                            "parent thread block",
                        )
                    })
                    .collect();
                tx.send(handed).expect("main thread alive");
                drop(tx);
                let mut mine: Vec<Block> = Vec::new();
                let mut boxes: Vec<Vec<u8>> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let size = mixed_size(&mut rng, false);
                    mine.push(Block::new(
                        a,
                        size,
                        8,
                        rng.next(),
                        false,
                        "busy parent thread",
                    ));
                    boxes.push(vec![3u8; rng.range(1, 3000)]);
                    if mine.len() > 200 {
                        let i = rng.below(mine.len());
                        // SAFETY: allocated from a above, freed once.
                        unsafe { mine.swap_remove(i).free(a, "busy parent thread") };
                        boxes.swap_remove(rng.below(boxes.len()));
                    }
                }
                for b in mine {
                    // SAFETY: allocated from a above, freed once.
                    unsafe { b.free(a, "busy parent thread") };
                }
                assert!(
                    boxes.iter().all(|b| b.iter().all(|&x| x == 3)),
                    "busy thread's Vec corrupted"
                );
            });
        }
        drop(tx);
        for handed in rx.iter() {
            inherited.extend(handed);
        }
        for f in 0..forks {
            // Let the busy threads get going between forks.
            thread::sleep(std::time::Duration::from_millis(20));
            // SAFETY: fork has no memory-safety preconditions; the child
            // only runs child_work (allocation and libc) and _exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: alarm and _exit are async-signal-safe libc calls.
                unsafe {
                    libc::alarm(timeout_secs);
                    let code = child_work(a, &inherited, f as u64, timeout_secs);
                    libc::_exit(code);
                }
            }
            if pid < 0 {
                failures.push(format!(
                    "fork {f} failed: {}",
                    std::io::Error::last_os_error()
                ));
                continue;
            }
            let mut status = 0;
            // SAFETY: waits for our own child; status is a valid out pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r != pid {
                failures.push(format!(
                    "waitpid for fork {f}: {}",
                    std::io::Error::last_os_error()
                ));
            } else if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                let why = if sig == libc::SIGALRM {
                    " (timed out: deadlocked?)"
                } else {
                    ""
                };
                failures.push(format!("child of fork {f} killed by signal {sig}{why}"));
            } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
                let c = libc::WEXITSTATUS(status);
                failures.push(format!(
                    "child of fork {f} exited with {c}: {}",
                    describe(c)
                ));
            }
        }
    });
    assert!(
        failures.is_empty(),
        "fork from a multi-threaded parent: {failures:#?}"
    );
    for b in inherited {
        // SAFETY: allocated by the busy threads from a; freed once here.
        unsafe { b.free(a, "parent thread block, freed in the parent") };
    }
}
