//! Resolving IMAGE to what is to be unpacked: an OCI layout's `index.json` entry, or what a
//! registry serves for a tag or digest → (nested indexes →) manifest → config → layers, with
//! every JSON document verified against its digest before it is parsed.
//!
//! Layer blobs are not read here: the caller streams each one to the extractor, checking its
//! size and digest on the way, and verifies the diff ID the extractor reports.

mod docker_archive;
mod files;
mod layout;
mod media;
mod platform;
mod reference;
mod select;
mod source;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::error::Error;
use std::io;
use std::path::PathBuf;

use oci_spec::image::{Descriptor, ImageConfiguration};

pub use self::docker_archive::ArchiveImage;
pub use self::layout::Layout;
pub use self::platform::Platform;
pub use self::reference::{ImageRef, LayoutRef, Selector};
use self::source::descriptor_digest;
pub use self::source::{BlobInput, Source};
use crate::digest::Digest;
use crate::protocol::Compression;
use crate::registry::{PullOptions, RegistryError, Repository};

/// The most we read of any JSON document. Real ones are a few KiB; the cap keeps a descriptor
/// that claims gigabytes from making us allocate them.
const MAX_JSON_SIZE: u64 = 4 << 20;

/// An image ready to unpack: its layers in order, bottom first.
#[derive(Clone, Debug)]
pub struct Image {
    /// Where it is read.
    pub source: Source,
    /// Its manifest's digest: what names the image in the store's records.
    pub manifest_digest: Digest,
    /// Its layers, bottom first.
    pub layers: Vec<Layer>,
    /// What its config says of the process to run.
    pub process: Process,
    /// What a runtime bundle's annotations are made of (image-spec `conversion.md`): the
    /// config's labels, and the keys its other fields imply.
    pub annotations: BTreeMap<String, String>,
}

/// What an image's config says of the process to run (image-spec `config.md`, `config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    /// `User`: `user[:group]`, names or numbers; empty for root.
    pub user: String,
    /// `Env`, as `NAME=VALUE`.
    pub env: Vec<String>,
    /// `Entrypoint`, then `Cmd`: the arguments.
    pub args: Vec<String>,
    /// `WorkingDir`; empty for `/`.
    pub working_dir: String,
}

/// A layer as the manifest describes it, with the diff ID the config expects once it is
/// decompressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
    /// As the manifest gives it.
    pub media_type: String,
    /// What the media type declares.
    pub compression: Compression,
    /// The digest of the uncompressed stream, from the config.
    pub diff_id: Digest,
}

/// Why an image cannot be read. Each variant's message says what it means, naming its fields.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {text:?}: {reason}")]
    Reference { text: String, reason: String },
    #[error("invalid platform {text:?}: expected OS/ARCH[/VARIANT], such as linux/arm64/v8")]
    Platform { text: String },
    #[error("not an OCI image layout: {} {reason}", .path.display())]
    NotALayout { path: PathBuf, reason: &'static str },
    #[error("cannot read {}: {error}", .path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("tag '{tag}' not found in {} (available: {})", .layout.display(), list(.available))]
    TagNotFound {
        tag: String,
        layout: PathBuf,
        available: Vec<String>,
    },
    #[error("{digest} is not listed in {}/index.json nor in an index it lists", .layout.display())]
    DigestNotFound { digest: Digest, layout: PathBuf },
    #[error(
        "{path} holds several images; choose one as {path}:TAG or {path}@DIGEST (available: {})",
        list(.available),
        path = .layout.display()
    )]
    Ambiguous {
        layout: PathBuf,
        available: Vec<String>,
    },
    #[error("no image for {platform} in {within} (available: {})", list(.available))]
    NoMatchingPlatform {
        platform: Platform,
        within: String,
        available: Vec<String>,
    },
    #[error("blob {digest} is missing from the layout {}", .layout.display())]
    MissingBlob { digest: Digest, layout: PathBuf },
    #[error("{what} is {size} bytes, more than the {} MiB we read of a JSON document", MAX_JSON_SIZE >> 20)]
    TooLarge { what: String, size: u64 },
    #[error("{what} is {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} is corrupt: its content has digest {actual}")]
    DigestMismatch { what: String, actual: Digest },
    #[error("garbled {what}: {detail}")]
    Garbled { what: String, detail: String },
    #[error(
        "{what} has unsupported media type {media_type}{}",
        if media::is_docker_schema1(.media_type) { " (Docker schema 1)" } else { "" }
    )]
    UnsupportedMediaType { what: String, media_type: String },
    /// Content that parses but breaks a rule of the image spec.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Finds the image `reference` names for `platform` (reaching a registry as `pull` says) and
/// checks that its manifest and config agree on its layers.
pub fn resolve(
    reference: &ImageRef,
    platform: &Platform,
    pull: &PullOptions,
) -> Result<Image, ImageError> {
    let (source, descriptor) = match reference {
        ImageRef::Layout(layout_ref) | ImageRef::OciArchive(layout_ref) => {
            let layout = match reference {
                ImageRef::OciArchive(_) => Layout::in_archive(&layout_ref.layout)?,
                _ => Layout::open(&layout_ref.layout)?,
            };
            let index = layout.index_json()?;
            let source = Source::Layout(layout);
            let descriptor = select::manifest_descriptor(&source, &index, layout_ref, platform)?;
            (source, descriptor)
        }
        ImageRef::DockerArchive { path, image } => {
            let (source, root) = Source::docker_archive(path, image)?;
            let descriptor =
                select::follow_indexes(&source, root, platform, &reference.to_string())?;
            (source, descriptor)
        }
        ImageRef::Registry(reference) => {
            let repository = Repository::connect(reference, pull)?;
            let (source, root) = Source::registry(repository, reference)?;
            let descriptor =
                select::follow_indexes(&source, root, platform, &reference.to_string())?;
            (source, descriptor)
        }
    };
    let (manifest_digest, manifest) = source.manifest(&descriptor)?;

    let config_descriptor = manifest.config();
    let config_type = config_descriptor.media_type().as_ref();
    if !media::is_image_config(config_type) {
        return Err(ImageError::UnsupportedMediaType {
            what: format!("the config of manifest {manifest_digest}"),
            media_type: config_type.to_owned(),
        });
    }
    let (config_digest, config) = source.config(config_descriptor)?;

    let rootfs = config.rootfs();
    if rootfs.typ() != "layers" {
        return Err(ImageError::Invalid(format!(
            "config {config_digest} has rootfs type '{}', expected 'layers'",
            rootfs.typ()
        )));
    }
    let diff_ids = rootfs.diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::Invalid(format!(
            "manifest {manifest_digest} has {} layers but its config lists {} diff IDs",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let layers = (1..)
        .zip(manifest.layers().iter().zip(diff_ids))
        .map(|(number, (descriptor, diff_id))| layer(number, descriptor, diff_id, &config_digest))
        .collect::<Result<_, _>>()?;

    let process = config
        .config()
        .as_ref()
        .map_or_else(Process::default, |c| Process {
            user: c.user().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            args: [c.entrypoint(), c.cmd()]
                .into_iter()
                .flat_map(|part| part.clone().unwrap_or_default())
                .collect(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
        });
    let annotations = conversion_annotations(&config);
    Ok(Image {
        source,
        manifest_digest,
        layers,
        process,
        annotations,
    })
}

/// The annotations image-spec `conversion.md` says a runtime bundle gets: the config's
/// `Labels`, then the keys its `os`, `architecture`, `author`, `created` and `StopSignal`
/// imply (which win). Not the manifest's annotations, which it says to leave out.
fn conversion_annotations(config: &ImageConfiguration) -> BTreeMap<String, String> {
    let mut annotations: BTreeMap<String, String> = config
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .map(|labels| labels.into_iter().collect())
        .unwrap_or_default();
    let implied = [
        ("os", Some(config.os().to_string())),
        ("architecture", Some(config.architecture().to_string())),
        ("author", config.author().clone()),
        ("created", config.created().clone()),
        (
            "stopSignal",
            config
                .config()
                .as_ref()
                .and_then(|c| c.stop_signal().clone()),
        ),
    ];
    for (key, value) in implied {
        if let Some(value) = value {
            annotations.insert(format!("org.opencontainers.image.{key}"), value);
        }
    }
    annotations
}

/// The `number`th layer (counting from 1, as people do), paired with its diff ID.
fn layer(
    number: usize,
    descriptor: &Descriptor,
    diff_id: &str,
    config: &Digest,
) -> Result<Layer, ImageError> {
    let digest = descriptor_digest(&format!("layer {number}"), descriptor)?;
    let media_type = descriptor.media_type().to_string();
    let compression =
        media::layer_compression(&media_type).ok_or_else(|| ImageError::UnsupportedMediaType {
            what: format!("layer {number} ({digest})"),
            media_type: media_type.clone(),
        })?;
    let diff_id = Digest::parse(diff_id).map_err(|_| {
        ImageError::Invalid(format!(
            "config {config} lists diff ID {diff_id:?} for layer {number}, which is not a sha256 digest"
        ))
    })?;
    Ok(Layer {
        digest,
        size: descriptor.size(),
        media_type,
        compression,
        diff_id,
    })
}

/// oci-spec's errors say only "serde failed" or "io operation failed"; the detail is in their
/// sources.
fn describe(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
