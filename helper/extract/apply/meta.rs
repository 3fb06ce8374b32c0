//! What a header says about the file it introduces, and how it lands on a file: contents,
//! owner, mode, xattrs, times.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags, fchmod, fchmodat, futimens, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat};
use strata_tar::{Header, Region};

use super::super::owner;
use super::super::path::{shown, shown_bytes};
use crate::at;
use strata_protocol::Skipped;

/// What a tar header says about the file it introduces.
#[derive(Clone)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: TimeSpec,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// Permission bits and setuid, setgid and sticky, as Go's `FileInfo` reads the mode
    /// field; ids outside `0..2^64` (negative ones) are as far out of reach as the largest.
    /// Xattrs are the `SCHILY.xattr.*` PAX records, empty values too, as containerd reads
    /// them (libarchive's `LIBARCHIVE.xattr.*` are read by no engine).
    pub fn of(header: &Header) -> Meta {
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

/// Creates the regular file `path` (named in `parent`) with `meta`, its contents written by
/// `fill`. Returns what could not be reproduced.
pub fn create_file(
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

/// Copies an entry's data into `file`, from where the stream holds it (no copy on the way).
pub fn copy_data(data: &mut impl BufRead, file: &mut File) -> Result<()> {
    loop {
        let buf = data.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        let written = file.write(buf)?;
        if written == 0 {
            bail!("the file takes no more bytes");
        }
        data.consume(written);
    }
}

/// Writes a sparse file of `size` bytes: its data regions where they go, holes left as
/// holes, so that a file of 60 GB of holes costs no disk.
pub fn fill_sparse(
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

/// Whether a symlink or FIFO gets the entry's mode: a symlink's means nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ModeBits {
    Set,
    Ignored,
}

/// Owner, mode and times of a symlink or FIFO, by name. Neither can carry the `user.*` owner
/// record: ids the namespace cannot map are lost, as with umoci.
pub fn set_meta_at(
    parent: BorrowedFd,
    name: &OsStr,
    meta: &Meta,
    mode: ModeBits,
    mapped_ids: u64,
) -> Result<()> {
    if let Some((uid, gid)) = owner::place(meta.uid, meta.gid, mapped_ids).chown {
        let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        fchownat(parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    }
    if mode == ModeBits::Set {
        // Only ever a FIFO this process just made, in a tree nobody else writes; fchmodat
        // cannot refuse to follow a symlink without /proc, which the sandbox lacks.
        let mode = Mode::from_bits_truncate(meta.mode & 0o7777);
        fchmodat(parent, name, mode, FchmodatFlags::FollowSymlink)?;
    }
    let flags = UtimensatFlags::NoFollowSymlink;
    utimensat(parent, name, &meta.mtime, &meta.mtime, flags)?;
    Ok(())
}

/// What becomes of an image's xattr.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrKind {
    /// `user.*` and `security.capability`, which a user namespace's root may set.
    Applied,
    /// `user.overlay.*` would steer overlayfs reading the store's layers (whiteouts,
    /// redirects): an image may not set them, as umoci escapes them. (Rootless podman leaks
    /// `user.overlay.origin` and `.impure` from its storage into the layers it builds.)
    Overlay,
    /// `trusted.*`, other `security.*`: the kernel gives them to no user namespace.
    Privileged,
}

pub fn xattr_kind(key: &[u8]) -> XattrKind {
    if key.starts_with(b"user.overlay.") {
        XattrKind::Overlay
    } else if key.starts_with(b"user.") || key == b"security.capability" {
        XattrKind::Applied
    } else {
        XattrKind::Privileged
    }
}

/// The entry's xattrs and the owner record; returns those that could not be set.
pub fn set_xattrs(
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

pub fn skipped(path: &Path, reason: impl Into<String>) -> Skipped {
    Skipped {
        path: shown(path),
        reason: reason.into(),
    }
}
