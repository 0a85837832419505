//! End-to-end: the real binary on a tiny matrix, `compare`, `list`, and the
//! one-line errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bench() -> Command {
    // Without CARGO in the environment the binary does not call cargo itself
    // (see `cell::build_cell_binaries_if_under_cargo`); the test build has
    // already built every bin.
    let mut command = Command::new(env!("CARGO_BIN_EXE_heapkit-bench"));
    command.env_remove("CARGO");
    command
}

fn tmp(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("heapkit-bench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn assert_one_line_error(out: &Output, contains: &str) {
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr_line(out));
    let err = stderr_line(out);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains(contains), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn tiny_run_writes_report_and_compare_works() {
    let out_dir = tmp("run");
    let run = |name: &str| {
        bench()
            .args([
                "run",
                "--allocators",
                "system,jemalloc",
                "--workloads",
                "churn,larson",
            ])
            .args([
                "--threads",
                "2",
                "--repetitions",
                "2",
                "--scale",
                "0.01",
                "--name",
                name,
            ])
            .arg("--out")
            .arg(&out_dir)
            .output()
            .expect("run heapkit-bench")
    };
    for name in ["a", "b"] {
        let out = run(name);
        assert!(out.status.success(), "stderr: {}", stderr_line(&out));
        let dir = out_dir.join(name);
        for file in [
            "results.json",
            "REPORT.md",
            "time.svg",
            "peak-rss.svg",
            "latency.svg",
        ] {
            assert!(dir.join(file).is_file(), "{file} missing");
        }
        let report = heapkit_bench::report::json::read(&dir.join("results.json")).expect("parses");
        assert_eq!(report.cells.len(), 4);
        assert!(report
            .cells
            .iter()
            .all(|c| c.samples.len() == 2 && c.errors.is_empty()));
        let md = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
        assert!(md.contains("geometric mean of ratios") && md.contains("larson ×2"));
    }
    let out = bench()
        .arg("compare")
        .arg(out_dir.join("a/results.json"))
        .arg(out_dir.join("b"))
        .arg("--all")
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", stderr_line(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("4 cells compared"), "{table}");

    // bad and mismatched JSON
    let bad = out_dir.join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let out = bench()
        .arg("compare")
        .arg(&bad)
        .arg(out_dir.join("a"))
        .output()
        .unwrap();
    assert_one_line_error(&out, "not valid JSON");
    std::fs::write(&bad, r#"{"schema": 1, "cells": 3}"#).unwrap();
    let out = bench()
        .arg("compare")
        .arg(out_dir.join("a"))
        .arg(&bad)
        .output()
        .unwrap();
    assert_one_line_error(&out, "not a heapkit-bench results.json");
    let out = bench()
        .arg("compare")
        .arg(out_dir.join("missing.json"))
        .arg(&bad)
        .output()
        .unwrap();
    assert_one_line_error(&out, "cannot read");
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn unknown_names_are_one_line_errors() {
    let out = bench()
        .args(["run", "--allocators", "nosuch"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "unknown allocator 'nosuch'");
    let out = bench()
        .args(["run", "--workloads", "nosuch"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "unknown workload 'nosuch'");
    let out = bench().args(["run", "--threads", "abc"]).output().unwrap();
    assert_one_line_error(&out, "invalid value 'abc'");
}

#[test]
fn list_shows_allocators_and_workloads() {
    let out = bench().arg("list").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "system",
        "jemalloc",
        "mimalloc",
        "churn",
        "larson",
        "fragmentation",
    ] {
        assert!(text.contains(name), "{name} missing from list");
    }
    assert!(!text.contains("not built"), "{text}");
}

#[test]
fn cell_binary_rejects_bad_jobs() {
    let cell = PathBuf::from(env!("CARGO_BIN_EXE_hk-cell-system"));
    let out = Command::new(&cell)
        .args(["workload", "name=nosuch"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "unknown workload");
}

/// Every cmdline of a running process that contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(cmd);
            }
        }
    }
    found
}

fn many_short_cells(out_dir: &std::path::Path, seed: &str) -> Command {
    let mut cmd = bench();
    cmd.args(["run", "--allocators", "system", "--workloads", "churn"])
        .args(["--repetitions", "400", "--scale", "0.02", "--name", "r"])
        .args(["--seed", seed])
        .arg("--out")
        .arg(out_dir);
    cmd
}

#[test]
fn progress_lines_when_not_a_terminal() {
    let out_dir = tmp("progress");
    let out = bench()
        .args(["run", "--allocators", "system", "--workloads", "churn"])
        .args(["--repetitions", "2", "--scale", "0.01", "--name", "p"])
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("heapkit-bench: [1/2 0:"), "{err}");
    assert!(err.contains("system churn ×1 rep 2/2: "), "{err}");
    let md = std::fs::read_to_string(out_dir.join("p/REPORT.md")).unwrap();
    assert!(
        md.starts_with("# heapkit-bench report: p\n\n## Verdict"),
        "{md}"
    );
    assert!(
        !out_dir.join("p/samples.jsonl").exists(),
        "journal left behind"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn a_cell_past_its_timeout_is_killed_and_reported() {
    let out_dir = tmp("timeout");
    let started = std::time::Instant::now();
    let out = bench()
        .args(["run", "--allocators", "system", "--workloads", "churn"])
        .args(["--repetitions", "1", "--scale", "1e9", "--timeout", "1"])
        .args(["--name", "t", "--seed", "424242"])
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(started.elapsed().as_secs() < 30, "the timeout did not fire");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("killed after 1 s (--timeout)"), "{err}");
    let report = heapkit_bench::report::json::read_dir(&out_dir.join("t")).unwrap();
    assert!(report.cells[0].errors[0].contains("--timeout"));
    assert!(processes_with("seed=424242").is_empty());
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn an_interrupted_run_kills_its_cell_and_keeps_a_partial_report() {
    let out_dir = tmp("interrupt");
    let mut child = many_short_cells(&out_dir, "515151")
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: kill with a live child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        processes_with("seed=515151").is_empty(),
        "cell left running"
    );
    let dir = out_dir.join("r");
    let report = heapkit_bench::report::json::read(&dir.join("results.json")).unwrap();
    let taken = report.cells[0].samples.len();
    assert!(taken > 0 && taken < 400, "{taken} samples");
    assert!(report
        .partial
        .as_deref()
        .unwrap()
        .starts_with("interrupted"));
    let md = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
    assert!(md.contains("**Partial report**"), "{md}");
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn a_killed_run_leaves_a_journal_that_compare_reads() {
    let out_dir = tmp("killed");
    let mut child = many_short_cells(&out_dir, "626262")
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();
    // PR_SET_PDEATHSIG takes the running cell down with the harness.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        processes_with("seed=626262").is_empty(),
        "cell left running"
    );
    let dir = out_dir.join("r");
    assert!(!dir.join("results.json").exists());
    let report = heapkit_bench::report::json::read_dir(&dir).unwrap();
    assert!(report.partial.as_deref().unwrap().contains("killed"));
    assert!(!report.cells[0].samples.is_empty());
    let out = bench().arg("compare").arg(&dir).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Nothing moved beyond the run-to-run noise"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn an_installed_copy_finds_its_cells_and_the_shim() {
    // What `cargo install --path bench-harness` makes: the binaries in a
    // directory of their own, outside any cargo target directory.
    let bin = tmp("installed").join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["heapkit-bench", "hk-cell-system"] {
        let from = PathBuf::from(env!("CARGO_BIN_EXE_heapkit-bench")).with_file_name(name);
        std::fs::copy(&from, bin.join(name)).unwrap();
    }
    let installed = || {
        let mut c = Command::new(bin.join("heapkit-bench"));
        c.env_remove("CARGO").env_remove("HEAPKIT_LIB");
        c
    };
    let out = installed().arg("list").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("system") && text.contains("(std::alloc::System)"),
        "{text}"
    );
    assert!(!text.contains("1 thread 1 thread"), "{text}");
    let out_dir = bin.parent().unwrap().join("reports");
    let out = installed()
        .args(["run", "--allocators", "system", "--workloads", "churn"])
        .args(["--repetitions", "1", "--scale", "0.01"])
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    // libheapkit.so: not beside the copy, so the source tree's release build
    // (built by the README's test command before the tests run).
    let source_lib =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/libheapkit.so");
    if source_lib.is_file() {
        let out = installed()
            .args([
                "preload",
                "--allocators",
                "system,native",
                "--repetitions",
                "1",
            ])
            .args(["--name", "pl"])
            .arg("--out")
            .arg(&out_dir)
            .args(["--", "python3", "-c", "print('a b')"])
            .env_remove("PYTHONMALLOC")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("PYTHONMALLOC=malloc"),
            "no pymalloc warning: {err}"
        );
        let md = std::fs::read_to_string(out_dir.join("pl/REPORT.md")).unwrap();
        assert!(
            md.contains("## Verdict") && md.contains("> **Warning**"),
            "{md}"
        );
        assert!(md.contains(r#"`python3 -c "print('a b')"`"#), "{md}");
        assert!(md.contains("Ratios are to **native**"), "{md}");
    }
    let _ = std::fs::remove_dir_all(bin.parent().unwrap());
}

/// `--background-purge-ms` reaches the cells (sizeclass's purger gives
/// back the large workload's cached blocks during the idle wait) and the
/// report shows RSS after idle; without `--idle-ms` nothing is read.
#[test]
fn idle_rss_with_the_background_purger() {
    let out_dir = tmp("idle");
    let out = bench()
        .args(["run", "--allocators", "sizeclass", "--workloads", "large"])
        .args(["--repetitions", "1", "--scale", "0.1", "--name", "i"])
        .args(["--background-purge-ms", "10", "--idle-ms", "800"])
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", stderr_line(&out));
    let dir = out_dir.join("i");
    let report = heapkit_bench::report::json::read(&dir.join("results.json")).expect("parses");
    assert_eq!(report.config.background_purge_ms, Some(10));
    let s = &report.cells[0].samples[0];
    let idle = s.rss_idle.expect("rss_idle measured");
    // The large workload ends with tens of MiB in the large cache; the
    // purger drops them once they expire (250 ms).
    assert!(
        s.rss_end > idle + (16 << 20),
        "end {} KiB, idle {} KiB",
        s.rss_end >> 10,
        idle >> 10
    );
    let md = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
    assert!(md.contains("RSS after idle, per RSS at start"), "{md}");
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// `preload` runs each command once, unmeasured, before each repetition of
/// it: what the previous command left for the kernel to finish lands on
/// that run instead of on whichever column comes first. Counted with a
/// command that appends a line to a file: two columns, two repetitions,
/// so 2 x (1 + 2) runs.
#[test]
fn preload_settles_each_command_before_measuring_it() {
    let source_lib =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/libheapkit.so");
    if !source_lib.is_file() {
        println!("SKIP: no release libheapkit.so (the README's test command builds it)");
        return;
    }
    let out_dir = tmp("settle");
    std::fs::create_dir_all(&out_dir).unwrap();
    let log = out_dir.join("runs.log");
    let out = bench()
        .args([
            "preload",
            "--allocators",
            "system,native",
            "--repetitions",
            "2",
        ])
        .arg("--lib")
        .arg(&source_lib)
        .args(["--name", "s", "--sh"])
        .arg(format!("echo run >> {}", log.display()))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let runs = std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(runs, 6, "runs of the command");
    let report = heapkit_bench::report::json::read(&out_dir.join("s/results.json")).unwrap();
    for cell in &report.cells {
        assert_eq!(cell.samples.len(), 2, "{}: measured runs", cell.allocator);
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// `preload --allocators sizeclass,sizeclass_hardened` measures the
/// backend in both modes: the `_hardened` column runs with
/// `HEAPKIT_HARDEN=1`, the other without it even when the caller exported
/// it; a backend without a hardened mode is a one-line error. The command
/// logs the two variables it was run with.
#[test]
fn preload_measures_a_backend_in_both_modes() {
    let source_lib =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/libheapkit.so");
    if !source_lib.is_file() {
        println!("SKIP: no release libheapkit.so (the README's test command builds it)");
        return;
    }
    let out_dir = tmp("hardened-columns");
    std::fs::create_dir_all(&out_dir).unwrap();
    let log = out_dir.join("env.log");
    let out = bench()
        .args([
            "preload",
            "--allocators",
            "sizeclass,sizeclass_hardened",
            "--repetitions",
            "1",
        ])
        .arg("--lib")
        .arg(&source_lib)
        .env("HEAPKIT_HARDEN", "1")
        .args(["--name", "h", "--sh"])
        .arg(format!(
            "echo \"$HEAPKIT_ALLOC:$HEAPKIT_HARDEN\" >> {}",
            log.display()
        ))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let mut lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines.dedup();
    assert_eq!(lines, ["sizeclass:", "sizeclass:1"], "runs' environments");
    let report = heapkit_bench::report::json::read(&out_dir.join("h/results.json")).unwrap();
    let mut columns: Vec<&str> = report.cells.iter().map(|c| c.allocator.as_str()).collect();
    columns.sort();
    assert_eq!(columns, ["sizeclass", "sizeclass_hardened"]);
    let out = bench()
        .args([
            "preload",
            "--allocators",
            "bump_hardened",
            "--repetitions",
            "1",
        ])
        .arg("--lib")
        .arg(&source_lib)
        .args(["--out"])
        .arg(&out_dir)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "has no hardened mode");
    let _ = std::fs::remove_dir_all(&out_dir);
}
