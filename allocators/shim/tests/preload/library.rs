//! The library itself, whatever program it is preloaded into: how it
//! starts (unknown backends, peers left out, options, constructors), what
//! it brings into a process (shared objects, its static TLS block), the
//! code of its exports, its exit report and huge pages.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

#[test]
fn unknown_backend_stops_the_program_before_it_runs() {
    let out = Command::new("/bin/echo")
        .arg("RAN")
        .env("LD_PRELOAD", library())
        .env("HEAPKIT_ALLOC", "no-such-backend")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "the program ran");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    for b in ["sizeclass", "slab", "pool", "bump", "system"] {
        assert!(backends().iter().any(|n| n == b), "{b} missing from {err}");
    }
}

/// A library built without the `peers` feature names a peer asked for
/// as left out, with the two ways to run it, and stops before the
/// program runs; one built with it lists both peers.
#[test]
fn peers_left_out_say_how_to_get_them() {
    let built_in = PEERS.map(|p| backends().iter().any(|n| n == p));
    assert!(
        built_in == [true, true] || built_in == [false, false],
        "one peer without the other: {:?}",
        backends()
    );
    if built_in[0] {
        return;
    }
    for (peer, so) in [
        ("jemalloc", "libjemalloc.so.2"),
        ("mimalloc", "libmimalloc.so.2"),
    ] {
        let out = Command::new("/bin/echo")
            .arg("RAN")
            .env("LD_PRELOAD", library())
            .env("HEAPKIT_ALLOC", peer)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{peer}");
        assert!(out.stdout.is_empty(), "the program ran under {peer}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("built without the peers")
                && err.contains("--features peers")
                && err.contains(so),
            "{err}"
        );
    }
}

/// The peers a library may be built with (`--features peers`).
const PEERS: [&str; 2] = ["jemalloc", "mimalloc"];

#[test]
fn stats_report_at_exit_even_when_stderr_is_closed() {
    let Some(ls) = find("stats_report", "ls") else {
        return;
    };
    let dir = scratch("stats");
    each_backend(|b| {
        for on in ["1", "yes", "TRUE"] {
            let mut cmd = under(b, &ls);
            cmd.arg("-la").arg("/").env("HEAPKIT_STATS", on);
            let r = run(cmd, &dir, b, MINUTE);
            // heapkit's backends count everything, with peak >= live;
            // peers show only what they measure and say so.
            let want = format!("heapkit: backend={b} ");
            let line = r.stderr.lines().find(|l| l.starts_with(&want));
            let right = line.is_some_and(|l| match b {
                "system" | "jemalloc" | "mimalloc" => {
                    l.ends_with("not available from this peer)") && !l.contains("allocs=0")
                }
                _ => {
                    let field = |name: &str| -> u64 {
                        l.split_whitespace()
                            .find_map(|w| w.strip_prefix(name)?.parse().ok())
                            .unwrap_or(0)
                    };
                    field("reallocs=") > 0
                        && field("allocs=") > 0
                        && field("peak_live_bytes=") >= field("live_bytes=")
                }
            });
            if !(r.ok && right) {
                return Err(format!(
                    "HEAPKIT_STATS={on}: no stats line\n{}",
                    r.describe()
                ));
            }
        }
        let mut cmd = under(b, &ls);
        cmd.arg("/").env("HEAPKIT_STATS", "off");
        let r = run(cmd, &dir, b, MINUTE);
        if !r.ok || r.stderr.contains("heapkit:") {
            return Err(format!("HEAPKIT_STATS=off printed\n{}", r.describe()));
        }
        let mut cmd = under(b, &ls);
        cmd.arg("/").env("HEAPKIT_STATS", "sometimes");
        let r = run(cmd, &dir, b, MINUTE);
        if r.ok
            || !r
                .stderr
                .contains("HEAPKIT_STATS=\"sometimes\" is not a flag")
        {
            return Err(format!(
                "HEAPKIT_STATS=sometimes was accepted\n{}",
                r.describe()
            ));
        }
        Ok(())
    });
}

/// The instructions of the function `symbol` of `lib` (`objdump -d` from
/// its address in the dynamic symbol table up to the next symbol), or
/// `None` without objdump or nm. By address, not by name: the linker
/// folds an export and an alias of identical code (`calloc` and
/// `__libc_calloc`) into one body, which objdump labels with one of the
/// names only.
fn disassemble(lib: &Path, symbol: &str) -> Option<Vec<String>> {
    let nm = Command::new("nm").arg("-D").arg(lib).output().ok()?;
    let addr = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == symbol).then(|| u64::from_str_radix(f[0], 16).ok())?
        })
        .unwrap_or_else(|| panic!("{symbol} is not exported"));
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--start-address={addr:#x}"))
        .arg(format!("--stop-address={:#x}", addr + 0x2000))
        .arg(lib)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .skip_while(|l| !l.ends_with(">:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// The exports reach every allocator's thread state through initial-exec
/// TLS and keep `errno` without touching it: no `__tls_get_addr` and no
/// `__errno_location` call in `malloc`, `free`, `calloc` or `realloc`
/// themselves, where the default backend's fast path is inlined (the
/// other backends' dispatch, the cold twins and the allocators' slow
/// paths are separate functions).
#[test]
fn exports_make_no_tls_or_errno_calls() {
    let lib = library();
    for symbol in ["malloc", "free", "calloc", "realloc"] {
        let Some(body) = disassemble(lib, symbol) else {
            println!("SKIP: objdump or nm is not installed (binutils)");
            return;
        };
        assert!(body.len() > 10, "{symbol} not found in the disassembly");
        for bad in ["__tls_get_addr", "__errno_location"] {
            let hits: Vec<&String> = body.iter().filter(|l| l.contains(bad)).collect();
            assert!(hits.is_empty(), "{symbol} calls {bad}: {hits:?}");
        }
        if symbol == "free" {
            // Every path out of `free` is a few instructions or a tail
            // call: saving registers (five before b13da09; four when the
            // remote push was inlined) cost a malloc/free loop 5%
            // (cache-scratch 1T).
            // (`push %rax` before a call that does not return only aligns
            // the stack.)
            let pushes: Vec<&String> = body
                .iter()
                .filter(|l| {
                    l.contains("\tpush ")
                        && ["%rbx", "%rbp", "%r12", "%r13", "%r14", "%r15"]
                            .iter()
                            .any(|r| l.contains(r))
                })
                .collect();
            assert!(pushes.is_empty(), "free saves registers: {pushes:?}");
        }
    }
}

/// `HEAPKIT_HUGE_PAGES=1`: heapkit's memory is backed by transparent huge
/// pages where the kernel allows them (its mode is `always` or `madvise`);
/// without it, under `madvise`, none. Every backend that maps segments.
#[test]
fn huge_pages_on_request() {
    let Some(cc) = find("huge_pages_on_request", "cc") else {
        return;
    };
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !mode.contains("[madvise]") && !mode.contains("[always]") {
        eprintln!("SKIP huge_pages_on_request: transparent huge pages off ({mode:?})");
        return;
    }
    let dir = scratch("huge-pages");
    let bin = dir.join("huge_pages");
    assert!(Command::new(cc)
        .args(["-O1", "-o"])
        .arg(&bin)
        .arg(sources().join("huge_pages.c"))
        .status()
        .is_ok_and(|s| s.success()));
    let huge_kb = |r: &Run| -> i64 {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix("anon_huge_kb ")?.parse().ok())
            .unwrap_or_else(|| panic!("no figure: {}", r.describe()))
    };
    for backend in ["sizeclass", "slab", "pool"] {
        let mut cmd = under(backend, &bin);
        cmd.env("HEAPKIT_HUGE_PAGES", "1");
        let r = run(cmd, &dir, backend, MINUTE);
        assert!(r.ok, "{}", r.describe());
        // 96 MiB of small blocks and 32 MiB of large ones: most of it in
        // 2 MiB pages (the kernel may fall short of free huge pages).
        assert!(
            huge_kb(&r) >= 16 << 10,
            "{backend} with the option: {}",
            r.stdout
        );
        if mode.contains("[madvise]") {
            let r = run(under(backend, &bin), &dir, backend, MINUTE);
            assert!(r.ok, "{}", r.describe());
            assert_eq!(huge_kb(&r), 0, "{backend} without the option: {}", r.stdout);
        }
    }
}

/// The documented options reach every heapkit backend, and
/// `HEAPKIT_VERBOSE=1` lists them at start.
#[test]
fn options_from_the_environment() {
    let Some(cc) = find("options_from_the_environment", "cc") else {
        return;
    };
    let dir = scratch("options");
    let bin = dir.join("options");
    assert!(Command::new(cc)
        .args(["-O1", "-o"])
        .arg(&bin)
        .arg(sources().join("options.c"))
        .status()
        .is_ok_and(|s| s.success()));
    let kept = |r: &Run| -> Option<u64> {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix("kept ")?.parse().ok())
    };
    for backend in ["sizeclass", "slab", "pool"] {
        let r = run(under(backend, &bin), &dir, backend, MINUTE);
        assert!(r.ok, "{}", r.describe());
        assert!(kept(&r).unwrap() >= 8 << 20, "{backend}: {}", r.stdout);
        let mut cmd = under(backend, &bin);
        cmd.env("HEAPKIT_LARGE_CACHE_MB", "0");
        let r = run(cmd, &dir, backend, MINUTE);
        assert!(r.ok, "{}", r.describe());
        assert!(kept(&r).unwrap() < 1 << 20, "{backend} kept: {}", r.stdout);
    }
    let mut cmd = under("sizeclass", &bin);
    cmd.env("HEAPKIT_VERBOSE", "1")
        .env("HEAPKIT_PURGE_DELAY_MS", "5")
        .env("HEAPKIT_LARGE_DECAY_MS", "soon");
    let r = run(cmd, &dir, "verbose", MINUTE);
    assert!(r.ok, "{}", r.describe());
    for line in [
        "heapkit: libheapkit.so backend=sizeclass",
        "heapkit: HEAPKIT_PURGE_DELAY_MS=5 (set)",
        "heapkit: HEAPKIT_LARGE_CACHE_MB=64 (default)",
        "heapkit: HEAPKIT_BACKGROUND_PURGE_MS=0 (default)",
        "heapkit: HEAPKIT_HUGE_PAGES=0 (default)",
        "heapkit: ignoring HEAPKIT_LARGE_DECAY_MS=soon (not a whole number in range); using the default",
    ] {
        assert!(r.stderr.lines().any(|l| l == line), "{line} missing: {}", r.stderr);
    }
}

/// The peers linked into a library built with them (jemalloc, mimalloc;
/// `--features peers`) initialise at load only when one of them is the backend: their constructors are
/// skipped otherwise (`heapkit_core::os::constructors`), and the library
/// says so under `HEAPKIT_VERBOSE=1`. A link that moved them from after the
/// shim's own constructor fails here, where it would otherwise cost every
/// process a fifth of its start-up unnoticed.
#[test]
fn peers_initialise_only_when_they_run() {
    let Some(sh) = find("peers_initialise_only_when_they_run", "sh") else {
        return;
    };
    let dir = scratch("peer-constructors");
    const SKIPPED: &str = "heapkit: the peers' constructors were skipped (jemalloc, mimalloc)";
    // Without the peers there is nothing to skip, and nothing is said.
    let built_in = backends().iter().any(|n| n == PEERS[0]);
    for backend in backends().iter().map(String::as_str) {
        let mut cmd = under(backend, &sh);
        // A fork and an exec under the backend, so that a peer left without
        // its constructor would have to start on its first call.
        cmd.args(["-c", "echo started | cat; exit 0"])
            .env("HEAPKIT_VERBOSE", "1");
        let r = run(cmd, &dir, backend, MINUTE);
        assert!(r.ok && r.stdout.contains("started"), "{}", r.describe());
        let skipped = r.stderr.lines().any(|l| l == SKIPPED);
        let peer = PEERS.contains(&backend);
        assert_eq!(skipped, built_in && !peer, "{backend}: {}", r.stderr);
        assert!(
            !r.stderr.contains("constructors ran"),
            "{backend}: {}",
            r.stderr
        );
    }
}

/// The library brings no shared object of its own into a process: the
/// unwinder Rust's standard library needs is linked in statically
/// (`build.rs`), so a preloaded `cat` maps only itself, libheapkit.so, libc
/// and the dynamic loader. Loading `libgcc_s.so.1` as well cost each
/// process about 0.1 ms (a shell loop of `/bin/true` 1.21x libmimalloc's
/// time with it, 1.04x without).
#[test]
fn brings_no_other_shared_object() {
    let Some(cat) = find("brings_no_other_shared_object", "cat") else {
        return;
    };
    let dir = scratch("no-other-object");
    let mut cmd = under("sizeclass", &cat);
    cmd.arg("/proc/self/maps");
    let r = run(cmd, &dir, "sizeclass", MINUTE);
    assert!(r.ok, "{}", r.describe());
    let objects: std::collections::BTreeSet<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(".so"))
        .filter_map(|p| p.rsplit('/').next())
        .collect();
    assert!(
        objects.iter().any(|o| o.starts_with("libheapkit")),
        "libheapkit.so not mapped: {objects:?}"
    );
    for o in &objects {
        assert!(
            o.starts_with("libheapkit") || o.starts_with("libc.so") || o.starts_with("ld-linux"),
            "a preloaded `cat` maps {o} as well: {objects:?}"
        );
    }
}

/// The library's static TLS block is small: glibc copies (and zeroes) it
/// into every thread of the process, whichever backend runs, and it stays
/// resident in each thread's stack mapping. The backends' thread states
/// live in slot pools (`heapkit_core::thread_slots`), so only their thread
/// pointers are thread-local; the block was 38 KiB with sizeclass's two
/// heaps, slab's and pool's caches in it (jemalloc's `tsd`, 2.6 KiB, is
/// most of what is left).
#[test]
fn static_tls_block_is_small() {
    let elf = std::fs::read(library()).expect("read libheapkit.so");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not a 64-bit ELF file");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    const PT_TLS: u32 = 7;
    let tls = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&h| u32::from_le_bytes(elf[h..h + 4].try_into().unwrap()) == PT_TLS)
        .expect("no PT_TLS program header");
    let (file_size, mem_size) = (u64_at(tls + 0x20), u64_at(tls + 0x28));
    assert!(
        mem_size <= 4096,
        "libheapkit.so's TLS block is {mem_size} bytes ({file_size} initialised): \
         a thread state moved into thread-local storage?"
    );
}
