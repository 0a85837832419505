//! A spin lock for slow paths.
//!
//! heapkit never takes a lock on an allocation fast path; locks guard the
//! rare, short sections (refilling from a global depot, mapping a segment,
//! adopting an abandoned one). A futex-free spin lock with
//! [`crossbeam_utils::Backoff`] is the right tool there: it never allocates,
//! works before `main` and inside fork handlers, and can be forcibly
//! re-initialised in a forked child.
//!
//! ```
//! use heapkit_core::lock::SpinLock;
//! static COUNTER: SpinLock<u64> = SpinLock::new(0);
//! *COUNTER.lock() += 1;
//! assert_eq!(*COUNTER.lock(), 1);
//! ```

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crossbeam_utils::Backoff;

/// A test-and-test-and-set spin lock without data.
pub struct RawSpinLock {
    locked: AtomicBool,
}

impl RawSpinLock {
    /// An unlocked lock.
    pub const fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
        }
    }

    /// Acquires the lock, spinning (then yielding) while it is held.
    #[inline]
    pub fn lock(&self) {
        if self.try_lock() {
            return;
        }
        self.lock_contended();
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let backoff = Backoff::new();
        loop {
            while self.locked.load(Ordering::Relaxed) {
                if backoff.is_completed() {
                    crate::os::yield_now();
                } else {
                    backoff.snooze();
                }
            }
            if self.try_lock() {
                return;
            }
        }
    }

    /// Acquires the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The calling thread must hold the lock (or, in a forked child, the
    /// thread that held it must have been the one that forked: see
    /// [`RawSpinLock::reset_after_fork`]).
    #[inline]
    pub unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Re-initialises the lock as unlocked in a forked child, where the
    /// thread that held it does not exist.
    ///
    /// # Safety
    /// Only in a `pthread_atfork` child handler, where the child is
    /// single-threaded.
    pub unsafe fn reset_after_fork(&self) {
        self.locked.store(false, Ordering::Relaxed);
    }

    /// Whether the lock is held right now (a hint for assertions).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

impl Default for RawSpinLock {
    fn default() -> Self {
        Self::new()
    }
}

/// A spin lock owning a `T`.
pub struct SpinLock<T> {
    raw: RawSpinLock,
    value: UnsafeCell<T>,
}

// SAFETY: the lock serialises every access to `value`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new unlocked lock around `value`.
    pub const fn new(value: T) -> Self {
        Self {
            raw: RawSpinLock::new(),
            value: UnsafeCell::new(value),
        }
    }

    /// Locks and returns a guard that unlocks on drop.
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.raw.lock();
        SpinGuard { lock: self }
    }

    /// Locks if free.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        // Not `then_some(SpinGuard { .. })`: that builds (and, on failure,
        // drops) a guard eagerly, unlocking a lock another thread holds.
        if self.raw.try_lock() {
            Some(SpinGuard { lock: self })
        } else {
            None
        }
    }

    /// The raw lock, for fork handlers that must hold it across `fork()`
    /// without a guard.
    pub fn raw(&self) -> &RawSpinLock {
        &self.raw
    }

    /// The protected value without locking.
    ///
    /// # Safety
    /// The caller must hold the lock through [`SpinLock::raw`] or otherwise
    /// be the only thread that can touch the value.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_unchecked(&self) -> &mut T {
        // SAFETY: exclusive access is the caller's promise.
        unsafe { &mut *self.value.get() }
    }
}

/// Holds a [`SpinLock`]; unlocks on drop.
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, and &mut self makes the
        // access unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock.
        unsafe { self.lock.raw.unlock() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn excludes_across_threads() {
        static LOCK: SpinLock<u64> = SpinLock::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..20_000 {
                        *LOCK.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*LOCK.lock(), 80_000);
        assert!(LOCK.try_lock().is_some());
    }

    #[test]
    fn failed_try_lock_leaves_the_holder_alone() {
        let lock = SpinLock::new(0u32);
        let held = lock.lock();
        assert!(lock.try_lock().is_none());
        // The failed attempt must not have released the holder's lock.
        assert!(lock.raw().is_locked());
        assert!(lock.try_lock().is_none());
        drop(held);
        assert!(!lock.raw().is_locked());
        assert!(lock.try_lock().is_some());
    }
}
