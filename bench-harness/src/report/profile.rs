//! The heap-profile report: what a profiled program leaked and where it
//! allocated, by call stack, as a Markdown summary and flame graphs.

use std::fmt::Write as _;
use std::path::Path;

use super::markdown::fmt_mib;
use crate::error::{Error, Result};

/// One call stack's share of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Symbolised frames, innermost (the allocating call) first.
    pub frames: Vec<String>,
    /// Bytes (estimated when sampled).
    pub bytes: f64,
    /// Blocks (estimated when sampled).
    pub blocks: f64,
}

/// What one profiled process shows.
#[derive(Debug, Clone, Default)]
pub struct ProfileSummary {
    /// The profile file.
    pub file: String,
    /// Process id.
    pub pid: u32,
    /// The program the process ran (its executable's file name; empty if
    /// the profile has no memory map).
    pub program: String,
    /// `every` or `sampled <bytes>`.
    pub mode: String,
    /// Blocks still live at exit, by stack, most bytes first.
    pub leaks: Vec<Site>,
    /// Every recorded allocation, by stack, most bytes first.
    pub sites: Vec<Site>,
    /// What was live when the heap was largest, by stack.
    pub peak: Vec<Site>,
    /// The heap's largest size (bytes; estimated when sampled).
    pub peak_bytes: f64,
    /// When it was reached, from the first recorded event (ns).
    pub peak_at_ns: u64,
    /// Allocations freed by their thread before it allocated anything
    /// else, by stack.
    pub temporary: Vec<Site>,
    /// Blocks allocated in all.
    pub allocated_blocks: f64,
    /// (ns from the first event, bytes live), downsampled.
    pub timeline: Vec<(u64, f64)>,
    /// Warning from the reader (a salvaged profile).
    pub warning: Option<String>,
}

impl ProfileSummary {
    /// Total leaked bytes.
    pub fn leaked_bytes(&self) -> f64 {
        total(self.leaks.iter().map(|s| s.bytes))
    }

    /// `process PID (PROGRAM)`, or `process PID` without a program.
    fn name(&self) -> String {
        format!("process {}", self.pid_and_program())
    }

    /// `PID (PROGRAM)`, or `PID` without a program.
    fn pid_and_program(&self) -> String {
        if self.program.is_empty() {
            self.pid.to_string()
        } else {
            format!("{} ({})", self.pid, self.program)
        }
    }
}

/// The sum of `values`, 0 when there are none (`Iterator::sum` of no
/// `f64` is -0.0, which prints as "-0").
pub fn total(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, |a, b| a + b)
}

/// One line counting the processes that recorded no allocation, by
/// program (a sampled profile records none in a process that allocated
/// less than about the rate), with their ids when `with_pids`; `None` when
/// there are none.
pub fn silent_line(silent: &[ProfileSummary], with_pids: bool) -> Option<String> {
    let first = silent.first()?;
    let mut programs: Vec<(&str, Vec<u32>)> = Vec::new();
    for p in silent {
        let program = if p.program.is_empty() {
            "?"
        } else {
            p.program.as_str()
        };
        match programs.iter_mut().find(|(name, _)| *name == program) {
            Some((_, pids)) => pids.push(p.pid),
            None => programs.push((program, vec![p.pid])),
        }
    }
    let groups: Vec<String> = programs
        .iter()
        .map(|(program, pids)| {
            let mut g = program.to_string();
            if pids.len() > 1 {
                let _ = write!(g, " x{}", pids.len());
            }
            if with_pids {
                let ids: Vec<String> = pids.iter().map(u32::to_string).collect();
                let _ = write!(g, " ({})", ids.join(", "));
            }
            g
        })
        .collect();
    let hint = if first.mode == "every" {
        ""
    } else {
        " (a sampled profile records about one allocation per --rate bytes; \
          --every records all)"
    };
    Some(format!(
        "{} more {} recorded no allocation{hint}: {}",
        silent.len(),
        if silent.len() == 1 {
            "process"
        } else {
            "processes"
        },
        groups.join(", ")
    ))
}

/// A stack as one line: `inner <- caller <- ...` (first `depth` frames).
pub fn stack_line(frames: &[String], depth: usize) -> String {
    let shown: Vec<&str> = frames.iter().take(depth).map(String::as_str).collect();
    let mut line = shown.join(" <- ");
    if frames.len() > depth {
        line.push_str(" <- ...");
    }
    line
}

/// `text` with the characters Markdown would read as markup escaped (a
/// program's name such as `my_tool` in a table cell or heading).
fn markdown_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `text` as a code span for a table cell: shown as it is (a stack's
/// `<T as Trait>::f` would otherwise be read as an HTML tag, `__libc_malloc`
/// as emphasis), with `|` escaped (GitHub splits cells on it even in code).
fn markdown_code_cell(text: &str) -> String {
    let text = text.replace('|', "\\|");
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// The leak summary printed on stdout.
pub fn leak_summary(p: &ProfileSummary, top: usize) -> String {
    let mut out = String::new();
    let blocks = total(p.leaks.iter().map(|s| s.blocks));
    let estimated = if p.mode == "every" { "" } else { "~" };
    let _ = writeln!(
        out,
        "{} [{}]: leaked at exit {estimated}{} bytes ({}) in {estimated}{:.0} blocks",
        p.name(),
        p.mode,
        p.leaked_bytes().round(),
        fmt_mib(p.leaked_bytes()),
        blocks
    );
    for s in p.leaks.iter().take(top) {
        let _ = writeln!(
            out,
            "  {estimated}{:>12.0} bytes {estimated}{:>8.0} blocks  {}",
            s.bytes,
            s.blocks,
            stack_line(&s.frames, 6)
        );
    }
    let _ = writeln!(
        out,
        "  peak heap {estimated}{} at {:.3} s; temporary allocations {}",
        fmt_mib(p.peak_bytes),
        p.peak_at_ns as f64 / 1e9,
        temporary_share(p)
    );
    out
}

/// `N of M blocks (P%)` freed right after their allocation.
fn temporary_share(p: &ProfileSummary) -> String {
    let n = total(p.temporary.iter().map(|s| s.blocks));
    let share = if p.allocated_blocks > 0.0 {
        100.0 * n / p.allocated_blocks
    } else {
        0.0
    };
    format!("{n:.0} of {:.0} blocks ({share:.1}%)", p.allocated_blocks)
}

/// `REPORT.md` of a profile run: a section per process in `profiles`
/// (largest heap first), one line for the `silent` ones.
pub fn render(
    command: &str,
    profiles: &[ProfileSummary],
    silent: &[ProfileSummary],
    top: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# heapkit-bench profile\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    if profiles.len() > 1 {
        let _ = writeln!(
            out,
            "| process | program | peak heap | leaked at exit | blocks allocated |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|");
        for p in profiles {
            let _ = writeln!(
                out,
                "| [{pid}](#process-{pid}) | {} | {} | {} | {:.0} |",
                markdown_text(&p.program),
                fmt_mib(p.peak_bytes),
                fmt_mib(p.leaked_bytes()),
                p.allocated_blocks,
                pid = p.pid
            );
        }
        let _ = writeln!(out);
    }
    if let Some(line) = silent_line(silent, true) {
        let _ = writeln!(out, "{}.\n", markdown_text(&line));
    }
    for p in profiles {
        let _ = writeln!(out, "<a id=\"process-{}\"></a>\n", p.pid);
        let _ = writeln!(
            out,
            "## Process {} \\[{}\\]\n",
            markdown_text(&p.pid_and_program()),
            p.mode
        );
        if let Some(w) = &p.warning {
            let _ = writeln!(out, "> **Warning**: {w}\n");
        }
        let estimated = if p.mode == "every" {
            "exact: every allocation was recorded"
        } else {
            "estimated from sampled allocations (each stands for the bytes between samples)"
        };
        let _ = writeln!(
            out,
            "Leaked at exit: **{}** ({estimated}). Flame graphs: \
             [leaks](leaks-{pid}.svg), [allocations](allocations-{pid}.svg); \
             pprof: [profile-{pid}.pb.gz](profile-{pid}.pb.gz) \
             (`go tool pprof -http=: profile-{pid}.pb.gz`, speedscope).\n",
            fmt_mib(p.leaked_bytes()),
            pid = p.pid
        );
        let _ = writeln!(
            out,
            "Peak heap: **{}** at {:.3} s ([flame graph](peak-{pid}.svg)); the heap over \
             time: [timeline-{pid}.svg](timeline-{pid}.svg). Temporary allocations (freed \
             by their thread before it allocated anything else): {}.\n",
            fmt_mib(p.peak_bytes),
            p.peak_at_ns as f64 / 1e9,
            temporary_share(p),
            pid = p.pid
        );
        let peak_title = format!("Live at the peak ({}), by stack", fmt_mib(p.peak_bytes));
        for (title, sites) in [
            ("Live at exit (leaks), by stack", &p.leaks),
            (peak_title.as_str(), &p.peak),
            ("Allocated, by stack (top sites by bytes)", &p.sites),
            ("Temporary allocations, by stack", &p.temporary),
        ] {
            let _ = writeln!(out, "### {title}\n");
            if sites.is_empty() {
                let _ = writeln!(out, "None.\n");
                continue;
            }
            let _ = writeln!(out, "| bytes | blocks | stack (allocating call first) |");
            let _ = writeln!(out, "|---:|---:|---|");
            for s in sites.iter().take(top) {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {} |",
                    fmt_mib(s.bytes),
                    s.blocks,
                    markdown_code_cell(&stack_line(&s.frames, 8))
                );
            }
            let _ = writeln!(out);
        }
        let mut by_count = p.sites.clone();
        by_count.sort_by(|a, b| b.blocks.total_cmp(&a.blocks));
        let _ = writeln!(out, "### Allocated, by stack (top sites by count)\n");
        let _ = writeln!(out, "| blocks | bytes | stack |");
        let _ = writeln!(out, "|---:|---:|---|");
        for s in by_count.iter().take(top) {
            let _ = writeln!(
                out,
                "| {:.0} | {} | {} |",
                s.blocks,
                fmt_mib(s.bytes),
                markdown_code_cell(&stack_line(&s.frames, 8))
            );
        }
        let _ = writeln!(out);
    }
    out
}

/// A line chart of the heap's size over time into `path`.
pub fn timeline_chart(path: &Path, p: &ProfileSummary) -> Result<()> {
    use plotters::prelude::*;
    let end = p.timeline.last().map_or(1, |t| t.0).max(1) as f64 / 1e9;
    let top = p.timeline.iter().map(|t| t.1).fold(1.0, f64::max) / (1 << 20) as f64;
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Heap over time, process {}", p.pid),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..end, 0.0..top * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first allocation")
            .y_desc("MiB live")
            .light_line_style(WHITE)
            .draw()?;
        // A step line: the heap keeps its size until the next event.
        let mut steps = Vec::with_capacity(2 * p.timeline.len());
        let mut previous = 0.0;
        for &(ns, bytes) in &p.timeline {
            let (t, mib) = (ns as f64 / 1e9, bytes / (1 << 20) as f64);
            steps.push((t, previous));
            steps.push((t, mib));
            previous = mib;
        }
        chart.draw_series(LineSeries::new(
            steps,
            super::svg::colour_of("sizeclass").stroke_width(2),
        ))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::new(format!("timeline {}: {e}", path.display())))
}

/// A flame graph SVG of `sites` (bytes) into `path`.
pub fn flame_graph(path: &Path, title: &str, sites: &[Site]) -> Result<()> {
    // inferno reads "root;...;leaf count" lines: outermost frame first.
    let lines: Vec<String> = sites
        .iter()
        .filter(|s| s.bytes >= 1.0)
        .map(|s| {
            let stack: Vec<String> = s.frames.iter().rev().map(|f| f.replace(';', ":")).collect();
            format!("{} {}", stack.join(";"), s.bytes.round() as u64)
        })
        .collect();
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "bytes".to_string();
    let file = std::fs::File::create(path)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
    if lines.is_empty() {
        use std::io::Write;
        let mut file = file;
        return writeln!(
            file,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="600" height="40"><text x="10" y="25">{title}: nothing recorded</text></svg>"#
        )
        .map_err(|e| Error::new(e.to_string()));
    }
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), file)
        .map_err(|e| Error::new(format!("flame graph {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, program: &str, mode: &str) -> ProfileSummary {
        ProfileSummary {
            pid,
            program: program.into(),
            mode: mode.into(),
            ..Default::default()
        }
    }

    #[test]
    fn silent_processes_are_counted_by_program() {
        assert_eq!(silent_line(&[], false), None);
        let silent = [
            process(3, "bash", "sampled 524288"),
            process(4, "readlink", "sampled 524288"),
            process(5, "bash", "sampled 524288"),
        ];
        let line = silent_line(&silent, false).unwrap();
        assert!(line.starts_with("3 more processes recorded no allocation (a sampled"));
        assert!(line.ends_with(": bash x2, readlink"), "{line}");
        let line = silent_line(&silent, true).unwrap();
        assert!(line.ends_with(": bash x2 (3, 5), readlink (4)"), "{line}");
        let line = silent_line(&[process(9, "", "every")], true).unwrap();
        assert_eq!(line, "1 more process recorded no allocation: ? (9)");
    }

    #[test]
    fn an_empty_profile_reads_zero_and_none() {
        let p = process(7, "app", "every");
        assert_eq!(p.leaked_bytes().to_string(), "0");
        let summary = leak_summary(&p, 5);
        assert!(!summary.contains("-0"), "{summary}");
        assert!(summary.starts_with("process 7 (app) [every]: leaked at exit 0 bytes"));
        let mut other = process(8, "tool", "every");
        other.allocated_blocks = 1.0;
        let md = render("app", &[p, other], &[process(9, "sh", "every")], 5);
        assert!(!md.contains("-0"), "{md}");
        assert!(md.contains("| [7](#process-7) | app |"), "{md}");
        assert!(md.contains("## Process 7 (app) \\[every\\]"), "{md}");
        assert!(
            md.contains("### Live at exit (leaks), by stack\n\nNone.\n"),
            "{md}"
        );
        assert!(
            md.contains("1 more process recorded no allocation: sh (9)."),
            "{md}"
        );
    }

    #[test]
    fn markdown_shows_names_and_stacks_as_they_are() {
        assert_eq!(markdown_text("my_tool [x]"), "my\\_tool \\[x\\]");
        let stack = "<T as Clone>::clone <- __libc_malloc | x";
        assert_eq!(
            markdown_code_cell(stack),
            "`<T as Clone>::clone <- __libc_malloc \\| x`"
        );
        assert_eq!(markdown_code_cell("a`b"), "`` a`b ``");
        let mut p = process(7, "my_tool", "every");
        p.sites = vec![Site {
            frames: vec!["<T as Clone>::clone".into(), "__libc_malloc".into()],
            bytes: 64.0,
            blocks: 1.0,
        }];
        let md = render("app", &[p, process(8, "b", "every")], &[], 5);
        assert!(md.contains("| my\\_tool |"), "{md}");
        assert!(
            md.contains("| `<T as Clone>::clone <- __libc_malloc` |"),
            "{md}"
        );
    }
}
