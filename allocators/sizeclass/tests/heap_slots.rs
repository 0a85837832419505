//! Thread heaps live in a pool, not in the TLS block (`heapkit_core::
//! thread_slots`): a heap is outside its thread's stack mapping (where
//! glibc puts the TLS block), an exited thread's heap is the next thread's,
//! and a destructor that allocates after the exit hook is served. One test
//! in its own process: the pools are process-wide.

use std::alloc::Layout;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::thread;

use heapkit_sizeclass::{thread_heap_address, Fast, Hardened, HeapAlloc, Policy, SizeClass};

/// The calling thread's stack mapping, `[start, end)`, which holds its
/// static TLS block too.
fn own_stack() -> (usize, usize) {
    // SAFETY: pthread_getattr_np fills the attr it is given, which is
    // destroyed after use; the out-pointers are valid.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
        let mut addr: *mut c_void = std::ptr::null_mut();
        let mut size = 0usize;
        assert_eq!(libc::pthread_attr_getstack(&attr, &mut addr, &mut size), 0);
        libc::pthread_attr_destroy(&mut attr);
        (addr as usize, addr as usize + size)
    }
}

/// Allocates and frees a few blocks in mode `P`; returns the heap's
/// address and whether it lies in the thread's stack mapping.
fn use_heap<P: Policy>(a: SizeClass<P>) -> (usize, bool) {
    let layout = Layout::from_size_align(48, 8).unwrap();
    let blocks: Vec<*mut u8> = (0..100).map(|_| a.allocate(layout)).collect();
    for &p in &blocks {
        assert!(!p.is_null());
        // SAFETY: a live 48-byte block.
        unsafe { p.write_bytes(0x5A, 48) };
    }
    for p in blocks {
        // SAFETY: a live block of `a`.
        unsafe { a.free(p) };
    }
    let heap = thread_heap_address::<P>();
    assert_ne!(heap, 0, "no heap bound after allocating");
    let (lo, hi) = own_stack();
    (heap, (lo..hi).contains(&heap))
}

static LATE_KEY: AtomicUsize = AtomicUsize::new(0);
static LATE_ROUNDS: AtomicUsize = AtomicUsize::new(0);

/// A pthread key destructor created after the allocator's (so it runs
/// after its exit hook in each round): allocates, frees, and asks for
/// three more rounds.
unsafe extern "C" fn late_destructor(value: *mut c_void) {
    let round = value as usize;
    let a = SizeClass::new();
    let layout = Layout::from_size_align(64 + round * 16, 8).unwrap();
    let p = a.allocate(layout);
    assert!(!p.is_null());
    // SAFETY: a live block of the layout's size, freed once.
    unsafe {
        p.write_bytes(round as u8, layout.size());
        a.free(p);
    }
    LATE_ROUNDS.fetch_add(1, Relaxed);
    if round < 3 {
        let key = LATE_KEY.load(Relaxed) as libc::pthread_key_t;
        // SAFETY: key was created by pthread_key_create below.
        unsafe {
            libc::pthread_setspecific(key, std::ptr::without_provenance_mut::<c_void>(round + 1))
        };
    }
}

#[test]
fn thread_heaps_live_outside_tls_and_are_reused() {
    // The main thread binds first, so its heap does not take the slot the
    // threads below hand to each other.
    let (_, in_stack) = use_heap(SizeClass::new());
    assert!(!in_stack, "the main thread's heap is in its stack mapping");

    // The check can fail: a thread's `thread_local!` is in its stack
    // mapping.
    thread_local! {
        static IN_TLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    thread::spawn(|| {
        let (lo, hi) = own_stack();
        let tls = IN_TLS.with(|c| c.as_ptr() as usize);
        assert!(
            (lo..hi).contains(&tls),
            "the TLS block is not in the stack mapping"
        );
    })
    .join()
    .unwrap();

    // Each mode: a heap outside the stack mapping, reused by the next
    // thread once its thread exits.
    fn twice<P: Policy>(a: SizeClass<P>) {
        let (first, in_stack) = thread::spawn(move || use_heap(a)).join().unwrap();
        assert!(
            !in_stack,
            "a thread's heap is in its stack mapping (the TLS block)"
        );
        let (second, _) = thread::spawn(move || use_heap(a)).join().unwrap();
        assert_eq!(first, second, "an exited thread's heap was not given back");
    }
    twice(SizeClass::<Fast>::fast());
    twice(SizeClass::<Hardened>::hardened());

    // A thread that only frees (another thread's blocks) binds a heap for
    // its counters, and gives it back too.
    let a = SizeClass::new();
    let layout = Layout::from_size_align(200, 8).unwrap();
    let blocks: Vec<usize> = (0..50).map(|_| a.allocate(layout) as usize).collect();
    let (freer, _) = thread::spawn(move || {
        for &p in &blocks {
            // SAFETY: live blocks of `a`, each freed once.
            unsafe { a.free(p as *mut u8) };
        }
        use_heap(a)
    })
    .join()
    .unwrap();
    let (next, _) = thread::spawn(move || use_heap(a)).join().unwrap();
    assert_eq!(freer, next);

    // Destructors that allocate after the exit hook, three rounds: served,
    // and the live counts stay exact.
    let before = heapkit_sizeclass::stats();
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: key is a valid out-pointer; the destructor is a valid function.
    let created = unsafe { libc::pthread_key_create(&mut key, Some(late_destructor)) };
    assert_eq!(created, 0);
    LATE_KEY.store(key as usize, Relaxed);
    for _ in 0..8 {
        thread::spawn(move || {
            use_heap(SizeClass::new());
            // SAFETY: key was created above.
            unsafe {
                libc::pthread_setspecific(key, std::ptr::without_provenance_mut::<c_void>(1))
            };
        })
        .join()
        .unwrap();
    }
    assert_eq!(LATE_ROUNDS.load(Relaxed), 8 * 3);
    let after = heapkit_sizeclass::stats();
    assert_eq!(
        after.live_bytes, before.live_bytes,
        "a late destructor's frees were lost"
    );
    // And heaps still go round: a new thread gets a heap.
    let (heap, _) = thread::spawn(move || use_heap(SizeClass::new()))
        .join()
        .unwrap();
    assert_ne!(heap, 0);
}
