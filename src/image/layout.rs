//! An OCI image layout directory, and verified reads of the JSON documents in it.
//!
//! Every blob is read as bytes and checked against its descriptor's size and digest before
//! anything parses it, so the parser only ever sees content the index vouches for.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, OciLayout};

use super::source::{garbled, parse_index};
use super::{ImageError, MAX_JSON_SIZE};
use crate::digest::Digest;

/// The root of an OCI image layout: `oci-layout`, `index.json` and `blobs/sha256/<hex>`.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Checks that `root` holds an `oci-layout` marker that parses.
    pub fn open(root: &Path) -> Result<Layout, ImageError> {
        let not_a_layout = |reason| ImageError::NotALayout {
            path: root.to_owned(),
            reason,
        };
        match fs::metadata(root) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(not_a_layout("does not exist"));
            }
            Err(error) => {
                return Err(ImageError::Io {
                    path: root.to_owned(),
                    error,
                });
            }
            Ok(metadata) if !metadata.is_dir() => return Err(not_a_layout("is not a directory")),
            Ok(_) => {}
        }
        let marker = root.join("oci-layout");
        let bytes = match read_file(&marker) {
            Err(ImageError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                return Err(not_a_layout("has no oci-layout file"));
            }
            result => result?,
        };
        OciLayout::from_reader(&bytes[..])
            .map_err(|error| garbled(&marker.display().to_string(), &error))?;
        Ok(Layout {
            root: root.to_owned(),
        })
    }

    /// Where the blob `digest` is in the layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Opens a blob for streaming; its size and digest are the reader's to check.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ImageError> {
        open_regular(&self.blob_path(digest))
            .map(|(file, _)| file)
            .map_err(|error| self.blob_error(digest, error))
    }

    /// The layout's `index.json`, which, having no descriptor, is only size-capped.
    pub(super) fn index_json(&self) -> Result<ImageIndex, ImageError> {
        let path = self.root.join("index.json");
        parse_index(&path.display().to_string(), &read_file(&path)?)
    }

    /// Reads the blob `digest`, which must be `expected` bytes long: a small one (a JSON
    /// document), whose size the caller has checked. The caller checks its digest.
    pub(super) fn small_blob(
        &self,
        what: &str,
        digest: &Digest,
        expected: u64,
    ) -> Result<Vec<u8>, ImageError> {
        let (file, actual) = open_regular(&self.blob_path(digest))
            .map_err(|error| self.blob_error(digest, error))?;
        if actual != expected {
            return Err(ImageError::SizeMismatch {
                what: what.to_owned(),
                expected,
                actual,
            });
        }
        let mut bytes = Vec::with_capacity(expected as usize);
        file.take(expected)
            .read_to_end(&mut bytes)
            .map_err(|error| ImageError::Io {
                path: self.blob_path(digest),
                error,
            })?;
        Ok(bytes)
    }

    fn blob_error(&self, digest: &Digest, error: io::Error) -> ImageError {
        match error.kind() {
            io::ErrorKind::NotFound => ImageError::MissingBlob {
                digest: digest.clone(),
                layout: self.root.clone(),
            },
            _ => ImageError::Io {
                path: self.blob_path(digest),
                error,
            },
        }
    }
}

/// Opens a regular file and returns its size. Anything else is refused before opening, since
/// opening a FIFO planted in the layout would block forever.
fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let metadata = fs::metadata(path)?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((File::open(path)?, metadata.len()))
}

/// Reads a small file that no descriptor describes, refusing anything over [`MAX_JSON_SIZE`].
fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    let io_error = |error| ImageError::Io {
        path: path.to_owned(),
        error,
    };
    let (file, size) = open_regular(path).map_err(io_error)?;
    if size > MAX_JSON_SIZE {
        return Err(ImageError::TooLarge {
            what: path.display().to_string(),
            size,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_JSON_SIZE)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    Ok(bytes)
}
