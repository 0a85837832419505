//! A heap profile in pprof's format (`profile.proto`, gzipped): what
//! `go tool pprof`, speedscope, Pyroscope and most profile viewers read.
//!
//! One `profile-<pid>.pb.gz` per process, with the four sample types of a
//! Go heap profile: `alloc_objects`/`alloc_space` (everything recorded) and
//! `inuse_objects`/`inuse_space` (still live at exit: the leaks; the
//! default). Every distinct symbolised stack is one sample; every distinct
//! frame one location with one line, every distinct function one function.
//! Values are exact in `--every` mode and estimates when sampled (the
//! `period` is the mean sampling interval in bytes).
//!
//! The messages are written with `prost`'s derive (the field numbers are
//! profile.proto's), so no `protoc` is needed to build.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::profile::ProfileSummary;
use crate::error::{Error, Result};

/// `perftools.profiles.Profile` (the fields heapkit writes).
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    /// What each sample value counts.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Code locations (one per distinct frame).
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Every string, referenced by index; entry 0 is "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// When the profile was written (Unix ns).
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// What `period` counts.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// Bytes per sample (1 when every allocation was recorded).
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Comments (string indices).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// The sample type viewers show first (string index of its type).
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// `perftools.profiles.ValueType`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    /// Type name (string index).
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// Unit (string index).
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `perftools.profiles.Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Location ids, innermost (the allocating call) first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per sample type.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
}

/// `perftools.profiles.Location`.
#[derive(Clone, PartialEq, Message)]
pub struct Location {
    /// Unique, non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The source lines at this location (one: inlined frames are frames
    /// of their own in heapkit's stacks).
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

/// `perftools.profiles.Line`.
#[derive(Clone, PartialEq, Message)]
pub struct Line {
    /// The function's id.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// Line number (0: unknown).
    #[prost(int64, tag = "2")]
    pub line: i64,
}

/// `perftools.profiles.Function`.
#[derive(Clone, PartialEq, Message)]
pub struct Function {
    /// Unique, non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Name (string index).
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Name as the linker knows it (string index).
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Source file (string index).
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Splits a frame as the profile report writes it, `function (file:line)`,
/// into its parts.
fn split_frame(frame: &str) -> (&str, &str, i64) {
    if let Some((function, location)) = frame.rsplit_once(" (") {
        let location = location.trim_end_matches(')');
        if let Some((file, line)) = location.rsplit_once(':') {
            if let Ok(line) = line.parse() {
                return (function, file, line);
            }
        }
        return (function, location, 0);
    }
    (frame, "", 0)
}

/// Builds the pprof profile of one process.
pub fn build(summary: &ProfileSummary, time_nanos: i64) -> Profile {
    let mut strings: Vec<String> = vec![String::new()];
    let mut string_ids: HashMap<String, i64> = HashMap::new();
    let mut intern = |s: &str| -> i64 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&i) = string_ids.get(s) {
            return i;
        }
        strings.push(s.to_string());
        let i = strings.len() as i64 - 1;
        string_ids.insert(s.to_string(), i);
        i
    };
    let sample_type = [
        "alloc_objects",
        "alloc_space",
        "inuse_objects",
        "inuse_space",
    ]
    .iter()
    .zip(["count", "bytes", "count", "bytes"])
    .map(|(t, u)| ValueType {
        r#type: intern(t),
        unit: intern(u),
    })
    .collect();
    let default_sample_type = intern("inuse_space");
    let period = summary
        .mode
        .strip_prefix("sampled ")
        .and_then(|r| r.trim().parse::<i64>().ok())
        .unwrap_or(1);
    let period_type = Some(ValueType {
        r#type: intern("space"),
        unit: intern("bytes"),
    });
    let comment = vec![intern(&format!(
        "heapkit-bench profile: process {} ({})",
        summary.pid, summary.mode
    ))];

    // Per stack: [alloc blocks, alloc bytes, live blocks, live bytes].
    let mut values: HashMap<&[String], [f64; 4]> = HashMap::new();
    for s in &summary.sites {
        let v = values.entry(s.frames.as_slice()).or_default();
        v[0] += s.blocks;
        v[1] += s.bytes;
    }
    for s in &summary.leaks {
        let v = values.entry(s.frames.as_slice()).or_default();
        v[2] += s.blocks;
        v[3] += s.bytes;
    }
    let mut stacks: Vec<(&[String], [f64; 4])> = values.into_iter().collect();
    stacks.sort_by(|a, b| b.1[1].total_cmp(&a.1[1]).then(a.0.cmp(b.0)));

    let mut functions: Vec<Function> = Vec::new();
    let mut function_ids: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: Vec<Location> = Vec::new();
    let mut location_ids: HashMap<String, u64> = HashMap::new();
    let mut samples = Vec::new();
    for (frames, v) in stacks {
        let mut ids = Vec::with_capacity(frames.len());
        for frame in frames {
            let id = match location_ids.get(frame) {
                Some(&id) => id,
                None => {
                    let (name, file, line) = split_frame(frame);
                    let key = (name.to_string(), file.to_string());
                    let function_id = match function_ids.get(&key) {
                        Some(&id) => id,
                        None => {
                            let id = functions.len() as u64 + 1;
                            let name = intern(name);
                            functions.push(Function {
                                id,
                                name,
                                system_name: name,
                                filename: intern(file),
                            });
                            function_ids.insert(key, id);
                            id
                        }
                    };
                    let id = locations.len() as u64 + 1;
                    locations.push(Location {
                        id,
                        line: vec![Line { function_id, line }],
                    });
                    location_ids.insert(frame.clone(), id);
                    id
                }
            };
            ids.push(id);
        }
        samples.push(Sample {
            location_id: ids,
            value: v.iter().map(|x| x.round() as i64).collect(),
        });
    }
    Profile {
        sample_type,
        sample: samples,
        location: locations,
        function: functions,
        string_table: strings,
        time_nanos,
        period_type,
        period,
        comment,
        default_sample_type,
    }
}

/// Writes `summary` as a gzipped pprof profile to `path`.
pub fn write(path: &Path, summary: &ProfileSummary) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let bytes = build(summary, now).encode_to_vec();
    let file = std::fs::File::create(path)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
    let mut gz = GzEncoder::new(file, Compression::default());
    gz.write_all(&bytes)
        .and_then(|()| gz.finish().map(drop))
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::profile::Site;

    fn site(frames: &[&str], bytes: f64, blocks: f64) -> Site {
        Site {
            frames: frames.iter().map(|f| f.to_string()).collect(),
            bytes,
            blocks,
        }
    }

    #[test]
    fn samples_locations_and_functions_round_trip_through_the_encoding() {
        let leak = ["leaky (src/a.c:10)", "main (src/a.c:30)"];
        let other = ["PyList_New", "main (src/a.c:31)"];
        let summary = ProfileSummary {
            pid: 7,
            mode: "sampled 524288".into(),
            leaks: vec![site(&leak, 4096.0, 4.0)],
            sites: vec![site(&leak, 8192.0, 8.0), site(&other, 100.0, 1.0)],
            ..Default::default()
        };
        let encoded = build(&summary, 1).encode_to_vec();
        let p = Profile::decode(encoded.as_slice()).unwrap();
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<_> = p
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(
            types,
            [
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes")
            ]
        );
        assert_eq!(s(p.default_sample_type), "inuse_space");
        assert_eq!(p.period, 524288);
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.sample[0].value, [8, 8192, 4, 4096]);
        assert_eq!(p.sample[1].value, [1, 100, 0, 0]);
        // The leaking stack, innermost first, back to names and lines.
        let frames: Vec<(String, i64)> = p.sample[0]
            .location_id
            .iter()
            .map(|&id| {
                let loc = &p.location[id as usize - 1];
                assert_eq!(loc.id, id);
                let f = &p.function[loc.line[0].function_id as usize - 1];
                (format!("{} {}", s(f.name), s(f.filename)), loc.line[0].line)
            })
            .collect();
        assert_eq!(
            frames,
            [
                ("leaky src/a.c".to_string(), 10),
                ("main src/a.c".to_string(), 30)
            ]
        );
        // `main` at two lines: one function, two locations.
        assert_eq!(p.location.len(), 4);
        assert_eq!(p.function.len(), 3);
    }

    #[test]
    fn frames_split_into_function_file_and_line() {
        assert_eq!(split_frame("f (a/b.c:12)"), ("f", "a/b.c", 12));
        assert_eq!(
            split_frame("<T as core::Foo>::bar (x.rs:1)"),
            ("<T as core::Foo>::bar", "x.rs", 1)
        );
        assert_eq!(split_frame("f (libfoo.so)"), ("f", "libfoo.so", 0));
        assert_eq!(split_frame("0x1234"), ("0x1234", "", 0));
    }
}
