//! `docker save` archives (`docker-archive:PATH[:REF]`), read in place: `manifest.json` lists
//! each image's config and layer files. Both forms are read: the legacy one
//! (`<id>/layer.tar`) and the OCI layout that moby 25 and later also writes (whose
//! `manifest.json` names `blobs/sha256/<hex>`).
//!
//! The archive has no registry manifest, so one is made, as containers/image makes it: Docker
//! schema 2, the config's own digest, and the layers, which `docker save` writes uncompressed,
//! under their diff IDs (or the digest their file is named by). Every layer is still checked
//! against its diff ID as it streams.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::files::{Archive, Files};
use super::source::BlobInput;
use super::{ImageError, list};
use crate::digest::Digest;
use crate::registry::RegistryRef;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Which image of a `docker save` archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveImage {
    /// The only one.
    Only,
    /// The one tagged so (`NAME:TAG`, matched as Docker normalises names).
    Named(String),
    /// The `n`th of `manifest.json`, from 0 (skopeo's `@N`).
    Index(usize),
}

impl fmt::Display for ArchiveImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveImage::Only => Ok(()),
            ArchiveImage::Named(name) => write!(f, ":{name}"),
            ArchiveImage::Index(index) => write!(f, ":@{index}"),
        }
    }
}

/// One entry of `manifest.json`.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// An image of a `docker save` archive, with the manifest made for it.
#[derive(Debug)]
pub struct DockerArchive {
    archive: Arc<Archive>,
    /// The manifest made for the image: its digest and bytes.
    pub manifest: (Digest, Vec<u8>),
    /// The image's config: its digest and bytes.
    pub config: (Digest, Vec<u8>),
    /// Each layer's file, by the digest the manifest gives it.
    layers: HashMap<Digest, String>,
}

impl DockerArchive {
    /// Reads `image` of the archive at `path`.
    pub fn open(path: &Path, image: &ArchiveImage) -> Result<DockerArchive, ImageError> {
        let archive = Archive::open(path)?;
        let within = format!("docker-archive:{}", path.display());
        let files = Files::Archive(archive.clone());
        let manifest_json = files.read_small("manifest.json", None, None)?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&manifest_json).map_err(|error| ImageError::Garbled {
                what: format!("{within}: manifest.json"),
                detail: error.to_string(),
            })?;
        let names = || {
            entries
                .iter()
                .enumerate()
                .flat_map(|(index, entry)| match &entry.repo_tags {
                    Some(tags) if !tags.is_empty() => tags.clone(),
                    _ => vec![format!("@{index}")],
                })
                .collect::<Vec<_>>()
        };
        let entry = match image {
            ArchiveImage::Only if entries.len() == 1 => &entries[0],
            ArchiveImage::Only => {
                return Err(ImageError::Invalid(format!(
                    "{within} holds {} images; choose one as {within}:NAME:TAG or {within}:@N \
                     (available: {})",
                    entries.len(),
                    list(&names())
                )));
            }
            ArchiveImage::Index(index) => entries.get(*index).ok_or_else(|| {
                ImageError::Invalid(format!(
                    "{within} holds {} images: there is no @{index}",
                    entries.len()
                ))
            })?,
            ArchiveImage::Named(name) => entries
                .iter()
                .find(|entry| {
                    entry
                        .repo_tags
                        .iter()
                        .flatten()
                        .any(|tag| same_name(tag, name))
                })
                .ok_or_else(|| ImageError::TagNotFound {
                    tag: name.clone(),
                    layout: path.to_owned(),
                    available: names(),
                })?,
        };

        let config = files.read_small(&entry.config, None, None)?;
        let config_digest = Digest::of_bytes(&config);
        let diff_ids = diff_ids(&config, &within)?;
        if diff_ids.len() != entry.layers.len() {
            return Err(ImageError::Invalid(format!(
                "{within}: manifest.json lists {} layers but config {config_digest} lists {} diff IDs",
                entry.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = HashMap::new();
        let mut descriptors = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(diff_ids) {
            let (_, size) = archive.member(name).ok_or_else(|| ImageError::Io {
                path: archive.describe(name),
                error: std::io::ErrorKind::NotFound.into(),
            })?;
            // A file named by its digest is that blob; a legacy `layer.tar` is the
            // uncompressed layer, whose digest is its diff ID.
            let digest = name
                .strip_prefix("blobs/sha256/")
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
                .unwrap_or(diff_id);
            descriptors.push(json!({
                "mediaType": DOCKER_LAYER,
                "size": size,
                "digest": digest.as_str(),
            }));
            layers.insert(digest, name.clone());
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG,
                "size": config.len(),
                "digest": config_digest.as_str(),
            },
            "layers": descriptors,
        });
        let manifest = serde_json::to_vec(&manifest).expect("a JSON value serialises");
        Ok(DockerArchive {
            archive,
            manifest: (Digest::of_bytes(&manifest), manifest),
            config: (config_digest, config),
            layers,
        })
    }

    /// The media type of the manifest made for the image.
    pub fn manifest_media_type() -> &'static str {
        DOCKER_MANIFEST
    }

    /// The document `digest` (the manifest made, or the config), if it is one.
    pub fn document(&self, digest: &Digest) -> Option<&[u8]> {
        [&self.manifest, &self.config]
            .into_iter()
            .find(|(known, _)| known == digest)
            .map(|(_, bytes)| &bytes[..])
    }

    /// Opens the layer the manifest names `digest`.
    pub fn open_layer(&self, digest: &Digest) -> Result<BlobInput, ImageError> {
        let name = self
            .layers
            .get(digest)
            .ok_or_else(|| ImageError::MissingBlob {
                digest: digest.clone(),
                layout: self.archive.path().to_owned(),
            })?;
        self.archive
            .open_member(name)
            .map(|(input, _)| input)
            .map_err(|error| ImageError::Io {
                path: self.archive.describe(name),
                error,
            })
    }
}

/// The config's `rootfs.diff_ids`, read before anything else of it is.
fn diff_ids(config: &[u8], within: &str) -> Result<Vec<Digest>, ImageError> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let config: Config = serde_json::from_slice(config).map_err(|error| ImageError::Garbled {
        what: format!("{within}: the image config"),
        detail: error.to_string(),
    })?;
    config
        .rootfs
        .diff_ids
        .iter()
        .map(|diff_id| {
            Digest::parse(diff_id).map_err(|_| {
                ImageError::Invalid(format!(
                    "{within}: diff ID {diff_id:?} is not a sha256 digest"
                ))
            })
        })
        .collect()
}

/// Whether two image names are the same once normalised as Docker does (`busybox:latest` is
/// `docker.io/library/busybox:latest`).
fn same_name(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (RegistryRef::parse(a), RegistryRef::parse(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_docker_normalises_them() {
        assert!(same_name(
            "busybox:latest",
            "docker.io/library/busybox:latest"
        ));
        assert!(same_name("busybox", "busybox:latest"));
        assert!(same_name("localhost:5000/a:1", "localhost:5000/a:1"));
        assert!(!same_name("busybox:1", "busybox:2"));
        assert!(!same_name("quay.io/busybox", "busybox"));
    }
}
