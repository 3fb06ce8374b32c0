//! A parentless layer: written into an overlay snapshot's own directory with nothing below it,
//! it records what it removes as overlayfs records it (whiteout devices, opaque directories),
//! and stops at an entry whose result depends on the layers below.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag, mknodat};

use super::super::path::shown;
use super::Applier;
use crate::at;
use strata_protocol::NeedsLowers;

impl Applier<'_> {
    /// A whiteout of `name` in the canonical directory `parent` (open as `parent_fd`): a
    /// whiteout device hides the name below; a directory of this layer keeps its own entries
    /// and hides the ones below (it becomes opaque).
    pub(super) fn record_whiteout(
        &mut self,
        parent: &Path,
        parent_fd: BorrowedFd,
        name: &OsStr,
    ) -> Result<()> {
        let target = parent.join(name);
        if self.upper.contains(&target) {
            return match at::lstat(parent_fd, name)? {
                Some(st) if at::is_dir(&st) => {
                    mark_opaque(at::open_subdir(parent_fd, name)?.as_fd(), &target)
                }
                _ => Ok(()),
            };
        }
        if !parent.as_os_str().is_empty() && !self.fresh_dirs.contains(parent) {
            return Err(needs_lowers(
                parent,
                "holds a whiteout but is not made by this layer",
            ));
        }
        match mknodat(parent_fd, name, SFlag::S_IFCHR, Mode::empty(), 0) {
            // A whiteout of the same name earlier in the layer.
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("recording whiteout {}", shown(&target)));
            }
        }
        // The name is taken now: an entry of the same name later in the layer replaces it.
        self.upper.insert(&target);
        Ok(())
    }

    /// An opaque marker in the canonical directory `dir`, which this layer must make.
    pub(super) fn record_opaque(&mut self, dir: &Path, fd: BorrowedFd) -> Result<()> {
        if !self.fresh_dirs.contains(dir) {
            return Err(needs_lowers(dir, OPAQUE_NOT_MADE));
        }
        let dir_fd =
            at::open_subdir(fd, OsStr::new(".")).context("opening the opaque directory")?;
        mark_opaque(dir_fd.as_fd(), dir)
    }
}

/// Why a parentless layer cannot record an opaque marker itself.
pub const OPAQUE_NOT_MADE: &str = "is made opaque but not made by this layer";

/// overlayfs's mark (as a rootless mount reads it) of a directory that hides the ones below.
pub fn mark_opaque(dir: BorrowedFd, path: &Path) -> Result<()> {
    at::set_xattr(dir, b"user.overlay.opaque", b"y")
        .with_context(|| format!("marking {} opaque", shown(path)))
}

pub fn needs_lowers(path: &Path, why: &str) -> anyhow::Error {
    NeedsLowers(format!("{} {why}", shown(path))).into()
}
