//! A measuring session: what `run`, `replay` and `preload` share around their
//! loops, so that each behaves the same when it is watched, interrupted or
//! stuck.
//!
//! - **Progress**: a bar on a terminal; one line per finished sample when
//!   stderr is not a terminal (CI logs, `| tee`).
//! - **Children**: every measured process runs in its own process group
//!   ([`Supervised`]), dies with the harness (`PR_SET_PDEATHSIG`), and is
//!   killed with its whole group when it outlives `--timeout` or when the
//!   harness gets SIGINT, SIGTERM or SIGHUP.
//! - **Samples survive**: each sample is appended to `samples.jsonl` in the
//!   report directory as it finishes; an interrupted run still writes its
//!   report from what it has (marked partial), and a harness killed outright
//!   leaves the journal, which [`crate::report::json::read`] turns back into
//!   a report.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::report::{self, Report, Sample};

/// The default `--timeout`: a cell or command running longer is killed.
pub const DEFAULT_TIMEOUT_S: u64 = 600;

/// Set by the signal handler; the loops stop at the next sample.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Process group of the child being measured (0: none).
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(_sig: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // Second signal: the user means it.
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(130) };
    }
    let group = CHILD_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: kill is async-signal-safe; `group` is the process group
        // of a child we spawned with process_group(0) and have not reaped.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

/// Installs the SIGINT/SIGTERM/SIGHUP handler (idempotent).
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` only touches atomics and calls async-signal-safe
        // functions; a zeroed sigaction with an empty mask is valid.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// True once SIGINT, SIGTERM or SIGHUP arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Prepares `command` to run supervised: its own process group (so a kill
/// reaches everything it starts), killed if the harness dies.
pub fn supervise(command: &mut Command) -> &mut Command {
    command.process_group(0);
    // SAFETY: the closure runs between fork and exec and calls only prctl,
    // which is async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    };
    command
}

/// A running supervised child: registered for the signal handler, with a
/// watchdog thread that kills its process group at the deadline.
pub struct Supervised {
    pid: i32,
    wake: Option<mpsc::Sender<()>>,
    watchdog: Option<JoinHandle<bool>>,
}

/// How a supervised child ended, beyond its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It ended by itself.
    Finished,
    /// The watchdog killed it at the deadline.
    TimedOut,
    /// The harness was interrupted and killed it.
    Interrupted,
}

impl Supervised {
    /// Starts watching `child` (spawned after [`supervise`]).
    pub fn watch(child: &Child, timeout: Duration) -> Supervised {
        let pid = child.id() as i32;
        CHILD_GROUP.store(pid, Ordering::SeqCst);
        if interrupted() {
            // The signal came between spawn and here.
            // SAFETY: pid is our unreaped child and leader of its group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let (wake, sleep) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = sleep.recv_timeout(timeout) {
                // SAFETY: the child has not been reaped yet (the owner
                // disarms the watchdog right after reaping, so at worst the
                // group is gone and kill fails with ESRCH).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                true
            } else {
                false
            }
        });
        Supervised {
            pid,
            wake: Some(wake),
            watchdog: Some(watchdog),
        }
    }

    /// Stops watching (call right after the child was reaped) and says why
    /// it ended.
    pub fn finish(mut self) -> Ending {
        self.stop()
    }

    fn stop(&mut self) -> Ending {
        let _ = CHILD_GROUP.compare_exchange(self.pid, 0, Ordering::SeqCst, Ordering::SeqCst);
        drop(self.wake.take());
        let timed_out = self
            .watchdog
            .take()
            .is_some_and(|t| t.join().unwrap_or(false));
        if timed_out {
            Ending::TimedOut
        } else if interrupted() {
            Ending::Interrupted
        } else {
            Ending::Finished
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.stop();
        }
    }
}

/// The one-line error for a child that did not finish by itself.
pub fn ending_error(ending: Ending, what: &str, timeout: Duration) -> Option<Error> {
    match ending {
        Ending::Finished => None,
        Ending::TimedOut => Some(Error::new(format!(
            "`{what}` killed after {} s (--timeout)",
            timeout.as_secs()
        ))),
        Ending::Interrupted => Some(Error::new(format!("`{what}` killed: interrupted"))),
    }
}

/// Progress of a session: a bar on a terminal, else one line per sample.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    start: Instant,
}

impl Progress {
    /// A progress display for `total` samples.
    pub fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} samples  ETA {eta}  {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            start: Instant::now(),
        }
    }

    /// Says what is about to run (shown on the bar only).
    pub fn starting(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_string());
        }
    }

    /// Records one finished sample: `what` and its `outcome` in a few words.
    pub fn finished(&mut self, what: &str, outcome: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None => {
                let secs = self.start.elapsed().as_secs();
                eprintln!(
                    "heapkit-bench: [{}/{} {}:{:02}] {what}: {outcome}",
                    self.done,
                    self.total,
                    secs / 60,
                    secs % 60
                );
            }
        }
    }

    /// Prints a line above the bar (or just prints it).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The journal file's name in a report directory.
pub const JOURNAL: &str = "samples.jsonl";

/// One journal line after the header.
#[derive(Serialize)]
struct JournalLine<'a> {
    cell: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample: Option<&'a Sample>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// A report being filled sample by sample, journaled as it goes.
pub struct Session {
    /// The report: cells planned, samples arriving.
    pub report: Report,
    /// What the user sees of it.
    pub progress: Progress,
    dir: PathBuf,
    journal: Option<File>,
    start: Instant,
    planned: usize,
}

impl Session {
    /// Starts a session on `report` (cells created, no samples) writing to
    /// `dir`; `planned` is the number of samples the loops will take (the
    /// progress display counts to it).
    pub fn begin(report: Report, dir: &Path, planned: usize) -> Result<Session> {
        catch_interrupts();
        let path = dir.join(JOURNAL);
        let mut journal = File::create(&path)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", path.display())))?;
        let header =
            serde_json::to_string(&report).map_err(|e| Error::new(format!("journal: {e}")))?;
        writeln!(journal, "{header}")
            .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
        Ok(Session {
            report,
            progress: Progress::new(planned),
            dir: dir.to_path_buf(),
            journal: Some(journal),
            start: Instant::now(),
            planned,
        })
    }

    /// Adds the outcome of one repetition of cell `cell` and journals it.
    pub fn record(&mut self, cell: usize, outcome: std::result::Result<Sample, String>) {
        let line = match &outcome {
            Ok(sample) => JournalLine {
                cell,
                sample: Some(sample),
                error: None,
            },
            Err(err) => JournalLine {
                cell,
                sample: None,
                error: Some(err),
            },
        };
        if let (Some(file), Ok(text)) = (&mut self.journal, serde_json::to_string(&line)) {
            // A failed journal write only loses crash-safety, not the run.
            if writeln!(file, "{text}").is_err() {
                self.journal = None;
            }
        }
        let target = &mut self.report.cells[cell];
        match outcome {
            Ok(sample) => target.samples.push(sample),
            Err(err) => target.errors.push(err),
        }
    }

    /// Samples (and errors) recorded so far.
    pub fn recorded(&self) -> usize {
        self.report
            .cells
            .iter()
            .map(|c| c.samples.len() + c.errors.len())
            .sum()
    }

    /// Closes the session: sets the duration, marks the report partial when
    /// the loops stopped early, writes `results.json` and removes the
    /// journal. Returns the report, for the caller to render.
    pub fn finish(mut self) -> Result<Report> {
        self.progress.finish();
        self.report.duration_s = self.start.elapsed().as_secs_f64();
        let recorded = self.recorded();
        if recorded < self.planned {
            self.report.partial = Some(format!(
                "{}: {recorded} of {} samples were taken",
                if interrupted() {
                    "interrupted"
                } else {
                    "stopped early"
                },
                self.planned
            ));
        }
        report::json::write(&self.report, &self.dir.join("results.json"))?;
        drop(self.journal.take());
        let _ = std::fs::remove_file(self.dir.join(JOURNAL));
        Ok(self.report)
    }
}
