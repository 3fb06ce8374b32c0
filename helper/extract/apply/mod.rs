//! Applies tar entries to a tree with `*at` calls: the syscall half of extraction. The rules
//! it follows (names, whiteouts, owners, where names lead, what goes to the writer threads)
//! live in the pure modules beside it.
//!
//! Everything the applier knows of the layer is keyed by canonical path (see
//! [`super::resolve`]): the names it wrote, the directories it made, the files out with the
//! writers, the directories to fix up, the directories overlayfs looked in.
//!
//! - `meta`: contents, owner, mode, xattrs and times of one file;
//! - `dir_fixes`: directory modes and times, set at the end of the layer;
//! - `links`: hardlinks, and lower link groups kept whole through overlayfs;
//! - `parentless`: what a layer written with nothing below it records.

mod dir_fixes;
mod links;
mod meta;
mod parentless;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use nix::fcntl::readlinkat;
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{
    Gid, Uid, UnlinkatFlags, fchown, getegid, geteuid, mkfifoat, symlinkat, unlinkat,
};
use strata_tar::{Header, Kind};

use super::Tree;
use super::handout::{self, Facts, Plan};
use super::owner;
use super::path::{Action, PathSet, UpperPaths, classify, normalize, shown};
use super::resolve::{self, Lookup, Missing, Node, Symlinks, Walked};
use super::skipped::SkippedList;
use super::writers::{Buffers, SMALL_FILE, Writers};
use crate::at;
use dir_fixes::{DirFixes, Maker};
use links::LinkGroups;
use meta::{Meta, ModeBits, XattrKind};
use parentless::{OPAQUE_NOT_MADE, mark_opaque, needs_lowers};
use strata_protocol::{Skipped, Whiteouts};
use strata_ring::PageBuf;

/// The directory the last entry went into.
struct ParentDir {
    /// As the entry spells it.
    spelled: PathBuf,
    /// Where it leads.
    path: PathBuf,
    fd: Arc<OwnedFd>,
    /// Through an overlay: the same directory in the upper layer, once opened.
    upper: Option<Arc<OwnedFd>>,
}

/// Files out with the writers between waits, at most.
const HANDED_OUT_AT_MOST: usize = 1 << 16;

/// A walk met a file still out with the writers: the applier waits for them and walks again.
#[derive(Debug, thiserror::Error)]
#[error("a file on the way is still being written")]
struct OutWithWriters;

/// Where a directory name leads.
enum Located {
    Dir {
        path: PathBuf,
        fd: OwnedFd,
    },
    /// Somewhere on the way, a name is missing.
    Missing,
}

/// What an applier makes of a layer as a whole, once it is applied.
#[derive(Debug)]
pub struct Account {
    /// What could not be reproduced: the first thousand, in entry order,
    pub skipped: Vec<Skipped>,
    /// and how many more there were.
    pub skipped_omitted: u64,
    /// The mode the layer's last entry for `/` gives.
    pub root_mode: Option<u32>,
}

pub struct Applier<'a> {
    tree: Tree<'a>,
    writers: &'a Writers,
    /// Files handed to `writers` since they were last all done.
    handed_out: PathSet,
    /// The number of the entry being applied.
    entry: u64,
    /// How many ids the current user namespace maps from 0.
    mapped_ids: u64,
    /// What `.wh.` names mean.
    whiteouts: Whiteouts,
    /// Paths this layer wrote, with their directories.
    upper: UpperPaths,
    /// Directories this layer created (rather than merged into): nothing of lower layers is
    /// in them.
    fresh_dirs: PathSet,
    dir_fixes: DirFixes<'a>,
    /// The last entry's parent directory, for the next entry with the same parent.
    parent_cache: Option<ParentDir>,
    /// Where the symlinks met so far lead.
    symlinks: Symlinks,
    /// Directories in which overlayfs may have looked up a name and missed (a whiteout's, a
    /// link's, a missing parent's): a name made there behind its back could stay hidden from
    /// it, so none is.
    overlay_seen: PathSet,
    /// Hardlink groups by inode, found the first time a link splits one: of each lower layer
    /// read (by its index in the tree's lowers), or of the whole tree (`None`).
    link_groups: HashMap<Option<usize>, LinkGroups>,
    /// What could not be reproduced, by entry number.
    skipped: SkippedList,
    /// The mode the layer's last entry for `/` gives.
    root_mode: Option<u32>,
    buf: PageBuf,
    buffers: Buffers,
}

impl<'a> Applier<'a> {
    pub fn new(
        tree: Tree<'a>,
        mapped_ids: u64,
        whiteouts: Whiteouts,
        writers: &'a Writers,
    ) -> Self {
        Applier {
            tree,
            writers,
            handed_out: PathSet::default(),
            entry: 0,
            mapped_ids,
            whiteouts,
            upper: UpperPaths::default(),
            fresh_dirs: PathSet::default(),
            dir_fixes: DirFixes::new(tree.root()),
            parent_cache: None,
            symlinks: Symlinks::default(),
            overlay_seen: PathSet::default(),
            link_groups: HashMap::new(),
            skipped: SkippedList::default(),
            root_mode: None,
            buf: PageBuf::new(256 * 1024),
            buffers: Buffers::default(),
        }
    }

    /// Applies one entry; `data` is its data (see [`strata_tar::Archive::data`]).
    pub fn apply(&mut self, header: &Header, data: &mut impl BufRead) -> Result<()> {
        self.entry += 1;
        // Go yields global PAX headers as entries; the engines apply them to nothing.
        if header.kind == Kind::GlobalPax {
            return Ok(());
        }
        if self.dir_fixes.full() {
            self.wait_for_writers()?;
            self.dir_fixes.settle()?;
        }
        let path = normalize(&header.name)?;
        match classify(&path, self.whiteouts)? {
            Action::Create => self.create(&path, header, data),
            Action::Whiteout { target } => self.whiteout(&target),
            Action::Opaque { dir } => self.opaque(dir),
            Action::AufsMeta => Ok(()),
        }
    }

    fn wait_for_writers(&mut self) -> Result<()> {
        self.handed_out.clear();
        self.writers.wait()
    }

    /// Sets the deferred directory modes and times: the layer's own directories get their
    /// entries' modes and times, and directories it added to get their times back.
    pub fn finish(mut self) -> Result<Account> {
        self.handed_out.clear();
        self.skipped.append(self.writers.finish()?);
        self.dir_fixes.apply()?;
        let (skipped, skipped_omitted) = self.skipped.finish();
        Ok(Account {
            skipped,
            skipped_omitted,
            root_mode: self.root_mode,
        })
    }

    fn skip(&mut self, path: &Path, reason: impl Into<String>) {
        self.note_skipped(vec![meta::skipped(path, reason)]);
    }

    /// Files what the current entry could not reproduce under its number.
    fn note_skipped(&mut self, skipped: Vec<Skipped>) {
        for skip in skipped {
            self.skipped.push(self.entry, skip);
        }
    }

    fn create(&mut self, spelled: &Path, header: &Header, data: &mut impl BufRead) -> Result<()> {
        let kind = header.kind;
        let (Some(spelled_parent), Some(name)) = (spelled.parent(), spelled.file_name()) else {
            // The root itself: its metadata belongs to DEST (its mode is reported, for a
            // rootfs that takes the image's), but its type may not change (CVE-2021-29136: a
            // symlink at `/` redirected later layers to the host).
            if kind == Kind::Directory {
                self.root_mode = Some((header.mode & 0o7777) as u32);
                return Ok(());
            }
            bail!(
                "refusing to replace the root directory with a {}",
                kind_name(kind)
            );
        };
        // What is not created leaves no trace, not even its parent directories.
        match kind {
            Kind::CharDevice | Kind::BlockDevice => {
                self.skip(spelled, "device node");
                return Ok(());
            }
            Kind::Other(_) | Kind::GlobalPax => {
                self.skip(
                    spelled,
                    format!("unsupported entry type {}", kind_name(kind)),
                );
                return Ok(());
            }
            _ => {}
        }
        let meta = Meta::of(header);
        let (parent_path, parent_fd) = self.parent_dir(spelled_parent)?;
        let parent_made = self.fresh_dirs.contains(&parent_path);
        if self.tree.is_parentless() && !parent_made && !parent_path.as_os_str().is_empty() {
            // The directory below would give it its owner, mode and times.
            return Err(needs_lowers(
                &parent_path,
                "is not a directory this layer makes",
            ));
        }
        let path = parent_path.join(name);
        let facts = Facts {
            kind: match kind {
                Kind::Link => handout::Kind::Link,
                _ if is_file(kind) && self.hands_out(header) => handout::Kind::SmallFile,
                _ => handout::Kind::Other,
            },
            parent_made,
            written: self.upper.contains(&path),
        };
        let plan = handout::plan(self.tree.target(), facts);
        if plan == Plan::WaitThenHere {
            self.wait_for_writers()?;
        }
        // A new name in a directory of this layer, which overlayfs never looked up: made in
        // the upper directory itself (see `parent_dir_in_upper`).
        let fd = match plan {
            Plan::HandOut | Plan::Here
                if parent_made && !facts.written && !self.overlay_seen.contains(&parent_path) =>
            {
                self.parent_dir_in_upper()?.unwrap_or(parent_fd)
            }
            _ => parent_fd,
        };
        let maker = Maker::of(parent_made);
        self.dir_fixes.changing(&parent_path, fd.as_fd(), maker)?;
        let parent = fd.as_fd();
        match kind {
            Kind::Link => {
                let target = link_target(header, "hardlink")?;
                self.hardlink(parent, &path, &normalize(target)?)?;
            }
            Kind::Directory => self.make_dir(parent, &path, meta, facts)?,
            Kind::Regular | Kind::Contiguous | Kind::GnuSparse => {
                let unlink_first = match plan {
                    Plan::HandOut => false,
                    // A lower regular file has no names below it that other entries could be
                    // using, nor is it a way to some directory: its writer removes it.
                    Plan::HandOutOverLower => match at::lstat(parent, name)? {
                        None => false,
                        Some(st) if at::is_regular(&st) => true,
                        Some(_) => {
                            self.replace(parent, &path)?;
                            false
                        }
                    },
                    Plan::Here | Plan::WaitThenHere => {
                        self.replace(parent, &path)?;
                        false
                    }
                };
                let hand_out = matches!(plan, Plan::HandOut | Plan::HandOutOverLower);
                self.write_file(&fd, &path, header, data, meta, hand_out, unlink_first)?;
            }
            Kind::Symlink => {
                let target = link_target(header, "symlink")?;
                self.replace(parent, &path)?;
                symlinkat(OsStr::from_bytes(target), parent, name)?;
                meta::set_meta_at(parent, name, &meta, ModeBits::Ignored, self.mapped_ids)?;
            }
            Kind::Fifo => {
                self.replace(parent, &path)?;
                mkfifoat(parent, name, Mode::from_bits_truncate(0o600))?;
                meta::set_meta_at(parent, name, &meta, ModeBits::Set, self.mapped_ids)?;
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::GlobalPax | Kind::Other(_) => {
                unreachable!("skipped above")
            }
        }
        self.upper.insert(&path);
        Ok(())
    }

    /// The directory entries spelled `spelled` go into, made where missing (on a tree with its
    /// lower layers); found again unless the previous entry had the same parent, and nothing
    /// was removed since that the way there could go through.
    fn parent_dir(&mut self, spelled: &Path) -> Result<(PathBuf, Arc<OwnedFd>)> {
        if let Some(cached) = &self.parent_cache
            && cached.spelled == spelled
        {
            return Ok((cached.path.clone(), cached.fd.clone()));
        }
        // A parentless layer makes no directory it does not name: the one below would show.
        let missing = if self.tree.is_parentless() {
            Missing::Stop
        } else {
            Missing::Make
        };
        // A parentless layer that cannot find its own way leaves it to the layers below:
        // with them, the way may be there, or fail as it should.
        let parentless = self.tree.is_parentless();
        let (path, fd) = match self.locate(spelled, missing) {
            Ok(Located::Dir { path, fd }) => (path, fd),
            Ok(Located::Missing) | Err(_) if parentless => {
                return Err(needs_lowers(spelled, "is not a directory this layer makes"));
            }
            Ok(Located::Missing) => unreachable!("missing directories are made"),
            Err(err) => {
                return Err(err.context(format!("resolving parent directory {}", shown(spelled))));
            }
        };
        let fd = Arc::new(fd);
        self.parent_cache = Some(ParentDir {
            spelled: spelled.to_path_buf(),
            path: path.clone(),
            fd: fd.clone(),
            upper: None,
        });
        Ok((path, fd))
    }

    /// Through an overlay, the cached parent directory in the upper layer. A directory this
    /// layer made is a plain directory there, with nothing of the lower ones in it: a new
    /// name in it is made in the upper directory itself, sparing overlayfs's work per file
    /// (lookups in every lower layer, its own inodes to set up and tear down). Only new
    /// names, which overlayfs has never looked up (see `overlay_seen`), so it has nothing
    /// cached that the change would make stale.
    fn parent_dir_in_upper(&mut self) -> Result<Option<Arc<OwnedFd>>> {
        let (Some(upper), Some(cached)) = (self.tree.upper(), &mut self.parent_cache) else {
            return Ok(None);
        };
        if cached.upper.is_none() {
            let fd = at::resolve_real_dir(upper, &cached.path).with_context(|| {
                format!("opening {} in the upper directory", shown(&cached.path))
            })?;
            cached.upper = Some(Arc::new(fd));
        }
        Ok(cached.upper.clone())
    }

    /// Where the directory name `spelled` leads: at once when it names real directories
    /// alone, else by a walk through its symlinks (see [`resolve::canonical`]). A name
    /// missing on the way is made, or ends the walk; overlayfs looked for it.
    fn locate(&mut self, spelled: &Path, missing: Missing) -> Result<Located> {
        let root = self.tree.root();
        if let Ok(fd) = at::resolve_real_dir(root, spelled) {
            return Ok(Located::Dir {
                path: spelled.to_path_buf(),
                fd,
            });
        }
        let walked = loop {
            let mut lookup = TreeLookup {
                root,
                handed_out: &self.handed_out,
                upper: &mut self.upper,
                fresh_dirs: &mut self.fresh_dirs,
                dir_fixes: &mut self.dir_fixes,
                dir: None,
            };
            match resolve::canonical(&mut lookup, &mut self.symlinks, spelled, missing) {
                Err(err)
                    if err
                        .get_ref()
                        .is_some_and(|inner| inner.is::<OutWithWriters>()) =>
                {
                    self.wait_for_writers()?;
                }
                walked => break walked?,
            }
        };
        match walked {
            Walked::Dir(path) => {
                let fd = at::resolve_real_dir(root, &path)?;
                Ok(Located::Dir { path, fd })
            }
            Walked::Missing(name) => {
                self.overlay_looked_in(name.parent().unwrap_or(Path::new("")));
                Ok(Located::Missing)
            }
        }
    }

    /// Overlayfs may have looked up a name in the canonical directory `dir` and missed.
    fn overlay_looked_in(&mut self, dir: &Path) {
        if self.tree.upper().is_some() {
            self.overlay_seen.insert(dir);
        }
    }

    /// What the layer found or made there may have been on the way to any directory.
    fn forget_resolutions(&mut self) {
        self.parent_cache = None;
        self.symlinks.forget();
    }

    /// Removes whatever is at the canonical `path` (named in `parent`) for an entry to take
    /// its place.
    fn replace(&mut self, parent: BorrowedFd, path: &Path) -> Result<()> {
        // In a directory this layer created, only this layer's entries can exist: a name not
        // among them needs no removal (one failing unlink saved per file).
        let parent_path = path.parent().unwrap_or(Path::new(""));
        if self.fresh_dirs.contains(parent_path) && !self.upper.contains(path) {
            return Ok(());
        }
        // A directory removed here stays among the made ones, and so do those below it: a
        // path that leads to a directory again leads to one this layer made again (what it
        // removed cannot come back, nor can a lower directory take its place).
        let name = path
            .file_name()
            .expect("entries below the root have a name");
        let removed = at::remove_all(parent, name)
            .with_context(|| format!("removing the existing {}", shown(path)))?;
        if removed {
            self.forget_resolutions();
            self.dir_fixes.forget(path);
        }
        Ok(())
    }

    /// Whether a file of `size` bytes goes to the writer threads.
    fn hands_out(&self, header: &Header) -> bool {
        // A sparse file's size says nothing of its data: it is written here, hole by hole.
        header.sparse.is_none() && header.size as u64 <= SMALL_FILE && self.writers.threaded()
    }

    /// Writes a regular file at the canonical `path`: handed to the writer threads, or here,
    /// straight from the stream. `unlink_first`: a regular file of a lower layer is in the
    /// way, for the writer to remove.
    #[allow(clippy::too_many_arguments)]
    fn write_file(
        &mut self,
        parent: &Arc<OwnedFd>,
        path: &Path,
        header: &Header,
        data: &mut impl BufRead,
        meta: Meta,
        hand_out: bool,
        unlink_first: bool,
    ) -> Result<()> {
        if !hand_out {
            let buf = &mut self.buf;
            let fill = |file: &mut File| match &header.sparse {
                None => meta::copy_data(data, file),
                Some(regions) => meta::fill_sparse(data, file, regions, header.size as u64, buf),
            };
            let skipped = meta::create_file(parent.as_fd(), path, &meta, self.mapped_ids, fill)?;
            self.note_skipped(skipped);
            return Ok(());
        }
        let len = header.size as usize;
        let mut contents = self.buffers.take();
        data.read_exact(&mut contents[..len])?;
        let (parent, owned_path, mapped_ids) =
            (parent.clone(), path.to_path_buf(), self.mapped_ids);
        let (entry_name, buffers) = (super::entry_name(&header.name), self.buffers.clone());
        let job = move || {
            let fill = |file: &mut File| Ok(file.write_all(&contents[..len])?);
            let created = (|| {
                if unlink_first {
                    remove_file(parent.as_fd(), &owned_path)?;
                }
                meta::create_file(parent.as_fd(), &owned_path, &meta, mapped_ids, fill)
            })();
            buffers.give_back(contents);
            created.context(entry_name)
        };
        self.handed_out.insert(path);
        self.writers.submit(self.entry, Box::new(job))?;
        // Memory stays bounded on a layer of millions of files that never has to wait.
        if self.handed_out.count() >= HANDED_OUT_AT_MOST {
            self.wait_for_writers()?;
        }
        Ok(())
    }

    /// Makes the directory at the canonical `path` (named in `parent`), or merges into the
    /// one there.
    fn make_dir(
        &mut self,
        parent: BorrowedFd,
        path: &Path,
        meta: Meta,
        facts: Facts,
    ) -> Result<()> {
        let name = path
            .file_name()
            .expect("entries below the root have a name");
        let existing = if facts.parent_made && !facts.written {
            None
        } else {
            at::lstat(parent, name)?
        };
        let created = match existing {
            Some(st) if at::is_dir(&st) => false,
            Some(_) => {
                self.replace(parent, path)?;
                true
            }
            None => true,
        };
        if created {
            mkdirat(parent, name, Mode::from_bits_truncate(0o700))?;
            self.fresh_dirs.insert(path);
        }
        let dir = at::open_subdir(parent, name)?;
        // What it replaced (a whiteout, or a file of this layer) hid a directory below that
        // would otherwise show through.
        if self.tree.is_parentless() && existing.is_some() && created {
            mark_opaque(dir.as_fd(), path)?;
        }
        let placement = owner::place(meta.uid, meta.gid, self.mapped_ids);
        // A merged directory takes the entry's owner and loses an old owner record, even when
        // the entry's owner is the namespace's root: this process, whose ids a new directory
        // already has, unrecorded. (Its own ids, not 0: outside a namespace, as in unit tests
        // run by a user, it can give nothing else.)
        if placement.chown.is_some() || !created {
            let own = (geteuid().as_raw(), getegid().as_raw());
            let (uid, gid) = placement.chown.unwrap_or(own);
            fchown(&dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        }
        if !created {
            // Directory over directory replaces the attributes, xattrs included, as umoci does
            // and as a parentless layer's own directory hides the lower one's: what the entry
            // does not name goes, and so does an owner record it does not need.
            for (key, _) in at::xattrs(dir.as_fd())? {
                let named = meta.xattrs.iter().any(|(name, _)| *name == key);
                let recorded = key == owner::XATTR.as_bytes() && placement.record.is_some();
                if meta::xattr_kind(&key) == XattrKind::Applied && !named && !recorded {
                    at::remove_xattr(dir.as_fd(), &key)?;
                }
            }
        }
        let skipped = meta::set_xattrs(dir.as_fd(), path, &meta, placement.record)?;
        self.note_skipped(skipped);
        self.dir_fixes.named(path, meta.mode, meta.mtime);
        Ok(())
    }

    /// The directory a whiteout or opaque marker removes in, once the writers are out of the
    /// way; `None` when there is none, so nothing to remove. A parentless layer that cannot
    /// find it (`why`) leaves it to the layers below.
    fn removal_dir(&mut self, spelled: &Path, why: &str) -> Result<Option<(PathBuf, OwnedFd)>> {
        if handout::removal_waits(self.tree.target()) {
            self.wait_for_writers()?;
        }
        match self.locate(spelled, Missing::Stop) {
            Ok(Located::Dir { path, fd }) => Ok(Some((path, fd))),
            Ok(Located::Missing) | Err(_) if self.tree.is_parentless() => {
                Err(needs_lowers(spelled, why))
            }
            Ok(Located::Missing) => Ok(None),
            Err(err) if is_errno(&err, libc::ENOTDIR) => Ok(None),
            Err(err) => Err(err.context(format!("resolving {}", shown(spelled)))),
        }
    }

    /// A whiteout: removes what lower layers left at `target`, never a name of this layer.
    fn whiteout(&mut self, target: &Path) -> Result<()> {
        let (Some(spelled_parent), Some(name)) = (target.parent(), target.file_name()) else {
            bail!("whiteout of the root directory");
        };
        let why = "holds a whiteout but is not made by this layer";
        let Some((parent, fd)) = self.removal_dir(spelled_parent, why)? else {
            return Ok(());
        };
        if self.tree.is_parentless() {
            return self.record_whiteout(&parent, fd.as_fd(), name);
        }
        self.overlay_looked_in(&parent);
        let maker = Maker::of(self.fresh_dirs.contains(&parent));
        self.dir_fixes.changing(&parent, fd.as_fd(), maker)?;
        self.remove_lower(fd.as_fd(), name, &parent.join(name))
    }

    /// An opaque marker: removes everything lower layers left in `dir`.
    fn opaque(&mut self, spelled: &Path) -> Result<()> {
        let Some((dir, fd)) = self.removal_dir(spelled, OPAQUE_NOT_MADE)? else {
            return Ok(());
        };
        if self.tree.is_parentless() {
            return self.record_opaque(&dir, fd.as_fd());
        }
        self.overlay_looked_in(&dir);
        let maker = Maker::of(self.fresh_dirs.contains(&dir));
        self.dir_fixes.changing(&dir, fd.as_fd(), maker)?;
        for child in at::list(fd.as_fd())? {
            self.remove_lower(fd.as_fd(), &child, &dir.join(&child))?;
        }
        self.upper.insert(&dir);
        Ok(())
    }

    /// Removes what lower layers put at the canonical `path` (named in `parent`), descending
    /// into directories this layer wrote to.
    fn remove_lower(&mut self, parent: BorrowedFd, name: &OsStr, path: &Path) -> Result<()> {
        let Some(st) = at::lstat(parent, name)? else {
            return Ok(());
        };
        if self.upper.contains(path) {
            if at::is_dir(&st) {
                let dir = at::open_subdir(parent, name)?;
                let maker = Maker::of(self.fresh_dirs.contains(path));
                self.dir_fixes.changing(path, dir.as_fd(), maker)?;
                for child in at::list(dir.as_fd())? {
                    self.remove_lower(dir.as_fd(), &child, &path.join(&child))?;
                }
            }
            return Ok(());
        }
        at::remove_all(parent, name).with_context(|| format!("removing {}", shown(path)))?;
        // Only a directory or a symlink can be on the way to somewhere.
        if at::is_dir(&st) || at::is_symlink(&st) {
            self.forget_resolutions();
            self.dir_fixes.forget(path);
        }
        Ok(())
    }
}

/// The tree as a walk through symlinks sees it (see [`resolve::canonical`]), for the applier.
struct TreeLookup<'l, 'a> {
    root: BorrowedFd<'a>,
    handed_out: &'l PathSet,
    upper: &'l mut UpperPaths,
    fresh_dirs: &'l mut PathSet,
    dir_fixes: &'l mut DirFixes<'a>,
    /// The directory last looked in: a walk mostly goes down one name at a time.
    dir: Option<(PathBuf, OwnedFd)>,
}

impl TreeLookup<'_, '_> {
    /// The directory at the canonical `path`.
    /// One step down or up from the directory last looked in costs one `openat`, however deep
    /// it is (`..` of a directory below the root, in a tree only this thread changes the
    /// directories of, is its parent).
    fn open(&mut self, path: &Path) -> std::io::Result<BorrowedFd<'_>> {
        let fd = match self.dir.take() {
            Some((cached, fd)) if cached == path => fd,
            Some((cached, fd)) if path.parent() == Some(&cached) => {
                at::step_into(fd.as_fd(), path.file_name().unwrap_or_default())?
            }
            Some((cached, fd)) if cached.parent() == Some(path) => at::step_up(fd.as_fd())?,
            _ => at::resolve_real_dir(self.root, path)?,
        };
        Ok(self.dir.insert((path.to_path_buf(), fd)).1.as_fd())
    }
}

impl Lookup for TreeLookup<'_, '_> {
    fn node(&mut self, path: &Path) -> std::io::Result<Node> {
        // A file that is out may not be there yet.
        if self.handed_out.contains(path) {
            return Err(std::io::Error::other(OutWithWriters));
        }
        let name = path.file_name().expect("the root is not looked up");
        let dir = self.open(path.parent().unwrap_or(Path::new("")))?;
        Ok(match at::lstat(dir, name)? {
            None => Node::Missing,
            Some(st) if at::is_dir(&st) => Node::Dir,
            Some(st) if at::is_symlink(&st) => Node::Symlink(readlinkat(dir, name)?.into()),
            Some(_) => Node::Other,
        })
    }

    /// Made as `mkdir -p` makes it (mode 0755, owned by the namespace's root); the directory
    /// it is made in keeps its times (see [`DirFixes::changing`]).
    fn make_dir(&mut self, path: &Path) -> std::io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new(""));
        let name = path.file_name().expect("the root is not made");
        let maker = Maker::of(self.fresh_dirs.contains(parent));
        let dir = self.open(parent)?.try_clone_to_owned()?;
        self.dir_fixes.changing(parent, dir.as_fd(), maker)?;
        mkdirat(&dir, name, Mode::from_bits_truncate(0o755))?;
        self.fresh_dirs.insert(path);
        self.upper.insert(path);
        Ok(())
    }
}

/// Whether `err` is the OS error `errno`.
fn is_errno(err: &anyhow::Error, errno: i32) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|err| err.raw_os_error() == Some(errno))
}

/// Removes the file `path` (named in `parent`), which is not a directory.
fn remove_file(parent: BorrowedFd, path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .expect("entries below the root have a name");
    unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
        .with_context(|| format!("removing the existing {}", shown(path)))
}

fn is_file(kind: Kind) -> bool {
    matches!(kind, Kind::Regular | Kind::Contiguous | Kind::GnuSparse)
}

fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::Regular | Kind::Contiguous | Kind::GnuSparse => "regular file".into(),
        Kind::Link => "hardlink".into(),
        Kind::Symlink => "symlink".into(),
        Kind::CharDevice => "character device".into(),
        Kind::BlockDevice => "block device".into(),
        Kind::Directory => "directory".into(),
        Kind::Fifo => "FIFO".into(),
        Kind::GlobalPax | Kind::Other(_) => format!("{:?}", kind.as_byte() as char),
    }
}

/// A link's target, which it cannot lack.
fn link_target<'h>(header: &'h Header, what: &str) -> Result<&'h [u8]> {
    if header.link_name.is_empty() {
        bail!("{what} without a target");
    }
    Ok(&header.link_name)
}
