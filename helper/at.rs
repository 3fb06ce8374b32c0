//! Narrow fd-relative filesystem calls shared by layer extraction and tree copies.
//!
//! Every path here is relative to a directory fd and is resolved with `openat2(RESOLVE_IN_ROOT)`
//! or walked one component at a time with `O_NOFOLLOW`, so nothing escapes the tree the fd names
//! even before the helper's pivot_root (a second wall behind it, and what makes extraction
//! testable without namespaces).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

pub type Result<T> = io::Result<T>;

/// How often a resolution the kernel answers with EAGAIN is tried again.
const EAGAIN_ATTEMPTS: u32 = 2000;

/// How to open a directory inside `root`, never leaving it, through real directories alone:
/// where names lead through symlinks is worked out by the applier (`extract::resolve`), and
/// the kernel opens the result.
fn real_dir_in_root() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV
                | ResolveFlag::RESOLVE_NO_SYMLINKS,
        )
}

/// Opens `path` (relative, already normalised) as a directory, through real directories
/// alone: a symlink on the way is ELOOP. The result is an `O_PATH` fd fit only as the `dirfd`
/// of other `*at` calls.
///
/// The kernel takes a path of less than 4,096 bytes; a tree reached through symlinks, whose
/// names are each short, can be deeper than that. A longer path is opened a part at a time:
/// through real directories alone, each part stays below the directory before it.
pub fn resolve_real_dir(root: BorrowedFd, path: &Path) -> Result<OwnedFd> {
    let how = real_dir_in_root();
    let mut parts = parts_of(path).into_iter();
    let first = parts.next().unwrap_or_default();
    let mut dir = open_dir_in_root(root, &first, how)?;
    for part in parts {
        dir = open_dir_in_root(dir.as_fd(), &part, how)?;
    }
    Ok(dir)
}

/// Bytes of a path opened at once by [`resolve_real_dir`], at most (unless one name is
/// longer, which no filesystem takes).
const PART_BYTES: usize = 2048;

/// `path` cut between names into parts of at most [`PART_BYTES`].
fn parts_of(path: &Path) -> Vec<PathBuf> {
    let mut parts = vec![PathBuf::new()];
    for name in path.iter() {
        let last = parts.last_mut().expect("never empty");
        if !last.as_os_str().is_empty() && last.as_os_str().len() + 1 + name.len() > PART_BYTES {
            parts.push(PathBuf::new());
        }
        parts.last_mut().expect("never empty").push(name);
    }
    parts
}

fn open_dir_in_root(root: BorrowedFd, path: &Path, how: OpenHow) -> Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    // With `..` in the walk, the kernel answers EAGAIN when any rename or mount anywhere may
    // have raced with it, rather than risk an escape; the answer is to try again, after a
    // pause that doubles up to a millisecond, for about two seconds at most (another strata
    // job mounting and renaming beside this one causes it).
    let mut pause = std::time::Duration::from_micros(1);
    let mut attempts = 0;
    loop {
        match openat2(root, path, how) {
            Err(Errno::EAGAIN) if attempts < EAGAIN_ATTEMPTS => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(1));
                attempts += 1;
            }
            other => return Ok(other?),
        }
    }
}

/// Opens the directory `name` in `dir` for `*at` calls (`O_PATH`), never following a symlink.
pub fn step_into(dir: BorrowedFd, name: &OsStr) -> Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(openat(dir, name, flags, Mode::empty())?)
}

/// Opens the parent of `dir` for `*at` calls (`O_PATH`). Only for a directory below the root
/// of a tree nobody else renames in.
pub fn step_up(dir: BorrowedFd) -> Result<OwnedFd> {
    step_into(dir, OsStr::new(".."))
}

/// The contents of the regular file `path` inside `root` (symlinks followed, inside `root`),
/// at most `limit` bytes; empty when nothing is there. Anything but a regular file (a FIFO
/// that would block, a device) or a larger one is an error.
pub fn read_small_file(root: BorrowedFd, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = match openat2(root, path, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let file = std::fs::File::from(fd);
    let shown = path.display();
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!("{shown} is not a regular file")));
    }
    let mut contents = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(&file, limit + 1), &mut contents)?;
    if contents.len() as u64 > limit {
        return Err(io::Error::other(format!("{shown} is over {limit} bytes")));
    }
    Ok(contents)
}

/// `lstat` of `name` in `dir`; `None` when nothing is there.
pub fn lstat(dir: BorrowedFd, name: &OsStr) -> Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

pub fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// An overlayfs whiteout: a character device 0/0.
pub fn is_whiteout(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && st.st_rdev == 0
}

pub fn is_symlink(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
}

/// Opens the directory `name` in `dir` for reading, never following a symlink. A directory we
/// own but cannot read (mode 000 from an image) is made readable first: only a process without
/// `CAP_DAC_OVERRIDE` ever needs that.
pub fn open_subdir(dir: BorrowedFd, name: &OsStr) -> Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir, name, flags, Mode::empty()) {
        Err(Errno::EACCES) => {
            nix::sys::stat::fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(0o700),
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )?;
            Ok(openat(dir, name, flags, Mode::empty())?)
        }
        other => Ok(other?),
    }
}

/// Opens the directory at `path` below `root` for reading, through real directories alone
/// (see [`open_subdir`]). Any depth of tree costs two fds.
pub fn open_real_dir(root: BorrowedFd, path: &Path) -> Result<OwnedFd> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => open_subdir(resolve_real_dir(root, parent)?.as_fd(), name),
        _ => open_subdir(root, OsStr::new(".")),
    }
}

/// Names in a directory, without `.` and `..`.
pub fn list(dir: BorrowedFd) -> Result<Vec<OsString>> {
    Ok(list_typed(dir)?.into_iter().map(|(name, _)| name).collect())
}

/// [`list`], with each entry's type where the filesystem gives it (a hint: the entry may
/// have changed since).
pub fn list_typed(dir: BorrowedFd) -> Result<Vec<(OsString, Option<Type>)>> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut entries = Vec::new();
    for entry in Dir::from_fd(fd)?.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            entries.push((OsStr::from_bytes(name).to_owned(), entry.file_type()));
        }
    }
    Ok(entries)
}

/// Removes `name` from `dir` and, if it is a directory, everything below it. Symlinks are
/// removed, never followed. Returns whether anything was there.
pub fn remove_all(dir: BorrowedFd, name: &OsStr) -> Result<bool> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => return Ok(true),
        Err(Errno::ENOENT) => return Ok(false),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    clear(open_subdir(dir, name)?.as_fd())?;
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Directories [`clear`] keeps open on its way down; deeper ones are left through `..`.
const OPEN_LEVELS: usize = 32;

/// One directory on [`clear`]'s way down.
struct Level {
    /// `None` once closed to keep the fds bounded: it is reopened through its child's `..`.
    fd: Option<OwnedFd>,
    /// Its name in its parent, and its identity, which the reopened `..` must have.
    name: OsString,
    id: (u64, u64),
}

/// Removes everything inside `dir`, depth first, with at most [`OPEN_LEVELS`] directories
/// open however deep the tree is. Directories are named, not followed: only `..` of a
/// directory this walk went down into leads back up, and it must be the directory left.
pub fn clear(dir: BorrowedFd) -> Result<()> {
    let top = fstat_id(dir)?;
    let mut levels: Vec<Level> = Vec::new();
    let mut current = nix::unistd::dup(dir)?;
    loop {
        let next = list(current.as_fd())?.into_iter().find_map(|child| {
            match unlinkat(&current, child.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => None,
                Err(Errno::EISDIR) => Some(Ok(child)),
                Err(e) => Some(Err(io::Error::from(e))),
            }
        });
        match next {
            Some(child) => {
                let child = child?;
                let below = open_subdir(current.as_fd(), &child)?;
                let id = fstat_id(below.as_fd())?;
                let above = std::mem::replace(&mut current, below);
                // `dir` itself needs no fd of its own: it is duplicated again on the way up.
                if let Some(level) = levels.last_mut() {
                    level.fd = Some(above);
                }
                levels.push(Level {
                    fd: None,
                    name: child,
                    id,
                });
                if let Some(far) = levels.len().checked_sub(OPEN_LEVELS + 1) {
                    levels[far].fd = None;
                }
            }
            None => {
                let Some(done) = levels.pop() else {
                    return Ok(());
                };
                let parent_id = levels.last().map_or(top, |level| level.id);
                let parent = match levels.last_mut().and_then(|level| level.fd.take()) {
                    Some(fd) => fd,
                    None if levels.is_empty() => nix::unistd::dup(dir)?,
                    None => {
                        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
                        let up = openat(&current, "..", flags, Mode::empty())?;
                        if fstat_id(up.as_fd())? != parent_id {
                            return Err(io::Error::other("the tree moved while it was removed"));
                        }
                        up
                    }
                };
                drop(std::mem::replace(&mut current, parent));
                match unlinkat(&current, done.name.as_os_str(), UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// A directory's (device, inode).
fn fstat_id(fd: BorrowedFd) -> Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

pub fn set_xattr(fd: BorrowedFd, name: &[u8], value: &[u8]) -> Result<()> {
    let name = cstring(name)?;
    // SAFETY: name is NUL-terminated, value is a valid slice for its length.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes an xattr; one that is not there, or a filesystem without xattrs, is no error.
pub fn remove_xattr(fd: BorrowedFd, name: &[u8]) -> Result<()> {
    let name = cstring(name)?;
    // SAFETY: name is NUL-terminated.
    let rc = unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) };
    let err = io::Error::last_os_error();
    if rc == 0 || matches!(err.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) {
        Ok(())
    } else {
        Err(err)
    }
}

/// All xattrs of an open file, as (name, value) pairs.
pub fn xattrs(fd: BorrowedFd) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = read_sized(|buf, len| {
        // SAFETY: buf points to len writable bytes (or is null with len 0).
        unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast(), len) }
    })?;
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = cstring(name)?;
        let value = read_sized(|buf, len| {
            // SAFETY: as above; cname is NUL-terminated.
            unsafe { libc::fgetxattr(fd.as_raw_fd(), cname.as_ptr(), buf.cast(), len) }
        });
        match value {
            Ok(value) => out.push((name.to_vec(), value)),
            // Removed between list and get: nothing to copy.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Calls a `(buf, len) -> ssize_t` xattr syscall, first for the size, then for the bytes,
/// retrying if the value grew in between.
fn read_sized(call: impl Fn(*mut u8, usize) -> isize) -> Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_between_names() {
        assert_eq!(parts_of(Path::new("")), [PathBuf::new()]);
        assert_eq!(parts_of(Path::new("a/b")), [PathBuf::from("a/b")]);
        let long = "d/".repeat(3000);
        let parts = parts_of(Path::new(&long));
        assert!(
            parts
                .iter()
                .all(|part| part.as_os_str().len() <= PART_BYTES)
        );
        let joined: PathBuf = parts.iter().collect();
        assert_eq!(joined, Path::new(&long));
        assert_eq!(parts.len(), 3);
    }
}
