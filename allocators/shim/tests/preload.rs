//! Real programs under `libheapkit.so`, on every backend the library
//! accepts (discovered from its own error message, so a new backend is
//! tested without touching this file).
//!
//! Each test runs one program under all backends at once (one child process
//! per backend) and checks its *result*, not just its exit status: CPython's
//! own test modules, sqlite3 on a generated database (integrity check and
//! query results equal to a run without the shim), git (tree and commit ids
//! equal to a run without the shim, `fsck --strict`), sort of a generated
//! file (checksum computed here in Rust), redis-server (dataset digests
//! equal to a run without the shim across a forked save, a reload and a
//! flush on its lazy-free thread), xz and zstd with two threads (round
//! trips), jq and Tcl (output equal to a run without the shim), the C
//! stress program
//! (`tests/preload/stress.c`, every entry point and edge case, threads,
//! fork, dlopen of a TLS library) and a C++ new/delete check.
//!
//! The library must be built first (the tests never run cargo themselves):
//!
//! ```sh
//! cargo build --release -p heapkit-shim && cargo test --release -p heapkit-shim --test preload
//! ```
//!
//! A program that is not installed prints a `SKIP` line and the test passes;
//! the Debian packages are `python3` (any CPython with its `test` package;
//! here pyenv's), `sqlite3`, `git`, `coreutils`, `redis-server` and
//! `redis-tools`, `xz-utils`, `zstd`, `jq`, `tcl`, `gcc`, `g++`.
//!
//! `bump` never reuses memory, so it gets lighter workloads.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Where `tests/preload` (the C sources and Python script) lives.
fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/preload")
}

/// The newest modification time of any file under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut best = SystemTime::UNIX_EPOCH;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let t = if p.is_dir() {
                newest(&p)
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            };
            best = best.max(t);
        }
    }
    best
}

/// `target/release/libheapkit.so` (respecting `CARGO_TARGET_DIR`); panics
/// with the build command if it is missing or older than the shim's
/// sources.
fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        // Another build of the library, relative to the workspace (CI runs
        // the suite again against one built with `--features peers`).
        if let Some(lib) = std::env::var_os("HEAPKIT_TEST_LIBRARY") {
            return fs::canonicalize(root.join(&lib))
                .unwrap_or_else(|e| panic!("HEAPKIT_TEST_LIBRARY={lib:?}: {e}"));
        }
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        let lib = target.join("release/libheapkit.so");
        let built = fs::metadata(&lib).and_then(|m| m.modified());
        let Ok(built) = built else {
            panic!(
                "{} is missing: run `cargo build --release -p heapkit-shim` first",
                lib.display()
            );
        };
        assert!(
            built >= newest(&root.join("allocators/shim/src")),
            "{} is older than the shim's sources: run `cargo build --release -p heapkit-shim`",
            lib.display()
        );
        if built < newest(&root.join("allocators")) {
            println!(
                "NOTE: {} is older than some allocator source; rebuild to test the latest",
                lib.display()
            );
        }
        lib.canonicalize().unwrap()
    })
}

/// The accepted `HEAPKIT_ALLOC` values, parsed from the library's one-line
/// error for an unknown value.
fn backends() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let out = Command::new("/bin/echo")
            .arg("RAN")
            .env("LD_PRELOAD", library())
            .env("HEAPKIT_ALLOC", "no-such-backend")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let list = err
            .split("accepted: ")
            .nth(1)
            .and_then(|rest| rest.split(" (default").next())
            .unwrap_or_else(|| panic!("unexpected error line: {err:?}"));
        list.split(", ").map(str::to_owned).collect()
    })
}

/// A scratch directory for this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("heapkit-preload-{}", std::process::id()))
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `prog` on `PATH`, or a `SKIP` line and `None`.
fn find(test: &str, prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file());
    if found.is_none() {
        println!("SKIP {test}: `{prog}` is not installed");
    }
    found
}

/// What a finished child produced.
struct Run {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "{}\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
            self.status,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

/// Runs `cmd` to completion with output captured to files (so a chatty
/// child never blocks on a pipe), killing it after `limit`. Its stdin is
/// whatever `cmd` set (nothing is read from the test's own stdin: `under`
/// sets null).
fn run(mut cmd: Command, out_dir: &Path, tag: &str, limit: Duration) -> Run {
    let out_path = out_dir.join(format!("{tag}.stdout"));
    let err_path = out_dir.join(format!("{tag}.stderr"));
    cmd.stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Run {
        ok: status.is_some_and(|s| s.success()),
        status: match status {
            Some(s) => format!("{s} after {:.1?}", start.elapsed()),
            None => format!("killed after {limit:?}"),
        },
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// `program` under libheapkit.so with `backend`: a name `backends()` lists,
/// or one of them with `_hardened` appended (`HEAPKIT_HARDEN=1`, see
/// [`each_mode`]).
fn under(backend: &str, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .env("LD_PRELOAD", library())
        .env_remove("HEAPKIT_STATS");
    match backend.strip_suffix("_hardened") {
        Some(b) => cmd.env("HEAPKIT_ALLOC", b).env("HEAPKIT_HARDEN", "1"),
        None => cmd
            .env("HEAPKIT_ALLOC", backend)
            .env_remove("HEAPKIT_HARDEN"),
    };
    cmd
}

/// [`check_all`] over every backend, in default mode.
fn each_backend(check: impl Fn(&str) -> Result<(), String> + Sync) {
    check_all(backends().iter().map(String::as_str), check);
}

/// [`each_backend`], and then each backend with a hardened mode in it
/// (named `<backend>_hardened`, which [`under`] runs with
/// `HEAPKIT_HARDEN=1`): the real programs must run as they do by default.
fn each_mode(check: impl Fn(&str) -> Result<(), String> + Sync) {
    let hardened: Vec<String> = HARDENED_BACKENDS
        .iter()
        .map(|b| format!("{b}_hardened"))
        .collect();
    let names = backends().iter().chain(&hardened).map(String::as_str);
    check_all(names, check);
}

/// Runs `check` for each name at once (one thread, and so one child
/// process, each) and fails with every name's error.
fn check_all<'a>(
    names: impl Iterator<Item = &'a str>,
    check: impl Fn(&str) -> Result<(), String> + Sync,
) {
    let failures: Vec<String> = std::thread::scope(|s| {
        let check = &check;
        let handles: Vec<_> = names.map(|b| (b, s.spawn(move || check(b)))).collect();
        handles
            .into_iter()
            .filter_map(|(b, h)| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("[{b}] {e}")),
                Err(_) => Some(format!("[{b}] check panicked")),
            })
            .collect()
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

const MINUTE: Duration = Duration::from_secs(60);

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

/// The real CPython binary (pyenv's `python3` is a bash script; the shell
/// would run under the shim too, harmlessly, but we measure Python).
fn python() -> Option<&'static PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let py = find("python", "python3")?;
        let out = Command::new(py)
            .args(["-c", "import sys, test.libregrtest; print(sys.executable)"])
            .output()
            .ok()?;
        if !out.status.success() {
            println!("SKIP python: python3 has no `test` package");
            return None;
        }
        Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .as_ref()
}

/// Allocation-heavy modules, with threads (test_thread,
/// test_threading_local), fork and subprocess (test_os, test_fork1).
const PY_MODULES: &[&str] = &[
    "test_list",
    "test_dict",
    "test_set",
    "test_unicode",
    "test_json",
    "test_re",
    "test_collections",
    "test_deque",
    "test_thread",
    "test_threading_local",
    "test_os",
    "test_fork1",
];
/// `bump` never reuses memory: a lighter set.
const PY_MODULES_BUMP: &[&str] = &["test_list", "test_dict", "test_json", "test_thread"];

#[test]
fn cpython_test_modules() {
    let Some(py) = python() else {
        return;
    };
    let dir = scratch("cpython");
    each_mode(|b| {
        let modules = if b == "bump" {
            PY_MODULES_BUMP
        } else {
            PY_MODULES
        };
        let cwd = dir.join(b);
        fs::create_dir_all(&cwd).unwrap();
        // Default signal dispositions (a test harness may ignore some) and
        // every Python object through malloc.
        let mut cmd = under(b, Path::new("/usr/bin/env"));
        cmd.args(["--default-signal=INT,QUIT,HUP"])
            .arg(py)
            .args(["-m", "test"])
            .args(modules)
            .env("PYTHONMALLOC", "malloc")
            .current_dir(&cwd);
        let r = run(cmd, &dir, b, 5 * MINUTE);
        if r.ok && r.stdout.contains("Result: SUCCESS") {
            Ok(())
        } else {
            Err(r.describe())
        }
    });
}

#[test]
fn python_alloc_heavy_script_matches_native() {
    let Some(py) = python() else {
        return;
    };
    let dir = scratch("alloc_heavy");
    let script = sources().join("alloc_heavy.py");
    let mut native = Command::new(py);
    native
        .arg(&script)
        .env("PYTHONMALLOC", "malloc")
        .stdin(Stdio::null());
    let want = run(native, &dir, "native", MINUTE);
    assert!(want.ok, "{}", want.describe());
    each_mode(|b| {
        let mut cmd = under(b, py);
        cmd.arg(&script).env("PYTHONMALLOC", "malloc");
        let r = run(cmd, &dir, b, 2 * MINUTE);
        if r.ok && r.stdout == want.stdout {
            Ok(())
        } else {
            Err(format!("want {:?}\n{}", want.stdout, r.describe()))
        }
    });
}

/// A generated workload: inserts, two indexes, updates, deletes, VACUUM,
/// aggregates with known values, and the integrity check.
fn sqlite_script(rows: u64) -> String {
    format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, n INTEGER, pad TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{rows})
INSERT INTO t SELECT x, printf('key%08d', (x*7919)%{rows}), x%97, printf('%.*c', x%300, 'p') FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_n ON t(n, id);
UPDATE t SET pad = pad || 'q' WHERE n % 3 = 0;
DELETE FROM t WHERE id % 10 = 0;
SELECT 'count', count(*), sum(id) FROM t;
SELECT 'pad', sum(length(pad)) FROM t;
SELECT n, count(*), max(k) FROM t GROUP BY n ORDER BY n LIMIT 5;
SELECT group_concat(k, ',') FROM (SELECT k FROM t ORDER BY k DESC LIMIT 20);
VACUUM;
PRAGMA integrity_check;
SELECT 'like', count(*) FROM t WHERE k LIKE 'key0001%';
"
    )
}

#[test]
fn sqlite3_generated_database() {
    let Some(sqlite) = find("sqlite3", "sqlite3") else {
        return;
    };
    let dir = scratch("sqlite");
    let (full, light) = (100_000u64, 20_000u64);
    // Written once, before any backend reads them.
    let script = |rows: u64| dir.join(format!("workload-{rows}.sql"));
    for rows in [full, light] {
        fs::write(script(rows), sqlite_script(rows)).unwrap();
    }
    // Expected output: the same script without the shim.
    let native = |rows: u64| {
        let db = dir.join(format!("native-{rows}.db"));
        let mut cmd = Command::new(&sqlite);
        cmd.arg(&db).stdin(fs::File::open(script(rows)).unwrap());
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let want_full = native(full);
    let want_light = native(light);
    // Values known without running anything: ids 1..=rows minus multiples of 10.
    let sum = full * (full + 1) / 2 - 10 * (full / 10) * (full / 10 + 1) / 2;
    assert!(want_full.contains(&format!("count|{}|{sum}\n", full - full / 10)));
    assert!(want_full.contains("\nok\n"));
    each_mode(|b| {
        let (rows, want) = if b == "bump" {
            (light, &want_light)
        } else {
            (full, &want_full)
        };
        let db = dir.join(format!("{b}.db"));
        let mut cmd = under(b, &sqlite);
        cmd.arg(&db);
        let mut c = run_with_stdin(cmd, &script(rows), &dir, b);
        if c.ok && c.stdout == *want {
            Ok(())
        } else {
            c.stdout = first_difference(want, &c.stdout);
            Err(c.describe())
        }
    });
}

fn run_with_stdin(mut cmd: Command, input: &Path, dir: &Path, tag: &str) -> Run {
    cmd.stdin(fs::File::open(input).unwrap());
    run(cmd, dir, tag, 3 * MINUTE)
}

fn first_difference(want: &str, got: &str) -> String {
    for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
        if w != g {
            return format!("line {i}: want {w:?}, got {g:?}");
        }
    }
    format!(
        "{} lines wanted, {} got; tail: {:?}",
        want.lines().count(),
        got.lines().count(),
        got.lines().last()
    )
}

/// What the redis test needs: the server, its client, and (optional) its
/// benchmark.
struct Redis {
    server: PathBuf,
    cli: PathBuf,
    bench: Option<PathBuf>,
}

impl Redis {
    /// `redis-cli -s socket args...`: its output, or why it failed.
    fn cli(&self, socket: &Path, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.cli)
            .arg("-s")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli {args:?}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.starts_with("ERR") || text.contains("Could not connect") {
            return Err(format!("redis-cli {args:?}: {} {text}", out.status));
        }
        Ok(text)
    }

    /// One server (under `backend`, or without the library for `None`) and
    /// the session the test drives against it; the transcript of its
    /// deterministic replies.
    fn session(&self, dir: &Path, tag: &str, backend: Option<&str>) -> Result<String, String> {
        let work = dir.join(tag);
        fs::create_dir_all(&work).unwrap();
        let socket = work.join("redis.sock");
        let log = work.join("redis.log");
        let mut cmd = match backend {
            Some(b) => under(b, &self.server),
            None => {
                let mut c = Command::new(&self.server);
                c.stdin(Stdio::null());
                c
            }
        };
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&work)
            .args(["--daemonize", "no", "--enable-debug-command", "yes"])
            // Big values freed by the lazy-free thread (UNLINK, FLUSHALL
            // ASYNC). Not `--io-threads`: its threads spin while they wait,
            // and ten servers of them on two cores took 100 s instead of 21.
            .args(["--lazyfree-lazy-user-del", "yes"])
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(fs::File::create(work.join("stderr")).unwrap());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let result = self.drive(&socket, backend.is_some());
        // Stop it whatever happened; a crash shows in its status and log.
        let _ = self.cli(&socket, &["SHUTDOWN", "NOSAVE"]);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let tail = |p: &Path| {
            let text = fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(12)..].join("\n")
        };
        let why = |what: String| {
            format!(
                "{what}\n--- exit: {status:?}\n--- log (tail)\n{}\n--- stderr (tail)\n{}",
                tail(&log),
                tail(&work.join("stderr"))
            )
        };
        let transcript = result.map_err(why)?;
        if !status.is_some_and(|s| s.success()) {
            return Err(why("redis-server did not exit cleanly".into()));
        }
        Ok(transcript)
    }

    /// The session: a dataset built by a Lua script, churned, digested;
    /// a forked background save; a reload from it; an asynchronous flush
    /// and the same dataset again; the benchmark over 20 clients; then, under
    /// heapkit, the allocator figures redis reads through `mallctl`.
    fn drive(&self, socket: &Path, heapkit: bool) -> Result<String, String> {
        let up = Instant::now();
        while self.cli(socket, &["PING"]).is_err() {
            if up.elapsed() > Duration::from_secs(20) {
                return Err("redis-server did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let script = fs::read_to_string(sources().join("redis_workload.lua")).unwrap();
        let (keys, steps) = ("3000", "20000");
        let mut transcript = String::new();
        let mut say = |args: &[&str]| -> Result<String, String> {
            let out = self.cli(socket, args)?;
            // The command (a script by its first argument only), its reply.
            let command = if args[0] == "EVAL" {
                "EVAL"
            } else {
                &args.join(" ")
            };
            let _ = writeln!(transcript, "{command} -> {}", out.trim());
            Ok(out)
        };
        let build = |say: &mut dyn FnMut(&[&str]) -> Result<String, String>| {
            say(&["EVAL", &script, "0", "build", "42", keys])?;
            say(&["EVAL", &script, "0", "churn", "7", steps, keys])?;
            say(&["DEBUG", "DIGEST"])
        };
        let digest = build(&mut say)?;
        say(&["BGSAVE"])?;
        let saved = Instant::now();
        loop {
            let info = self.cli(socket, &["INFO", "persistence"])?;
            if info.contains("rdb_bgsave_in_progress:0") {
                if !info.contains("rdb_last_bgsave_status:ok") {
                    return Err(format!("background save failed: {info}"));
                }
                break;
            }
            if saved.elapsed() > 2 * MINUTE {
                return Err("background save did not end".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        say(&["DEBUG", "RELOAD"])?;
        if say(&["DEBUG", "DIGEST"])? != digest {
            return Err("the dataset changed across a save and reload".into());
        }
        say(&["FLUSHALL", "ASYNC"])?;
        say(&["DBSIZE"])?;
        if build(&mut say)? != digest {
            return Err("the same script built a different dataset".into());
        }
        if let Some(bench) = &self.bench {
            let out = Command::new(bench)
                .arg("-s")
                .arg(socket)
                .args(["-q", "-n", "20000", "-r", "20000", "-c", "20", "-P", "4"])
                .args([
                    "-d",
                    "200",
                    "-t",
                    "set,get,lpush,lpop,sadd,hset,zadd,lrange_100,mset",
                ])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("redis-benchmark: {e}"))?;
            if !out.status.success() {
                return Err(format!("redis-benchmark: {}", out.status));
            }
        }
        if heapkit {
            // redis reads its allocator's figures with mallctl: heapkit's,
            // not those of a jemalloc that serves nothing.
            let info = self.cli(socket, &["INFO", "memory"])?;
            let field = |name: &str| -> u64 {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                    .unwrap_or(0)
            };
            let (used, allocated) = (field("used_memory"), field("allocator_allocated"));
            if allocated < used / 2 {
                return Err(format!(
                    "allocator_allocated {allocated} for used_memory {used}: \
                     not heapkit's figure"
                ));
            }
            let stats = self.cli(socket, &["MEMORY", "MALLOC-STATS"])?;
            if !stats.contains("heapkit statistics") {
                return Err(format!("MEMORY MALLOC-STATS: {stats}"));
            }
            self.cli(socket, &["MEMORY", "PURGE"])?;
        }
        Ok(transcript)
    }
}

/// Debian's redis-server under every backend and mode: the same dataset
/// digest as without the library (a Lua-built dataset of every type, churned
/// with appends, trims and deletes), across a forked background save, a
/// reload and an asynchronous flush (frees on redis's lazy-free thread),
/// with threaded replies and the benchmark's 20 clients; a clean shutdown.
/// redis-server is linked against libjemalloc.so: its `mallctl` and
/// `malloc_stats_print` must reach heapkit (`INFO memory`,
/// `MEMORY MALLOC-STATS`).
#[test]
fn redis_server() {
    let (Some(server), Some(cli)) = (
        find("redis_server", "redis-server"),
        find("redis_server", "redis-cli"),
    ) else {
        return;
    };
    let redis = Redis {
        server,
        cli,
        bench: find("redis_server", "redis-benchmark"),
    };
    let dir = scratch("redis");
    let want = redis
        .session(&dir, "native", None)
        .unwrap_or_else(|e| panic!("redis-server without the library: {e}"));
    assert!(
        want.contains("DIGEST -> ") && want.contains("DBSIZE -> 0"),
        "{want}"
    );
    each_mode(|b| {
        let got = redis.session(&dir, b, Some(b))?;
        if got == want {
            Ok(())
        } else {
            Err(first_difference(&want, &got))
        }
    });
}

/// Writes `count` deterministic files in nested directories.
fn write_tree(root: &Path, count: usize, generation: u64) {
    for i in 0..count {
        let sub = root.join(format!("d{:02}/e{}", i % 37, i % 5));
        fs::create_dir_all(&sub).unwrap();
        let mut text = String::new();
        let lines = 5 + (i * 7919) % 200;
        for l in 0..lines {
            let _ = writeln!(
                text,
                "file {i} line {l} generation {} {}",
                generation * (i as u64 % 3),
                "x".repeat((i + l) % 60)
            );
        }
        fs::write(sub.join(format!("f{i}.txt")), text).unwrap();
    }
}

/// init, add, commit, change, commit, gc, fsck; prints the ids to compare.
fn git_session(
    git: &Path,
    repo: &Path,
    shim: Option<&str>,
    dir: &Path,
    files: usize,
) -> Result<String, String> {
    let _ = fs::remove_dir_all(repo);
    fs::create_dir_all(repo).unwrap();
    write_tree(repo, files, 1);
    let step = |args: &[&str]| -> Result<String, String> {
        let mut cmd = match shim {
            Some(b) => under(b, git),
            None => {
                let mut c = Command::new(git);
                c.stdin(Stdio::null());
                c
            }
        };
        cmd.args(args)
            .current_dir(repo)
            .env("HOME", repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "heapkit")
            .env("GIT_AUTHOR_EMAIL", "heapkit@example.invalid")
            .env("GIT_COMMITTER_NAME", "heapkit")
            .env("GIT_COMMITTER_EMAIL", "heapkit@example.invalid")
            .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z");
        let tag = format!("{}-{}", shim.unwrap_or("native"), args[0]);
        let r = run(cmd, dir, &tag, 3 * MINUTE);
        if r.ok {
            Ok(r.stdout)
        } else {
            Err(format!("git {args:?}: {}", r.describe()))
        }
    };
    step(&["init", "-q", "-b", "main"])?;
    step(&["add", "-A"])?;
    step(&["commit", "-q", "-m", "first"])?;
    write_tree(repo, files / 3, 2);
    for i in (0..files).step_by(11) {
        let _ = fs::remove_file(repo.join(format!("d{:02}/e{}/f{i}.txt", i % 37, i % 5)));
    }
    step(&["add", "-A"])?;
    step(&["commit", "-q", "-m", "second"])?;
    step(&["gc", "-q"])?;
    step(&["fsck", "--strict", "--full", "--no-progress"])?;
    let mut ids = step(&["rev-parse", "HEAD", "HEAD^{tree}", "HEAD~1"])?;
    ids += &step(&["diff", "--shortstat", "HEAD~1", "HEAD"])?;
    ids += &step(&["count-objects", "-v"])?
        .lines()
        .filter(|l| l.starts_with("in-pack"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(ids)
}

#[test]
fn git_init_add_commit_gc_fsck() {
    let Some(git) = find("git", "git") else {
        return;
    };
    let dir = scratch("git");
    let (full, light) = (1500, 300);
    let want_full = git_session(&git, &dir.join("native-full"), None, &dir, full).unwrap();
    let want_light = git_session(&git, &dir.join("native-light"), None, &dir, light).unwrap();
    each_mode(|b| {
        let (files, want) = if b == "bump" {
            (light, &want_light)
        } else {
            (full, &want_full)
        };
        let got = git_session(&git, &dir.join(b), Some(b), &dir, files)?;
        if got == *want {
            Ok(())
        } else {
            Err(format!("want {want:?}\ngot {got:?}"))
        }
    });
}

#[test]
fn sort_large_file_matches_checksum() {
    let Some(sort) = find("sort", "sort") else {
        return;
    };
    let dir = scratch("sort");
    // ~9 MB of lines; the expected output is sorted here.
    let input = pseudo_random_lines(300_000);
    let path = dir.join("input.txt");
    fs::write(&path, &input).unwrap();
    let mut lines: Vec<&str> = input.lines().collect();
    lines.sort_unstable();
    let mut sorted = lines.join("\n");
    sorted.push('\n');
    let want = checksum(sorted.as_bytes());
    drop(lines);
    each_mode(|b| {
        let out = dir.join(format!("{b}.sorted"));
        let mut cmd = under(b, &sort);
        cmd.args(["--parallel=2", "-S", "4M", "-T"])
            .arg(&dir)
            .arg("-o")
            .arg(&out)
            .arg(&path)
            .env("LC_ALL", "C");
        let r = run(cmd, &dir, b, 3 * MINUTE);
        let got = checksum(&fs::read(&out).unwrap_or_default());
        if r.ok && got == want {
            Ok(())
        } else {
            Err(format!("checksum {got:x}, want {want:x}\n{}", r.describe()))
        }
    });
}

/// `count` deterministic pseudo-random lines (about 30 bytes each).
fn pseudo_random_lines(count: u64) -> String {
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut text = String::new();
    for i in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(
            text,
            "{:x} {} {}",
            x % 1_000_003,
            "w".repeat((x >> 50) as usize % 20),
            i % 977
        );
    }
    text
}

/// Multi-threaded compressors (xz and zstd with two worker threads: blocks
/// allocated on one thread and freed on another) round-trip a file, and
/// two interpreters with their own allocation patterns (jq over a 6 MB
/// JSON array, Tcl building and walking a dictionary of lists) print what
/// they print without the library, under every backend and mode. Each
/// program that is missing is skipped alone.
#[test]
fn compressors_and_interpreters_match_native() {
    let dir = scratch("more-programs");
    let text = dir.join("text.txt");
    fs::write(&text, pseudo_random_lines(200_000)).unwrap();
    let want = checksum(&fs::read(&text).unwrap());
    let mut json = String::from("[");
    for i in 0..60_000u32 {
        let sep = if i == 0 { "" } else { "," };
        let tags: Vec<String> = (0..i % 13).map(|t| format!("\"t{t}\"")).collect();
        let _ = write!(
            json,
            "{sep}{{\"id\":{i},\"name\":\"n{i}\",\"tags\":[{}],\"v\":{}.5}}",
            tags.join(","),
            i / 2
        );
    }
    json.push(']');
    let json_path = dir.join("data.json");
    fs::write(&json_path, json).unwrap();
    let tcl_path = dir.join("dict.tcl");
    fs::write(
        &tcl_path,
        "set d [dict create]\n\
         for {set i 0} {$i < 200000} {incr i} { dict lappend d [expr {$i % 3000}] \"v$i\" }\n\
         set n 0\n\
         dict for {k v} $d { incr n [llength $v] }\n\
         puts \"[dict size $d] $n [string length [join [lsort [dict keys $d]] ,]]\"\n",
    )
    .unwrap();
    // (program, arguments): a round trip through a pipe (compared with the
    // input's checksum) or a command whose output must equal its output
    // without the library.
    // xz at -1 cuts 6 MB into two blocks, zstd's -B1MiB into six jobs: both
    // compress (and xz decompresses) on two threads.
    let round_trips = [
        ("xz", "xz -T2 -1 -c | xz -d -T2 -c"),
        ("zstd", "zstd -T2 -B1MiB -6 -q -c | zstd -d -q -c"),
    ];
    let filter =
        "[.[] | select(.id % 7 == 0) | {id, n: (.tags | length)}] | length, (map(.n) | add)";
    let json_arg = json_path.to_str().unwrap();
    let tcl_arg = tcl_path.to_str().unwrap();
    let commands: [(&str, Vec<&str>); 2] = [
        ("jq", vec!["-c", filter, json_arg]),
        ("tclsh", vec![tcl_arg]),
    ];
    for (prog, pipeline) in round_trips {
        if find("compressors_and_interpreters_match_native", prog).is_none() {
            continue;
        }
        each_mode(|b| {
            let out = dir.join(format!("{prog}-{b}.out"));
            let mut cmd = under(b, Path::new("/bin/sh"));
            cmd.arg("-c").arg(format!(
                "({pipeline}) < '{}' > '{}'",
                text.display(),
                out.display()
            ));
            let r = run(cmd, &dir, &format!("{prog}-{b}"), 3 * MINUTE);
            let got = checksum(&fs::read(&out).unwrap_or_default());
            if r.ok && got == want {
                Ok(())
            } else {
                Err(format!(
                    "{prog}: checksum {got:x}, want {want:x}\n{}",
                    r.describe()
                ))
            }
        });
    }
    for (prog, args) in &commands {
        let Some(path) = find("compressors_and_interpreters_match_native", prog) else {
            continue;
        };
        let native = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            native.status.success(),
            "{prog} without the library: {native:?}"
        );
        let expected = String::from_utf8_lossy(&native.stdout).into_owned();
        assert!(!expected.trim().is_empty(), "{prog} printed nothing");
        each_mode(|b| {
            let mut cmd = under(b, &path);
            cmd.args(args);
            let r = run(cmd, &dir, &format!("{prog}-{b}"), 3 * MINUTE);
            if r.ok && r.stdout == expected {
                Ok(())
            } else {
                Err(format!(
                    "{prog}: {}",
                    first_difference(&expected, &r.stdout)
                ))
            }
        });
    }
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

/// What one misuse case must end in under one backend.
#[derive(Debug)]
enum Outcome {
    /// Stopped by `SIGABRT` after a `heapkit:` line containing this text.
    Detected(&'static str),
    /// Ran to a clean exit printing this line.
    Succeeds(&'static str),
    /// Stopped by `SIGSEGV` at the faulty access (a guard page).
    Faults,
    /// Ends within the time limit, however (no promise beyond: never hang).
    Ends,
    /// Not run: a forwarded peer's own behaviour, which heapkit does not
    /// promise (mimalloc, without its secure build, loops for ever on some
    /// small-block double frees).
    NotRun,
}

impl Outcome {
    /// Whether the run `r` ended as promised.
    fn holds(&self, r: &Run) -> bool {
        match *self {
            Outcome::Detected(text) => {
                r.status.contains("SIGABRT")
                    && r.stderr
                        .lines()
                        .any(|l| l.starts_with("heapkit: ") && l.contains(text))
            }
            Outcome::Succeeds(line) => r.ok && r.stdout.lines().any(|l| l == line),
            Outcome::Faults => r.status.contains("SIGSEGV"),
            Outcome::Ends => !r.status.starts_with("killed"),
            Outcome::NotRun => true,
        }
    }
}

/// Every case of `tests/preload/misuse.c`.
const MISUSE_CASES: [&str; 19] = [
    "foreign",
    "unmapped-free",
    "unmapped-realloc",
    "unmapped-usable-size",
    "large-double",
    "large-interior",
    "remote-double",
    "remote-overflow",
    "remote-overflow-retire",
    "remote-interior",
    "exhaust-recover",
    "small-double-32",
    "small-double-100k",
    "small-interior",
    "uaf-write",
    "overflow",
    "large-overflow",
    "large-overflow-reused",
    "realloc-freed",
];

/// The promises of default mode (issue 13), per case and backend. The
/// peers keep their own behaviour (glibc's checks stop most of these).
fn misuse_outcome(case: &str, backend: &str) -> Outcome {
    let heapkit = matches!(backend, "sizeclass" | "slab" | "pool" | "bump");
    match (case, heapkit) {
        ("foreign", true) => Outcome::Detected("free(): invalid pointer"),
        ("unmapped-free", true) => Outcome::Detected("free(): invalid pointer"),
        ("unmapped-realloc", true) => Outcome::Detected("realloc(): invalid pointer"),
        ("unmapped-usable-size", true) => {
            Outcome::Detected("malloc_usable_size(): invalid pointer")
        }
        ("large-double", true) => Outcome::Detected("free(): double free of"),
        ("large-interior", true) => Outcome::Detected("middle of a block"),
        // Found at the second push (the block is still the top of its
        // page's remote stack).
        ("remote-double", _) if backend == "sizeclass" => {
            Outcome::Detected("free(): double free of")
        }
        // bump never reuses memory, so refilling after a free is not promised.
        ("exhaust-recover", _) if matches!(backend, "sizeclass" | "slab" | "pool" | "system") => {
            Outcome::Succeeds("ok exhaust-recover")
        }
        (
            "small-double-32"
            | "small-double-100k"
            | "small-interior"
            | "uaf-write"
            | "overflow"
            | "realloc-freed"
            | "remote-overflow"
            | "remote-overflow-retire"
            | "remote-interior",
            false,
        ) if backend != "system" => Outcome::NotRun,
        _ => Outcome::Ends,
    }
}

/// The backends with a hardened mode (`HEAPKIT_HARDEN=1`).
const HARDENED_BACKENDS: [&str; 3] = ["sizeclass", "slab", "pool"];

/// The promises of hardened mode (`HEAPKIT_HARDEN=1`, sizeclass, slab and
/// pool): every case detected at the call that does it (or, for the
/// remote cases in sizeclass, before the block is reused), or recovered
/// from.
fn hardened_outcome(case: &str, backend: &str) -> Outcome {
    match case {
        "remote-double" | "small-double-32" | "small-double-100k" => {
            Outcome::Detected("free(): double free of")
        }
        "small-interior" => Outcome::Detected("free(): pointer into the middle of a block"),
        // Blocks past 64 bytes freed by another thread: sizeclass's owner
        // finds these before it hands the block out again (`malloc()`; a
        // later `free()` of the handed-out block would be too late) or
        // when it retires the page (`malloc_trim` here); slab and pool at
        // the free.
        "remote-interior" if backend == "sizeclass" => {
            Outcome::Detected("malloc(): pointer into the middle of a block")
        }
        "remote-overflow" if backend == "sizeclass" => {
            Outcome::Detected("malloc(): heap overflow past the end of the block")
        }
        "remote-interior" => Outcome::Detected("free(): pointer into the middle of a block"),
        "remote-overflow" | "remote-overflow-retire" => {
            Outcome::Detected("free(): heap overflow past the end of the block")
        }
        "uaf-write" => Outcome::Detected("malloc(): corrupted free list"),
        "overflow" => Outcome::Detected("free(): heap overflow"),
        "realloc-freed" => Outcome::Detected("realloc(): double free of"),
        "large-overflow" | "large-overflow-reused" => Outcome::Faults,
        _ => misuse_outcome(case, "sizeclass"),
    }
}

/// The whole numbers in `text`, in order ("peak 1 KiB (7%)" gives 1, 7).
fn numbers_in(text: &str) -> Vec<f64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// Compiles `tests/preload/<source>` with `compiler` (`cc` or `g++`) and
/// `flags` into a scratch directory of its own for `test`; `None` (the test
/// skips) without the compiler.
fn build_program(
    test: &str,
    compiler: &str,
    source: &str,
    flags: &[&str],
) -> Option<(PathBuf, PathBuf)> {
    let cc = find(test, compiler)?;
    let dir = scratch(test);
    let bin = dir.join(source.split('.').next().unwrap_or(source));
    assert!(Command::new(cc)
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(sources().join(source))
        .status()
        .is_ok_and(|s| s.success()));
    Some((dir, bin))
}

/// Runs `bin` under every backend (and the hardened modes too), each time
/// expecting a clean exit that printed `ok_line`.
fn succeeds_under_every_backend_and_mode(dir: &Path, bin: &Path, ok_line: &str) {
    each_backend(|b| {
        for harden in ["0", "1"] {
            if harden == "1" && !HARDENED_BACKENDS.contains(&b) {
                continue;
            }
            let mut cmd = under(b, bin);
            cmd.env("HEAPKIT_HARDEN", harden);
            let r = run(cmd, dir, &format!("{b}-{harden}"), MINUTE);
            if !(r.ok && r.stdout.contains(ok_line)) {
                return Err(format!("HEAPKIT_HARDEN={harden}: {}", r.describe()));
            }
        }
        Ok(())
    });
}

/// Compiles `tests/preload/misuse.c` for `test`.
fn misuse_program(test: &str) -> Option<(PathBuf, PathBuf)> {
    build_program(test, "cc", "misuse.c", &["-O1", "-g", "-pthread"])
}

/// Runs every misuse case under `backend` (hardened if `harden`) and
/// returns what did not end as `expected` says.
fn check_misuse(
    dir: &Path,
    bin: &Path,
    backend: &str,
    harden: bool,
    expected: impl Fn(&str) -> Outcome,
) -> Result<(), String> {
    let mut errors = Vec::new();
    for case in MISUSE_CASES {
        let expected = expected(case);
        if matches!(expected, Outcome::NotRun) {
            continue;
        }
        let mut cmd = under(backend, bin);
        cmd.arg(case)
            .env("HEAPKIT_HARDEN", if harden { "1" } else { "0" });
        let mode = if harden { "hardened" } else { "default" };
        let r = run(cmd, dir, &format!("{backend}-{mode}-{case}"), MINUTE);
        if !expected.holds(&r) {
            errors.push(format!(
                "{case}: expected {expected:?}, got {}",
                r.describe()
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Each misuse case of `tests/preload/misuse.c` under every backend, with
/// the outcome [`misuse_outcome`] promises: detected with a one-line
/// message, recovered, or at least ended (never hung).
#[test]
fn misuse_default_mode() {
    let Some((dir, bin)) = misuse_program("misuse_default_mode") else {
        return;
    };
    each_backend(|b| check_misuse(&dir, &bin, b, false, |case| misuse_outcome(case, b)));
}

/// The same cases under `sizeclass`, `slab` and `pool` with `HEAPKIT_HARDEN=1`:
/// every one detected (double and interior frees of every size, a forged
/// free-list link, a one-byte overflow, a realloc of a freed block) or
/// recovered.
/// Asking hardening of a backend without a hardened mode, or giving
/// `HEAPKIT_HARDEN` a value that is not a flag, stops the program before it
/// runs with one line and status 2.
#[test]
fn misuse_hardened_mode() {
    let Some((dir, bin)) = misuse_program("misuse_hardened_mode") else {
        return;
    };
    for backend in HARDENED_BACKENDS {
        check_misuse(&dir, &bin, backend, true, |case| {
            hardened_outcome(case, backend)
        })
        .unwrap_or_else(|e| panic!("\n{backend}:\n{e}"));
    }
    for (backend, value, text) in [
        ("bump", "1", "the bump backend has no hardened mode"),
        (
            "sizeclass",
            "maybe",
            "HEAPKIT_HARDEN=\"maybe\" is not a flag",
        ),
    ] {
        let mut cmd = under(backend, &bin);
        cmd.arg("foreign").env("HEAPKIT_HARDEN", value);
        let r = run(cmd, &dir, &format!("refused-{backend}-{value}"), MINUTE);
        assert!(
            r.status.contains("exit status: 2") && r.stderr.contains(text),
            "{backend} HEAPKIT_HARDEN={value}: {}",
            r.describe()
        );
    }
}

/// Hardened sizeclass with a quarantine (`HEAPKIT_QUARANTINE_KB=256`): a
/// write into a freed block is reported when the block leaves the
/// quarantine, and double frees and reallocs of held blocks are still
/// reported; without
/// the quarantine the same write goes unnoticed (it is the quarantine that
/// finds it).
#[test]
fn quarantine_catches_writes_after_free() {
    let Some((dir, bin)) = misuse_program("quarantine_catches_writes_after_free") else {
        return;
    };
    let mut errors = Vec::new();
    for (case, quarantine, expected) in [
        (
            "quarantine-uaf",
            "256",
            Outcome::Detected("free(): write after free to the block at"),
        ),
        (
            "quarantine-uaf",
            "0",
            Outcome::Succeeds("write after free went unnoticed"),
        ),
        (
            "small-double-32",
            "256",
            Outcome::Detected("free(): double free of"),
        ),
        (
            "small-double-100k",
            "256",
            Outcome::Detected("free(): double free of"),
        ),
        (
            "realloc-freed",
            "256",
            Outcome::Detected("realloc(): double free of"),
        ),
        (
            "remote-double",
            "256",
            Outcome::Detected("free(): double free of"),
        ),
        (
            "overflow",
            "256",
            Outcome::Detected("free(): heap overflow"),
        ),
        (
            "exhaust-recover",
            "256",
            Outcome::Succeeds("ok exhaust-recover"),
        ),
    ] {
        let mut cmd = under("sizeclass", &bin);
        cmd.arg(case)
            .env("HEAPKIT_HARDEN", "1")
            .env("HEAPKIT_QUARANTINE_KB", quarantine);
        let r = run(cmd, &dir, &format!("{case}-{quarantine}"), MINUTE);
        if !expected.holds(&r) {
            errors.push(format!(
                "{case} with HEAPKIT_QUARANTINE_KB={quarantine}: expected {expected:?}, got {}",
                r.describe()
            ));
        }
    }
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
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
/// backend counts live bytes exactly (not the peers').
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
