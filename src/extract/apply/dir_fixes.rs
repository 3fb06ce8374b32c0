//! Directory modes and times, set after the whole layer: creating children would bump a
//! directory's mtime, and a read-only mode would block them. Directories the layer names get
//! their entries' mode and time; directories it only changes get their own times back, so that
//! only what the layer describes changes (as umoci does). Keyed by canonical path.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread;

use anyhow::{Context, Result};
use nix::sys::stat::{Mode, fchmod, futimens};
use nix::sys::time::TimeSpec;

use super::super::path::shown;
use crate::at;

/// Directories below this many are fixed on one thread.
const DIRS_PER_THREAD: usize = 256;

#[derive(Default)]
pub struct DirFixes {
    /// Directories the layer names: their entries' mode and mtime.
    named: BTreeMap<PathBuf, (u32, TimeSpec)>,
    /// Directories it changes without naming them: their times before the first change.
    changed: BTreeMap<PathBuf, (TimeSpec, TimeSpec)>,
}

impl DirFixes {
    /// The layer names the directory `path`, with this mode and mtime (the last entry wins).
    pub fn named(&mut self, path: &Path, mode: u32, mtime: TimeSpec) {
        self.named.insert(path.to_path_buf(), (mode, mtime));
    }

    /// The layer is about to change the directory `path` (open as `dir`): its times are
    /// noted, the first time only.
    pub fn changing(&mut self, path: &Path, dir: BorrowedFd) -> std::io::Result<()> {
        if !self.changed.contains_key(path) && !self.named.contains_key(path) {
            let st = nix::sys::stat::fstat(dir)?;
            let times = (
                TimeSpec::new(st.st_atime, st.st_atime_nsec),
                TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
            );
            self.changed.insert(path.to_path_buf(), times);
        }
        Ok(())
    }

    /// `path` is gone, and every directory below it: their fixes must not land, at the end of
    /// the layer, on whatever the path leads to then.
    pub fn forget(&mut self, path: &Path) {
        forget_tree(&mut self.named, path);
        forget_tree(&mut self.changed, path);
    }

    /// Sets the modes and times in the tree at `root`.
    pub fn apply(&self, root: BorrowedFd) -> Result<()> {
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
pub fn reopen_dir(root: BorrowedFd, path: &Path) -> Option<OwnedFd> {
    let (parent, name) = (path.parent()?, path.file_name()?);
    let parent = at::resolve_real_dir(root, parent).ok()?;
    at::open_subdir(parent.as_fd(), name).ok()
}

/// Drops `path` and every path below it from `map`. (Paths order by component, so those
/// below `path` follow it directly.)
fn forget_tree<V>(map: &mut BTreeMap<PathBuf, V>, path: &Path) {
    let doomed: Vec<PathBuf> = map
        .range(path.to_path_buf()..)
        .take_while(|(below, _)| below.starts_with(path))
        .map(|(below, _)| below.clone())
        .collect();
    for below in doomed {
        map.remove(&below);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_directory_forgets_what_is_below_it_and_nothing_else() {
        let mut fixes = DirFixes::default();
        let time = TimeSpec::new(1, 0);
        for path in ["a", "a/b", "a/b/c", "ab", "a0"] {
            fixes.named(Path::new(path), 0o755, time);
            fixes.changed.insert(PathBuf::from(path), (time, time));
        }
        fixes.forget(Path::new("a"));
        let kept: Vec<_> = fixes.named.keys().collect();
        assert_eq!(kept, [Path::new("a0"), Path::new("ab")]);
        let kept: Vec<_> = fixes.changed.keys().collect();
        assert_eq!(kept, [Path::new("a0"), Path::new("ab")]);
    }
}
