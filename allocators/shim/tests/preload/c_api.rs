//! The C programs of `tests/preload` that drive the allocation API
//! itself: every entry point under threads, fork and dlopen; C++'s
//! operators; glibc's aliases and introspection; jemalloc's API; large
//! alignments; memory given back (remote frees, the background purger);
//! late thread destructors.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::*;

/// Compiles the C stress program, the TLS library it dlopens and the C++
/// check (if g++ is present) once.
fn c_programs() -> Option<&'static (PathBuf, PathBuf, Option<PathBuf>)> {
    static BUILT: OnceLock<Option<(PathBuf, PathBuf, Option<PathBuf>)>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cc = find("c_stress", "cc")?;
            let dir = scratch("c");
            let src = sources();
            let stress = dir.join("stress");
            let tls = dir.join("libhk_tls.so");
            let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
            assert!(ok(Command::new(&cc)
                .args(["-O2", "-Wall", "-pthread", "-o"])
                .arg(&stress)
                .arg(src.join("stress.c"))
                .arg("-ldl")));
            assert!(ok(Command::new(&cc)
                .args(["-O2", "-shared", "-fPIC", "-o"])
                .arg(&tls)
                .arg(src.join("tls_lib.c"))));
            let cxx = find("cxx_new_delete", "g++").map(|gxx| {
                let bin = dir.join("cxx");
                assert!(ok(Command::new(gxx)
                    .args(["-O2", "-pthread", "-o"])
                    .arg(&bin)
                    .arg(src.join("cxx.cc"))));
                bin
            });
            Some((stress, tls, cxx))
        })
        .as_ref()
}

#[test]
fn c_stress_every_entry_point_threads_fork_dlopen() {
    let Some((stress, tls, _)) = c_programs() else {
        return;
    };
    let dir = scratch("stress");
    each_mode(|b| {
        let scale = if b == "bump" { "0.2" } else { "1" };
        let mut cmd = under(b, stress);
        cmd.arg("all").arg(scale).arg(tls);
        let r = run(cmd, &dir, b, 3 * MINUTE);
        let sections = [
            "ok edge",
            "ok threads",
            "ok fork",
            "ok dlopen",
            "ok exhaust",
        ];
        if r.ok && sections.iter().all(|s| r.stdout.lines().any(|l| l == *s)) {
            Ok(())
        } else {
            Err(r.describe())
        }
    });
}

/// The C stress program's threads and forks with the purge machinery
/// running all the time (a 1 ms purge delay, the background purger every
/// millisecond, large blocks dropped after 1 ms): every page another
/// thread's frees empty is reclaimed while its owner may be in the middle
/// of a free, and every emptied page is purged. ThreadSanitizer found a
/// segment the reclaimer released under an owner's free this way (see
/// `docs/DESIGN.md`); here the real library runs it, in each backend that
/// purges, both modes.
#[test]
fn c_stress_with_the_purger_always_running() {
    let Some((stress, _, _)) = c_programs() else {
        return;
    };
    let dir = scratch("stress-purging");
    let plain = tested_hardened();
    let hardened: Vec<String> = plain.iter().map(|b| format!("{b}_hardened")).collect();
    let names = plain
        .iter()
        .copied()
        .chain(hardened.iter().map(String::as_str));
    check_all(names, |b| {
        for section in ["threads", "fork"] {
            let mut cmd = under(b, stress);
            cmd.arg(section)
                .arg("2")
                .env("HEAPKIT_PURGE_DELAY_MS", "1")
                .env("HEAPKIT_BACKGROUND_PURGE_MS", "1")
                .env("HEAPKIT_LARGE_DECAY_MS", "1");
            let r = run(cmd, &dir, &format!("{b}-{section}"), 2 * MINUTE);
            let done = format!("ok {section}");
            if !(r.ok && r.stdout.lines().any(|l| l == done)) {
                return Err(r.describe());
            }
        }
        Ok(())
    });
}

#[test]
fn cxx_new_delete() {
    let Some((_, _, Some(cxx))) = c_programs() else {
        println!("SKIP cxx_new_delete: no C++ compiler");
        return;
    };
    let dir = scratch("cxx");
    each_mode(|b| {
        let r = run(under(b, cxx), &dir, b, MINUTE);
        if r.ok && r.stdout.contains("ok cxx") {
            Ok(())
        } else {
            Err(r.describe())
        }
    });
}

/// glibc's `__libc_malloc` family, which some programs call by name, is
/// libheapkit.so's too (`tests/preload/libc_aliases.c`): blocks from those
/// names and from `malloc` are freed and resized by the other family with
/// contents and alignment kept (before, `free` of a `__libc_malloc` block
/// was a foreign pointer), and the `system` backend still reaches glibc's
/// own. Every backend, and the hardened modes.
#[test]
fn libc_aliases_are_heapkits() {
    let Some((dir, bin)) = build_program(
        "libc_aliases_are_heapkits",
        "cc",
        "libc_aliases.c",
        &["-O1", "-g"],
    ) else {
        return;
    };
    succeeds_under_every_backend_and_mode(&dir, &bin, "ok libc aliases");
}

/// C++'s `operator new`/`delete` in every form are libheapkit.so's own
/// (`tests/preload/cxx_operators.cc`): they resolve to the library, align,
/// free sized and aligned blocks, return null from the nothrow forms and,
/// for the throwing forms, run the new-handler and throw `std::bad_alloc`
/// (through the C++ runtime's operator, which the library jumps to when it
/// has no memory). Every backend, and the hardened modes.
#[test]
fn cxx_operators_are_heapkits() {
    let Some((dir, bin)) = build_program(
        "cxx_operators_are_heapkits",
        "g++",
        "cxx_operators.cc",
        &["-O1", "-g", "-std=c++17"],
    ) else {
        return;
    };
    succeeds_under_every_backend_and_mode(&dir, &bin, "ok cxx operators");
}

/// Memory freed by other threads comes back while its owner sleeps
/// (`tests/preload/remote_return.c`, issue 14): a worker allocates 100 MB
/// and goes idle, the main thread frees it all and goes on with small
/// allocations; a second later RSS is below 30% of the peak under sizeclass
/// and slab (both modes each).
#[test]
fn remote_frees_of_an_idle_owner_are_given_back() {
    let Some((dir, bin)) = build_program(
        "remote_frees_of_an_idle_owner_are_given_back",
        "cc",
        "remote_return.c",
        &["-O2", "-pthread"],
    ) else {
        return;
    };
    let mut failures = Vec::new();
    for (backend, harden) in [
        ("sizeclass", "0"),
        ("sizeclass", "1"),
        ("slab", "0"),
        ("slab", "1"),
    ] {
        let mut cmd = under(backend, &bin);
        cmd.env("HEAPKIT_HARDEN", harden);
        let r = run(cmd, &dir, &format!("{backend}-{harden}"), MINUTE);
        // "peak 109696 KiB, after 1 s 7372 KiB (7%)"
        let numbers = numbers_in(&r.stdout);
        let fine =
            r.ok && numbers.len() >= 3 && numbers[0] > 90_000.0 && numbers[2] < 0.3 * numbers[0];
        if !fine {
            failures.push(format!(
                "{backend} (HEAPKIT_HARDEN={harden}): {}",
                r.describe()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Threads whose last pthread-key destructor allocates after heapkit's
/// exit hook (`tests/preload/late_destructor.c`), while other threads'
/// frees make heapkit walk its registry of heaps: the heap set up again by
/// the late destructor is served but never registered (its thread is about
/// to vanish). CPython's `test_thread` crashed on this before.
#[test]
fn late_destructors_allocate_safely() {
    let Some((dir, bin)) = build_program(
        "late_destructors_allocate_safely",
        "cc",
        "late_destructor.c",
        &["-O1", "-g", "-pthread"],
    ) else {
        return;
    };
    succeeds_under_every_backend_and_mode(&dir, &bin, "ok late destructors");
}

/// `HEAPKIT_BACKGROUND_PURGE_MS` (`tests/preload/idle_purge.c`): a program
/// that frees 64 MiB (48 of it in 2 MiB blocks, which the large cache
/// keeps) and then sleeps keeps it resident without the purger, and gets
/// it back within a second with it (sizeclass and slab, both modes each).
#[test]
fn background_purger() {
    let Some((dir, bin)) = build_program("background_purger", "cc", "idle_purge.c", &["-O1"])
    else {
        return;
    };
    let mut failures = Vec::new();
    for (backend, harden) in [
        ("sizeclass", "0"),
        ("sizeclass", "1"),
        ("slab", "0"),
        ("slab", "1"),
    ] {
        for purge in ["", "50"] {
            let mut cmd = under(backend, &bin);
            cmd.env("HEAPKIT_HARDEN", harden)
                .env("HEAPKIT_BACKGROUND_PURGE_MS", purge);
            let r = run(cmd, &dir, &format!("{backend}-{harden}-{purge}"), MINUTE);
            // "start 2976 KiB, after free 52624 KiB, after 1 s idle 3440 KiB"
            let kib = numbers_in(&r.stdout);
            let fine = r.ok
                && kib.len() == 4
                && if purge.is_empty() {
                    kib[3] - kib[0] > 32.0 * 1024.0
                } else {
                    kib[3] - kib[0] < 8.0 * 1024.0
                };
            if !fine {
                failures.push(format!(
                    "{backend} HEAPKIT_HARDEN={harden} HEAPKIT_BACKGROUND_PURGE_MS={purge:?}: {}",
                    r.describe()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `posix_memalign`, `aligned_alloc` and `memalign` with alignments from
/// 4 MiB to 1 GiB work under every backend (`tests/preload/big_align.c`;
/// heapkit puts such a block at a segment boundary with its header one
/// segment before it), and under heapkit's backends a free of a pointer
/// inside one is reported.
#[test]
fn alignments_up_to_a_gibibyte() {
    let Some((dir, bin)) =
        build_program("alignments_up_to_a_gibibyte", "cc", "big_align.c", &["-O1"])
    else {
        return;
    };
    each_backend(|b| {
        let r = run(under(b, &bin), &dir, b, MINUTE);
        if !(r.ok && r.stdout.contains("ok big alignments")) {
            return Err(r.describe());
        }
        if matches!(b, "sizeclass" | "slab" | "pool" | "bump") {
            let mut cmd = under(b, &bin);
            cmd.arg("interior");
            let r = run(cmd, &dir, &format!("{b}-interior"), MINUTE);
            if !(r.status.contains("SIGABRT")
                && r.stderr.contains("heapkit: free(): invalid pointer"))
            {
                return Err(format!("interior free: {}", r.describe()));
            }
        }
        Ok(())
    });
}

/// glibc's introspection API reports on the selected backend, not on
/// glibc's idle arena (`tests/preload/introspect.c`): `mallinfo2` counts
/// what the program holds within 1%, and freeing plus `malloc_trim(0)` give
/// the memory back. bump keeps freed memory (it only reuses LIFO frees),
/// and the forwarded peers keep no live-byte count (jemalloc is built
/// without statistics, see the shim's Cargo.toml), so they run the calls
/// without those checks.
#[test]
fn introspection_api() {
    let Some(cc) = find("introspection_api", "cc") else {
        return;
    };
    let dir = scratch("introspect");
    let bin = dir.join("introspect");
    assert!(Command::new(cc)
        .args(["-O1", "-g", "-o"])
        .arg(&bin)
        .arg(sources().join("introspect.c"))
        .status()
        .is_ok_and(|s| s.success()));
    each_backend(|b| {
        let mode = match b {
            "sizeclass" | "slab" | "pool" | "system" => "full",
            "bump" => "counts",
            _ => "run",
        };
        let mut cmd = under(b, &bin);
        cmd.arg(mode);
        let r = run(cmd, &dir, b, MINUTE);
        let stats_shown = r.stderr.contains("in use bytes");
        if r.ok && r.stdout.lines().any(|l| l == "ok introspect") && stats_shown {
            Ok(())
        } else {
            Err(r.describe())
        }
    });
}

/// jemalloc's own API (`mallocx` and friends, `nallocx`, `mallctl` and
/// its MIB forms, `malloc_stats_print`) over every backend and mode: what
/// a program linked against libjemalloc.so (Debian's redis-server) calls.
/// Usable sizes must match `nallocx` exactly where the backend's usable
/// size is a function of the request (not glibc's, nor mimalloc's aligned
/// blocks), and `stats.allocated` must follow 8 MiB of blocks where the
/// backend counts live bytes exactly (not the peers'). Where it counts the
/// memory holding blocks (sizeclass, slab, pool), `stats.active` must stay
/// put when every other small block is freed (the fragmentation redis
/// reports) and fall when the rest is.
#[test]
fn jemalloc_api() {
    let Some((dir, bin)) = build_program("jemalloc_api", "cc", "jemalloc_api.c", &["-O1", "-g"])
    else {
        return;
    };
    each_mode(|b| {
        let exact: &[&str] = match b {
            "system" => &["stats"],
            "jemalloc" => &["sizes"],
            "mimalloc" => &[],
            // They count the memory holding blocks (stats.active).
            "sizeclass" | "slab" | "pool" | "sizeclass_hardened" | "slab_hardened"
            | "pool_hardened" => &["sizes", "stats", "active"],
            _ => &["sizes", "stats"],
        };
        let mut cmd = under(b, &bin);
        cmd.args(exact);
        let r = run(cmd, &dir, b, MINUTE);
        let printed = r.stderr.contains("___ Begin heapkit statistics ___");
        if r.ok && r.stdout.lines().any(|l| l == "ok jemalloc_api") && printed {
            Ok(())
        } else {
            Err(r.describe())
        }
    });
}
