//! What every preload test uses: the library and its backends, running a
//! program under it with a time limit and its output captured, running a
//! check under every backend (and mode) at once, building the C programs.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Where `tests/preload` (the C sources and Python script) lives.
pub(crate) fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/preload")
}

/// The newest modification time of any file under `dir`.
pub(crate) fn newest(dir: &Path) -> SystemTime {
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
pub(crate) fn library() -> &'static Path {
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
pub(crate) fn backends() -> &'static [String] {
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

/// The backends the real-program tests run under: every one [`backends`]
/// lists, or those named in `HEAPKIT_TEST_BACKENDS` (a comma-separated
/// list; a name the library does not list fails the test). CI's second
/// pass, against the library built with the peers, names the default
/// backend and the two peers: the other backends' code is the same in both
/// builds and the first pass ran it.
pub(crate) fn tested_backends() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let Some(wanted) = std::env::var_os("HEAPKIT_TEST_BACKENDS") else {
            return backends().to_vec();
        };
        let wanted = wanted.to_string_lossy().into_owned();
        let names: Vec<String> = wanted
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        for n in &names {
            assert!(
                backends().contains(n),
                "HEAPKIT_TEST_BACKENDS names {n:?}, which the library does not list: {:?}",
                backends()
            );
        }
        assert!(
            !names.is_empty(),
            "HEAPKIT_TEST_BACKENDS={wanted:?} names no backend"
        );
        println!(
            "NOTE: HEAPKIT_TEST_BACKENDS: testing only {}",
            names.join(", ")
        );
        names
    })
}

/// The backends with a hardened mode that [`tested_backends`] includes.
pub(crate) fn tested_hardened() -> Vec<&'static str> {
    HARDENED_BACKENDS
        .into_iter()
        .filter(|b| tested_backends().iter().any(|n| n == b))
        .collect()
}

/// A scratch directory for this test process.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("heapkit-preload-{}", std::process::id()))
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `prog` on `PATH`, or a `SKIP` line and `None`.
pub(crate) fn find(test: &str, prog: &str) -> Option<PathBuf> {
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
pub(crate) struct Run {
    pub(crate) ok: bool,
    pub(crate) status: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn describe(&self) -> String {
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
pub(crate) fn run(mut cmd: Command, out_dir: &Path, tag: &str, limit: Duration) -> Run {
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
pub(crate) fn under(backend: &str, program: &Path) -> Command {
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

/// [`check_all`] over every backend tested ([`tested_backends`]), in
/// default mode.
pub(crate) fn each_backend(check: impl Fn(&str) -> Result<(), String> + Sync) {
    check_all(tested_backends().iter().map(String::as_str), check);
}

/// [`each_backend`], and then each tested backend with a hardened mode in it
/// (named `<backend>_hardened`, which [`under`] runs with
/// `HEAPKIT_HARDEN=1`): the real programs must run as they do by default.
pub(crate) fn each_mode(check: impl Fn(&str) -> Result<(), String> + Sync) {
    let hardened: Vec<String> = tested_hardened()
        .iter()
        .map(|b| format!("{b}_hardened"))
        .collect();
    let names = tested_backends()
        .iter()
        .chain(&hardened)
        .map(String::as_str);
    check_all(names, check);
}

/// Runs `check` for each name at once (one thread, and so one child
/// process, each) and fails with every name's error.
pub(crate) fn check_all<'a>(
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

pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

pub(crate) const MINUTE: Duration = Duration::from_secs(60);

pub(crate) fn run_with_stdin(mut cmd: Command, input: &Path, dir: &Path, tag: &str) -> Run {
    cmd.stdin(fs::File::open(input).unwrap());
    run(cmd, dir, tag, 3 * MINUTE)
}

pub(crate) fn first_difference(want: &str, got: &str) -> String {
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

/// `count` deterministic pseudo-random lines (about 30 bytes each).
pub(crate) fn pseudo_random_lines(count: u64) -> String {
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

/// The backends with a hardened mode (`HEAPKIT_HARDEN=1`).
pub(crate) const HARDENED_BACKENDS: [&str; 3] = ["sizeclass", "slab", "pool"];

/// The whole numbers in `text`, in order ("peak 1 KiB (7%)" gives 1, 7).
pub(crate) fn numbers_in(text: &str) -> Vec<f64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// Compiles `tests/preload/<source>` with `compiler` (`cc` or `g++`) and
/// `flags` into a scratch directory of its own for `test`; `None` (the test
/// skips) without the compiler.
pub(crate) fn build_program(
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
pub(crate) fn succeeds_under_every_backend_and_mode(dir: &Path, bin: &Path, ok_line: &str) {
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
