//! Directory modes and times, set after the whole layer: creating children would bump a
//! directory's mtime (and a read-only mode would block them, without the helper's
//! `CAP_DAC_OVERRIDE`). Directories the layer names get their entries' mode and time;
//! directories it only changes get their own times back, so that only what the layer
//! describes changes (as umoci does). Keyed by canonical path.
//!
//! Memory stays bounded: when the paths kept pass [`KEPT_BYTES`], the applier has the fixes
//! kept so far set at once (see [`DirFixes::settle`]), and the directories they went to are
//! *settled*. A settled directory the layer changes afterwards has its times noted, as one it
//! never named, and put back at the end.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread;

use anyhow::{Context, Result};
use nix::sys::stat::{Mode, fchmod, futimens};
use nix::sys::time::TimeSpec;

use super::super::path::{PathSet, shown};
use crate::at;

/// Directories below this many are fixed on one thread.
const DIRS_PER_THREAD: usize = 256;

/// The bytes of paths kept before the fixes kept are set.
const KEPT_BYTES: usize = 4 << 20;

/// Who made a directory the layer is changing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Maker {
    /// This layer: its entry, if it has one, says its time.
    ThisLayer,
    /// A layer below, or not known.
    Other,
}

impl Maker {
    pub fn of(made_by_this_layer: bool) -> Maker {
        if made_by_this_layer {
            Maker::ThisLayer
        } else {
            Maker::Other
        }
    }
}

pub struct DirFixes<'a> {
    root: BorrowedFd<'a>,
    /// Directories the layer names: their entries' mode and mtime.
    named: BTreeMap<PathBuf, (u32, TimeSpec)>,
    /// Directories it changes without naming them: their times before the first change.
    changed: BTreeMap<PathBuf, (TimeSpec, TimeSpec)>,
    /// The bytes of the paths in `named` and `changed`.
    kept_bytes: usize,
    /// Directories whose fixes were set early.
    settled: PathSet,
}

impl<'a> DirFixes<'a> {
    /// Fixes for the tree at `root`.
    pub fn new(root: BorrowedFd<'a>) -> Self {
        DirFixes {
            root,
            named: BTreeMap::new(),
            changed: BTreeMap::new(),
            kept_bytes: 0,
            settled: PathSet::default(),
        }
    }

    /// The layer names the directory `path`, with this mode and mtime (the last entry wins).
    pub fn named(&mut self, path: &Path, mode: u32, mtime: TimeSpec) {
        if self
            .named
            .insert(path.to_path_buf(), (mode, mtime))
            .is_none()
        {
            self.kept_bytes += path.as_os_str().len();
        }
    }

    /// The layer is about to change the directory `path` (open as `dir`), which `maker` made:
    /// its times are noted, the first time only, unless this layer names it.
    pub fn changing(&mut self, path: &Path, dir: BorrowedFd, maker: Maker) -> io::Result<()> {
        // Most entries go into a directory of their own layer: decided without a look-up.
        if maker == Maker::ThisLayer && !self.settled.contains(path)
            || self.changed.contains_key(path)
            || self.named.contains_key(path)
        {
            return Ok(());
        }
        let st = nix::sys::stat::fstat(dir)?;
        let times = (
            TimeSpec::new(st.st_atime, st.st_atime_nsec),
            TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        );
        self.changed.insert(path.to_path_buf(), times);
        self.kept_bytes += path.as_os_str().len();
        Ok(())
    }

    /// `path` is gone, and every directory below it: their fixes must not land, at the end of
    /// the layer, on whatever the path leads to then.
    pub fn forget(&mut self, path: &Path) {
        self.kept_bytes -=
            forget_tree(&mut self.named, path) + forget_tree(&mut self.changed, path);
    }

    /// Whether the paths kept are past [`KEPT_BYTES`], for [`DirFixes::settle`].
    pub fn full(&self) -> bool {
        self.kept_bytes >= KEPT_BYTES
    }

    /// Sets what is kept now, and forgets it. Only once nothing is changing the directories
    /// kept: no file handed out may still be on its way.
    pub fn settle(&mut self) -> Result<()> {
        self.apply()?;
        for path in self.named.keys().chain(self.changed.keys()) {
            self.settled.insert(path);
        }
        self.named.clear();
        self.changed.clear();
        self.kept_bytes = 0;
        Ok(())
    }

    /// Sets the modes and times kept.
    pub fn apply(&self) -> Result<()> {
        let root = self.root;
        let named = self.named.iter().map(|(path, &(mode, mtime))| DirFix {
            path,
            mode: Some(mode),
            times: (mtime, mtime),
        });
        let changed = self.changed.iter().filter_map(|(path, &times)| {
            (!self.named.contains_key(path)).then_some(DirFix {
                path,
                mode: None,
                times,
            })
        });
        // Deepest first, so that no directory loses the search permission the path to one
        // below it needs before that one is done; that matters only where a mode takes
        // search away from anyone, and the others are spread over threads.
        let (searchable, deepest_first): (Vec<_>, Vec<_>) = named
            .chain(changed)
            .rev()
            .partition(|fix| fix.mode.is_none_or(|mode| mode & 0o111 == 0o111));
        let threads = thread::available_parallelism()
            .map_or(1, usize::from)
            .min(searchable.len().div_ceil(DIRS_PER_THREAD))
            .max(1);
        thread::scope(|scope| {
            let done: Vec<_> = searchable
                .chunks(searchable.len().div_ceil(threads).max(1))
                .map(|fixes| scope.spawn(move || fixes.iter().try_for_each(|fix| fix.apply(root))))
                .collect();
            done.into_iter()
                .try_for_each(|thread| thread.join().expect("fixing directories does not panic"))
        })?;
        deepest_first.iter().try_for_each(|fix| fix.apply(root))
    }
}

/// What the end of a layer sets on one directory.
struct DirFix<'a> {
    path: &'a Path,
    /// `None`: the mode is left alone.
    mode: Option<u32>,
    times: (TimeSpec, TimeSpec),
}

impl DirFix<'_> {
    /// Does nothing if `path` no longer leads to a directory through real directories, or is
    /// the root (whose metadata belongs to DEST).
    fn apply(&self, root: BorrowedFd) -> Result<()> {
        let path = self.path;
        let Some(dir) = reopen_dir(root, path) else {
            return Ok(());
        };
        if let Some(mode) = self.mode {
            fchmod(&dir, Mode::from_bits_truncate(mode & 0o7777))
                .with_context(|| format!("setting the mode of {}", shown(path)))?;
        }
        let (atime, mtime) = &self.times;
        futimens(&dir, atime, mtime)
            .with_context(|| format!("setting the times of {}", shown(path)))?;
        Ok(())
    }
}

/// The directory at the canonical `path`, open for reading; `None` for the root, or when the
/// path no longer leads to a directory through real ones.
fn reopen_dir(root: BorrowedFd, path: &Path) -> Option<OwnedFd> {
    if path.as_os_str().is_empty() {
        return None;
    }
    at::open_real_dir(root, path).ok()
}

/// Drops `path` and every path below it from `map`; returns the bytes of the paths dropped.
/// (Paths order by component, so those below `path` follow it directly.)
fn forget_tree<V>(map: &mut BTreeMap<PathBuf, V>, path: &Path) -> usize {
    let doomed: Vec<PathBuf> = map
        .range(path.to_path_buf()..)
        .take_while(|(below, _)| below.starts_with(path))
        .map(|(below, _)| below.clone())
        .collect();
    for below in &doomed {
        map.remove(below);
    }
    doomed.iter().map(|path| path.as_os_str().len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn forgetting_a_directory_forgets_what_is_below_it_and_nothing_else() {
        let root = std::fs::File::open("/").unwrap();
        let mut fixes = DirFixes::new(root.as_fd());
        let time = TimeSpec::new(1, 0);
        for path in ["a", "a/b", "a/b/c", "ab", "a0"] {
            fixes.named(Path::new(path), 0o755, time);
            fixes.changed.insert(PathBuf::from(path), (time, time));
            fixes.kept_bytes += path.len();
        }
        fixes.forget(Path::new("a"));
        let kept: Vec<_> = fixes.named.keys().collect();
        assert_eq!(kept, [Path::new("a0"), Path::new("ab")]);
        let kept: Vec<_> = fixes.changed.keys().collect();
        assert_eq!(kept, [Path::new("a0"), Path::new("ab")]);
        assert_eq!(fixes.kept_bytes, 8);
    }
}
