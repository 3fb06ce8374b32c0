//! Snapshots of directory trees: what an unpack produced, and proof of what it left alone.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::ops::Deref;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where rootless extraction records the image's owner of a file it could not `lchown`.
pub const ROOTLESS_XATTR: &str = "user.rootlesscontainers";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// One path as `lstat` and friends see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// `sha256:<hex>` of a regular file's contents.
    pub hash: Option<String>,
    /// A symlink's target, as stored.
    pub target: Option<PathBuf>,
    pub dev: u64,
    /// Hard links share `(dev, ino)`.
    pub ino: u64,
    pub nlink: u64,
    /// (seconds, nanoseconds)
    pub mtime: (i64, i64),
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The scanner could not list this dir, or read this file or its xattrs (a non-root test
    /// process meeting a mode-000 dir, say); what it could not see is missing.
    pub unreadable: bool,
}

impl Node {
    fn read(path: &Path) -> Node {
        let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file_type = meta.file_type();
        let kind = if file_type.is_file() {
            Kind::File
        } else if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_symlink() {
            Kind::Symlink
        } else if file_type.is_fifo() {
            Kind::Fifo
        } else if file_type.is_socket() {
            Kind::Socket
        } else if file_type.is_char_device() {
            Kind::CharDevice
        } else {
            Kind::BlockDevice
        };
        let mut unreadable = false;
        let mut hash = None;
        // Only regular files are opened: opening a FIFO would block.
        if kind == Kind::File {
            match content_hash(path) {
                Ok(digest) => hash = Some(digest),
                Err(_) => unreadable = true,
            }
        }
        let xattrs = xattrs(path).unwrap_or_else(|_| {
            unreadable = true;
            BTreeMap::new()
        });
        Node {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            hash,
            target: (kind == Kind::Symlink).then(|| fs::read_link(path).unwrap()),
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            xattrs,
            unreadable,
        }
    }

    /// The image owner recorded in `user.rootlesscontainers`, if the xattr is there.
    pub fn rootless(&self) -> Option<(Option<u32>, Option<u32>)> {
        self.xattrs
            .get(ROOTLESS_XATTR)
            .map(|value| decode_rootless(value))
    }
}

/// A digest of a file's contents that costs its data, not its size: runs of zeros count by
/// their length, whether they are holes or written zeros, so that a sparse file of 60 GB is
/// hashed as fast as its few data bytes (and equals a dense copy of it).
pub fn content_hash(path: &Path) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let file = fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = ZeroRuns::default();
    let mut offset = 0u64;
    let mut buf = vec![0; 1 << 20];
    while offset < size {
        let data = seek(&file, offset, libc::SEEK_DATA)?
            .unwrap_or(size)
            .min(size);
        hasher.zeros(data - offset);
        if data == size {
            break;
        }
        let hole = seek(&file, data, libc::SEEK_HOLE)?
            .unwrap_or(size)
            .min(size);
        let mut at = data;
        while at < hole {
            let want = buf.len().min((hole - at) as usize);
            let n = file.read_at(&mut buf[..want], at)?;
            assert!(n > 0, "{} shrank while hashed", path.display());
            hasher.bytes(&buf[..n]);
            at += n as u64;
        }
        offset = hole;
    }
    Ok(hasher.finish())
}

/// `lseek(fd, offset, whence)`; `None` where nothing is found (ENXIO).
fn seek(file: &fs::File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open fd.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset as i64, whence) };
    match at {
        -1 if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => Ok(None),
        -1 => Err(io::Error::last_os_error()),
        at => Ok(Some(at as u64)),
    }
}

/// Hashes bytes with each run of zeros replaced by its length (so that contents without
/// zeros hash as plain SHA-256 does).
#[derive(Default)]
struct ZeroRuns {
    hasher: sha2::Sha256,
    zeros: u64,
}

impl ZeroRuns {
    fn zeros(&mut self, count: u64) {
        self.zeros += count;
    }

    fn bytes(&mut self, mut bytes: &[u8]) {
        use sha2::Digest;
        while !bytes.is_empty() {
            let zeros = bytes.iter().position(|&c| c != 0).unwrap_or(bytes.len());
            self.zeros += zeros as u64;
            bytes = &bytes[zeros..];
            let data = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
            if data > 0 {
                self.flush_zeros();
                self.hasher.update(&bytes[..data]);
                bytes = &bytes[data..];
            }
        }
    }

    fn flush_zeros(&mut self) {
        use sha2::Digest;
        if self.zeros > 0 {
            self.hasher.update(format!("\0{}\0", self.zeros));
            self.zeros = 0;
        }
    }

    fn finish(mut self) -> String {
        use sha2::Digest;
        self.flush_zeros();
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

/// Every path under a root, keyed by its path relative to the root (`"."` for the root itself),
/// symlinks not followed. Derefs to the map.
#[derive(Clone, Debug)]
pub struct Tree {
    pub root: PathBuf,
    pub nodes: BTreeMap<String, Node>,
}

impl Deref for Tree {
    type Target = BTreeMap<String, Node>;

    fn deref(&self) -> &Self::Target {
        &self.nodes
    }
}

impl Tree {
    pub fn scan(root: impl AsRef<Path>) -> Tree {
        let root = root.as_ref();
        let mut nodes = BTreeMap::new();
        scan_into(&mut nodes, root, ".".to_owned());
        Tree {
            root: root.to_owned(),
            nodes,
        }
    }

    /// The node at `path`; panics with the paths there are when it is missing.
    #[track_caller]
    pub fn node(&self, path: &str) -> &Node {
        self.nodes.get(path).unwrap_or_else(|| {
            panic!(
                "no {path:?} in {}; it has {:#?}",
                self.root.display(),
                self.nodes.keys()
            )
        })
    }

    /// What differs between two scans of the same place, one line per path: `added PATH`,
    /// `removed PATH`, `changed PATH: FIELD OLD -> NEW, …`. Empty when nothing changed.
    pub fn diff(before: &Tree, after: &Tree) -> Vec<String> {
        let mut changes = Vec::new();
        for (path, old) in &before.nodes {
            match after.nodes.get(path) {
                None => changes.push(format!("removed {path}")),
                Some(new) if new != old => {
                    changes.push(format!("changed {path}: {}", describe_change(old, new)))
                }
                Some(_) => {}
            }
        }
        for path in after
            .nodes
            .keys()
            .filter(|path| !before.nodes.contains_key(*path))
        {
            changes.push(format!("added {path}"));
        }
        changes
    }
}

fn scan_into(nodes: &mut BTreeMap<String, Node>, path: &Path, relative: String) {
    let mut node = Node::read(path);
    if node.kind == Kind::Dir {
        match fs::read_dir(path) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry.unwrap().file_name();
                    let child = match relative.as_str() {
                        "." => name.to_string_lossy().into_owned(),
                        parent => format!("{parent}/{}", name.to_string_lossy()),
                    };
                    scan_into(nodes, &path.join(&name), child);
                }
            }
            Err(_) => node.unreadable = true,
        }
    }
    nodes.insert(relative, node);
}

fn describe_change(old: &Node, new: &Node) -> String {
    let mut fields = Vec::new();
    if old.mode != new.mode {
        fields.push(format!("mode {:o} -> {:o}", old.mode, new.mode));
    }
    macro_rules! compare {
        ($($field:ident),*) => {$(
            if old.$field != new.$field {
                fields.push(format!(
                    "{} {:?} -> {:?}", stringify!($field), old.$field, new.$field
                ));
            }
        )*};
    }
    compare!(
        kind, uid, gid, size, hash, target, dev, ino, nlink, mtime, xattrs, unreadable
    );
    fields.join(", ")
}

/// All xattrs of `path` itself (not of a symlink's target). A filesystem without xattrs has none.
fn xattrs(path: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY (both calls): valid C strings, and a buffer of the length passed.
    let names =
        match read_sized(|buf, len| unsafe { libc::llistxattr(path.as_ptr(), buf.cast(), len) }) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(BTreeMap::new()),
            names => names?,
        };
    let mut xattrs = BTreeMap::new();
    for name in names
        .split(|&byte| byte == 0)
        .filter(|name| !name.is_empty())
    {
        let c_name = CString::new(name).unwrap();
        let value = read_sized(|buf, len| unsafe {
            libc::lgetxattr(path.as_ptr(), c_name.as_ptr(), buf.cast(), len)
        })?;
        xattrs.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    Ok(xattrs)
}

/// Drives an xattr call that reports the size it needs when given no buffer, retrying if the
/// value grew in between.
fn read_sized(mut call: impl FnMut(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) {
            return Err(error);
        }
    }
}

/// `path` in `tree` is a regular file holding `contents`.
#[track_caller]
pub fn assert_file(tree: &Tree, path: &str, contents: &[u8]) {
    let node = tree.node(path);
    assert_eq!(node.kind, Kind::File, "{path} in {}", tree.root.display());
    assert_eq!(
        node.hash.as_deref(),
        Some(super::sha256(contents).as_str()),
        "contents of {path} in {}: expected {:?}",
        tree.root.display(),
        String::from_utf8_lossy(contents)
    );
}

/// Decodes umoci's `user.rootlesscontainers` value, protobuf
/// `Resource { uint32 uid = 1; uint32 gid = 2; }`: a missing field is 0 (proto3's default), and
/// `0xFFFFFFFF` means "no change", given as `None`.
pub fn decode_rootless(bytes: &[u8]) -> (Option<u32>, Option<u32>) {
    let mut rest = bytes;
    let (mut uid, mut gid) = (0, 0);
    while !rest.is_empty() {
        let key = varint(&mut rest);
        let field = match (key >> 3, key & 7) {
            (1, 0) => &mut uid,
            (2, 0) => &mut gid,
            (field, wire) => {
                panic!("field {field} (wire type {wire}) in {ROOTLESS_XATTR} {bytes:02x?}")
            }
        };
        *field = u32::try_from(varint(&mut rest))
            .unwrap_or_else(|_| panic!("id beyond u32 in {ROOTLESS_XATTR} {bytes:02x?}"));
    }
    let id = |id| (id != u32::MAX).then_some(id);
    (id(uid), id(gid))
}

fn varint(bytes: &mut &[u8]) -> u64 {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().expect("truncated varint");
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint longer than 10 bytes")
}
