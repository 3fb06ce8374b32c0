//! The IMAGE argument: an image in a layout directory (`PATH…`, `oci:PATH…`), in an archive
//! (`oci-archive:…`, `docker-archive:…`), or in a registry (`docker://…`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::ImageError;
use super::docker_archive::ArchiveImage;
use crate::digest::Digest;
use crate::registry::RegistryRef;

/// An image as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// In an OCI layout directory.
    Layout(LayoutRef),
    /// In a tar archive of an OCI layout (`oci-archive:PATH[:TAG]`); `layout` is the archive.
    OciArchive(LayoutRef),
    /// In a `docker save` archive (`docker-archive:PATH[:REF]`).
    DockerArchive {
        /// The archive.
        path: PathBuf,
        /// Which image in it.
        image: ArchiveImage,
    },
    /// In a registry.
    Registry(RegistryRef),
}

impl ImageRef {
    /// Parses `docker://REFERENCE`, `oci-archive:PATH[:TAG]`, `docker-archive:PATH[:REF]`
    /// (split at the first ':', as skopeo splits them), or a layout's `PATH…` (see
    /// [`LayoutRef::parse`]).
    pub fn parse(text: &str) -> Result<ImageRef, ImageError> {
        let invalid = |reason: String| ImageError::Reference {
            text: text.to_owned(),
            reason,
        };
        let archive = |rest: &str| match rest.split_once(':') {
            Some((path, image)) => (PathBuf::from(path), Some(image.to_owned())),
            None => (PathBuf::from(rest), None),
        };
        if let Some(rest) = text.strip_prefix("docker://") {
            RegistryRef::parse(rest)
                .map(ImageRef::Registry)
                .map_err(invalid)
        } else if let Some(rest) = text.strip_prefix("oci-archive:") {
            let (layout, tag) = archive(rest);
            let selector = match tag {
                None => Selector::Default,
                Some(tag) if is_valid_ref_name(&tag) => Selector::Tag(tag),
                Some(tag) => return Err(invalid(format!("{tag:?} is not a valid tag"))),
            };
            Ok(ImageRef::OciArchive(LayoutRef { layout, selector }))
        } else if let Some(rest) = text.strip_prefix("docker-archive:") {
            let (path, image) = archive(rest);
            let image = match image {
                None => ArchiveImage::Only,
                Some(name) => match name.strip_prefix('@') {
                    Some(index) => ArchiveImage::Index(index.parse().map_err(|_| {
                        invalid(format!("@{index} is not an image's index (@0, @1, …)"))
                    })?),
                    None => ArchiveImage::Named(name),
                },
            };
            Ok(ImageRef::DockerArchive { path, image })
        } else {
            LayoutRef::parse(text).map(ImageRef::Layout)
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Layout(layout) => layout.fmt(f),
            ImageRef::OciArchive(archive) => write!(f, "oci-archive:{archive}"),
            ImageRef::DockerArchive { path, image } => {
                write!(f, "docker-archive:{}{image}", path.display())
            }
            ImageRef::Registry(registry) => registry.fmt(f),
        }
    }
}

/// An image in an OCI layout directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutRef {
    /// The layout's directory.
    pub layout: PathBuf,
    /// Which image in it.
    pub selector: Selector,
}

/// Which image of the layout's `index.json` is meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The only image of the layout (platform variants of one image count as one).
    Default,
    /// The entries whose `org.opencontainers.image.ref.name` annotation is this tag.
    Tag(String),
    /// The manifest or index with this digest.
    Digest(Digest),
}

impl LayoutRef {
    /// Parses `PATH`, `PATH:TAG`, `PATH@sha256:HEX`, or skopeo's `oci:PATH[:TAG]`.
    ///
    /// Directory names may contain ':', so a text that names an existing directory is taken
    /// whole as the path; otherwise a tag is split off at the last ':' after the last '/'.
    /// A literal directory named `oci:…` must be written as `./oci:…`.
    pub fn parse(text: &str) -> Result<LayoutRef, ImageError> {
        let invalid = |reason: String| ImageError::Reference {
            text: text.to_owned(),
            reason,
        };
        let rest = text.strip_prefix("oci:").unwrap_or(text);

        let (path, selector) = if let Some((path, hex)) = rest.rsplit_once("@sha256:") {
            let digest =
                Digest::parse(&format!("sha256:{hex}")).map_err(|e| invalid(e.to_string()))?;
            (path, Selector::Digest(digest))
        } else if Path::new(rest).is_dir() {
            (rest, Selector::Default)
        } else {
            let last_component_start = rest.rfind('/').map_or(0, |slash| slash + 1);
            match rest[last_component_start..].rfind(':') {
                None => (rest, Selector::Default),
                Some(colon) => {
                    let (path, tag) = rest.split_at(last_component_start + colon);
                    let tag = &tag[1..];
                    if !is_valid_ref_name(tag) {
                        return Err(invalid(format!(
                            "{path:?} is not a directory and {tag:?} is not a valid tag"
                        )));
                    }
                    (path, Selector::Tag(tag.to_owned()))
                }
            }
        };
        if path.is_empty() {
            return Err(invalid("the layout path is empty".to_owned()));
        }
        Ok(LayoutRef {
            layout: PathBuf::from(path),
            selector,
        })
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.layout.display();
        match &self.selector {
            Selector::Default => write!(f, "{path}"),
            Selector::Tag(tag) => write!(f, "{path}:{tag}"),
            Selector::Digest(digest) => write!(f, "{path}@{digest}"),
        }
    }
}

/// One component of the image-layout `ref.name` grammar: alphanumeric runs joined by single
/// `-._:@+` separators or by `--`. Our tags come after the last ':' and '/', so neither occurs.
fn is_valid_ref_name(tag: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_alphanumeric();
    tag.starts_with(alphanumeric)
        && tag.ends_with(alphanumeric)
        && tag
            .chars()
            .all(|c| alphanumeric(c) || matches!(c, '-' | '.' | '_' | '@' | '+'))
        && tag
            .split(alphanumeric)
            .all(|separator| separator.len() <= 1 || separator == "--")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(text: &str) -> (String, Selector) {
        let reference = LayoutRef::parse(text).unwrap();
        (
            reference.layout.to_str().unwrap().to_owned(),
            reference.selector,
        )
    }

    fn tag(name: &str) -> Selector {
        Selector::Tag(name.to_owned())
    }

    #[test]
    fn plain_paths_and_tags() {
        assert_eq!(parse("alpine"), ("alpine".into(), Selector::Default));
        assert_eq!(parse("alpine:3.19"), ("alpine".into(), tag("3.19")));
        assert_eq!(
            parse("/srv/images/alpine:latest"),
            ("/srv/images/alpine".into(), tag("latest"))
        );
        assert_eq!(
            parse("./v1.2/img"),
            ("./v1.2/img".into(), Selector::Default)
        );
    }

    #[test]
    fn skopeo_prefix() {
        assert_eq!(parse("oci:alpine"), ("alpine".into(), Selector::Default));
        assert_eq!(
            parse("oci:/tmp/alpine:edge"),
            ("/tmp/alpine".into(), tag("edge"))
        );
    }

    #[test]
    fn digests() {
        let digest = Selector::Digest(Digest::parse(&format!("sha256:{HEX}")).unwrap());
        assert_eq!(
            parse(&format!("img@sha256:{HEX}")),
            ("img".into(), digest.clone())
        );
        assert_eq!(
            parse(&format!("oci:a:b/img@sha256:{HEX}")),
            ("a:b/img".into(), digest)
        );
        assert!(LayoutRef::parse("img@sha256:1234").is_err());
        assert!(LayoutRef::parse(&format!("img@sha256:{}", HEX.to_uppercase())).is_err());
    }

    #[test]
    fn colons_in_directory_names() {
        // A ':' before the last '/' is part of the path.
        assert_eq!(
            parse("/mnt/c:/img"),
            ("/mnt/c:/img".into(), Selector::Default)
        );
        assert_eq!(parse("/mnt/c:/img:v1"), ("/mnt/c:/img".into(), tag("v1")));

        // An existing directory wins over the tag split.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("img:v1");
        std::fs::create_dir(&odd).unwrap();
        let odd = odd.to_str().unwrap();
        assert_eq!(parse(odd), (odd.to_owned(), Selector::Default));
        assert_eq!(parse(&format!("{odd}:v2")), (odd.to_owned(), tag("v2")));
    }

    #[test]
    fn rejects_bad_tags_and_empty_paths() {
        for text in [
            "img:", "img:-x", "img:a..b", "img:a b", "img:é", ":latest", "oci:", "",
        ] {
            let error = LayoutRef::parse(text).unwrap_err();
            assert!(
                matches!(error, ImageError::Reference { .. }),
                "{text}: {error}"
            );
        }
        assert_eq!(
            parse("img:a--b_c.d@e+f"),
            ("img".into(), tag("a--b_c.d@e+f"))
        );
    }

    #[test]
    fn docker_references_go_to_the_registry() {
        let parsed = ImageRef::parse("docker://localhost:5000/app:v1").unwrap();
        assert!(matches!(parsed, ImageRef::Registry(ref r) if r.host == "localhost:5000"));
        assert_eq!(parsed.to_string(), "docker://localhost:5000/app:v1");
        assert!(ImageRef::parse("docker://Bad").is_err());
        assert!(matches!(
            ImageRef::parse("dir:v1").unwrap(),
            ImageRef::Layout(_)
        ));
    }

    #[test]
    fn displays_like_it_parses() {
        for text in ["img", "dir/img:v1", &format!("img@sha256:{HEX}")] {
            assert_eq!(LayoutRef::parse(text).unwrap().to_string(), text);
        }
    }
}
