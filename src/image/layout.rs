//! An OCI image layout, in a directory or in an archive (`oci-archive:`), and the reads of its
//! files.
//!
//! Every blob is read as bytes and checked against its descriptor's size and digest before
//! anything parses it (by the caller), so the parser only ever sees content the index vouches
//! for.

use std::fs;
use std::io;
use std::path::Path;

use oci_spec::image::{ImageIndex, OciLayout};

use super::ImageError;
use super::files::{Archive, Files};
use super::source::{BlobInput, garbled, parse_index};
use crate::digest::Digest;

/// The root of an OCI image layout: `oci-layout`, `index.json` and `blobs/sha256/<hex>`.
#[derive(Clone, Debug)]
pub struct Layout {
    files: Files,
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
        Layout::checked(Files::Dir(root.to_owned()))
    }

    /// The layout in the tar archive at `path` (`oci-archive:`), read in place.
    pub fn in_archive(path: &Path) -> Result<Layout, ImageError> {
        Layout::checked(Files::Archive(Archive::open(path)?))
    }

    /// Checks that `files` hold an `oci-layout` marker that parses.
    fn checked(files: Files) -> Result<Layout, ImageError> {
        let bytes = match files.read_small("oci-layout", None, None) {
            Err(ImageError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::NotALayout {
                    path: files.root().to_owned(),
                    reason: "has no oci-layout file",
                });
            }
            result => result?,
        };
        OciLayout::from_reader(&bytes[..]).map_err(|error| {
            garbled(&files.describe("oci-layout").display().to_string(), &error)
        })?;
        Ok(Layout { files })
    }

    /// The name of the blob `digest` in the layout.
    fn blob_name(digest: &Digest) -> String {
        format!("blobs/sha256/{}", digest.hex())
    }

    /// Opens a blob for streaming; its size and digest are the reader's to check.
    pub fn open_blob(&self, digest: &Digest) -> Result<BlobInput, ImageError> {
        self.files
            .open(&Layout::blob_name(digest))
            .map(|(input, _)| input)
            .map_err(|error| self.blob_error(digest, error))
    }

    /// The layout's `index.json`, which, having no descriptor, is only size-capped.
    pub(super) fn index_json(&self) -> Result<ImageIndex, ImageError> {
        let bytes = self.files.read_small("index.json", None, None)?;
        parse_index(
            &self.files.describe("index.json").display().to_string(),
            &bytes,
        )
    }

    /// Reads the blob `digest`, which must be `expected` bytes long: a small one (a JSON
    /// document), whose size the caller has checked. The caller checks its digest.
    pub(super) fn small_blob(
        &self,
        what: &str,
        digest: &Digest,
        expected: u64,
    ) -> Result<Vec<u8>, ImageError> {
        let name = Layout::blob_name(digest);
        match self.files.read_small(&name, Some(what), Some(expected)) {
            Err(ImageError::Io { error, .. }) => Err(self.blob_error(digest, error)),
            result => result,
        }
    }

    fn blob_error(&self, digest: &Digest, error: io::Error) -> ImageError {
        match error.kind() {
            io::ErrorKind::NotFound => ImageError::MissingBlob {
                digest: digest.clone(),
                layout: self.files.root().to_owned(),
            },
            _ => ImageError::Io {
                path: self.files.describe(&Layout::blob_name(digest)),
                error,
            },
        }
    }
}
