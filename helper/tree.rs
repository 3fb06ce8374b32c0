//! Whole-tree work the helper does besides applying layers: copying a snapshot (to prepare the
//! next one, or to produce DEST) and clearing a directory.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::thread;

use anyhow::{Context, Result, anyhow};
use nix::dir::Type;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, copy_file_range, openat, readlinkat};
use nix::sys::sendfile::sendfile;
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mkdirat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, mkfifoat, symlinkat};
use nix::unistd::{Whence, lseek};

use crate::at;

/// Threads copying at once: reading one tree and writing the other is mostly kernel work,
/// which spreads over cores.
const MAX_COPY_THREADS: usize = 4;
/// Directories waiting for a thread, at most; beyond that a thread keeps a subdirectory for
/// itself.
const MAX_WAITING_DIRS: usize = 256;

/// Copies everything inside `source` into the empty directory `dest`: contents (through
/// `copy_file_range`, which reflinks where the filesystem can), hardlinks as hardlinks within
/// the copy, owners, modes, times and xattrs. Nothing is shared with `source`, so the copy can
/// be changed without touching it. Symlinks are copied, never followed.
///
/// Threads share the directories still to copy; a thread sets a directory's metadata once it
/// has made its entries. What needs the rest of the tree in place comes after, in this thread:
/// files with several names (a later name links to the first copy), then the metadata of the
/// directories that hold them, deepest first.
pub fn copy(source: BorrowedFd, dest: BorrowedFd) -> Result<()> {
    let via = Via::between(source, dest)?;
    let queue = Queue {
        source,
        dest,
        via,
        state: Mutex::new(QueueState {
            waiting: vec![PathBuf::new()],
            busy: 0,
            failure: None,
        }),
        changed: Condvar::new(),
    };
    let threads = thread::available_parallelism().map_or(1, |n| n.get().min(MAX_COPY_THREADS));
    let mut later = Later::default();
    thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(|| queue.work())).collect();
        for worker in workers {
            let found = worker
                .join()
                .map_err(|_| anyhow!("a copying thread panicked"))?;
            later.dirs.extend(found.dirs);
            later.linked.extend(found.linked);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    if let Some(err) = queue.state.into_inner().expect("workers are done").failure {
        return Err(err);
    }
    copy_linked(source, dest, via, later.linked)?;
    finish_dirs(dest, later.dirs)
}

/// Removes everything inside `dir`.
pub fn clear(dir: BorrowedFd) -> Result<()> {
    at::clear(dir).context("removing the tree")
}

struct Queue<'a> {
    source: BorrowedFd<'a>,
    dest: BorrowedFd<'a>,
    via: Via,
    state: Mutex<QueueState>,
    changed: Condvar,
}

/// Directories still to copy are kept by path, and opened when a thread takes one: a thread
/// holds two fds at a time, whatever the tree's width or depth.
struct QueueState {
    waiting: Vec<PathBuf>,
    /// Threads copying a directory, which may add more.
    busy: usize,
    failure: Option<anyhow::Error>,
}

/// What a thread left for after the parallel part.
#[derive(Default)]
struct Later {
    /// Directories holding files with several names, with their source's metadata and
    /// xattrs.
    dirs: Vec<(PathBuf, FileStat, Xattrs)>,
    /// Non-directories with more than one name.
    linked: Vec<(PathBuf, FileStat)>,
}

type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

impl Queue<'_> {
    /// A thread's loop: take a directory, copy it, until none is left and none is being
    /// copied (which could add more), or until a thread failed.
    fn work(&self) -> Later {
        let mut later = Later::default();
        while let Some(task) = self.next() {
            let result = self.copy_subtree(task, &mut later);
            let mut state = self
                .state
                .lock()
                .expect("no thread panics holding the lock");
            state.busy -= 1;
            if let Err(err) = result {
                state.failure.get_or_insert(err);
            }
            self.changed.notify_all();
        }
        later
    }

    fn next(&self) -> Option<PathBuf> {
        let mut state = self
            .state
            .lock()
            .expect("no thread panics holding the lock");
        loop {
            if state.failure.is_some() {
                return None;
            }
            if let Some(task) = state.waiting.pop() {
                state.busy += 1;
                return Some(task);
            }
            if state.busy == 0 {
                return None;
            }
            state = self
                .changed
                .wait(state)
                .expect("no thread panics holding the lock");
        }
    }

    /// Hands the directory `path` to another thread, or returns it when enough are waiting.
    fn offer(&self, path: PathBuf) -> Option<PathBuf> {
        let mut state = self
            .state
            .lock()
            .expect("no thread panics holding the lock");
        if state.waiting.len() >= MAX_WAITING_DIRS {
            return Some(path);
        }
        state.waiting.push(path);
        self.changed.notify_one();
        None
    }

    /// Copies the directory at `path`, and the subdirectories no other thread took.
    fn copy_subtree(&self, path: PathBuf, later: &mut Later) -> Result<()> {
        let mut kept = vec![path];
        while let Some(path) = kept.pop() {
            let (from, to) = (|| -> Result<_> {
                let from = at::open_real_dir(self.source, &path)?;
                Ok((from, at::open_real_dir(self.dest, &path)?))
            })()
            .with_context(|| format!("opening {}", shown(&path)))?;
            let linked_before = later.linked.len();
            self.copy_dir(from.as_fd(), to.as_fd(), &path, later, &mut kept)?;
            // The root's own metadata belongs to DEST.
            if path.as_os_str().is_empty() {
                continue;
            }
            let copying = || format!("copying {}", path.display());
            let st = nix::sys::stat::fstat(&from).with_context(copying)?;
            let xattrs = at::xattrs(from.as_fd()).with_context(copying)?;
            // Its entries are all made, unless some have several names (made at the end):
            // nothing changes its times any more, and it is still open.
            if later.linked.len() == linked_before {
                finish_fd(to.as_fd(), &st, xattrs, true).with_context(copying)?;
            } else {
                later.dirs.push((path, st, xattrs));
            }
        }
        Ok(())
    }

    /// Copies the entries of the directory `path` (open as `from` and `to`): subdirectories
    /// are made, and left to other threads, or to `kept`, to copy with their metadata.
    fn copy_dir(
        &self,
        from: BorrowedFd,
        to: BorrowedFd,
        path: &Path,
        later: &mut Later,
        kept: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let entries = at::list_typed(from).with_context(|| format!("listing {}", shown(path)))?;
        for (name, listed_as) in entries {
            let path = path.join(&name);
            let subdir = (|| -> Result<bool> {
                // The listing's word saves a look-up by name: a directory's metadata is read
                // when it is copied, a file's from the fd it is copied through.
                let (st, src) = match listed_as {
                    Some(Type::Directory) => return make_dir(to, &name),
                    Some(Type::File) => {
                        let src = open_file(from, &name)?;
                        (nix::sys::stat::fstat(&src)?, Some(src))
                    }
                    _ => match at::lstat(from, &name)? {
                        Some(st) => (st, None),
                        None => return Ok(false),
                    },
                };
                match kind(&st) {
                    SFlag::S_IFDIR => return make_dir(to, &name),
                    _ if st.st_nlink > 1 => later.linked.push((path.clone(), st)),
                    SFlag::S_IFREG if let Some(src) = src => {
                        copy_file(src, to, &name, &st, self.via)?
                    }
                    _ => copy_leaf(from, to, &name, &st, self.via)?,
                }
                Ok(false)
            })()
            .with_context(|| format!("copying {}", path.display()))?;
            if subdir && let Some(path) = self.offer(path) {
                kept.push(path);
            }
        }
        Ok(())
    }
}

/// Non-directories with several names, in path order: the first name is copied, the others
/// link to it. (A hardlink to a symlink links the symlink.)
fn copy_linked(
    source: BorrowedFd,
    dest: BorrowedFd,
    via: Via,
    mut linked: Vec<(PathBuf, FileStat)>,
) -> Result<()> {
    linked.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first_copies: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for (path, st) in linked {
        (|| -> Result<()> {
            let (parent, name) = split(&path);
            let to = at::resolve_real_dir(dest, parent)?;
            match first_copies.get(&(st.st_dev, st.st_ino)) {
                Some(first) => {
                    linkat(dest, first.as_path(), to.as_fd(), name, AtFlags::empty())?;
                }
                None => {
                    let from = at::resolve_real_dir(source, parent)?;
                    copy_leaf(from.as_fd(), to.as_fd(), name, &st, via)?;
                    first_copies.insert((st.st_dev, st.st_ino), path.clone());
                }
            }
            Ok(())
        })()
        .with_context(|| format!("copying {}", path.display()))?;
    }
    Ok(())
}

/// Directory owners, modes, xattrs and times, deepest first (creating children changes them).
fn finish_dirs(dest: BorrowedFd, mut dirs: Vec<(PathBuf, FileStat, Xattrs)>) -> Result<()> {
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (path, st, xattrs) in dirs {
        (|| -> Result<()> {
            let (parent, name) = split(&path);
            let dir = at::open_subdir(at::resolve_real_dir(dest, parent)?.as_fd(), name)?;
            finish_fd(dir.as_fd(), &st, xattrs, true)
        })()
        .with_context(|| format!("copying {}", path.display()))?;
    }
    Ok(())
}

fn split(path: &Path) -> (&Path, &OsStr) {
    let name = path
        .file_name()
        .expect("copied paths name something below the root");
    (path.parent().unwrap_or(Path::new("")), name)
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// Copies a file, symlink or FIFO.
fn copy_leaf(
    from: BorrowedFd,
    to: BorrowedFd,
    name: &OsStr,
    st: &FileStat,
    via: Via,
) -> Result<()> {
    match kind(st) {
        SFlag::S_IFREG => copy_file(open_file(from, name)?, to, name, st, via)?,
        SFlag::S_IFLNK => {
            let target = readlinkat(from, name)?;
            symlinkat(target.as_os_str(), to, name)?;
            finish_at(to, name, st, None)?;
        }
        SFlag::S_IFIFO => {
            mkfifoat(to, name, Mode::from_bits_truncate(0o600))?;
            let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
            finish_at(to, name, st, Some(mode))?;
        }
        // Snapshots never hold devices or sockets: extraction skips them.
        _ => {}
    }
    Ok(())
}

/// Opens a regular file to copy, never following a symlink. (Only a file listed or found
/// to be regular: opening a FIFO would wait for a writer.)
fn open_file(from: BorrowedFd, name: &OsStr) -> nix::Result<File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(from, name, flags, Mode::empty()).map(File::from)
}

/// Makes the directory `name` in `to`, to copy later; its metadata is set once it is copied.
fn make_dir(to: BorrowedFd, name: &OsStr) -> Result<bool> {
    mkdirat(to, name, Mode::from_bits_truncate(0o700))?;
    Ok(true)
}

/// Copies the regular file `src`, whose metadata is `st`, to `name` in `to`.
fn copy_file(src: File, to: BorrowedFd, name: &OsStr, st: &FileStat, via: Via) -> Result<()> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    // Created with its final mode when no chown must come first (files here are created as
    // the namespace's root; chown would clear setuid bits).
    let mode_at_create = !needs_chown(st) && st.st_mode & 0o7000 == 0;
    let create_mode = if mode_at_create {
        st.st_mode & 0o777
    } else {
        0o600
    };
    let dst = File::from(openat(
        to,
        name,
        flags,
        Mode::from_bits_truncate(create_mode),
    )?);
    copy_contents(&src, &dst, st, via)?;
    finish_fd(dst.as_fd(), st, at::xattrs(src.as_fd())?, !mode_at_create)
}

fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "/".into()
    } else {
        path.display().to_string()
    }
}

/// How contents are copied, in the kernel: chosen once per copy, as it depends only on the
/// two trees' filesystems.
#[derive(Clone, Copy)]
enum Via {
    /// Within a filesystem: `copy_file_range`, which reflinks where the filesystem can.
    CopyFileRange,
    /// Between filesystems (a snapshot read through an overlay mount): `sendfile`, page cache
    /// to page cache. It writes at the destination's file position.
    Sendfile,
}

impl Via {
    fn between(source: BorrowedFd, dest: BorrowedFd) -> Result<Via> {
        let device = |fd| nix::sys::stat::fstat(fd).map(|st| st.st_dev);
        Ok(match device(source)? == device(dest)? {
            true => Via::CopyFileRange,
            false => Via::Sendfile,
        })
    }
}

/// Copies a file's contents: only where it has data, so that holes stay holes (a sparse
/// file of 60 GB costs no more in a copy than in its layer). A file whose blocks cover its
/// length has no holes to look for.
fn copy_contents(src: &File, dst: &File, st: &FileStat, via: Via) -> Result<()> {
    let size = st.st_size as u64;
    if st.st_blocks as u64 * 512 >= size {
        return copy_range(src, dst, 0, size, via);
    }
    let mut offset = 0;
    // Where the data copied so far ends: past it, only a hole needs the length set.
    let mut written = 0;
    while offset < size {
        let data = match lseek(src, offset as i64, Whence::SeekData) {
            Ok(data) => data as u64,
            // No data after `offset`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            // A filesystem that cannot tell: everything is data.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => offset,
            Err(e) => return Err(e.into()),
        };
        let hole = match lseek(src, data as i64, Whence::SeekHole) {
            Ok(hole) => (hole as u64).min(size),
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => size,
            Err(e) => return Err(e.into()),
        };
        copy_range(src, dst, data, hole.saturating_sub(data), via)?;
        written = written.max(hole);
        offset = hole.max(data + 1);
    }
    if written < size {
        dst.set_len(size)?;
    }
    Ok(())
}

/// Copies `len` bytes at `offset` from `src` to the same place in `dst`, a new file, `via`
/// the call that can; by hand if the kernel cannot copy these two files.
fn copy_range(src: &File, dst: &File, offset: u64, len: u64, via: Via) -> Result<()> {
    if via_kernel(src, dst, offset, len, via)? {
        return Ok(());
    }
    copy_range_by_hand(src, dst, offset, len)
}

/// [`copy_range`] in the kernel; `false` if it cannot copy these files.
fn via_kernel(src: &File, dst: &File, offset: u64, len: u64, via: Via) -> Result<bool> {
    // A new file's position is 0: after the first range, it must be moved.
    if matches!(via, Via::Sendfile) && offset > 0 {
        lseek(dst, offset as i64, Whence::SeekSet)?;
    }
    let (mut from, mut to) = (offset as i64, offset as i64);
    let end = (offset + len) as i64;
    while from < end {
        let chunk = ((end - from) as u64).min(1 << 30) as usize;
        let copied = match via {
            Via::CopyFileRange => copy_file_range(src, Some(&mut from), dst, Some(&mut to), chunk),
            Via::Sendfile => sendfile(dst, src, Some(&mut from), chunk),
        };
        match copied {
            Ok(0) => break, // The source shrank: copy what there is.
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
                if from == offset as i64 =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn copy_range_by_hand(src: &File, dst: &File, mut offset: u64, len: u64) -> Result<()> {
    let end = offset + len;
    let mut buf = strata_ring::PageBuf::new(256 * 1024);
    while offset < end {
        let want = buf.len().min((end - offset) as usize);
        let n = src.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

/// Owner, mode, xattrs and times of a copied file or directory, through its fd. Owner first:
/// chown clears setuid bits and file capabilities.
fn finish_fd(dst: BorrowedFd, st: &FileStat, xattrs: Xattrs, chmod: bool) -> Result<()> {
    if needs_chown(st) {
        let (uid, gid) = (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid));
        fchown(dst, Some(uid), Some(gid))?;
    }
    if chmod {
        fchmod(dst, Mode::from_bits_truncate(st.st_mode & 0o7777))?;
    }
    for (name, value) in xattrs {
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
