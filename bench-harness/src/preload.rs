//! `heapkit-bench preload`: runs an unmodified program under every backend
//! of `libheapkit.so` and tabulates wall time, user/sys CPU time and peak
//! RSS, with ratios to a baseline.
//!
//! ```sh
//! cargo build --release -p heapkit-shim -p heapkit-bench
//! heapkit-bench preload --repetitions 5 -- env PYTHONMALLOC=malloc python3 tests/preload/alloc_heavy.py
//! heapkit-bench preload --allocators sizeclass,mimalloc \
//!     --sh 'exec sqlite3 :memory: < work.sql' --sh 'exec ./stress bench'
//! ```
//!
//! Each repetition of each column is one fresh child process, run with
//! `LD_PRELOAD=<libheapkit.so> HEAPKIT_ALLOC=<backend>`; columns alternate
//! within a repetition so that drift on a shared machine spreads evenly.
//! The child is reaped with `wait4`, which gives its own (and its waited-for
//! descendants') user and system time, peak RSS (`ru_maxrss`) and minor
//! faults, without sampling. Wall time is `Instant` around spawn..reap.
//!
//! A backend's hardened mode is a column of its own, `<backend>_hardened`
//! (`HEAPKIT_HARDEN=1`; sizeclass, slab and pool have one), named as
//! `heapkit-bench run` names the hardened cells, so what hardening costs a
//! real program is one command:
//! `heapkit-bench preload --allocators sizeclass,sizeclass_hardened -- ./app`.
//! Every other column runs with `HEAPKIT_HARDEN` unset, whatever the
//! caller's environment holds.
//!
//! Extra columns: `native` (no preload: glibc as the program normally runs,
//! so `system` vs `native` is the shim's own cost), and, where Debian's
//! `libjemalloc2` / `libmimalloc2.0` are installed, `jemalloc-so` and
//! `mimalloc-so`, the real libraries preloaded directly, to show that the
//! forwarded peers behave like them.
//!
//! Output, under `reports/<name>/`: `results.json` (the harness's usual
//! [`Report`]: wall time, peak RSS and faults per sample, so `compare`
//! works on it), `preload.json` (user/sys time and exit status of every
//! sample), `REPORT.md` and two SVG charts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::args::MatrixArgs;
use crate::error::{Error, Result};
use crate::report::markdown::fmt_seconds;
use crate::report::preload::{charts, render, write_file, ExtraSample};
use crate::report::{
    Cell, ClockInfo, Machine, Report, ReportDir, RunConfig, Sample, SCHEMA_VERSION,
};
use crate::session::{self, Session, Supervised};

/// Options of `preload`.
#[derive(Args, Debug, Clone)]
pub struct PreloadArgs {
    /// Path of libheapkit.so [default: $HEAPKIT_LIB, beside this executable,
    /// ../lib, or built in the source tree: see the README].
    #[arg(long)]
    pub lib: Option<PathBuf>,
    /// A shell command to measure (run as `/bin/sh -c`, so start it with
    /// `exec` to measure the program, not the shell). Repeatable; each is a
    /// row.
    #[arg(long = "sh")]
    pub shell: Vec<String>,
    /// Add the standard allocator benchmark programs (`bench-harness/
    /// programs/`: cfrac, larson, xmalloc, glibc-simple/-thread,
    /// cache-scratch/-thrash, mstress, rptest, alloc-test, malloc-large),
    /// built with `cc`, as rows. Without `--allocators`, leaves `bump` out
    /// (it never reuses memory: these programs would exhaust it).
    #[arg(long)]
    pub standard: bool,
    /// Columns (`--allocators`): backends of libheapkit.so, their hardened
    /// modes (`sizeclass_hardened`, ...), `native`, `jemalloc-so`,
    /// `mimalloc-so` [default: every backend the library accepts, then the
    /// extra columns that are installed]; repetitions,
    /// baseline, report name and place, timeout.
    #[command(flatten)]
    pub common: MatrixArgs,
    /// The command to measure, after `--` (one more row).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Where Debian installs the real peers.
const JEMALLOC_SO: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const MIMALLOC_SO: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";

/// How one column runs its children.
#[derive(Debug, Clone)]
enum Column {
    /// `LD_PRELOAD=libheapkit.so HEAPKIT_ALLOC=name`.
    Backend(String),
    /// The same with `HEAPKIT_HARDEN=1`: `backend`'s hardened mode, the
    /// column `name` (`<backend>_hardened`).
    Hardened { backend: String, name: String },
    /// No preload at all.
    Native,
    /// `LD_PRELOAD=path` (a real allocator library).
    Library(String, &'static str),
}

impl Column {
    fn name(&self) -> &str {
        match self {
            Column::Backend(n) | Column::Library(n, _) => n,
            Column::Hardened { name, .. } => name,
            Column::Native => "native",
        }
    }
}

/// One row: what runs and how it is labelled.
struct Row {
    label: String,
    argv: Vec<String>,
}

/// What `wait4` says about a finished child.
struct Usage {
    exit_ok: bool,
    exit: String,
    user_s: f64,
    sys_s: f64,
    max_rss: u64,
    minor_faults: u64,
}

/// Waits for child `pid` with `wait4`, returning its exit and resource use.
fn wait4(pid: u32) -> Result<Usage> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and ru are live, writable; pid is our child.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if rc == pid as libc::pid_t {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::new(format!("wait4: {err}")));
        }
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let exit = if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status}")
    };
    Ok(Usage {
        exit_ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        exit,
        user_s: secs(ru.ru_utime),
        sys_s: secs(ru.ru_stime),
        max_rss: ru.ru_maxrss as u64 * 1024,
        minor_faults: ru.ru_minflt as u64,
    })
}

/// The backends `lib` accepts, from its one-line error for an unknown one.
fn library_backends(lib: &Path) -> Result<Vec<String>> {
    let out = Command::new("/bin/true")
        .env("LD_PRELOAD", lib)
        .env("HEAPKIT_ALLOC", "?")
        .output()
        .map_err(|e| Error::new(format!("cannot run /bin/true under {}: {e}", lib.display())))?;
    let err = String::from_utf8_lossy(&out.stderr);
    let list = err
        .split("accepted: ")
        .nth(1)
        .and_then(|rest| rest.split(" (default").next())
        .ok_or_else(|| {
            Error::new(format!(
                "{} did not list its backends: {err:?}",
                lib.display()
            ))
        })?;
    Ok(list.split(", ").map(str::to_owned).collect())
}

/// Whether `lib`'s `backend` has a hardened mode: the library refuses
/// `HEAPKIT_HARDEN=1` for one without (exit status 2) at start-up.
fn has_hardened_mode(lib: &Path, backend: &str) -> Result<bool> {
    let status = Command::new("/bin/true")
        .env("LD_PRELOAD", lib)
        .env("HEAPKIT_ALLOC", backend)
        .env("HEAPKIT_HARDEN", "1")
        .stderr(Stdio::null())
        .status()
        .map_err(|e| Error::new(format!("cannot run /bin/true under {}: {e}", lib.display())))?;
    Ok(status.success())
}

fn columns(args: &PreloadArgs, lib: &Path) -> Result<Vec<Column>> {
    let accepted = library_backends(lib)?;
    let extra = |name: &str| -> Option<Column> {
        match name {
            "native" => Some(Column::Native),
            "jemalloc-so" => Some(Column::Library(name.into(), JEMALLOC_SO)),
            "mimalloc-so" => Some(Column::Library(name.into(), MIMALLOC_SO)),
            _ => None,
        }
    };
    if args.common.allocators.is_empty() {
        let mut cols: Vec<Column> = accepted
            .into_iter()
            .filter(|b| !(args.standard && b == "bump"))
            .map(Column::Backend)
            .collect();
        cols.push(Column::Native);
        for (name, path) in [("jemalloc-so", JEMALLOC_SO), ("mimalloc-so", MIMALLOC_SO)] {
            if Path::new(path).exists() {
                cols.push(Column::Library(name.into(), path));
            }
        }
        return Ok(cols);
    }
    args.common
        .allocators
        .iter()
        .map(|b| {
            if accepted.contains(b) {
                return Ok(Column::Backend(b.clone()));
            }
            if let Some(base) = b.strip_suffix("_hardened").filter(|base| accepted.iter().any(|a| a == base)) {
                return if has_hardened_mode(lib, base)? {
                    Ok(Column::Hardened {
                        backend: base.to_owned(),
                        name: b.clone(),
                    })
                } else {
                    Err(Error::new(format!(
                        "{b}: the {base} backend has no hardened mode (sizeclass, slab and pool have)"
                    )))
                };
            }
            match extra(b) {
                Some(Column::Library(_, path)) if !Path::new(path).exists() => Err(Error::new(
                    format!("{b}: {path} is not installed (apt-get install libjemalloc2 libmimalloc2.0)"),
                )),
                Some(c) => Ok(c),
                None if b == "jemalloc" || b == "mimalloc" => Err(Error::new(format!(
                    "{b}: {} was built without the peers (cargo build --release -p \
                     heapkit-shim --features peers); {b}-so is Debian's library",
                    lib.display()
                ))),
                None => Err(Error::new(format!(
                    "unknown column {b:?}; accepted: {}, <backend>_hardened, native, jemalloc-so, mimalloc-so",
                    accepted.join(", ")
                ))),
            }
        })
        .collect()
}

/// Runs `row` once under `column`.
fn measure(
    row: &Row,
    column: &Column,
    lib: &Path,
    timeout: Duration,
) -> Result<(Sample, Usage, f64)> {
    let (program, rest) = row
        .argv
        .split_first()
        .ok_or_else(|| Error::new("empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("HEAPKIT_STATS")
        .env_remove("HEAPKIT_HARDEN");
    match column {
        Column::Backend(b) => cmd.env("LD_PRELOAD", lib).env("HEAPKIT_ALLOC", b),
        Column::Hardened { backend, .. } => cmd
            .env("LD_PRELOAD", lib)
            .env("HEAPKIT_ALLOC", backend)
            .env("HEAPKIT_HARDEN", "1"),
        Column::Native => cmd.env_remove("LD_PRELOAD"),
        Column::Library(_, path) => cmd.env("LD_PRELOAD", path),
    };
    let start = Instant::now();
    let child = session::supervise(&mut cmd)
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {program}: {e}")))?;
    let watch = Supervised::watch(&child, timeout);
    let usage = wait4(child.id());
    let wall = start.elapsed();
    // The child is reaped; dropping the handle does not wait again.
    drop(child);
    if let Some(err) = session::ending_error(watch.finish(), &short(&row.label), timeout) {
        return Err(err);
    }
    let usage = usage?;
    let sample = Sample {
        wall_ns: wall.as_nanos() as u64,
        ops: 0,
        latency: Vec::new(),
        rss_start: 0,
        rss_end: 0,
        rss_idle: None,
        peak_rss: usage.max_rss,
        minor_faults: usage.minor_faults,
        checkpoints: Vec::new(),
        clock: ClockInfo {
            ns_per_tick: 0.0,
            overhead_ticks: 0,
            sample_period: 0,
        },
    };
    Ok((sample, usage, wall.as_secs_f64()))
}

/// Runs every row under every column, `--repetitions` times, and writes
/// the report.
pub fn preload(args: &PreloadArgs) -> Result<()> {
    let repetitions = args.common.repetitions_or(3)?;
    let lib = crate::locate::shim_library(args.lib.as_deref())?;
    let mut rows: Vec<Row> = args
        .shell
        .iter()
        .map(|s| Row {
            label: s.clone(),
            argv: vec!["/bin/sh".into(), "-c".into(), s.clone()],
        })
        .collect();
    if args.standard {
        let dir = crate::locate::programs_dir()?;
        for (label, argv) in crate::programs::standard_rows(&dir)? {
            rows.push(Row { label, argv });
        }
    }
    if !args.command.is_empty() {
        rows.push(Row {
            label: as_typed(&args.command),
            argv: args.command.clone(),
        });
    }
    if rows.is_empty() {
        return Err(Error::new(
            "nothing to run: give `-- CMD ARGS...`, --sh 'CMD' or --standard",
        ));
    }
    let warnings: Vec<String> = rows
        .iter()
        .filter_map(|r| bypass_warning(&r.argv))
        .collect();
    for warning in &warnings {
        eprintln!("heapkit-bench: warning: {warning}");
    }
    let cols = columns(args, &lib)?;
    let names: Vec<String> = cols.iter().map(|c| c.name().to_string()).collect();
    let baseline = args.common.baseline(&names, "native")?;
    let ReportDir {
        dir,
        name,
        started_unix,
    } = ReportDir::create(&args.common.out, args.common.name.as_deref(), "preload")?;

    let mut cells: Vec<Cell> = Vec::new();
    for row in &rows {
        for col in &cols {
            cells.push(Cell {
                allocator: col.name().to_string(),
                workload: row.label.clone(),
                threads: 1,
                samples: Vec::new(),
                errors: Vec::new(),
            });
        }
    }
    let planned = cells.len() * repetitions;
    let skeleton = Report {
        schema: SCHEMA_VERSION,
        tool: "heapkit-bench preload".to_string(),
        name,
        started_unix,
        duration_s: 0.0,
        machine: Machine::detect(),
        config: RunConfig {
            preset: "preload".to_string(),
            scale: 1.0,
            repetitions,
            allocators: names,
            workloads: rows.iter().map(|r| r.label.clone()).collect(),
            threads: vec![1],
            baseline,
            seed: 0,
            background_purge_ms: None,
            idle_ms: 0,
            descriptions: Default::default(),
        },
        cells,
        partial: None,
    };
    let mut session = Session::begin(skeleton, &dir, planned)?;
    let timeout = args.common.timeout();
    let mut extras = Vec::new();
    'reps: for rep in 0..repetitions {
        for (r, row) in rows.iter().enumerate() {
            for (k, _) in cols.iter().enumerate() {
                if session::interrupted() {
                    break 'reps;
                }
                // alternate the column order between repetitions
                let c = if rep % 2 == 0 { k } else { cols.len() - 1 - k };
                let col = &cols[c];
                if k == 0 {
                    // One unmeasured run first: the kernel finishes what the
                    // previous command left (hundreds of exited processes'
                    // teardown, written files) on the next process, and
                    // without this the first column of every row paid for
                    // it (gcc -c about 2.2x, `python3 -c pass` about 1.7x,
                    // on alternate repetitions: the first column and the
                    // last in turn).
                    session
                        .progress
                        .starting(&format!("{} settling", short(&row.label)));
                    let _ = measure(row, col, &lib, timeout);
                }
                let what = format!(
                    "{} under {} rep {}/{repetitions}",
                    short(&row.label),
                    col.name(),
                    rep + 1
                );
                session.progress.starting(&what);
                let (sample, usage, wall_s) = match measure(row, col, &lib, timeout) {
                    Ok(m) => m,
                    Err(_) if session::interrupted() => break 'reps,
                    Err(err) => {
                        session.progress.finished(&what, "failed");
                        session.progress.println(&format!("warning: {err}"));
                        session.record(r * cols.len() + c, Err(err.0));
                        continue;
                    }
                };
                extras.push(ExtraSample {
                    column: col.name().to_string(),
                    row: row.label.clone(),
                    wall_s,
                    user_s: usage.user_s,
                    sys_s: usage.sys_s,
                    peak_rss: usage.max_rss,
                    exit: usage.exit.clone(),
                });
                if usage.exit_ok {
                    session.progress.finished(&what, &fmt_seconds(wall_s));
                    session.record(r * cols.len() + c, Ok(sample));
                } else {
                    session.progress.finished(&what, &usage.exit);
                    session.record(
                        r * cols.len() + c,
                        Err(format!("repetition {}: {}", rep + 1, usage.exit)),
                    );
                }
            }
        }
    }
    let report = session.finish()?;
    let extra_text =
        serde_json::to_string_pretty(&extras).map_err(|e| Error::new(e.to_string()))?;
    write_file(&dir.join("preload.json"), &(extra_text + "\n"))?;
    let charts = charts(&report, &extras, &dir)?;
    write_file(
        &dir.join("REPORT.md"),
        &render(&report, &extras, &for_reader(&lib), &warnings, &charts),
    )?;
    println!("{}", dir.join("REPORT.md").display());
    if session::interrupted() {
        return Err(Error::new("interrupted; the partial report is written"));
    }
    let failed: usize = report.cells.iter().map(|c| c.errors.len()).sum();
    if failed > 0 {
        return Err(Error::new(format!("{failed} runs failed (see REPORT.md)")));
    }
    Ok(())
}

/// A command line as it would be typed in a shell (quoted where needed).
fn as_typed(argv: &[String]) -> String {
    shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
}

/// The first 60 characters of a label, for progress lines.
fn short(label: &str) -> String {
    if label.chars().count() <= 60 {
        label.to_string()
    } else {
        label.chars().take(57).collect::<String>() + "..."
    }
}

/// A path as the report's reader should see it: relative to the current
/// directory when inside it, else with the home directory as `~`.
fn for_reader(path: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = path.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| h.len() > 1) {
        if let Ok(rel) = path.strip_prefix(&home) {
            return format!("~/{}", rel.display());
        }
    }
    path.display().to_string()
}

/// A warning for a command whose interpreter serves most allocations from a
/// heap of its own, so the backends would barely be measured.
fn bypass_warning(argv: &[String]) -> Option<String> {
    // `sh -c '...'` rows: look at the words of the script too.
    let words: Vec<String> = if argv.len() == 3 && argv[0].ends_with("sh") && argv[1] == "-c" {
        shlex::split(&argv[2]).unwrap_or_default()
    } else {
        argv.to_vec()
    };
    let program = words
        .iter()
        .filter(|w| !w.contains('=') && *w != "exec" && *w != "env")
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .next()?;
    let set_in_command = words.iter().any(|w| w == "PYTHONMALLOC=malloc");
    let set_in_env = std::env::var("PYTHONMALLOC").is_ok_and(|v| v == "malloc");
    if program.starts_with("python") && !set_in_command && !set_in_env {
        return Some(format!(
            "`{program}` serves objects up to 512 bytes from pymalloc, not malloc: \
             run it with PYTHONMALLOC=malloc (`preload -- env PYTHONMALLOC=malloc {program} ...`) \
             or the backends are barely measured"
        ));
    }
    if ["node", "java", "ruby"].contains(&program) {
        return Some(format!(
            "`{program}` keeps most objects in its own garbage-collected heap: the \
             backends see only its native allocations"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn python_without_pythonmalloc_is_warned() {
        if std::env::var_os("PYTHONMALLOC").is_some() {
            return;
        }
        assert!(bypass_warning(&strings(&["python3", "app.py"])).is_some());
        assert!(bypass_warning(&strings(&["/usr/bin/python3.11", "-c", "1"])).is_some());
        assert!(
            bypass_warning(&strings(&["env", "PYTHONMALLOC=malloc", "python3", "a.py"])).is_none()
        );
        assert!(bypass_warning(&strings(&["/bin/sh", "-c", "exec python3 x.py"])).is_some());
        assert!(bypass_warning(&strings(&[
            "/bin/sh",
            "-c",
            "PYTHONMALLOC=malloc exec python3 x.py"
        ]))
        .is_none());
        assert!(bypass_warning(&strings(&["sqlite3", ":memory:"])).is_none());
    }

    #[test]
    fn commands_are_shown_as_typed() {
        assert_eq!(
            as_typed(&strings(&["python3", "-c", "print('a b')"])),
            r#"python3 -c "print('a b')""#
        );
        assert_eq!(
            as_typed(&strings(&["sort", "-n", "f.txt"])),
            "sort -n f.txt"
        );
    }
}
