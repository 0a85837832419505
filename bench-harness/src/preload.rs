//! `heapkit-bench preload`: runs an unmodified program under every backend
//! of `libheapkit.so` and tabulates wall time, user/sys CPU time and peak
//! RSS, with ratios to a baseline.
//!
//! ```sh
//! cargo build --release -p heapkit-shim -p heapkit-bench
//! heapkit-bench preload --reps 5 -- python3 tests/preload/alloc_heavy.py
//! heapkit-bench preload --backends sizeclass,mimalloc \
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

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::report::markdown::{fmt_mib, fmt_seconds};
use crate::report::{
    self, Cell, ClockInfo, Machine, Report, ReportDir, RunConfig, Sample, SCHEMA_VERSION,
};
use crate::run::utc_stamp;
use crate::stats::{geometric_mean, median};

/// Options of `preload`.
#[derive(Args, Debug, Clone)]
pub struct PreloadArgs {
    /// Comma-separated columns: backends of libheapkit.so, `native`,
    /// `jemalloc-so`, `mimalloc-so` (default: every backend the library
    /// accepts, then the extra columns that are available).
    #[arg(long, value_delimiter = ',')]
    pub backends: Vec<String>,
    /// Repetitions (fresh processes) per column and command.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Column the ratios are relative to.
    #[arg(long, default_value = "mimalloc")]
    pub baseline: String,
    /// Path of libheapkit.so (default: see `locate`: $HEAPKIT_LIB, beside this
    /// executable, ../lib, or built in the source tree).
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
    /// built with `cc` beside this executable, as rows. Without
    /// `--backends`, leaves `bump` out (it never reuses memory: these
    /// programs would exhaust it).
    #[arg(long)]
    pub standard: bool,
    /// Report directory name under --out (default: preload-<UTC date-time>).
    #[arg(long)]
    pub name: Option<String>,
    /// Parent directory of report directories.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
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
    /// No preload at all.
    Native,
    /// `LD_PRELOAD=path` (a real allocator library).
    Library(String, &'static str),
}

impl Column {
    fn name(&self) -> &str {
        match self {
            Column::Backend(n) | Column::Library(n, _) => n,
            Column::Native => "native",
        }
    }
}

/// One row: what runs and how it is labelled.
struct Row {
    label: String,
    argv: Vec<String>,
}

/// The extra measurements of one sample, kept in `preload.json`.
#[derive(Debug, Clone, Serialize)]
struct ExtraSample {
    column: String,
    row: String,
    wall_s: f64,
    user_s: f64,
    sys_s: f64,
    peak_rss: u64,
    exit: String,
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
    if args.backends.is_empty() {
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
    args.backends
        .iter()
        .map(|b| {
            if accepted.contains(b) {
                return Ok(Column::Backend(b.clone()));
            }
            match extra(b) {
                Some(Column::Library(_, path)) if !Path::new(path).exists() => Err(Error::new(
                    format!("{b}: {path} is not installed (apt-get install libjemalloc2 libmimalloc2.0)"),
                )),
                Some(c) => Ok(c),
                None => Err(Error::new(format!(
                    "unknown column {b:?}; accepted: {}, native, jemalloc-so, mimalloc-so",
                    accepted.join(", ")
                ))),
            }
        })
        .collect()
}

/// Runs `row` once under `column`.
fn measure(row: &Row, column: &Column, lib: &Path) -> Result<(Sample, Usage, f64)> {
    let (program, rest) = row
        .argv
        .split_first()
        .ok_or_else(|| Error::new("empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("HEAPKIT_STATS");
    match column {
        Column::Backend(b) => cmd.env("LD_PRELOAD", lib).env("HEAPKIT_ALLOC", b),
        Column::Native => cmd.env_remove("LD_PRELOAD"),
        Column::Library(_, path) => cmd.env("LD_PRELOAD", path),
    };
    let start = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {program}: {e}")))?;
    let usage = wait4(child.id())?;
    let wall = start.elapsed();
    // The child is reaped; dropping the handle does not wait again.
    drop(child);
    let sample = Sample {
        wall_ns: wall.as_nanos() as u64,
        ops: 0,
        latency: Vec::new(),
        rss_start: 0,
        rss_end: 0,
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

/// Runs every row under every column, `reps` times, and writes the report.
pub fn preload(args: &PreloadArgs) -> Result<()> {
    if args.reps == 0 {
        return Err(Error::new("--reps must be at least 1"));
    }
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
            label: args.command.join(" "),
            argv: args.command.clone(),
        });
    }
    if rows.is_empty() {
        return Err(Error::new(
            "nothing to run: give `-- CMD ARGS...`, --sh 'CMD' or --standard",
        ));
    }
    let cols = columns(args, &lib)?;
    if !cols.iter().any(|c| c.name() == args.baseline) {
        return Err(Error::new(format!(
            "baseline {:?} is not one of the columns",
            args.baseline
        )));
    }
    let ReportDir {
        dir,
        name,
        started_unix,
    } = ReportDir::create(&args.out, args.name.as_deref(), "preload")?;

    let start = Instant::now();
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
    let mut extras = Vec::new();
    for rep in 0..args.reps {
        for (r, row) in rows.iter().enumerate() {
            for (c, col) in cols.iter().enumerate() {
                eprintln!(
                    "heapkit-bench: preload {:?} under {} ({}/{})",
                    row.label,
                    col.name(),
                    rep + 1,
                    args.reps
                );
                let cell = &mut cells[r * cols.len() + c];
                let (sample, usage, wall_s) = measure(row, col, &lib)?;
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
                    cell.samples.push(sample);
                } else {
                    eprintln!(
                        "warning: {} under {}: {}",
                        row.label,
                        col.name(),
                        usage.exit
                    );
                    cell.errors
                        .push(format!("repetition {}: {}", rep + 1, usage.exit));
                }
            }
        }
    }
    let report = Report {
        schema: SCHEMA_VERSION,
        tool: "heapkit-bench preload".to_string(),
        name,
        started_unix,
        duration_s: start.elapsed().as_secs_f64(),
        machine: Machine::detect(),
        config: RunConfig {
            preset: "preload".to_string(),
            scale: 1.0,
            repetitions: args.reps,
            allocators: cols.iter().map(|c| c.name().to_string()).collect(),
            workloads: rows.iter().map(|r| r.label.clone()).collect(),
            threads: vec![1],
            baseline: args.baseline.clone(),
            seed: 0,
        },
        cells,
    };
    report::json::write(&report, &dir.join("results.json"))?;
    let extra_text =
        serde_json::to_string_pretty(&extras).map_err(|e| Error::new(e.to_string()))?;
    write_file(&dir.join("preload.json"), &(extra_text + "\n"))?;
    let charts = charts(&report, &extras, &dir)?;
    write_file(
        &dir.join("REPORT.md"),
        &render(&report, &extras, &lib, &charts),
    )?;
    println!("{}", dir.join("REPORT.md").display());
    let failed: usize = report.cells.iter().map(|c| c.errors.len()).sum();
    if failed > 0 {
        return Err(Error::new(format!("{failed} runs failed (see REPORT.md)")));
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))
}

/// The median of one measurement for (row, column), over its successful
/// repetitions.
fn median_of(
    extras: &[ExtraSample],
    row: &str,
    col: &str,
    f: fn(&ExtraSample) -> f64,
) -> Option<f64> {
    let v: Vec<f64> = extras
        .iter()
        .filter(|e| e.row == row && e.column == col && e.exit == "exit 0")
        .map(f)
        .collect();
    median(&v)
}

/// A table of REPORT.md: title, note, the measurement, its formatting.
type Metric = (
    &'static str,
    &'static str,
    fn(&ExtraSample) -> f64,
    fn(f64) -> String,
);

/// The measurements REPORT.md tabulates.
const METRICS: &[Metric] = &[
    (
        "Wall time",
        "median; ratio lower is better",
        |e| e.wall_s,
        fmt_seconds,
    ),
    (
        "User CPU time",
        "of the child and its waited-for children",
        |e| e.user_s,
        fmt_seconds,
    ),
    ("System CPU time", "", |e| e.sys_s, fmt_seconds),
    (
        "Peak RSS",
        "ru_maxrss of the child (largest process); ratio lower is better",
        |e| e.peak_rss as f64,
        fmt_mib,
    ),
];

fn render(
    report: &Report,
    extras: &[ExtraSample],
    lib: &Path,
    charts: &[(String, String)],
) -> String {
    let c = &report.config;
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# heapkit-bench preload: {}\n", report.name);
    let _ = writeln!(
        out,
        "Each command ran {} times under each column (a fresh process each time, columns alternating), \
         with `LD_PRELOAD={}` and `HEAPKIT_ALLOC=<column>`; `native` has no preload, `jemalloc-so` / \
         `mimalloc-so` preload Debian's libraries. Started {} UTC, took {:.0} s. Ratios are to **{}**; \
         all values are medians.\n",
        c.repetitions,
        lib.display(),
        utc_stamp(report.started_unix),
        report.duration_s,
        c.baseline
    );
    let _ = writeln!(out, "| machine | |\n|---|---|");
    let _ = writeln!(out, "| CPU | {} ({} logical cores) |", m.cpu_model, m.cores);
    let _ = writeln!(out, "| kernel | {} |", m.kernel);
    let _ = writeln!(out, "| git commit | `{}` |\n", m.git_commit);
    let _ = writeln!(
        out,
        "The machine may be shared: compare columns *within* this run (the ratios).\n"
    );
    for (title, note, f, format) in METRICS {
        let _ = writeln!(out, "## {title}\n");
        if !note.is_empty() {
            let _ = writeln!(out, "{note}\n");
        }
        let _ = writeln!(out, "| command | {} |", c.allocators.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(c.allocators.len()));
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); c.allocators.len()];
        for row in &c.workloads {
            let base = median_of(extras, row, &c.baseline, *f);
            let _ = write!(out, "| `{row}` |");
            for (i, col) in c.allocators.iter().enumerate() {
                match median_of(extras, row, col, *f) {
                    Some(v) => {
                        let ratio = base.filter(|b| *b > 0.0).map(|b| v / b);
                        if let Some(r) = ratio {
                            ratios[i].push(r);
                        }
                        let r = ratio.map_or("-".to_string(), |r| format!("{r:.2}"));
                        let _ = write!(out, " {} ({r}) |", format(v));
                    }
                    None => {
                        let _ = write!(out, " failed |");
                    }
                }
            }
            let _ = writeln!(out);
        }
        let _ = write!(out, "| **geometric mean of ratios** |");
        for r in &ratios {
            let g = geometric_mean(r).map_or("-".to_string(), |g| format!("{g:.2}"));
            let _ = write!(out, " **{g}** |");
        }
        let _ = writeln!(out, "\n");
    }
    for (file, caption) in charts {
        let _ = writeln!(out, "![{caption}]({file})\n");
    }
    let failures: Vec<String> = report
        .cells
        .iter()
        .flat_map(|cell| {
            cell.errors
                .iter()
                .map(move |e| format!("- {} `{}`: {e}", cell.allocator, cell.workload))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "## Failures\n\n{}\n", failures.join("\n"));
    }
    let _ = writeln!(
        out,
        "## Method\n\n- Wall time: `Instant` from spawn to reap. User/system time, peak RSS \
         (`ru_maxrss`) and minor faults: `wait4` on the child, which covers the child and the \
         descendants it waited for (peak RSS is that of the largest single process).\n\
         - Raw samples: `results.json` (the harness's report model; `compare` reads it) and \
         `preload.json` (user/sys time and exit status of every run).\n"
    );
    out
}

fn charts(report: &Report, extras: &[ExtraSample], dir: &Path) -> Result<Vec<(String, String)>> {
    let c = &report.config;
    let groups: Vec<String> = c
        .workloads
        .iter()
        .map(|w| w.chars().take(40).collect())
        .collect();
    let series = |f: fn(&ExtraSample) -> f64, relative: bool| -> Vec<report::svg::Series> {
        c.allocators
            .iter()
            .map(|col| {
                let vals = c
                    .workloads
                    .iter()
                    .map(|row| {
                        let v = median_of(extras, row, col, f)?;
                        if relative {
                            Some(v / median_of(extras, row, &c.baseline, f)?)
                        } else {
                            Some(v)
                        }
                    })
                    .collect();
                (col.clone(), vals)
            })
            .collect()
    };
    let mut written = Vec::new();
    let title = format!("Wall time relative to {} (lower is better)", c.baseline);
    report::svg::grouped_bars(
        &dir.join("time.svg"),
        &title,
        "time / baseline",
        &groups,
        &series(|e| e.wall_s, true),
        true,
    )?;
    written.push(("time.svg".to_string(), title));
    let title = "Peak RSS (MiB, lower is better)".to_string();
    report::svg::grouped_bars(
        &dir.join("peak-rss.svg"),
        &title,
        "MiB",
        &groups,
        &series(|e| e.peak_rss as f64 / (1024.0 * 1024.0), false),
        false,
    )?;
    written.push(("peak-rss.svg".to_string(), title));
    Ok(written)
}
