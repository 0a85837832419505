//! `heapkit-bench profile` end to end: a C program that leaks in a named
//! function (with and without frame pointers), sampled and exact; a killed
//! process; a python3 run. Needs `libheapkit.so` in the source tree's
//! `target/release` (the README's test command builds it first) and `cc`.

use std::path::{Path, PathBuf};
use std::process::Command;

const LEAK_FN: &str = "leak_in_named_function";

fn shim() -> Option<PathBuf> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/libheapkit.so");
    if lib.is_file() {
        Some(lib)
    } else {
        eprintln!("SKIP: {} not built", lib.display());
        None
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hk-profile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds leak.c with `-g` and the given extra flags; None without `cc`.
fn build(dir: &Path, name: &str, flags: &[&str]) -> Option<PathBuf> {
    build_program(dir, "leak.c", name, flags)
}

/// Builds `tests/programs/<source>` with `-g` and the given extra flags.
fn build_program(dir: &Path, source: &str, name: &str, flags: &[&str]) -> Option<PathBuf> {
    let exe = dir.join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(source);
    let ok = Command::new("cc")
        .args(["-g", "-O1"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(source)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: cc not available");
    }
    ok.then_some(exe)
}

/// Runs `heapkit-bench profile ARGS -- CMD`, returning (stdout, stderr).
fn profile(lib: &Path, out: &Path, args: &[&str], cmd: &[&str]) -> (String, String) {
    profile_in(Path::new("."), lib, out, args, cmd)
}

/// [`profile`], run in the directory `cwd` (`out` may be relative to it).
fn profile_in(cwd: &Path, lib: &Path, out: &Path, args: &[&str], cmd: &[&str]) -> (String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_heapkit-bench"))
        .current_dir(cwd)
        .arg("profile")
        .args(args)
        .arg("--lib")
        .arg(lib)
        .arg("--out")
        .arg(out)
        .arg("--")
        .args(cmd)
        .env_remove("CARGO")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Bytes on the leak summary line naming the leaking function.
fn leaked_by_function(stdout: &str) -> Option<f64> {
    let line = stdout
        .lines()
        .find(|l| l.contains(LEAK_FN) && l.contains("bytes"))?;
    line.split_whitespace()
        .map(|w| w.trim_start_matches('~'))
        .find_map(|w| w.parse::<f64>().ok())
}

/// The report's `profile-<pid>.pb.gz` is a gzipped pprof profile whose
/// leak (`inuse_*`) sample for the leaking function holds exactly `bytes`
/// in `blocks` blocks: decoded with prost, and, where `protoc` is
/// installed, checked by its schema-less decoder too.
fn check_pprof(report: &Path, bytes: i64, blocks: i64) {
    use heapkit_bench::report::pprof::Profile;
    use prost::Message;
    use std::io::Read;
    let file = std::fs::read_dir(report)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .expect("a pprof profile in the report");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap())
        .read_to_end(&mut raw)
        .expect("gzip");
    let p = Profile::decode(raw.as_slice()).expect("profile.proto");
    let s = |i: i64| p.string_table[i as usize].as_str();
    let types: Vec<&str> = p.sample_type.iter().map(|t| s(t.r#type)).collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    let leaking = p
        .sample
        .iter()
        .filter(|sample| {
            let loc = &p.location[sample.location_id[0] as usize - 1];
            s(p.function[loc.line[0].function_id as usize - 1].name) == LEAK_FN
        })
        .map(|sample| (sample.value[3], sample.value[2]))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(leaking, (bytes, blocks), "{}", file.display());
    if let Ok(out) = Command::new("protoc")
        .arg("--decode_raw")
        .stdin(
            std::fs::File::open({
                let plain = file.with_extension("raw");
                std::fs::write(&plain, &raw).unwrap();
                plain
            })
            .unwrap(),
        )
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "protoc --decode_raw failed");
        assert!(
            text.contains(LEAK_FN) && text.contains("inuse_space"),
            "{text}"
        );
    }
}

#[test]
fn leaks_are_found_by_function_exactly_and_sampled() {
    let Some(lib) = shim() else { return };
    let dir = tmp("c");
    for (name, flags) in [("plain", &[][..]), ("fp", &["-fno-omit-frame-pointer"][..])] {
        let Some(exe) = build(&dir, name, flags) else {
            return;
        };
        let exe = exe.to_str().unwrap();
        // Every allocation: the exact bytes.
        let (stdout, _) = profile(
            &lib,
            &dir.join("out"),
            &["--every", "--name", &format!("every-{name}")],
            &[exe, "4096"],
        );
        assert_eq!(
            leaked_by_function(&stdout),
            Some(4096.0 * 4096.0),
            "{name}: {stdout}"
        );
        assert!(stdout.contains("4096 blocks"), "{stdout}");
        // What the program frees (blocks grown by realloc included) is not
        // reported as leaked.
        assert!(
            !stdout.contains("allocate_and_free") && !stdout.contains("grow_and_free"),
            "{stdout}"
        );
        let report = dir.join(format!("out/every-{name}"));
        let md = std::fs::read_to_string(report.join("REPORT.md")).unwrap();
        assert!(md.contains(LEAK_FN) && md.contains("leak.c"), "{md}");
        check_pprof(&report, 4096 * 4096, 4096);
        // Replayed in time order: the peak holds the leak whole, and the
        // 100000 blocks allocate_and_free frees at once are temporaries.
        assert!(stdout.contains("peak heap 16.0 MiB"), "{stdout}");
        let row_after = |heading: &str, needle: &str| {
            md.split(heading)
                .nth(1)
                .and_then(|rest| rest.split("\n###").next())
                .is_some_and(|table| table.lines().any(|l| l.contains(needle)))
        };
        assert!(
            row_after(
                "### Live at the peak",
                &format!("| 16.0 MiB | 4096 | `{LEAK_FN}")
            ),
            "{md}"
        );
        assert!(
            row_after(
                "### Temporary allocations, by stack",
                "| 100000 | `allocate_and_free"
            ),
            "{md}"
        );
        let timeline = std::fs::read_dir(&report)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("timeline-"));
        assert!(timeline, "a timeline chart");
        for svg in std::fs::read_dir(&report).unwrap().flatten() {
            let path = svg.path();
            if path.extension().is_some_and(|e| e == "svg") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.contains("<svg") && text.trim_end().ends_with("</svg>"));
            }
        }
        // Default sampling (one allocation per 512 KiB on average): 128 MiB
        // leaked, estimated within 25%.
        let (stdout, _) = profile(
            &lib,
            &dir.join("out"),
            &["--name", &format!("sampled-{name}")],
            &[exe, "32768"],
        );
        let want = 32768.0 * 4096.0;
        let got = leaked_by_function(&stdout).unwrap_or(0.0);
        assert!(
            (got / want - 1.0).abs() < 0.25,
            "{name}: estimated {got} of {want}: {stdout}"
        );
        // The sampled blocks that were freed (by free, or by the realloc
        // that grew them) were seen to be freed.
        assert!(
            !stdout.contains("allocate_and_free") && !stdout.contains("grow_and_free"),
            "{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A command that changes directory before the program it runs allocates
/// (a script, a build), profiled with a relative `--out`: the program's
/// profile is still written (the path handed to it is absolute) and its
/// leak found; the shell's own process comes after it (the larger heap
/// first), and nothing prints a negative zero.
#[test]
fn a_command_that_changes_directory_is_profiled_with_a_relative_out() {
    let Some(lib) = shim() else { return };
    let dir = tmp("chdir");
    let Some(exe) = build(&dir, "leak", &[]) else {
        return;
    };
    let (stdout, stderr) = profile_in(
        &dir,
        &lib,
        Path::new("out"),
        &["--every", "--name", "chdir"],
        &[
            "sh",
            "-c",
            "cd / && \"$0\" 1024; true",
            exe.to_str().unwrap(),
        ],
    );
    assert!(!stderr.contains("cannot create"), "{stderr}");
    assert_eq!(
        leaked_by_function(&stdout),
        Some(1024.0 * 4096.0),
        "{stdout}"
    );
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.contains("(leak)"),
        "the leaking program first: {stdout}"
    );
    assert!(!stdout.contains("-0"), "{stdout}");
    let md = std::fs::read_to_string(dir.join("out/chdir/REPORT.md")).unwrap();
    assert!(
        md.contains("| program |") && md.contains("| leak |"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Profiles every allocation of `leak ARGS...` (which kills itself), in
/// the temporary directory `name`; checks that the profile was salvaged
/// with a warning and returns the leak summary. None: no C compiler.
fn profile_killed_leak(name: &str, args: &[&str]) -> Option<String> {
    let lib = shim()?;
    let dir = tmp(name);
    let exe = build(&dir, "leak", &[])?;
    let mut command = vec![exe.to_str().unwrap()];
    command.extend_from_slice(args);
    let (stdout, stderr) = profile(&lib, &dir.join("out"), &["--every"], &command);
    assert!(stderr.contains("salvaged"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    Some(stdout)
}

#[test]
fn a_killed_process_is_read_with_a_warning() {
    // Enough records that some leave the last, unwritten buffer (up to
    // 128 KiB of records per thread, about 20000 allocations with repeated
    // stacks, are lost with a killed process).
    let Some(stdout) = profile_killed_leak("killed", &["65536", "kill", "64"]) else {
        return;
    };
    assert!(stdout.contains(LEAK_FN), "{stdout}");
}

/// A process killed after a slow stretch: its leak, recorded before the
/// stretch into a buffer far from full, reached the file on time (a block
/// is written once it is about a second old), so the exact bytes are
/// reported; without that, the last buffer dies with the process.
#[test]
fn a_killed_process_keeps_what_it_recorded_a_second_before() {
    let Some(stdout) = profile_killed_leak("pause-kill", &["100", "pause-kill"]) else {
        return;
    };
    let line = stdout
        .lines()
        .find(|l| l.contains(LEAK_FN))
        .unwrap_or_else(|| panic!("no leak line: {stdout}"));
    assert!(
        line.contains(" 409600 bytes") && line.contains(" 100 blocks"),
        "{line}\n{stdout}"
    );
}

/// Blocks one thread allocates in bursts and another frees right after a
/// wait: in a profile of every allocation nothing is reported leaked and
/// the peak is one burst (frees stamped with a clock read from before the
/// wait, as when every record skipped most reads, came before their
/// allocations and made the peak all twenty bursts).
#[test]
fn blocks_freed_by_another_thread_after_a_pause_are_not_leaks() {
    let Some(lib) = shim() else { return };
    let dir = tmp("handoff");
    let Some(exe) = build_program(&dir, "handoff.c", "handoff", &["-pthread"]) else {
        return;
    };
    let (stdout, _) = profile(
        &lib,
        &dir.join("out"),
        &["--every", "--name", "handoff"],
        &[exe.to_str().unwrap(), "20"],
    );
    assert!(!stdout.contains("allocate_burst"), "{stdout}");
    // One burst (2000 blocks of 16-215 bytes) is live at a time: a peak of
    // several bursts means frees were ordered after later allocations.
    let peak_mib: f64 = stdout
        .split("peak heap ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak: {stdout}"));
    assert!(peak_mib < 1.0, "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn python_frames_show_where_python_allocates() {
    let Some(lib) = shim() else { return };
    if !Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIP: python3 not found");
        return;
    }
    let dir = tmp("python");
    let script = dir.join("cache.py");
    std::fs::write(
        &script,
        "CACHE = []\nfor i in range(100000):\n    CACHE.append(('item-%d' % i) * 20)\nprint(len(CACHE))\n",
    )
    .unwrap();
    let (_, _) = profile(
        &lib,
        &dir.join("out"),
        &["--name", "py"],
        &[
            "env",
            "PYTHONMALLOC=malloc",
            "python3",
            script.to_str().unwrap(),
        ],
    );
    let md = std::fs::read_to_string(dir.join("out/py/REPORT.md")).unwrap();
    assert!(md.contains("PyUnicode_New"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A thread's profiling memory (unwind rules, written stacks, the record
/// buffer's pages) goes back at its exit: 300 threads that each walked
/// stacks leave the process less than 16 KiB per thread larger than 10
/// did (they held about 100 KiB each before), and the last one's leak is
/// still found exactly.
#[test]
fn exited_threads_give_their_profiling_memory_back() {
    let Some(lib) = shim() else { return };
    let dir = tmp("threads");
    let Some(exe) = build_program(&dir, "threads.c", "threads", &["-pthread"]) else {
        return;
    };
    let resident_kib = |threads: usize| -> i64 {
        let o = Command::new(&exe)
            .arg(threads.to_string())
            .env("LD_PRELOAD", &lib)
            .env("HEAPKIT_PROFILE", dir.join(format!("t{threads}-%p.hkt")))
            .env("HEAPKIT_PROFILE_RATE", "0")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        out.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let few = resident_kib(10);
    let many = resident_kib(300);
    let per_thread = (many - few) as f64 / 290.0;
    eprintln!("resident: {few} KiB after 10 threads, {many} KiB after 300 ({per_thread:.1} KiB per thread)");
    assert!(per_thread < 16.0, "{per_thread:.1} KiB per exited thread");
    let recorded: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("t300-")
        })
        .collect();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let o = Command::new(env!("CARGO_BIN_EXE_heapkit-bench"))
        .args(["profile", "--out"])
        .arg(dir.join("out"))
        .arg("--read")
        .arg(&recorded[0])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("thread_leak_in_named_function"))
        .unwrap_or_else(|| panic!("no leak line:\n{stdout}"));
    assert!(line.trim_start().starts_with("4096 bytes"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
