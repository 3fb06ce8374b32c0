//! The media types strata understands. oci-spec maps Docker's to `MediaType::Other`, so all
//! matching is done on the strings.

use std::fmt;

use crate::protocol::Compression;

/// What a manifest-like descriptor points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// An OCI image index or a Docker manifest list: a choice between platforms.
    Index,
    /// An OCI or Docker schema 2 image manifest: one config and its layers.
    Manifest,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Index => "image index",
            Kind::Manifest => "image manifest",
        })
    }
}

pub(super) fn kind(media_type: &str) -> Option<Kind> {
    match media_type {
        "application/vnd.oci.image.index.v1+json"
        | "application/vnd.docker.distribution.manifest.list.v2+json" => Some(Kind::Index),
        "application/vnd.oci.image.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v2+json" => Some(Kind::Manifest),
        _ => None,
    }
}

/// Docker's pre-2017 manifests, which have no config blob and so no diff IDs to verify.
pub(super) fn is_docker_schema1(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.docker.distribution.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v1+prettyjws"
    )
}

pub(super) fn is_image_config(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    )
}

/// The compression a layer media type declares; `None` for anything that is not a layer.
pub(super) fn layer_compression(media_type: &str) -> Option<Compression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        // Tools disagree on whether this type may carry compressed data: let the helper sniff.
        "application/vnd.docker.image.rootfs.diff.tar" => Compression::Detect,
        _ => return None,
    })
}
