//! Hardlinks: linking to a file of this layer or of one below, and keeping a lower layer's
//! link group one inode when overlayfs splits it.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::AtFlags;
use nix::sys::stat::FileStat;
use nix::unistd::linkat;

use super::super::path::shown;
use super::super::resolve::Missing;
use super::dir_fixes::Maker;
use super::parentless::needs_lowers;
use super::{Applier, Located};
use crate::at;

/// Paths of multiply-linked files by (device, inode).
pub type LinkGroups = HashMap<(u64, u64), Vec<PathBuf>>;

impl Applier<'_> {
    /// Links the canonical `path` (named in `parent`) to the file the layer names `target`.
    pub(super) fn hardlink(
        &mut self,
        parent: BorrowedFd,
        path: &Path,
        target: &Path,
    ) -> Result<()> {
        let name = path
            .file_name()
            .expect("entries below the root have a name");
        let (Some(target_parent), Some(target_name)) = (target.parent(), target.file_name()) else {
            bail!("hardlink to the root directory");
        };
        let missing = || format!("hardlink target {} does not exist", shown(target));
        let from_below =
            |target: &Path| needs_lowers(target, "is a hardlink target from a layer below");
        let parentless = self.tree.is_parentless();
        let (target_parent, target_dir) = match self.locate(target_parent, Missing::Stop) {
            Ok(Located::Dir { path, fd }) => (path, fd),
            Ok(Located::Missing) | Err(_) if parentless => return Err(from_below(target)),
            Ok(Located::Missing) => bail!(missing()),
            Err(err) => return Err(err.context(missing())),
        };
        let target = target_parent.join(target_name);
        if parentless && !self.upper.contains(&target) {
            return Err(from_below(&target));
        }
        self.overlay_looked_in(&target_parent);
        self.overlay_looked_in(path.parent().unwrap_or(Path::new("")));
        // A parentless layer's own whiteout is a device recording a removal: as on a tree
        // with its lower layers, what it removed is not there to link to.
        let target_st = match at::lstat(target_dir.as_fd(), target_name)? {
            Some(st) if !(self.tree.is_parentless() && at::is_whiteout(&st)) => st,
            _ => bail!(missing()),
        };
        if at::is_dir(&target_st) {
            bail!("hardlink target {} is a directory", shown(&target));
        }
        if let Some(existing) = at::lstat(parent, name)? {
            if (existing.st_dev, existing.st_ino) == (target_st.st_dev, target_st.st_ino) {
                return Ok(());
            }
            self.replace(parent, path)?;
        }
        // Flags 0: the target's last component is linked as is, never followed.
        linkat(
            target_dir.as_fd(),
            target_name,
            parent,
            name,
            AtFlags::empty(),
        )
        .with_context(|| format!("linking to {}", shown(&target)))?;
        let old = (target_st.st_dev, target_st.st_ino);
        if target_st.st_nlink > 1
            && let Some(now) = at::lstat(target_dir.as_fd(), target_name)?
            && (now.st_dev, now.st_ino) != old
        {
            self.rejoin_link_group(old, &target)?;
        }
        Ok(())
    }

    /// Applied through overlayfs, a link to a file of a lower layer copies that file up, which
    /// splits it from its other names there. Those names are linked again to the copy, so the
    /// group stays one inode, as on a plain filesystem (and under the native snapshotter).
    fn rejoin_link_group(&mut self, old: (u64, u64), target: &Path) -> Result<()> {
        self.parent_cache = None;
        let others = self
            .lower_link_group(old, target)
            .context("listing the hardlinks of lower layers")?;
        let (target_parent, target_name) = (
            target.parent().unwrap_or(Path::new("")),
            target.file_name().unwrap_or_default(),
        );
        let root = self.tree.root();
        let target_dir = at::resolve_real_dir(root, target_parent)?;
        for path in others {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let Ok(dir) = at::resolve_real_dir(root, parent) else {
                continue;
            };
            // Only names still on the old inode: this layer may have replaced some.
            match at::lstat(dir.as_fd(), name)? {
                Some(st) if (st.st_dev, st.st_ino) == old => {}
                _ => continue,
            }
            // Relinking touches a directory the layer may not name: its times are kept.
            self.dir_fixes.changing(parent, dir.as_fd(), Maker::Other)?;
            at::remove_all(dir.as_fd(), name)?;
            linkat(
                target_dir.as_fd(),
                target_name,
                dir.as_fd(),
                name,
                AtFlags::empty(),
            )
            .with_context(|| format!("relinking {} to {}", shown(&path), shown(target)))?;
        }
        Ok(())
    }

    /// The names that shared the lower file `target` (inode `old` as the tree showed it). They
    /// are all in the one lower layer that holds the file, where they share its inode: that
    /// layer alone is read, directly, when it can be told; else the whole tree is.
    fn lower_link_group(&mut self, old: (u64, u64), target: &Path) -> Result<Vec<PathBuf>> {
        let (layer, key) = match self.layer_holding(target)? {
            Some((layer, st)) => (Some(layer), (st.st_dev, st.st_ino)),
            None => (None, old),
        };
        if !self.link_groups.contains_key(&layer) {
            let dir = layer.map_or(self.tree.root(), |index| self.tree.lowers()[index]);
            self.link_groups.insert(layer, find_link_groups(dir)?);
        }
        Ok(self.link_groups[&layer]
            .get(&key)
            .cloned()
            .unwrap_or_default())
    }

    /// The lower layer whose file the overlay shows at `target`: the topmost one with an entry
    /// there (a higher one hiding it would hide it from the overlay too). `None` when that
    /// cannot be told so simply: no lowers, or a symlink or whiteout on the way.
    fn layer_holding(&self, target: &Path) -> Result<Option<(usize, FileStat)>> {
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Ok(None);
        };
        for (index, &layer) in self.tree.lowers().iter().enumerate() {
            let dir = match at::resolve_real_dir(layer, parent) {
                Ok(dir) => dir,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(_) => return Ok(None),
            };
            match at::lstat(dir.as_fd(), name)? {
                None => continue,
                Some(st) if at::is_dir(&st) || at::is_whiteout(&st) => return Ok(None),
                Some(st) => return Ok(Some((index, st))),
            }
        }
        Ok(None)
    }
}

/// Every multiply-linked non-directory in the tree at `root`, grouped by inode. Directories
/// are opened one at a time, by path: any depth costs two fds.
fn find_link_groups(root: BorrowedFd) -> Result<LinkGroups> {
    let mut groups = LinkGroups::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(path) = dirs.pop() {
        let dir = at::open_real_dir(root, &path)?;
        for name in at::list(dir.as_fd())? {
            let Some(st) = at::lstat(dir.as_fd(), &name)? else {
                continue;
            };
            let child = path.join(&name);
            if at::is_dir(&st) {
                dirs.push(child);
            } else if st.st_nlink > 1 {
                groups
                    .entry((st.st_dev, st.st_ino))
                    .or_default()
                    .push(child);
            }
        }
    }
    Ok(groups)
}
