//! Record real programs through `libheapkit.so`, replay them under every
//! registered allocator, and check that each replay executed exactly the
//! recorded number of operations and peaked at exactly the recorded live
//! bytes (counted by the replay from what it executed, in ordered mode).
//!
//! Needs the release artifacts the README's test command builds first:
//!
//! ```sh
//! cargo build --release -p heapkit-shim -p heapkit-bench && cargo test --workspace
//! ```
//!
//! Each test prints why and passes without checking when an artifact,
//! `python3` or `cc` is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use heapkit_trace::summary::Summary;
use heapkit_trace::Trace;

fn release_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release")
}

/// (libheapkit.so, heapkit-bench), or None with a message.
fn artifacts() -> Option<(PathBuf, PathBuf)> {
    let dir = release_dir();
    let (shim, bench) = (dir.join("libheapkit.so"), dir.join("heapkit-bench"));
    if shim.is_file() && bench.is_file() {
        Some((shim, bench))
    } else {
        eprintln!(
            "SKIPPED: {} or {} missing; run `cargo build --release -p heapkit-shim -p heapkit-bench` first",
            shim.display(),
            bench.display()
        );
        None
    }
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: {tool} not found");
    }
    ok
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hkt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd` under the shim, recording into `trace`; returns its stdout.
fn record(shim: &Path, trace: &Path, mut cmd: Command) -> String {
    let out = cmd
        .env("LD_PRELOAD", shim)
        .env("HEAPKIT_TRACE", trace)
        .output()
        .expect("run the traced program");
    assert!(
        out.status.success(),
        "traced program failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Replays `trace` under every allocator and checks every sample against
/// the trace's own counts.
fn replay_and_check(bench: &Path, trace: &Path, dir: &Path, ordered: bool, s: &Summary) {
    let name = if ordered { "ordered" } else { "free" };
    let mut cmd = Command::new(bench);
    cmd.arg("replay")
        .arg(trace)
        .args(["--repetitions", "1", "--name", name]);
    cmd.arg("--out").arg(dir);
    if ordered {
        cmd.arg("--ordered");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join(name).join("results.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cells = report["cells"].as_array().unwrap();
    assert!(
        cells.len() >= 3,
        "expected every registered allocator, got {}",
        cells.len()
    );
    for cell in cells {
        let who = cell["allocator"].as_str().unwrap();
        assert_eq!(cell["errors"].as_array().unwrap().len(), 0, "{who}: {cell}");
        let sample = &cell["samples"][0];
        assert_eq!(
            sample["ops"].as_u64().unwrap(),
            s.replayable_ops() as u64,
            "{who}: operations"
        );
        let live = sample["checkpoints"][0]["live"].as_u64().unwrap();
        assert_eq!(live, s.peak_live_bytes, "{who}: peak live bytes");
        assert!(sample["peak_rss"].as_u64().unwrap() > 0);
    }
    let md = std::fs::read_to_string(dir.join(name).join("REPORT.md")).unwrap();
    assert!(
        md.contains("## Verdict") && md.contains("## The trace: "),
        "{md}"
    );
}

/// The real interpreter behind `python3` (which may be a wrapper script,
/// e.g. a pyenv shim that runs a dozen shell processes first).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn python_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/preload/alloc_heavy.py")
}

#[test]
fn python_trace_replays_exactly_under_every_allocator() {
    let Some((shim, bench)) = artifacts() else {
        return;
    };
    if !have("python3") {
        return;
    }
    let dir = scratch("python");
    let trace = dir.join("py.hkt");
    let mut cmd = Command::new(python());
    cmd.arg(python_script()).env("PYTHONMALLOC", "malloc");
    let traced = record(&shim, &trace, cmd);
    let plain = Command::new(python())
        .arg(python_script())
        .env("PYTHONMALLOC", "malloc")
        .output()
        .unwrap();
    assert_eq!(
        traced,
        String::from_utf8(plain.stdout).unwrap(),
        "recording changed the output"
    );

    let t = Trace::open(&trace).unwrap();
    let s = Summary::of(&t).unwrap();
    assert!(s.threads >= 2, "the script runs threads: {s:?}");
    assert!(
        s.allocs > 100_000 && s.frees > 100_000 && s.reallocs > 1000,
        "{s:?}"
    );
    assert!(s.peak_live_bytes > 1 << 20);
    replay_and_check(&bench, &trace, &dir, true, &s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Builds `tests/programs/<name>.c` (with `-pthread`) into `dir`.
fn build_c(dir: &Path, name: &str) -> PathBuf {
    let exe = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(format!("{name}.c"));
    let cc = Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    exe
}

#[test]
fn c_program_trace_replays_exactly_under_every_allocator() {
    let Some((shim, bench)) = artifacts() else {
        return;
    };
    if !have("cc") {
        return;
    }
    let dir = scratch("mt");
    let exe = build_c(&dir, "mt");
    let trace = dir.join("mt.hkt");
    let traced = record(&shim, &trace, Command::new(&exe));
    let plain = Command::new(&exe).output().unwrap();
    assert_eq!(traced, String::from_utf8(plain.stdout).unwrap());

    let t = Trace::open(&trace).unwrap();
    let s = Summary::of(&t).unwrap();
    // main + 4 workers, every kind of call, frees across threads.
    assert_eq!(s.threads, 5, "{s:?}");
    assert!(s.cross_thread_frees > 100, "{s:?}");
    assert!(
        s.aligned > 10_000 && s.zeroed > 5_000 && s.reallocs > 10_000,
        "{s:?}"
    );
    assert_eq!(s.unknown_frees, 0, "{s:?}");
    // mt.c frees everything but the 4 + 1 blocks glibc's pthread/stdio keep.
    assert!(s.leaked < 20, "{s:?}");
    replay_and_check(&bench, &trace, &dir, true, &s);
    replay_and_check(&bench, &trace, &dir, false, &s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// exit() while four threads record: the exit handler flushes their
/// buffers under their hands, twenty times; every trace reads back whole
/// (a record torn between a thread and the handler would break a block's
/// checksum or encoding) and ends with its end block.
#[test]
fn exit_while_threads_record_leaves_whole_traces() {
    let Some((shim, _)) = artifacts() else {
        return;
    };
    if !have("cc") {
        return;
    }
    let dir = scratch("exit-racing");
    let exe = build_c(&dir, "exit_racing");
    for round in 0..20 {
        let trace = dir.join(format!("r{round}.hkt"));
        let out = Command::new(&exe)
            .env("LD_PRELOAD", &shim)
            .env("HEAPKIT_TRACE", &trace)
            .output()
            .unwrap();
        assert!(out.status.success(), "round {round}: {out:?}");
        // Strict: an end block and every block intact.
        let t = Trace::open(&trace).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            t.op_count() > 1000,
            "round {round}: {} operations",
            t.op_count()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The recorder's cost on a malloc-bound program: the Python script with
/// every object malloc'd, traced vs untraced under the same backend (glibc
/// through the shim), interleaved, best of three each. Prints the ratio;
/// fails only if recording makes the run more than 5x slower (a gross
/// regression: the other tests of this binary run alongside on a 2-core
/// machine, so the ratio itself is no measurement; the harness's reports
/// are).
#[test]
fn recorder_overhead_on_python_is_modest() {
    let Some((shim, _)) = artifacts() else { return };
    if !have("python3") {
        return;
    }
    let dir = scratch("overhead");
    let trace = dir.join("o.hkt");
    let once = |traced: bool| -> f64 {
        let mut cmd = Command::new(python());
        cmd.arg(python_script())
            .env("PYTHONMALLOC", "malloc")
            .env("HEAPKIT_ALLOC", "system")
            .env("LD_PRELOAD", &shim);
        if traced {
            cmd.env("HEAPKIT_TRACE", &trace);
        }
        let start = Instant::now();
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        start.elapsed().as_secs_f64()
    };
    let (mut plain, mut traced) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        plain = plain.min(once(false));
        traced = traced.min(once(true));
    }
    let ops = Trace::open(&trace).unwrap().op_count();
    assert!(ops > 100_000, "only {ops} operations recorded");
    eprintln!(
        "recorder overhead: {plain:.3} s untraced, {traced:.3} s traced ({:.2}x, {:.0} ns per recorded call, {} calls)",
        traced / plain,
        (traced - plain) * 1e9 / ops as f64,
        ops
    );
    assert!(
        traced < plain * 5.0,
        "recording costs {:.2}x",
        traced / plain
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Children forked without exec get traces of their own under `%p`; `_exit`
/// still writes a complete trace; a killed child's trace is salvaged up to
/// its last written block, with a warning.
#[test]
fn forked_children_exit_paths_and_killed_processes() {
    let Some((shim, bench)) = artifacts() else {
        return;
    };
    if !have("cc") {
        return;
    }
    let dir = scratch("forks");
    let exe = dir.join("forks");
    let built = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/forks.c"))
        .status()
        .unwrap();
    assert!(built.success());
    let stdout = record(&shim, &dir.join("t-%p.hkt"), Command::new(&exe));
    let pids: Vec<&str> = stdout.split_whitespace().collect();
    let trace_of = |pid: &str| dir.join(format!("t-{pid}.hkt"));
    let allocs_of = |t: &Trace, size: u64| t.objects.iter().filter(|o| o.size == size).count();

    // exit() and _exit() children: complete traces with their own work only.
    for (pid, n, size) in [(pids[0], 1000, 40), (pids[1], 2000, 56)] {
        let t = Trace::open(&trace_of(pid)).expect("complete trace");
        assert_eq!(allocs_of(&t, size), n, "child {pid}");
        assert_eq!(
            allocs_of(&t, 24),
            0,
            "child {pid} holds its parent's records"
        );
    }
    // The parent left through _exit as well: complete.
    let parent = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with("t-") && !pids.iter().any(|pid| name == format!("t-{pid}.hkt"))
        })
        .expect("the parent's trace");
    let t = Trace::open(&parent).expect("complete parent trace");
    assert_eq!(allocs_of(&t, 24), 100);
    assert_eq!(allocs_of(&t, 88), 300);
    // The killed child: rejected by the strict reader, salvaged with a
    // warning, holding the blocks it wrote (all but its last buffer).
    let killed = trace_of(pids[2]);
    assert!(Trace::open(&killed).is_err());
    let (t, warning) = Trace::open_salvaging(&killed).unwrap();
    assert!(warning.unwrap().contains("end block is missing"));
    let got = allocs_of(&t, 72);
    assert!(
        (150_000..200_000).contains(&got),
        "{got} of 200000 salvaged"
    );
    let out = Command::new(&bench)
        .args(["trace", "info"])
        .arg(&killed)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    std::fs::remove_dir_all(&dir).ok();
}

/// A trace file (or heap profile) that cannot be created: one line naming
/// the variable, the path and the reason, said by the first process of a
/// tree only.
#[test]
fn an_uncreatable_trace_is_one_error_line() {
    let Some((shim, _)) = artifacts() else {
        return;
    };
    for variable in ["HEAPKIT_TRACE", "HEAPKIT_PROFILE"] {
        let out = Command::new("/bin/sh")
            .args(["-c", "true; ls / >/dev/null; cat /dev/null"])
            .env("LD_PRELOAD", &shim)
            .env_remove("HEAPKIT_TRACE")
            .env_remove("HEAPKIT_PROFILE")
            .env(variable, "/nonexistent-dir/x.hkt")
            .output()
            .unwrap();
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim(),
            format!(
                "heapkit-trace: cannot create the {variable} file /nonexistent-dir/x.hkt: \
                 No such file or directory (nothing is recorded)"
            )
        );
    }
}
