//! Applies tar entries to a root directory with `*at` calls: the syscall half of extraction.
//! The rules it follows (names, whiteouts, owners) live in the pure modules beside it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{
    Gid, Uid, UnlinkatFlags, fchown, fchownat, getegid, geteuid, linkat, mkfifoat, symlinkat,
    unlinkat,
};
use strata_tar::{Header, Kind, Region};

use super::owner;
use super::path::{Action, PathSet, UpperPaths, classify, normalize, shown, shown_bytes};
use super::skipped::SkippedList;
use super::writers::{Buffers, SMALL_FILE, Writers};
use super::{NeedsLowers, Tree};
use crate::at;
use crate::protocol::Skipped;

/// What a tar header says about the file it introduces.
#[derive(Clone)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// Permission bits and setuid, setgid and sticky, as Go's `FileInfo` reads the mode
    /// field; ids outside `0..2^64` (negative ones) are as far out of reach as the largest.
    /// Xattrs are the `SCHILY.xattr.*` PAX records, empty values too, as containerd reads
    /// them (libarchive's `LIBARCHIVE.xattr.*` are read by no engine).
    fn of(header: &Header) -> Meta {
        let xattrs = header.pax.iter().flatten().filter_map(|(key, value)| {
            let name = key.strip_prefix(b"SCHILY.xattr.")?;
            Some((name.to_vec(), value.clone()))
        });
        Meta {
            mode: (header.mode & 0o7777) as u32,
            uid: header.uid as u64,
            gid: header.gid as u64,
            mtime: TimeSpec::new(header.mtime.seconds, i64::from(header.mtime.nanos)),
            xattrs: xattrs.collect(),
        }
    }
}

/// Directory mode and times are set after the whole layer: creating children would bump the
/// mtime, and a read-only mode would block them.
struct DirMeta {
    mode: u32,
    mtime: TimeSpec,
}

/// Directories below this many are fixed on one thread.
const DIRS_PER_THREAD: usize = 256;

/// What the end of a layer sets on one directory.
struct DirFix<'a> {
    path: &'a Path,
    /// `None`: the mode is left alone.
    mode: Option<u32>,
    times: (TimeSpec, TimeSpec),
}

impl DirFix<'_> {
    /// Does nothing if `path` is no longer a directory, or is the root (whose metadata
    /// belongs to DEST).
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

fn reopen_dir(root: BorrowedFd, path: &Path) -> Option<OwnedFd> {
    let (parent, name) = (path.parent()?, path.file_name()?);
    let parent = at::resolve_dir(root, parent).ok()?;
    at::open_subdir(parent.as_fd(), name).ok()
}

/// A resolved parent directory of entries.
struct ParentDir {
    path: PathBuf,
    /// The overlay's upper directory, not the merged one.
    in_upper: bool,
    /// Reached through real directories alone: `path` is the only path to it.
    real_path: bool,
    fd: Arc<OwnedFd>,
}

pub struct Applier<'a> {
    root: BorrowedFd<'a>,
    /// With `root` an overlay mount: its upper directory, where entries that only add names to
    /// directories this layer made are created directly (see [`Applier::parent_dir`]).
    overlay_upper: Option<BorrowedFd<'a>>,
    writers: &'a Writers,
    /// Files handed to `writers` since they were last all done.
    handed_out: PathSet,
    /// Since then: a file went out over a lower layer's name, or one went out into a directory
    /// reached through a symlink. Such a directory has two paths, and names
    /// are compared as paths: the two kinds never go out together, and nothing else goes on
    /// through a symlink while the first kind may be on its way.
    handed_out_over_lower: bool,
    handed_out_through_symlink: bool,
    /// The number of the entry being applied.
    entry: u64,
    /// How many ids the current user namespace maps from 0.
    mapped_ids: u64,
    upper: UpperPaths,
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Times of directories this layer changes without naming them, restored at the end so
    /// that only what the layer describes changes (as umoci does).
    touched: BTreeMap<PathBuf, (TimeSpec, TimeSpec)>,
    /// Directories this layer created (rather than merged into): nothing of lower layers is
    /// in them.
    fresh_dirs: PathSet,
    /// The last entry's parent directory, for the next entry with the same parent.
    parent_cache: Option<ParentDir>,
    /// Directories whose names overlayfs may have looked up and missed (a whiteout's, a link's):
    /// a name made there behind its back could stay hidden from it, so none is.
    overlay_seen: PathSet,
    /// Through an overlay, the layers below, top first: read directly to find hardlink groups.
    overlay_lowers: &'a [BorrowedFd<'a>],
    /// See [`Tree::parentless`].
    parentless: bool,
    /// Hardlink groups by inode, found the first time a link splits one: of each lower layer
    /// read (by its index in `overlay_lowers`), or of the whole tree (`None`).
    link_groups: HashMap<Option<usize>, LinkGroups>,
    /// What could not be reproduced, by entry number.
    skipped: SkippedList,
    buf: Vec<u8>,
    buffers: Buffers,
}

impl<'a> Applier<'a> {
    pub fn new(tree: Tree<'a>, mapped_ids: u64, writers: &'a Writers) -> Self {
        Applier {
            root: tree.root,
            overlay_upper: tree.overlay_upper,
            overlay_lowers: tree.overlay_lowers,
            parentless: tree.parentless,
            overlay_seen: PathSet::default(),
            writers,
            handed_out: PathSet::default(),
            handed_out_over_lower: false,
            handed_out_through_symlink: false,
            entry: 0,
            mapped_ids,
            upper: UpperPaths::default(),
            dirs: BTreeMap::new(),
            touched: BTreeMap::new(),
            fresh_dirs: PathSet::default(),
            parent_cache: None,
            link_groups: HashMap::new(),
            skipped: SkippedList::default(),
            buf: vec![0; 256 * 1024],
            buffers: Buffers::default(),
        }
    }

    /// Applies one entry; `data` is its data (see [`strata_tar::Archive::data`]).
    pub fn apply(&mut self, header: &Header, data: &mut impl Read) -> Result<()> {
        self.entry += 1;
        // Go yields global PAX headers as entries; the engines apply them to nothing.
        if header.kind == Kind::GlobalPax {
            return Ok(());
        }
        let path = normalize(&header.name)?;
        match classify(&path)? {
            Action::Create => self.create(&path, header, data),
            Action::Whiteout { target } => {
                self.wait_before_removing_in(target.parent().unwrap_or(Path::new("")))?;
                self.whiteout(&target)
            }
            Action::Opaque { dir } => {
                self.wait_before_removing_in(dir)?;
                self.opaque(dir)
            }
            Action::AufsMeta => Ok(()),
        }
    }

    fn wait_for_writers(&mut self) -> Result<()> {
        self.handed_out.clear();
        self.handed_out_over_lower = false;
        self.handed_out_through_symlink = false;
        self.writers.wait()
    }

    /// Whiteouts and opaque markers remove only what lower layers left, never a name of this
    /// layer, as every handed-out file is (its writer removes the lower file it replaces): on
    /// a plain tree they go on beside the writers. Unless `dir`, or a file that is out, is
    /// reached through a symlink: the paths they compare would not be the ones those files
    /// went out under, and whether a file is there yet would depend on the writers' timing. Through
    /// an overlay, their lookups must not meet a directory being written behind overlayfs's
    /// back.
    fn wait_before_removing_in(&mut self, dir: &Path) -> Result<()> {
        let aliased = !self.handed_out.is_empty()
            && (self.handed_out_through_symlink || at::resolve_real_dir(self.root, dir).is_err());
        if self.overlay_upper.is_some() || aliased {
            self.wait_for_writers()?;
        }
        Ok(())
    }

    /// Sets the deferred directory modes and times: the layer's own directories get their
    /// entries' modes and times, and directories it added to get their times back.
    pub fn finish(mut self) -> Result<(Vec<Skipped>, u64)> {
        self.handed_out.clear();
        self.skipped.append(self.writers.finish()?);
        let made = self.dirs.iter().map(|(path, meta)| DirFix {
            path,
            mode: Some(meta.mode),
            times: (meta.mtime, meta.mtime),
        });
        let added_to = self.touched.iter().filter_map(|(path, &times)| {
            (!self.dirs.contains_key(path)).then_some(DirFix {
                path,
                mode: None,
                times,
            })
        });
        // Deepest first, so that no directory loses the search permission the path to one
        // below it needs before that one is done; that matters only where a mode takes
        // search away from anyone, and the others are spread over threads.
        let (searchable, deepest_first): (Vec<_>, Vec<_>) = made
            .chain(added_to)
            .rev()
            .partition(|fix| fix.mode.is_none_or(|mode| mode & 0o111 == 0o111));
        let root = self.root;
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
        deepest_first.iter().try_for_each(|fix| fix.apply(root))?;
        Ok(self.skipped.finish())
    }

    /// Notes the times of a directory the layer is about to change, the first time only.
    fn remember_times(&mut self, path: &Path, dir: BorrowedFd) -> Result<()> {
        if !self.touched.contains_key(path) && !self.dirs.contains_key(path) {
            let st = nix::sys::stat::fstat(dir)?;
            let times = (
                TimeSpec::new(st.st_atime, st.st_atime_nsec),
                TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
            );
            self.touched.insert(path.to_path_buf(), times);
        }
        Ok(())
    }

    fn skip(&mut self, path: &Path, reason: impl Into<String>) {
        self.note_skipped(vec![skipped(path, reason)]);
    }

    /// Files what the current entry could not reproduce under its number.
    fn note_skipped(&mut self, skipped: Vec<Skipped>) {
        for skip in skipped {
            self.skipped.push(self.entry, skip);
        }
    }

    fn create(&mut self, path: &Path, header: &Header, data: &mut impl Read) -> Result<()> {
        let kind = header.kind;
        let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
            // The root itself: its metadata belongs to DEST, but its type may not change
            // (CVE-2021-29136: a symlink at `/` redirected later layers to the host).
            if kind == Kind::Directory {
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
                self.skip(path, "device node");
                return Ok(());
            }
            Kind::Other(_) | Kind::GlobalPax => {
                self.skip(path, format!("unsupported entry type {}", kind_name(kind)));
                return Ok(());
            }
            _ => {}
        }
        let meta = Meta::of(header);
        let parent_fresh = self.fresh_dirs.contains(parent_path);
        if self.parentless && !parent_fresh && !parent_path.as_os_str().is_empty() {
            // The directory below would give it its owner, mode and times.
            return Err(needs_lowers(
                parent_path,
                "is not a directory this layer makes",
            ));
        }
        // A new name in a directory the layer made (a link goes where its target is found).
        let adds_to_fresh_dir = kind != Kind::Link && parent_fresh && !self.upper.contains(path);
        // A small file in a directory of lower layers may be handed out too, on a plain tree,
        // if what it replaces turns out to be a regular file or nothing (see below).
        let may_go_over_lower = is_file(kind)
            && !parent_fresh
            && self.overlay_upper.is_none()
            && self.hands_out(header)
            && !self.handed_out.contains(path);
        // Files handed out may still be on their way: wait for them, unless this entry only
        // adds or replaces a name none of them has, in a directory none of them can be (the
        // previous entry's parent was checked already).
        let same_parent = matches!(&self.parent_cache, Some(cached) if cached.path == parent_path);
        let under_handed_out = !same_parent
            && parent_path
                .ancestors()
                .any(|dir| self.handed_out.contains(dir));
        if !(adds_to_fresh_dir || may_go_over_lower) || under_handed_out {
            self.wait_for_writers()?;
        }
        let direct = adds_to_fresh_dir && !self.overlay_seen.contains(parent_path);
        let (parent_dir, real_path) = self.parent_dir(parent_path, direct)?;
        // Names are compared as paths above: for this file, soundly only when its path is
        // the one path to it (see `handed_out_over_lower`).
        let over_lower = may_go_over_lower && real_path && !self.handed_out_through_symlink;
        if may_go_over_lower && !over_lower || !real_path && self.handed_out_over_lower {
            self.wait_for_writers()?;
        }
        let parent = parent_dir.as_fd();
        // A directory the layer made gets the times its entry names.
        if !parent_fresh {
            self.remember_times(parent_path, parent)?;
        }
        match kind {
            Kind::Link => {
                let target = link_target(header, "hardlink")?;
                self.hardlink(parent, path, &normalize(target)?)?;
            }
            Kind::Directory => self.make_dir(parent, name, path, meta)?,
            Kind::Regular | Kind::Contiguous | Kind::GnuSparse => {
                // A lower regular file has no names below it that other entries could be
                // using, nor is it a way to some directory: its writer removes it. Anything
                // else is removed here, once no file handed out can be in it.
                let mut unlink_first = false;
                if over_lower {
                    match at::lstat(parent, name)? {
                        None => {}
                        Some(st) if at::is_regular(&st) => unlink_first = true,
                        Some(_) => {
                            self.wait_for_writers()?;
                            self.replace(parent, path)?;
                        }
                    }
                } else {
                    self.replace(parent, path)?;
                }
                if self.hands_out(header) {
                    self.handed_out_over_lower |= over_lower;
                    self.handed_out_through_symlink |= !real_path;
                }
                self.write_file(&parent_dir, path, header, data, meta, unlink_first)?;
            }
            Kind::Symlink => {
                let target = link_target(header, "symlink")?;
                self.replace(parent, path)?;
                symlinkat(OsStr::from_bytes(target), parent, name)?;
                self.set_meta_at(parent, name, &meta, false)?;
            }
            Kind::Fifo => {
                self.replace(parent, path)?;
                mkfifoat(parent, name, Mode::from_bits_truncate(0o600))?;
                self.set_meta_at(parent, name, &meta, true)?;
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::GlobalPax | Kind::Other(_) => {
                unreachable!("skipped above")
            }
        }
        self.upper.insert(path);
        Ok(())
    }

    /// The directory entries of `path` go into, resolved again unless the previous entry had
    /// the same parent and could not have changed where it resolves to.
    ///
    /// Through an overlay, a directory this layer made is a plain directory of the upper
    /// layer, with nothing of the lower ones in it: a new name there (`direct`) is made in the
    /// upper directory itself, sparing overlayfs's work per file (lookups in every lower layer,
    /// its own inodes to set up and tear down). Only when the same path leads there through
    /// real directories alone, so it is the very directory the overlay shows; and only new
    /// names, which overlayfs has never looked up (see `overlay_seen`), so it has nothing
    /// cached that the change would make stale.
    ///
    /// Also returns whether `path` leads there through real directories alone.
    fn parent_dir(&mut self, path: &Path, direct: bool) -> Result<(Arc<OwnedFd>, bool)> {
        let upper = self.overlay_upper.filter(|_| direct);
        if let Some(cached) = &self.parent_cache
            && cached.path == path
            && cached.in_upper == upper.is_some()
        {
            return Ok((cached.fd.clone(), cached.real_path));
        }
        let in_upper = upper.and_then(|upper| at::resolve_real_dir(upper, path).ok());
        let (fd, in_upper, real_path) = if let Some(fd) = in_upper {
            (fd, true, true)
        } else if let Ok(fd) = at::resolve_real_dir(self.root, path) {
            (fd, false, true)
        } else {
            // Through a symlink, or with directories to make.
            let fd = at::resolve_dir_creating(self.root, path)
                .with_context(|| format!("resolving parent directory {}", shown(path)))?;
            (fd, false, false)
        };
        let fd = Arc::new(fd);
        self.parent_cache = Some(ParentDir {
            path: path.to_path_buf(),
            in_upper,
            real_path,
            fd: fd.clone(),
        });
        Ok((fd, real_path))
    }

    /// Removes whatever is at `name`, unless it is a directory that a directory entry merges into.
    fn replace(&mut self, parent: BorrowedFd, path: &Path) -> Result<()> {
        // In a directory this layer created, only this layer's entries can exist: a name not
        // among them needs no removal (one failing unlink saved per file).
        let parent_path = path.parent().unwrap_or(Path::new(""));
        if self.fresh_dirs.contains(parent_path) && !self.upper.contains(path) {
            return Ok(());
        }
        self.fresh_dirs.remove_tree(path);
        let name = path
            .file_name()
            .expect("entries below the root have a name");
        let removed = at::remove_all(parent, name)
            .with_context(|| format!("removing the existing {}", shown(path)))?;
        if removed {
            // It may have been a directory or symlink some resolved parent went through.
            self.parent_cache = None;
            // Directories made or changed below it are gone: their modes and times must not
            // land, at the end of the layer, on whatever the path leads to then (a symlink's
            // target, say).
            forget_tree(&mut self.dirs, path);
            forget_tree(&mut self.touched, path);
        }
        Ok(())
    }

    /// Whether a file of `size` bytes goes to the writer threads.
    fn hands_out(&self, header: &Header) -> bool {
        // A sparse file's size says nothing of its data: it is written here, hole by hole.
        header.sparse.is_none() && header.size as u64 <= SMALL_FILE && self.writers.threaded()
    }

    /// Writes a regular file: a small one through the writer threads if there are any, a
    /// larger one here, straight from the stream. `unlink_first`: a regular file of a lower
    /// layer is in the way, for the small file's writer to remove.
    fn write_file(
        &mut self,
        parent: &Arc<OwnedFd>,
        path: &Path,
        header: &Header,
        data: &mut impl Read,
        meta: Meta,
        unlink_first: bool,
    ) -> Result<()> {
        if !self.hands_out(header) {
            if unlink_first {
                remove_file(parent.as_fd(), path)?;
            }
            let buf = &mut self.buf;
            let fill = |file: &mut File| match &header.sparse {
                None => copy_data(data, file, buf),
                Some(regions) => fill_sparse(data, file, regions, header.size as u64, buf),
            };
            let skipped = create_file(parent.as_fd(), path, &meta, self.mapped_ids, fill)?;
            self.note_skipped(skipped);
            return Ok(());
        }
        let len = header.size as usize;
        let mut contents = self.buffers.take(len);
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
                create_file(parent.as_fd(), &owned_path, &meta, mapped_ids, fill)
            })();
            buffers.give_back(contents);
            created.context(entry_name)
        };
        self.handed_out.insert(path);
        self.writers.submit(self.entry, Box::new(job))
    }

    fn make_dir(
        &mut self,
        parent: BorrowedFd,
        name: &OsStr,
        path: &Path,
        meta: Meta,
    ) -> Result<()> {
        let parent_is_fresh = self
            .fresh_dirs
            .contains(path.parent().unwrap_or(Path::new("")));
        let existing = if parent_is_fresh && !self.upper.contains(path) {
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
            nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700))?;
            self.fresh_dirs.insert(path);
        }
        let dir = at::open_subdir(parent, name)?;
        // What it replaced (a whiteout, or a file of this layer) hid a directory below that
        // would otherwise show through.
        if self.parentless && existing.is_some() && created {
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
                if xattr_kind(&key) == XattrKind::Applied && !named && !recorded {
                    at::remove_xattr(dir.as_fd(), &key)?;
                }
            }
        }
        let skipped = set_xattrs(dir.as_fd(), path, &meta, placement.record)?;
        self.note_skipped(skipped);
        self.dirs.insert(
            path.to_path_buf(),
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        Ok(())
    }

    fn hardlink(&mut self, parent: BorrowedFd, path: &Path, target: &Path) -> Result<()> {
        let name = path
            .file_name()
            .expect("entries below the root have a name");
        let (Some(target_parent), Some(target_name)) = (target.parent(), target.file_name()) else {
            bail!("hardlink to the root directory");
        };
        if self.parentless && !self.upper.contains(target) {
            return Err(needs_lowers(
                target,
                "is a hardlink target from a layer below",
            ));
        }
        let link_parent = path.parent().unwrap_or(Path::new(""));
        self.overlay_seen.insert(target_parent);
        self.overlay_seen.insert(link_parent);
        let target_dir = at::resolve_dir(self.root, target_parent)
            .with_context(|| format!("hardlink target {} does not exist", shown(target)))?;
        // A parentless layer's own whiteout is a device recording a removal: as on a tree
        // with its lower layers, what it removed is not there to link to.
        let target_st = match at::lstat(target_dir.as_fd(), target_name)? {
            Some(st) if !(self.parentless && at::is_whiteout(&st)) => st,
            _ => bail!("hardlink target {} does not exist", shown(target)),
        };
        if at::is_dir(&target_st) {
            bail!("hardlink target {} is a directory", shown(target));
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
        .with_context(|| format!("linking to {}", shown(target)))?;
        let old = (target_st.st_dev, target_st.st_ino);
        if target_st.st_nlink > 1
            && let Some(now) = at::lstat(target_dir.as_fd(), target_name)?
            && (now.st_dev, now.st_ino) != old
        {
            self.rejoin_link_group(old, target)?;
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
        let target_dir = at::resolve_dir(self.root, target_parent)?;
        for path in others {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let Ok(dir) = at::resolve_dir(self.root, parent) else {
                continue;
            };
            // Only names still on the old inode: this layer may have replaced some.
            match at::lstat(dir.as_fd(), name)? {
                Some(st) if (st.st_dev, st.st_ino) == old => {}
                _ => continue,
            }
            // Relinking touches a directory the layer may not name: its times are kept.
            self.remember_times(parent, dir.as_fd())?;
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
            let dir = layer.map_or(self.root, |index| self.overlay_lowers[index]);
            let mut groups = HashMap::new();
            find_link_groups(dir, Path::new(""), &mut groups)?;
            self.link_groups.insert(layer, groups);
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
        for (index, &layer) in self.overlay_lowers.iter().enumerate() {
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

    /// Owner, mode (`chmod`: not for symlinks, whose mode means nothing) and times of a
    /// symlink or FIFO, by name. Neither can carry the `user.*` owner record: ids the
    /// namespace cannot map are lost, as with umoci.
    fn set_meta_at(
        &self,
        parent: BorrowedFd,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        if let Some((uid, gid)) = owner::place(meta.uid, meta.gid, self.mapped_ids).chown {
            let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
            fchownat(parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        }
        if chmod {
            // Only ever a FIFO this process just made, in a tree nobody else writes; fchmodat
            // cannot refuse to follow a symlink without /proc, which the sandbox lacks.
            let mode = Mode::from_bits_truncate(meta.mode & 0o7777);
            fchmodat(parent, name, mode, FchmodatFlags::FollowSymlink)?;
        }
        let flags = UtimensatFlags::NoFollowSymlink;
        utimensat(parent, name, &meta.mtime, &meta.mtime, flags)?;
        Ok(())
    }

    fn whiteout(&mut self, target: &Path) -> Result<()> {
        self.parent_cache = None;
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            bail!("whiteout of the root directory");
        };
        if self.parentless {
            return self.record_whiteout(parent, name, target);
        }
        // Only a directory that exists holds names overlayfs may have looked up: keeping the
        // others would cost memory for every whiteout under made-up parents.
        let Some(parent_fd) = existing_dir(self.root, parent)? else {
            return Ok(());
        };
        self.overlay_seen.insert(parent);
        self.remember_times(parent, parent_fd.as_fd())?;
        self.remove_lower(parent_fd.as_fd(), name, target)
    }

    fn opaque(&mut self, dir: &Path) -> Result<()> {
        self.parent_cache = None;
        if self.parentless {
            if !self.fresh_dirs.contains(dir) {
                return Err(needs_lowers(
                    dir,
                    "is made opaque but not made by this layer",
                ));
            }
            let fd = reopen_dir(self.root, dir).context("opening the opaque directory")?;
            return mark_opaque(fd.as_fd(), dir);
        }
        self.overlay_seen.insert(dir);
        let Some(fd) = existing_dir(self.root, dir)? else {
            return Ok(());
        };
        self.remember_times(dir, fd.as_fd())?;
        for child in at::list(fd.as_fd())? {
            self.remove_lower(fd.as_fd(), &child, &dir.join(&child))?;
        }
        self.upper.insert(dir);
        Ok(())
    }

    /// A parentless layer's whiteout, as overlayfs would record it: a whiteout device hides the
    /// name below; a directory of this layer keeps its own entries and hides the ones below
    /// (it becomes opaque).
    fn record_whiteout(&mut self, parent: &Path, name: &OsStr, target: &Path) -> Result<()> {
        if self.upper.contains(target) {
            return match reopen_dir(self.root, target) {
                Some(dir) => mark_opaque(dir.as_fd(), target),
                None => Ok(()),
            };
        }
        if !parent.as_os_str().is_empty() && !self.fresh_dirs.contains(parent) {
            return Err(needs_lowers(
                parent,
                "holds a whiteout but is not made by this layer",
            ));
        }
        let parent_fd = existing_dir(self.root, parent)?.context("whiteout's directory")?;
        match mknodat(parent_fd.as_fd(), name, SFlag::S_IFCHR, Mode::empty(), 0) {
            // A whiteout of the same name earlier in the layer.
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("recording whiteout {}", shown(target)));
            }
        }
        // The name is taken now: an entry of the same name later in the layer replaces it.
        self.upper.insert(target);
        Ok(())
    }

    /// Removes what lower layers put at `path`, descending into directories this layer wrote to.
    fn remove_lower(&self, parent: BorrowedFd, name: &OsStr, path: &Path) -> Result<()> {
        if !self.upper.contains(path) {
            return at::remove_all(parent, name)
                .map(drop)
                .with_context(|| format!("removing {}", shown(path)));
        }
        match at::lstat(parent, name)? {
            Some(st) if at::is_dir(&st) => {
                let dir = at::open_subdir(parent, name)?;
                for child in at::list(dir.as_fd())? {
                    self.remove_lower(dir.as_fd(), &child, &path.join(&child))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// overlayfs's mark (as a rootless mount reads it) of a directory that hides the ones below.
fn mark_opaque(dir: BorrowedFd, path: &Path) -> Result<()> {
    at::set_xattr(dir, b"user.overlay.opaque", b"y")
        .with_context(|| format!("marking {} opaque", shown(path)))
}

fn needs_lowers(path: &Path, why: &str) -> anyhow::Error {
    NeedsLowers(format!("{} {why}", shown(path))).into()
}

/// Removes the file `path` (named in `parent`), which is not a directory.
fn remove_file(parent: BorrowedFd, path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .expect("entries below the root have a name");
    unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
        .with_context(|| format!("removing the existing {}", shown(path)))
}

/// Creates the regular file `path` (named in `parent`) with `meta`, its contents written by
/// `fill`. Returns what could not be reproduced.
fn create_file(
    parent: BorrowedFd,
    path: &Path,
    meta: &Meta,
    mapped_ids: u64,
    fill: impl FnOnce(&mut File) -> Result<()>,
) -> Result<Vec<Skipped>> {
    let name = path
        .file_name()
        .expect("entries below the root have a name");
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let placement = owner::place(meta.uid, meta.gid, mapped_ids);
    // Created with its final permissions where nothing later would change them (the fd is
    // writable whatever the mode says): a chown, or setuid/setgid/sticky bits, which are set
    // explicitly after it, need a chmod anyway.
    let chmod_later = placement.chown.is_some() || meta.mode & 0o7000 != 0;
    let create_mode = if chmod_later {
        0o600
    } else {
        meta.mode & 0o777
    };
    let mut file = File::from(openat(
        parent,
        name,
        flags,
        Mode::from_bits_truncate(create_mode),
    )?);
    fill(&mut file)?;
    if let Some((uid, gid)) = placement.chown {
        fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    if chmod_later {
        // After chown, which clears setuid and file capabilities.
        fchmod(&file, Mode::from_bits_truncate(meta.mode & 0o7777))?;
    }
    let skipped = set_xattrs(file.as_fd(), path, meta, placement.record)?;
    futimens(&file, &meta.mtime, &meta.mtime)?;
    Ok(skipped)
}

/// Copies an entry's data into `file`.
fn copy_data(data: &mut impl Read, file: &mut File, buf: &mut [u8]) -> Result<()> {
    loop {
        match data.read(buf)? {
            0 => return Ok(()),
            n => file.write_all(&buf[..n])?,
        }
    }
}

/// Writes a sparse file of `size` bytes: its data regions where they go, holes left as
/// holes, so that a file of 60 GB of holes costs no disk.
fn fill_sparse(
    data: &mut impl Read,
    file: &mut File,
    regions: &[Region],
    size: u64,
    buf: &mut [u8],
) -> Result<()> {
    file.set_len(size)?;
    for region in regions {
        let mut done = 0;
        while done < region.length {
            let want = buf.len().min((region.length - done) as usize);
            data.read_exact(&mut buf[..want])?;
            file.write_all_at(&buf[..want], region.offset + done)?;
            done += want as u64;
        }
    }
    // The reader says here whether the entry holds more data than its map places.
    if data.read(&mut buf[..1])? != 0 {
        bail!("sparse file's entry holds more data than its map places");
    }
    Ok(())
}

/// What becomes of an image's xattr.
#[derive(Debug, PartialEq, Eq)]
enum XattrKind {
    /// `user.*` and `security.capability`, which a user namespace's root may set.
    Applied,
    /// `user.overlay.*` would steer overlayfs reading the store's layers (whiteouts,
    /// redirects): an image may not set them, as umoci escapes them. (Rootless podman leaks
    /// `user.overlay.origin` and `.impure` from its storage into the layers it builds.)
    Overlay,
    /// `trusted.*`, other `security.*`: the kernel gives them to no user namespace.
    Privileged,
}

fn xattr_kind(key: &[u8]) -> XattrKind {
    if key.starts_with(b"user.overlay.") {
        XattrKind::Overlay
    } else if key.starts_with(b"user.") || key == b"security.capability" {
        XattrKind::Applied
    } else {
        XattrKind::Privileged
    }
}

/// The entry's xattrs and the owner record; returns those that could not be set.
fn set_xattrs(
    fd: BorrowedFd,
    path: &Path,
    meta: &Meta,
    owner_record: Option<Vec<u8>>,
) -> Result<Vec<Skipped>> {
    let mut not_set = Vec::new();
    for (key, value) in &meta.xattrs {
        let refused = match xattr_kind(key) {
            XattrKind::Applied => match at::set_xattr(fd, key, value) {
                Ok(()) => continue,
                Err(err) => format!("not set: {err}"),
            },
            XattrKind::Overlay => "overlayfs metadata, not applied".to_owned(),
            XattrKind::Privileged => "needs privilege a user namespace does not give".to_owned(),
        };
        let reason = format!("xattr {}: {refused}", shown_bytes(key));
        not_set.push(skipped(path, reason));
    }
    if let Some(record) = owner_record {
        at::set_xattr(fd, owner::XATTR.as_bytes(), &record)
            .with_context(|| format!("recording the image owner in {}", owner::XATTR))?;
    }
    Ok(not_set)
}

fn skipped(path: &Path, reason: impl Into<String>) -> Skipped {
    Skipped {
        path: shown(path),
        reason: reason.into(),
    }
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

/// Paths of multiply-linked files by (device, inode).
type LinkGroups = HashMap<(u64, u64), Vec<PathBuf>>;

/// Every multiply-linked non-directory below `dir` (at `path`), grouped by inode.
fn find_link_groups(dir: BorrowedFd, path: &Path, groups: &mut LinkGroups) -> Result<()> {
    for name in at::list(dir)? {
        let Some(st) = at::lstat(dir, &name)? else {
            continue;
        };
        let child = path.join(&name);
        if at::is_dir(&st) {
            find_link_groups(at::open_subdir(dir, &name)?.as_fd(), &child, groups)?;
        } else if st.st_nlink > 1 {
            groups
                .entry((st.st_dev, st.st_ino))
                .or_default()
                .push(child);
        }
    }
    Ok(())
}

/// The directory at `path`, or `None` when it is missing or not a directory (a whiteout for
/// something that is not there has nothing to do).
fn existing_dir(root: BorrowedFd, path: &Path) -> Result<Option<std::os::fd::OwnedFd>> {
    match at::resolve_dir(root, path) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("resolving {}", shown(path))),
    }
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
