//! Where an image's documents and blobs are read: an OCI layout (a directory, or an
//! `oci-archive:` tar), a `docker save` archive, or a registry. Each JSON document is read up
//! to [`MAX_JSON_SIZE`] and checked against its descriptor's size and digest before anything
//! parses it, so the parsers only ever see content a digest vouches for.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::docker_archive::DockerArchive;
use super::layout::Layout;
use super::media::{self, Kind};
use super::{ImageError, Layer, MAX_JSON_SIZE, describe};
use crate::digest::Digest;
use crate::registry::{RegistryRef, Repository, Version};

/// Where an image is read.
#[derive(Clone, Debug)]
pub enum Source {
    /// An OCI layout directory.
    Layout(Layout),
    /// An image of a `docker save` archive.
    DockerArchive(Arc<DockerArchive>),
    /// A repository on a registry, and the document its reference named (an index or a
    /// manifest), fetched already.
    Registry {
        /// The connected repository.
        repository: Arc<Repository>,
        /// The digest and bytes of the document the reference named.
        root: (Digest, Vec<u8>),
    },
}

/// A layer blob, open for reading.
pub enum BlobInput {
    /// A file, which may be read at any offset.
    File(File),
    /// Part of a file (a member of an archive), which may be read at any offset.
    Slice {
        /// The file.
        file: File,
        /// Where the part starts.
        start: u64,
        /// How long it is.
        len: u64,
    },
    /// A stream, read once in order.
    Stream(Box<dyn Read + Send>),
}

impl BlobInput {
    /// Its bytes, in order.
    pub fn into_reader(self) -> Box<dyn Read + Send> {
        match self {
            BlobInput::File(file) => Box::new(file),
            BlobInput::Slice { file, start, len } => Box::new(SliceReader {
                file,
                at: start,
                end: start + len,
            }),
            BlobInput::Stream(stream) => stream,
        }
    }
}

/// Part of a file, read at offsets.
struct SliceReader {
    file: File,
    at: u64,
    end: u64,
}

impl Read for SliceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end - self.at).unwrap_or(usize::MAX);
        let len = buf.len().min(left);
        let n = std::os::unix::fs::FileExt::read_at(&self.file, &mut buf[..len], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Source {
    /// Fetches what `reference` names from its registry; returns the source and the
    /// descriptor of that document. Its digest is checked against the reference's, or else
    /// against the one the registry sends (`Docker-Content-Digest`).
    pub(super) fn registry(
        repository: Arc<Repository>,
        reference: &RegistryRef,
    ) -> Result<(Source, Descriptor), ImageError> {
        let fetched = repository.manifest(reference.version_text(), MAX_JSON_SIZE)?;
        let actual = Digest::of_bytes(&fetched.bytes);
        let (claimed, by) = match &reference.version {
            Version::Digest(digest) => (Some(digest), "the reference"),
            Version::Tag(_) => (
                fetched.digest.as_ref(),
                "the registry's Docker-Content-Digest",
            ),
        };
        if let Some(claimed) = claimed
            && *claimed != actual
        {
            return Err(ImageError::DigestMismatch {
                what: format!(
                    "manifest {} of {reference} (by {by}: {claimed})",
                    reference.version_text()
                ),
                actual,
            });
        }
        // A registry that serves a generic type leaves it to the document to say.
        let media_type = if media::kind(&fetched.media_type).is_some()
            || media::is_docker_schema1(&fetched.media_type)
        {
            fetched.media_type.clone()
        } else {
            declared_media_type(&fetched.bytes).unwrap_or(fetched.media_type.clone())
        };
        let descriptor = descriptor(&media_type, &actual, fetched.bytes.len());
        let source = Source::Registry {
            repository,
            root: (actual, fetched.bytes),
        };
        Ok((source, descriptor))
    }

    /// The image `image` of the `docker save` archive at `path`; returns the source and the
    /// descriptor of the manifest made for it.
    pub(super) fn docker_archive(
        path: &std::path::Path,
        image: &super::ArchiveImage,
    ) -> Result<(Source, Descriptor), ImageError> {
        let archive = DockerArchive::open(path, image)?;
        let (digest, bytes) = &archive.manifest;
        let descriptor = descriptor(DockerArchive::manifest_media_type(), digest, bytes.len());
        Ok((Source::DockerArchive(Arc::new(archive)), descriptor))
    }

    /// The JSON document `descriptor` names, which is a `what`, checked.
    fn document(
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
        let bytes = match self {
            Source::Layout(layout) => layout.small_blob(&what, &digest, expected)?,
            Source::DockerArchive(archive) => archive
                .document(&digest)
                .ok_or_else(|| ImageError::Invalid(format!("{what} is not in the archive")))?
                .to_vec(),
            Source::Registry { root, .. } if root.0 == digest => root.1.clone(),
            Source::Registry { repository, .. } => {
                match media::kind(descriptor.media_type().as_ref()) {
                    Some(_) => repository.manifest(digest.as_str(), MAX_JSON_SIZE)?.bytes,
                    None => repository.small_blob(&what, &digest, MAX_JSON_SIZE)?,
                }
            }
        };
        if bytes.len() as u64 != expected {
            return Err(ImageError::SizeMismatch {
                what,
                expected,
                actual: bytes.len() as u64,
            });
        }
        // Also catches a blob that changed size since it was measured.
        let actual = Digest::of_bytes(&bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch { what, actual });
        }
        Ok((digest, bytes))
    }

    pub(super) fn index(
        &self,
        descriptor: &Descriptor,
    ) -> Result<(Digest, ImageIndex), ImageError> {
        let (digest, bytes) = self.document("index", descriptor)?;
        let index = parse_index(&format!("index {digest}"), &bytes)?;
        Ok((digest, index))
    }

    pub(super) fn manifest(
        &self,
        descriptor: &Descriptor,
    ) -> Result<(Digest, ImageManifest), ImageError> {
        let (digest, bytes) = self.document("manifest", descriptor)?;
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
        let (digest, bytes) = self.document("config", descriptor)?;
        let config = ImageConfiguration::from_reader(&bytes[..])
            .map_err(|error| garbled(&format!("config {digest}"), &error))?;
        Ok((digest, config))
    }

    /// Opens `layer`'s blob; its size and digest are the reader's to check.
    pub fn open_blob(&self, layer: &Layer) -> Result<BlobInput, ImageError> {
        match self {
            Source::Layout(layout) => layout.open_blob(&layer.digest),
            Source::DockerArchive(archive) => archive.open_layer(&layer.digest),
            Source::Registry { repository, .. } => Ok(BlobInput::Stream(Box::new(
                repository.blob(&layer.digest, layer.size),
            ))),
        }
    }
}

/// A descriptor of the document of `media_type` with `digest` and `size`.
fn descriptor(media_type: &str, digest: &Digest, size: usize) -> Descriptor {
    Descriptor::new(
        MediaType::from(media_type),
        size as u64,
        oci_spec::image::Digest::try_from(digest.as_str())
            .expect("a sha256 digest is a valid OCI digest"),
    )
}

/// The `mediaType` a document declares of itself, if it parses that far.
fn declared_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Declared {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Declared>(bytes).ok()?.media_type
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

pub(super) fn parse_index(what: &str, bytes: &[u8]) -> Result<ImageIndex, ImageError> {
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

pub(super) fn garbled(what: &str, error: &oci_spec::OciSpecError) -> ImageError {
    ImageError::Garbled {
        what: what.to_owned(),
        detail: describe(error),
    }
}
