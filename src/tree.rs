//! Whole-tree work the helper does besides applying layers: copying a snapshot (to prepare the
//! next one, or to produce DEST) and clearing a directory.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, copy_file_range, openat, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mkdirat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, mkfifoat, symlinkat};

use crate::at;

/// Copies everything inside `source` into the empty directory `dest`: contents (through
/// `copy_file_range`, which reflinks where the filesystem can), hardlinks as hardlinks within
/// the copy, owners, modes, times and xattrs. Nothing is shared with `source`, so the copy can
/// be changed without touching it. Symlinks are copied, never followed.
pub fn copy(source: BorrowedFd, dest: BorrowedFd) -> Result<()> {
    let mut copier = Copier {
        dest_root: dest,
        links: HashMap::new(),
    };
    copier.copy_children(source, dest, Path::new(""))
}

/// Removes everything inside `dir`.
pub fn clear(dir: BorrowedFd) -> Result<()> {
    at::clear(dir).context("removing the tree")
}

struct Copier<'a> {
    dest_root: BorrowedFd<'a>,
    /// Source (dev, ino) of multiply-linked files → their first copy, relative to `dest_root`.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Copier<'_> {
    fn copy_children(&mut self, from: BorrowedFd, to: BorrowedFd, path: &Path) -> Result<()> {
        for name in at::list(from).with_context(|| format!("listing {}", shown(path)))? {
            let child = path.join(&name);
            self.copy_entry(from, to, &name, &child)
                .with_context(|| format!("copying {}", child.display()))?;
        }
        Ok(())
    }

    fn copy_entry(
        &mut self,
        from: BorrowedFd,
        to: BorrowedFd,
        name: &OsString,
        path: &Path,
    ) -> Result<()> {
        let Some(st) = at::lstat(from, name)? else {
            return Ok(());
        };
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        // Any non-directory may have several names (a hardlink to a symlink links the symlink):
        // later names link to the first copy.
        if kind != SFlag::S_IFDIR && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                let flags = AtFlags::empty();
                linkat(self.dest_root, first.as_path(), to, name.as_os_str(), flags)?;
                return Ok(());
            }
            self.links.insert(key, path.to_path_buf());
        }
        match kind {
            SFlag::S_IFDIR => {
                mkdirat(to, name.as_os_str(), Mode::from_bits_truncate(0o700))?;
                let (src, dst) = (at::open_subdir(from, name)?, at::open_subdir(to, name)?);
                self.copy_children(src.as_fd(), dst.as_fd(), path)?;
                finish_fd(src.as_fd(), dst.as_fd(), &st, true)?;
            }
            SFlag::S_IFREG => {
                let src = File::from(openat(
                    from,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?);
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                // Created with its final mode when no chown must come first (files here are
                // created as the namespace's root; chown would clear setuid bits).
                let mode_at_create = !needs_chown(&st) && st.st_mode & 0o7000 == 0;
                let create_mode = if mode_at_create {
                    st.st_mode & 0o777
                } else {
                    0o600
                };
                let dst = File::from(openat(
                    to,
                    name.as_os_str(),
                    flags,
                    Mode::from_bits_truncate(create_mode),
                )?);
                copy_contents(&src, &dst, st.st_size as u64)?;
                finish_fd(src.as_fd(), dst.as_fd(), &st, !mode_at_create)?;
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(from, name.as_os_str())?;
                symlinkat(target.as_os_str(), to, name.as_os_str())?;
                finish_at(to, name, &st, None)?;
            }
            SFlag::S_IFIFO => {
                mkfifoat(to, name.as_os_str(), Mode::from_bits_truncate(0o600))?;
                finish_at(to, name, &st, Some(mode))?;
            }
            // Snapshots never hold devices or sockets: extraction skips them.
            _ => {}
        }
        Ok(())
    }
}

fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "/".into()
    } else {
        path.display().to_string()
    }
}

fn copy_contents(src: &File, dst: &File, size: u64) -> Result<()> {
    let mut left = size;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        match copy_file_range(src, None, dst, None, chunk) {
            Ok(0) => break, // The source shrank: copy what there is.
            Ok(n) => left -= n as u64,
            // Filesystems or kernels that cannot copy between these two files.
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                io::copy(&mut &*src, &mut &*dst)?;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Owner, mode, xattrs and times of a copied file or directory, through its fds. Owner first:
/// chown clears setuid bits and file capabilities.
fn finish_fd(src: BorrowedFd, dst: BorrowedFd, st: &FileStat, chmod: bool) -> Result<()> {
    if needs_chown(st) {
        let (uid, gid) = (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid));
        fchown(dst, Some(uid), Some(gid))?;
    }
    if chmod {
        fchmod(dst, Mode::from_bits_truncate(st.st_mode & 0o7777))?;
    }
    for (name, value) in at::xattrs(src)? {
        match at::set_xattr(dst, &name, &value) {
            // What could not be set at extraction (trusted.*) cannot be here either.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP)) => {}
            other => other?,
        }
    }
    let (atime, mtime) = times(st);
    futimens(dst, &atime, &mtime)?;
    Ok(())
}

/// Whether a copy of `st` must change owner: the helper creates everything as its root.
fn needs_chown(st: &FileStat) -> bool {
    st.st_uid != 0 || st.st_gid != 0
}

/// The same for symlinks and FIFOs, by name (neither carries xattrs we could set).
fn finish_at(dir: BorrowedFd, name: &OsStr, st: &FileStat, mode: Option<Mode>) -> Result<()> {
    if needs_chown(st) {
        let (uid, gid) = (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid));
        fchownat(
            dir,
            name,
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    if let Some(mode) = mode {
        // A FIFO this process just made: no symlink can be there.
        fchmodat(dir, name, mode, FchmodatFlags::FollowSymlink)?;
    }
    let (atime, mtime) = times(st);
    utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(st.st_atime, st.st_atime_nsec),
        TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    )
}

/// Opens a directory for [`copy`] or [`clear`], refusing a symlink.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}
