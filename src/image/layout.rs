//! An OCI image layout directory, and verified reads of the JSON documents in it.
//!
//! Every blob is read as bytes and checked against its descriptor's size and digest before
//! anything parses it, so the parser only ever sees content the index vouches for.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, OciLayout,
};

use super::media::{self, Kind};
use super::{ImageError, MAX_JSON_SIZE, describe};
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

    pub(super) fn index(
        &self,
        descriptor: &Descriptor,
    ) -> Result<(Digest, ImageIndex), ImageError> {
        let (digest, bytes) = self.read_json_blob("index", descriptor)?;
        let index = parse_index(&format!("index {digest}"), &bytes)?;
        Ok((digest, index))
    }

    pub(super) fn manifest(
        &self,
        descriptor: &Descriptor,
    ) -> Result<(Digest, ImageManifest), ImageError> {
        let (digest, bytes) = self.read_json_blob("manifest", descriptor)?;
        let what = format!("manifest {digest}");
        let manifest =
            ImageManifest::from_reader(&bytes[..]).map_err(|error| garbled(&what, &error))?;
        check_document(
            &what,
            manifest.schema_version(),
            manifest.media_type().as_ref(),
            Kind::Manifest,
        )?;
        Ok((digest, manifest))
    }

    pub(super) fn config(
        &self,
        descriptor: &Descriptor,
    ) -> Result<(Digest, ImageConfiguration), ImageError> {
        let (digest, bytes) = self.read_json_blob("config", descriptor)?;
        let config = ImageConfiguration::from_reader(&bytes[..])
            .map_err(|error| garbled(&format!("config {digest}"), &error))?;
        Ok((digest, config))
    }

    /// Reads the blob `descriptor` names after checking its size, and checks its digest.
    fn read_json_blob(
        &self,
        what: &str,
        descriptor: &Descriptor,
    ) -> Result<(Digest, Vec<u8>), ImageError> {
        let digest = descriptor_digest(what, descriptor)?;
        let what = format!("{what} {digest}");
        let expected = descriptor.size();
        if expected > MAX_JSON_SIZE {
            return Err(ImageError::TooLarge {
                what,
                size: expected,
            });
        }
        let (file, actual) = open_regular(&self.blob_path(&digest))
            .map_err(|error| self.blob_error(&digest, error))?;
        if actual != expected {
            return Err(ImageError::SizeMismatch {
                what,
                expected,
                actual,
            });
        }
        let mut bytes = Vec::with_capacity(expected as usize);
        file.take(expected)
            .read_to_end(&mut bytes)
            .map_err(|error| ImageError::Io {
                path: self.blob_path(&digest),
                error,
            })?;
        // Also catches a blob that changed size since it was measured.
        let actual_digest = Digest::of_bytes(&bytes);
        if actual_digest != digest {
            return Err(ImageError::DigestMismatch {
                what,
                actual: actual_digest,
            });
        }
        Ok((digest, bytes))
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

/// The sha256 digest of a descriptor; strata accepts no other algorithm.
pub(super) fn descriptor_digest(what: &str, descriptor: &Descriptor) -> Result<Digest, ImageError> {
    let digest = descriptor.digest().as_ref();
    Digest::parse(digest).map_err(|_| {
        ImageError::Invalid(format!(
            "{what} {digest} does not use sha256, the only digest algorithm strata supports"
        ))
    })
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

fn parse_index(what: &str, bytes: &[u8]) -> Result<ImageIndex, ImageError> {
    let index = ImageIndex::from_reader(bytes).map_err(|error| garbled(what, &error))?;
    check_document(
        what,
        index.schema_version(),
        index.media_type().as_ref(),
        Kind::Index,
    )?;
    Ok(index)
}

/// Checks the fields by which a document says what it is. Its own `mediaType` is optional (and
/// absent in older OCI documents), but when present it must agree with how it was reached, so
/// that a manifest cannot pass for an index or the other way round.
fn check_document(
    what: &str,
    schema_version: u32,
    media_type: Option<&MediaType>,
    expected: Kind,
) -> Result<(), ImageError> {
    if schema_version != 2 {
        return Err(ImageError::Invalid(format!(
            "{what} has schemaVersion {schema_version}; only 2 is supported"
        )));
    }
    match media_type {
        Some(declared) if media::kind(declared.as_ref()) != Some(expected) => {
            Err(ImageError::Invalid(format!(
                "{what} declares media type {declared}, but an {expected} was expected"
            )))
        }
        _ => Ok(()),
    }
}

fn garbled(what: &str, error: &oci_spec::OciSpecError) -> ImageError {
    ImageError::Garbled {
        what: what.to_owned(),
        detail: describe(error),
    }
}
