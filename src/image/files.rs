//! Where an image's files are: a directory (an OCI layout), or the members of a tar archive
//! (`oci-archive:`, `docker-archive:`), read in place, by offset, without extracting them.
//!
//! An archive's headers are read once, by `strata-tar` (Go's rules, and extension headers
//! capped at 1 MiB), into an index of its regular files and links, its data passed over by
//! seeking. Only names are taken from it: no path from the archive is ever opened on the host.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_tar::Kind;

use super::source::BlobInput;
use super::{ImageError, MAX_JSON_SIZE};

/// The most members an image archive may have: real ones hold a few per layer.
const MAX_MEMBERS: usize = 100_000;
/// The most links followed to find a member (skopeo's archives link `<id>/layer.tar` to the
/// layer's file).
const MAX_LINKS: usize = 8;

/// A directory, or an archive read in place.
#[derive(Clone, Debug)]
pub enum Files {
    /// A directory on the host.
    Dir(PathBuf),
    /// A tar archive's regular files.
    Archive(Arc<Archive>),
}

/// A tar archive, indexed: where each regular file's contents are.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    file: File,
    /// Each regular file and link by its name (without `./`).
    members: HashMap<String, Member>,
}

/// What the index knows of a member.
#[derive(Clone, Debug)]
enum Member {
    /// A regular file: its contents' offset and size.
    File(u64, u64),
    /// A symbolic or hard link to the member of this name.
    Link(String),
}

impl Archive {
    /// Opens the tar archive at `path` and indexes its regular files.
    pub fn open(path: &Path) -> Result<Arc<Archive>, ImageError> {
        let io_error = |error: io::Error| ImageError::Io {
            path: path.to_owned(),
            error,
        };
        let metadata = fs::metadata(path).map_err(io_error)?;
        if !metadata.is_file() {
            return Err(io_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let file = File::open(path).map_err(io_error)?;
        let garbled = |detail: String| ImageError::Garbled {
            what: format!("archive {}", path.display()),
            detail,
        };
        let mut members = HashMap::new();
        let mut archive = strata_tar::Archive::new(&file);
        while let Some(header) = archive
            .next_header()
            .map_err(|error| garbled(error.to_string()))?
        {
            if members.len() == MAX_MEMBERS {
                return Err(garbled(format!("more than {MAX_MEMBERS} members")));
            }
            let offset = archive
                .position()
                .map_err(|error| garbled(error.to_string()))?;
            if let Some(name) = utf8_name(&header.name) {
                let member = match header.kind {
                    // A sparse file's stored data is not its contents: no image has one.
                    Kind::Regular | Kind::Contiguous if header.sparse.is_none() => {
                        u64::try_from(header.size)
                            .ok()
                            .map(|size| Member::File(offset, size))
                    }
                    Kind::Symlink | Kind::Link => {
                        // A symbolic link's target is relative to its directory; a hard
                        // link's is a member's name.
                        let base = match name.rfind('/') {
                            Some(slash) if header.kind == Kind::Symlink => &name[..slash],
                            _ => "",
                        };
                        utf8_name(&header.link_name)
                            .and_then(|target| join(base, &target))
                            .map(Member::Link)
                    }
                    _ => None,
                };
                if let Some(member) = member {
                    members.insert(name, member);
                }
            }
            archive
                .seek_past_data()
                .map_err(|error| garbled(error.to_string()))?;
        }
        Ok(Arc::new(Archive {
            path: path.to_owned(),
            file,
            members,
        }))
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the member `name` is called in messages.
    pub fn describe(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("{}:{name}", self.path.display()))
    }

    /// Where the regular file `name` (or the one it links to) is: its offset and size.
    pub fn member(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = name;
        for _ in 0..=MAX_LINKS {
            match self.members.get(name)? {
                Member::File(offset, size) => return Some((*offset, *size)),
                Member::Link(target) => name = target,
            }
        }
        None
    }

    /// The member `name`, for reading.
    pub fn open_member(&self, name: &str) -> io::Result<(BlobInput, u64)> {
        let (start, len) = self.member(name).ok_or(io::ErrorKind::NotFound)?;
        let file = self.file.try_clone()?;
        Ok((BlobInput::Slice { file, start, len }, len))
    }
}

/// A member's name as UTF-8, without a leading `./` or `/`.
fn utf8_name(bytes: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(bytes).ok()?;
    Some(
        name.trim_start_matches("./")
            .trim_start_matches('/')
            .to_owned(),
    )
}

/// `target` taken from the directory `base`, both inside the archive (whose root an absolute
/// target starts from), as one name; `None` if it would leave the archive's root.
fn join(base: &str, target: &str) -> Option<String> {
    let base = if target.starts_with('/') { "" } else { base };
    let mut parts: Vec<&str> = base.split('/').filter(|part| !part.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

impl Files {
    /// What `name` is called in messages.
    pub fn describe(&self, name: &str) -> PathBuf {
        match self {
            Files::Dir(root) => root.join(name),
            Files::Archive(archive) => archive.describe(name),
        }
    }

    /// Where the files are, for messages.
    pub fn root(&self) -> &Path {
        match self {
            Files::Dir(root) => root,
            Files::Archive(archive) => &archive.path,
        }
    }

    /// Opens the regular file `name`; returns it and its size. Anything but a regular file
    /// is refused before it is opened: opening a FIFO planted in a layout would block
    /// forever.
    pub fn open(&self, name: &str) -> io::Result<(BlobInput, u64)> {
        match self {
            Files::Dir(root) => {
                let path = root.join(name);
                let metadata = fs::metadata(&path)?;
                if !metadata.is_file() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a regular file",
                    ));
                }
                Ok((BlobInput::File(File::open(&path)?), metadata.len()))
            }
            Files::Archive(archive) => archive.open_member(name),
        }
    }

    /// Reads `name`, a JSON document, which must be `expected` bytes long (if given) and at
    /// most [`MAX_JSON_SIZE`]; messages call it `what`, or else by its name.
    pub fn read_small(
        &self,
        name: &str,
        what: Option<&str>,
        expected: Option<u64>,
    ) -> Result<Vec<u8>, ImageError> {
        let io_error = |error| ImageError::Io {
            path: self.describe(name),
            error,
        };
        let (input, size) = self.open(name).map_err(io_error)?;
        let what = || what.map_or_else(|| self.describe(name).display().to_string(), str::to_owned);
        if let Some(expected) = expected
            && size != expected
        {
            return Err(ImageError::SizeMismatch {
                what: what(),
                expected,
                actual: size,
            });
        }
        if size > MAX_JSON_SIZE {
            return Err(ImageError::TooLarge { what: what(), size });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        input
            .into_reader()
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_names_inside_the_archive() {
        let table = [
            ("abc", "../x.tar", Some("x.tar")),
            ("abc", "../../x.tar", None),
            ("abc", "x.tar", Some("abc/x.tar")),
            ("a/b", "../x.tar", Some("a/x.tar")),
            ("a/b", "./../../x", Some("x")),
            ("a/b", "../../../x", None),
            ("", "blobs/sha256/1", Some("blobs/sha256/1")),
            ("a", "/abs", Some("abs")),
        ];
        for (base, target, joined) in table {
            assert_eq!(join(base, target).as_deref(), joined, "{base} + {target}");
        }
    }
}
