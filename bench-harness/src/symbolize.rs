//! Return addresses of a recorded process to function names, offline: the
//! process's memory map (recorded in the profile) says which file and file
//! offset an address falls in, the file's ELF load segments turn that into
//! the address the file's DWARF and symbol table use (`object`), and
//! `addr2line` finds the function (with inlined frames and file:line where
//! there is debug information, the symbol table's name otherwise).

use std::collections::HashMap;
use std::path::Path;

use object::{Object, ObjectSegment};

/// One line of `/proc/<pid>/maps` that maps a file.
#[derive(Debug, Clone)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
}

/// A loaded object file: its debug information and load segments.
struct ObjectFile {
    loader: addr2line::Loader,
    /// (file offset, file size, virtual address) of each load segment.
    segments: Vec<(u64, u64, u64)>,
}

/// One symbolised frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Function name (demangled), or `file+0xoffset` when unknown.
    pub function: String,
    /// `file:line` when debug information has it.
    pub location: Option<String>,
    /// The object file it is in.
    pub object: String,
}

/// Symbolises the addresses of one recorded process.
pub struct Symbolizer {
    maps: Vec<Mapping>,
    files: HashMap<String, Option<ObjectFile>>,
    cache: HashMap<u64, Vec<Frame>>,
}

impl Symbolizer {
    /// From the text of the process's `/proc/<pid>/maps` (later lines win
    /// for the same range: the map recorded at exit knows late libraries).
    pub fn new(maps_text: &str) -> Symbolizer {
        let mut maps: Vec<Mapping> = Vec::new();
        for line in maps_text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(_perms), Some(offset), Some(_dev), Some(_inode)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let path: String = fields.collect::<Vec<_>>().join(" ");
            if !path.starts_with('/') {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end), Ok(offset)) = (
                u64::from_str_radix(start, 16),
                u64::from_str_radix(end, 16),
                u64::from_str_radix(offset, 16),
            ) else {
                continue;
            };
            maps.push(Mapping {
                start,
                end,
                offset,
                path,
            });
        }
        Symbolizer {
            maps,
            files: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// The object file holding `addr`, if any.
    pub fn object_of(&self, addr: u64) -> Option<&str> {
        self.mapping(addr).map(|m| m.path.as_str())
    }

    fn mapping(&self, addr: u64) -> Option<&Mapping> {
        self.maps
            .iter()
            .rev()
            .find(|m| m.start <= addr && addr < m.end)
    }

    /// The frames (innermost first, inlined ones included) of the call
    /// that returns to `ret`.
    pub fn frames(&mut self, ret: u64) -> Vec<Frame> {
        if let Some(f) = self.cache.get(&ret) {
            return f.clone();
        }
        let frames = self.lookup(ret);
        self.cache.insert(ret, frames.clone());
        frames
    }

    fn lookup(&mut self, ret: u64) -> Vec<Frame> {
        // The call instruction is just before the return address.
        let addr = ret.saturating_sub(1);
        let Some(m) = self.mapping(addr).cloned() else {
            return vec![Frame {
                function: format!("{ret:#x}"),
                location: None,
                object: "?".into(),
            }];
        };
        let file_offset = addr - m.start + m.offset;
        let short = Path::new(&m.path)
            .file_name()
            .map_or(m.path.clone(), |n| n.to_string_lossy().into_owned());
        let unknown = || Frame {
            function: format!("{short}+{file_offset:#x}"),
            location: None,
            object: m.path.clone(),
        };
        let file = self
            .files
            .entry(m.path.clone())
            .or_insert_with(|| load(&m.path));
        let Some(file) = file else {
            return vec![unknown()];
        };
        let Some(svma) = file
            .segments
            .iter()
            .find(|(off, size, _)| *off <= file_offset && file_offset < off + size)
            .map(|(off, _, vaddr)| file_offset - off + vaddr)
        else {
            return vec![unknown()];
        };
        let mut out = Vec::new();
        if let Ok(mut iter) = file.loader.find_frames(svma) {
            while let Ok(Some(frame)) = iter.next() {
                let Some(function) = frame
                    .function
                    .as_ref()
                    .and_then(|f| f.demangle().ok())
                    .map(|n| n.into_owned())
                else {
                    continue;
                };
                let location = frame.location.as_ref().and_then(|l| {
                    let file = Path::new(l.file?)
                        .file_name()?
                        .to_string_lossy()
                        .into_owned();
                    Some(match l.line {
                        Some(line) => format!("{file}:{line}"),
                        None => file,
                    })
                });
                // A function inlined into itself (GCC's inline clones: the
                // debug information names both levels alike, as GNU
                // addr2line shows) is one frame to a reader: the innermost
                // level, whose line is the call.
                if out.last().is_some_and(|f: &Frame| f.function == function) {
                    continue;
                }
                out.push(Frame {
                    function,
                    location,
                    object: m.path.clone(),
                });
            }
        }
        if out.is_empty() {
            if let Some(name) = file.loader.find_symbol(svma) {
                out.push(Frame {
                    function: demangle(name),
                    location: None,
                    object: m.path.clone(),
                });
            } else {
                out.push(unknown());
            }
        }
        out
    }
}

/// A symbol-table name, demangled if it is a Rust or C++ one.
fn demangle(name: &str) -> String {
    addr2line::demangle_auto(name.into(), None).into_owned()
}

fn load(path: &str) -> Option<ObjectFile> {
    let data = std::fs::read(path).ok()?;
    let obj = object::File::parse(&*data).ok()?;
    let segments = obj
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (off, size, s.address())
        })
        .collect();
    let loader = addr2line::Loader::new(path).ok()?;
    Some(ObjectFile { loader, segments })
}
