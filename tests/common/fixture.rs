//! Deterministic OCI image layouts with chosen tar entries, compression and media types.
//!
//! Names are written into the tar stream byte for byte, never cleaned up: `../x`, `/`, `./x` and
//! non-UTF-8 names reach the extractor exactly as a hostile image would send them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use serde_json::{Value, json};
use tar::{EntryType, Header};

use super::sha256;

/// The mtime of every entry that sets none, so that the same fixture always gives the same digests.
pub const DEFAULT_MTIME: u64 = 1_600_000_000;

/// Longest name or link target that fits the header field; longer ones need a GNU or PAX record.
const HEADER_NAME_LEN: usize = 100;

/// Largest uid or gid the header's octal field holds; the tar crate writes larger ones in GNU's
/// base-256 form.
const MAX_OCTAL_ID: u64 = 0o7777777;

pub mod media_type {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const IN_TOTO: &str = "application/vnd.in-toto+json";
}

/// The annotation `PATH:TAG` is matched against.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The OCI name of the host architecture, the one `strata` picks by default.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// An architecture that is not the host's, for platform entries `strata` must pass over.
pub fn foreign_arch() -> &'static str {
    if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

/// How a layer's blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// One gzip member per entry (the end blocks and trailing bytes in a last one), like eStargz:
    /// a decoder that stops after the first member loses everything else. A stream given to
    /// [`Layer::from_tar`] makes one member.
    GzipMultiMember,
    Zstd,
}

/// How names and link targets are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongNames {
    /// GNU header; a `././@LongLink` entry (type `L` or `K`) before it when longer than 100 bytes.
    Gnu,
    /// ustar header; a PAX `path` (and `linkpath`) record for every entry, long or short, and
    /// `uid`/`gid` records for ids too large for the header.
    Pax,
}

/// One tar entry. Constructors write the name as given: include a trailing `/` on directories
/// if you want what Docker writes.
#[derive(Clone, Debug)]
pub struct Entry {
    kind: EntryType,
    name: Vec<u8>,
    link: Option<Vec<u8>>,
    data: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    device: Option<(u32, u32)>,
    pax: Vec<(String, Vec<u8>)>,
    long_names: Option<LongNames>,
}

impl Entry {
    /// Any entry type (`EntryType::new(b'Z')` for an unknown one), with no data and mode 0644.
    pub fn new(kind: EntryType, name: impl AsRef<[u8]>) -> Entry {
        Entry {
            kind,
            name: name.as_ref().to_vec(),
            link: None,
            data: Vec::new(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            device: None,
            pax: Vec::new(),
            long_names: None,
        }
    }

    pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Entry {
        Entry::new(EntryType::Regular, name).data(data)
    }

    pub fn dir(name: impl AsRef<[u8]>) -> Entry {
        Entry::new(EntryType::Directory, name).mode(0o755)
    }

    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::new(EntryType::Symlink, name)
            .link(target)
            .mode(0o777)
    }

    /// A hard link `name` to the earlier entry `target`.
    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::new(EntryType::Link, name).link(target)
    }

    pub fn fifo(name: impl AsRef<[u8]>) -> Entry {
        Entry::new(EntryType::Fifo, name)
    }

    pub fn char_device(name: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        Entry::new(EntryType::Char, name)
            .device(major, minor)
            .mode(0o666)
    }

    pub fn block_device(name: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        Entry::new(EntryType::Block, name)
            .device(major, minor)
            .mode(0o660)
    }

    /// Permission bits, setuid, setgid and sticky included.
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, seconds: u64) -> Entry {
        self.mtime = seconds;
        self
    }

    /// Entry contents; the header's size follows them.
    pub fn data(mut self, data: impl AsRef<[u8]>) -> Entry {
        self.data = data.as_ref().to_vec();
        self
    }

    /// Link target (symlinks and hard links), written as given.
    pub fn link(mut self, target: impl AsRef<[u8]>) -> Entry {
        self.link = Some(target.as_ref().to_vec());
        self
    }

    pub fn device(mut self, major: u32, minor: u32) -> Entry {
        self.device = Some((major, minor));
        self
    }

    /// An extended attribute, as the PAX record `SCHILY.xattr.NAME` GNU tar and Docker write.
    pub fn xattr(self, name: &str, value: impl AsRef<[u8]>) -> Entry {
        self.pax(&format!("SCHILY.xattr.{name}"), value)
    }

    /// Any PAX record, e.g. `("mtime", "1600000000.5")` or `("uid", "3000000")`.
    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Entry {
        self.pax.push((key.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Overrides the layer's [`LongNames`] for this entry.
    pub fn long_names(mut self, long_names: LongNames) -> Entry {
        self.long_names = Some(long_names);
        self
    }

    /// Appends the entry with whatever GNU or PAX entries it needs. The name goes into the
    /// header directly: `Header::set_path` refuses the names attacks need.
    fn append_to(&self, tar: &mut tar::Builder<Vec<u8>>, default_long_names: LongNames) {
        let long_names = self.long_names.unwrap_or(default_long_names);
        let mut header = match long_names {
            LongNames::Gnu => Header::new_gnu(),
            LongNames::Pax => Header::new_ustar(),
        };
        let mut records: Vec<(&str, Vec<u8>)> = Vec::new();
        if long_names == LongNames::Pax {
            records.push(("path", self.name.clone()));
            if let Some(link) = &self.link {
                records.push(("linkpath", link.clone()));
            }
            // As GNU tar's posix format does for ids beyond the octal header field.
            for (key, id) in [("uid", self.uid), ("gid", self.gid)] {
                if id > MAX_OCTAL_ID {
                    records.push((key, id.to_string().into_bytes()));
                }
            }
        }
        records.extend(
            self.pax
                .iter()
                .map(|(key, value)| (key.as_str(), value.clone())),
        );
        tar.append_pax_extensions(records.iter().map(|(key, value)| (*key, value.as_slice())))
            .unwrap();
        if long_names == LongNames::Gnu {
            if self.name.len() > HEADER_NAME_LEN {
                append_gnu_long_link(tar, EntryType::GNULongName, &self.name);
            }
            if let Some(link) = self.link.as_ref().filter(|l| l.len() > HEADER_NAME_LEN) {
                append_gnu_long_link(tar, EntryType::GNULongLink, link);
            }
        }

        let fields = header.as_old_mut();
        copy_truncated(&mut fields.name, &self.name);
        copy_truncated(
            &mut fields.linkname,
            self.link.as_deref().unwrap_or_default(),
        );
        header.set_entry_type(self.kind);
        header.set_mode(self.mode);
        header.set_uid(self.uid);
        header.set_gid(self.gid);
        header.set_mtime(self.mtime);
        header.set_size(self.data.len() as u64);
        let (major, minor) = self.device.unwrap_or_default();
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        header.set_cksum();
        tar.append(&header, self.data.as_slice()).unwrap();
    }
}

/// A GNU `././@LongLink` entry carrying the full name (`L`) or link target (`K`) of the next entry.
fn append_gnu_long_link(tar: &mut tar::Builder<Vec<u8>>, kind: EntryType, value: &[u8]) {
    let mut header = Header::new_gnu();
    copy_truncated(&mut header.as_old_mut().name, b"././@LongLink");
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let data = [value, b"\0"].concat();
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data.as_slice()).unwrap();
}

fn copy_truncated(field: &mut [u8], value: &[u8]) {
    let len = value.len().min(field.len());
    field[..len].copy_from_slice(&value[..len]);
}

#[derive(Clone, Debug)]
enum Body {
    Entries(Vec<Entry>),
    Tar(Vec<u8>),
}

/// One layer: its entries (or a ready-made stream), compression and media type.
#[derive(Clone, Debug)]
pub struct Layer {
    body: Body,
    compression: Compression,
    long_names: LongNames,
    trailing: Vec<u8>,
    media_type: Option<String>,
}

impl Default for Layer {
    fn default() -> Layer {
        Layer::new()
    }
}

impl Layer {
    /// An empty gzip layer with GNU long names.
    pub fn new() -> Layer {
        Layer {
            body: Body::Entries(Vec::new()),
            compression: Compression::Gzip,
            long_names: LongNames::Gnu,
            trailing: Vec::new(),
            media_type: None,
        }
    }

    /// A layer whose uncompressed stream is `tar` as given (truncated, garbage, hand-made, …).
    pub fn from_tar(tar: impl AsRef<[u8]>) -> Layer {
        Layer {
            body: Body::Tar(tar.as_ref().to_vec()),
            ..Layer::new()
        }
    }

    pub fn entry(mut self, entry: Entry) -> Layer {
        match &mut self.body {
            Body::Entries(entries) => entries.push(entry),
            Body::Tar(_) => panic!("a layer made with Layer::from_tar takes no entries"),
        }
        self
    }

    pub fn dir(self, name: impl AsRef<[u8]>, mode: u32) -> Layer {
        self.entry(Entry::dir(name).mode(mode))
    }

    pub fn file(self, name: impl AsRef<[u8]>, data: impl AsRef<[u8]>, mode: u32) -> Layer {
        self.entry(Entry::file(name, data).mode(mode))
    }

    pub fn symlink(self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Layer {
        self.entry(Entry::symlink(name, target))
    }

    /// A hard link `name` to the earlier (or lower-layer) path `target`.
    pub fn hardlink(self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Layer {
        self.entry(Entry::hardlink(name, target))
    }

    pub fn fifo(self, name: impl AsRef<[u8]>, mode: u32) -> Layer {
        self.entry(Entry::fifo(name).mode(mode))
    }

    pub fn char_device(self, name: impl AsRef<[u8]>, major: u32, minor: u32) -> Layer {
        self.entry(Entry::char_device(name, major, minor))
    }

    pub fn block_device(self, name: impl AsRef<[u8]>, major: u32, minor: u32) -> Layer {
        self.entry(Entry::block_device(name, major, minor))
    }

    /// Removes `path` of lower layers: writes `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> Layer {
        let name = match path.rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/.wh.{base}"),
            None => format!(".wh.{path}"),
        };
        self.entry(Entry::file(name, b""))
    }

    /// Hides everything lower layers put in `dir` (`""` for the root): writes `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Layer {
        let name = match dir.trim_end_matches('/') {
            "" => ".wh..wh..opq".to_owned(),
            dir => format!("{dir}/.wh..wh..opq"),
        };
        self.entry(Entry::file(name, b""))
    }

    pub fn compression(mut self, compression: Compression) -> Layer {
        self.compression = compression;
        self
    }

    /// How entries that do not choose write their names; [`LongNames::Gnu`] by default.
    pub fn long_names(mut self, long_names: LongNames) -> Layer {
        self.long_names = long_names;
        self
    }

    /// Bytes after the end-of-archive blocks. They are part of the diff ID, as in
    /// `sha256(uncompressed blob)`, although a tar reader never looks at them.
    pub fn trailing_bytes(mut self, bytes: impl AsRef<[u8]>) -> Layer {
        self.trailing = bytes.as_ref().to_vec();
        self
    }

    /// Overrides the media type the compression and the image's flavour would choose.
    pub fn media_type(mut self, media_type: &str) -> Layer {
        self.media_type = Some(media_type.to_owned());
        self
    }

    /// The uncompressed stream, trailing bytes included: what the diff ID is the hash of.
    pub fn tar(&self) -> Vec<u8> {
        self.tar_chunks().concat()
    }

    /// The uncompressed stream cut at entry boundaries, the end blocks and trailing bytes last.
    fn tar_chunks(&self) -> Vec<Vec<u8>> {
        let mut chunks = match &self.body {
            Body::Tar(tar) => vec![tar.clone()],
            Body::Entries(entries) => {
                let mut tar = tar::Builder::new(Vec::new());
                let mut ends = Vec::new();
                for entry in entries {
                    entry.append_to(&mut tar, self.long_names);
                    ends.push(tar.get_ref().len());
                }
                let mut stream = tar.into_inner().unwrap();
                let mut chunks = Vec::new();
                for end in ends.into_iter().rev() {
                    chunks.push(stream.split_off(end));
                }
                chunks.push(stream);
                chunks.reverse();
                chunks
            }
        };
        chunks.last_mut().unwrap().extend_from_slice(&self.trailing);
        chunks
    }

    /// The blob: the stream, compressed as the layer says.
    pub fn blob(&self) -> Vec<u8> {
        let gzip = |chunk: &[u8]| {
            let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut encoder, chunk).unwrap();
            encoder.finish().unwrap()
        };
        match self.compression {
            Compression::None => self.tar(),
            Compression::Gzip => gzip(&self.tar()),
            Compression::GzipMultiMember => {
                self.tar_chunks().iter().flat_map(|c| gzip(c)).collect()
            }
            Compression::Zstd => zstd::encode_all(self.tar().as_slice(), 3).unwrap(),
        }
    }

    fn media_type_for(&self, docker: bool) -> String {
        use media_type::*;
        if let Some(media_type) = &self.media_type {
            return media_type.clone();
        }
        let media_type = match (docker, self.compression) {
            (false, Compression::None) => OCI_LAYER,
            (false, Compression::Gzip | Compression::GzipMultiMember) => OCI_LAYER_GZIP,
            (false, Compression::Zstd) => OCI_LAYER_ZSTD,
            (true, Compression::Gzip | Compression::GzipMultiMember) => DOCKER_LAYER_GZIP,
            // Docker v2s2 has no zstd type: `…diff.tar` with the compression found by its magic.
            (true, Compression::None | Compression::Zstd) => DOCKER_LAYER,
        };
        media_type.to_owned()
    }
}

/// `os/architecture[/variant]`, as in the config and in index descriptors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn host() -> Platform {
        Platform::parse(&format!("linux/{}", host_arch()))
    }

    /// `"linux/arm64/v8"`, `"linux/amd64"`, `"unknown/unknown"`.
    pub fn parse(platform: &str) -> Platform {
        let mut parts = platform.split('/');
        let (Some(os), Some(architecture)) = (parts.next(), parts.next()) else {
            panic!("platform {platform:?} is not os/arch[/variant]");
        };
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: parts.next().map(str::to_owned),
        }
    }

    fn to_json(&self) -> Value {
        let mut platform = json!({"os": self.os, "architecture": self.architecture});
        if let Some(variant) = &self.variant {
            platform["variant"] = json!(variant);
        }
        platform
    }
}

/// An image of three layers, one per compression, with a hard link, a symlink, a whiteout and
/// an opaque directory, written as an OCI layout at `dir`, tagged `v1`: what the tests read
/// through registries and archives.
pub fn sample_image(dir: &Path) -> WrittenImage {
    sample_image_with(dir, Compression::Zstd)
}

/// [`sample_image`] with its second layer compressed as `second` (Docker's formats have no
/// zstd).
pub fn sample_image_with(dir: &Path, second: Compression) -> WrittenImage {
    let big: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i * 7919).to_le_bytes())
        .collect();
    Image::new()
        .layer(
            Layer::new()
                .dir("etc", 0o755)
                .file("etc/os-release", b"ID=sample\n", 0o644)
                .file("etc/gone", b"x", 0o600)
                .dir("opt/app", 0o755)
                .file("opt/app/old", b"old", 0o644)
                .file("big.bin", &big, 0o644)
                .hardlink("big.link", "big.bin")
                .symlink("os-release", "etc/os-release")
                .compression(Compression::Gzip),
        )
        .layer(
            Layer::new()
                .whiteout("etc/gone")
                .file("etc/added", b"second layer\n", 0o640)
                .compression(second),
        )
        .layer(
            Layer::new()
                .opaque("opt/app")
                .file("opt/app/new", b"new", 0o755)
                .compression(Compression::None),
        )
        .tag("v1")
        .write(dir)
}

/// One image: a config and manifest over its layers.
#[derive(Clone, Debug, Default)]
pub struct Image {
    layers: Vec<Layer>,
    platform: Option<Platform>,
    tag: Option<String>,
    docker: bool,
}

impl Image {
    pub fn new() -> Image {
        Image::default()
    }

    pub fn layer(mut self, layer: Layer) -> Image {
        self.layers.push(layer);
        self
    }

    /// The config's os/architecture/variant (the host's by default) and, unlike the default, a
    /// `platform` on the image's index descriptor.
    pub fn platform(mut self, platform: &str) -> Image {
        self.platform = Some(Platform::parse(platform));
        self
    }

    /// `org.opencontainers.image.ref.name` on the image's index descriptor.
    pub fn tag(mut self, tag: &str) -> Image {
        self.tag = Some(tag.to_owned());
        self
    }

    /// Docker v2s2 manifest, config and layer media types, still inside an OCI layout.
    pub fn docker_media_types(mut self) -> Image {
        self.docker = true;
        self
    }

    /// Writes an OCI layout at `dir` (created if needed) with this image alone in `index.json`.
    pub fn write(self, dir: &Path) -> WrittenImage {
        ImageIndex::new().image(self).write(dir).images.remove(0)
    }

    /// Writes config, layers and manifest blobs; returns the manifest's index descriptor.
    fn write_blobs(&self, layout: &Path, docker: bool) -> (Value, WrittenImage) {
        use media_type::*;
        let docker = docker || self.docker;
        let mut layer_descriptors = Vec::new();
        let mut layers = Vec::new();
        for layer in &self.layers {
            let media_type = layer.media_type_for(docker);
            let blob = layer.blob();
            let descriptor = write_blob(layout, &media_type, &blob);
            layers.push(WrittenLayer {
                digest: descriptor["digest"].as_str().unwrap().to_owned(),
                diff_id: sha256(&layer.tar()),
                size: blob.len() as u64,
                media_type,
            });
            layer_descriptors.push(descriptor);
        }

        let platform = self.platform.clone().unwrap_or_else(Platform::host);
        let mut config = platform.to_json();
        config["config"] = json!({});
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
        });
        let (manifest_type, config_type) = match docker {
            true => (DOCKER_MANIFEST, DOCKER_CONFIG),
            false => (OCI_MANIFEST, OCI_CONFIG),
        };
        let config = write_blob(layout, config_type, &to_json(&config));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config,
            "layers": layer_descriptors,
        });
        let mut descriptor = write_blob(layout, manifest_type, &to_json(&manifest));
        if let Some(platform) = &self.platform {
            descriptor["platform"] = platform.to_json();
        }
        if let Some(tag) = &self.tag {
            descriptor["annotations"] = json!({ REF_NAME: tag });
        }
        let written = WrittenImage {
            path: layout.to_owned(),
            manifest_digest: descriptor["digest"].as_str().unwrap().to_owned(),
            config_digest: config["digest"].as_str().unwrap().to_owned(),
            layers,
        };
        (descriptor, written)
    }
}

/// Several images in one layout: tags, platforms, attestations, nested indexes.
#[derive(Clone, Debug, Default)]
pub struct ImageIndex {
    images: Vec<Image>,
    attestation: bool,
    nested: bool,
    tag: Option<String>,
    docker: bool,
}

impl ImageIndex {
    pub fn new() -> ImageIndex {
        ImageIndex::default()
    }

    /// Adds an image; give it `.platform(…)` for a multi-platform index or `.tag(…)` for a
    /// layout that holds several images.
    pub fn image(mut self, image: Image) -> ImageIndex {
        self.images.push(image);
        self
    }

    /// Adds a BuildKit-style `unknown/unknown` attestation manifest for the first image, listed
    /// first, so that a resolver taking the first entry that is not for another OS fails.
    pub fn attestation(mut self) -> ImageIndex {
        self.attestation = true;
        self
    }

    /// Puts the images in an index blob that `index.json` points at (index → index → manifest),
    /// as BuildKit's OCI exporter does.
    pub fn nested(mut self) -> ImageIndex {
        self.nested = true;
        self
    }

    /// Tags the nested index's descriptor in `index.json` (needs [`ImageIndex::nested`]).
    pub fn tag(mut self, tag: &str) -> ImageIndex {
        self.tag = Some(tag.to_owned());
        self
    }

    /// Docker media types for every image and a Docker manifest list for the nested index.
    pub fn docker_media_types(mut self) -> ImageIndex {
        self.docker = true;
        self
    }

    pub fn write(self, dir: &Path) -> WrittenIndex {
        use media_type::*;
        assert!(!self.images.is_empty(), "an index needs at least one image");
        assert!(
            self.tag.is_none() || self.nested,
            "ImageIndex::tag needs nested()"
        );
        for dir in [dir, &dir.join("blobs"), &dir.join("blobs/sha256")] {
            create_dir(dir);
        }
        write_file(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );

        let (mut descriptors, images): (Vec<Value>, Vec<WrittenImage>) = self
            .images
            .iter()
            .map(|image| image.write_blobs(dir, self.docker))
            .unzip();
        let attestation = self.attestation.then(|| {
            let descriptor = write_attestation(dir, &images[0].manifest_digest);
            let digest = descriptor["digest"].as_str().unwrap().to_owned();
            descriptors.insert(0, descriptor);
            digest
        });
        if self.nested {
            let media_type = if self.docker {
                DOCKER_MANIFEST_LIST
            } else {
                OCI_INDEX
            };
            let index =
                json!({"schemaVersion": 2, "mediaType": media_type, "manifests": descriptors});
            let mut descriptor = write_blob(dir, media_type, &to_json(&index));
            if let Some(tag) = &self.tag {
                descriptor["annotations"] = json!({ REF_NAME: tag });
            }
            descriptors = vec![descriptor];
        }
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors});
        write_file(&dir.join("index.json"), &to_json(&index));
        WrittenIndex {
            path: dir.to_owned(),
            images,
            attestation,
        }
    }
}

/// An in-toto attestation manifest like BuildKit's: its one "layer" is JSON, not a tar, so
/// unpacking it must never be tried.
fn write_attestation(layout: &Path, subject: &str) -> Value {
    use media_type::*;
    let statement = to_json(&json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"digest": {"sha256": subject.trim_start_matches("sha256:")}}],
        "predicate": {},
    }));
    let mut layer = write_blob(layout, IN_TOTO, &statement);
    layer["annotations"] = json!({"in-toto.io/predicate-type": "https://spdx.dev/Document"});
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&statement)]},
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": write_blob(layout, OCI_CONFIG, &to_json(&config)),
        "layers": [layer],
    });
    let mut descriptor = write_blob(layout, OCI_MANIFEST, &to_json(&manifest));
    descriptor["platform"] = json!({"architecture": "unknown", "os": "unknown"});
    descriptor["annotations"] = json!({
        "vnd.docker.reference.digest": subject,
        "vnd.docker.reference.type": "attestation-manifest",
    });
    descriptor
}

/// What [`ImageIndex::write`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenIndex {
    pub path: PathBuf,
    /// In the order they were added.
    pub images: Vec<WrittenImage>,
    /// Manifest digest of the attestation, if one was added.
    pub attestation: Option<String>,
}

/// What [`Image::write`] wrote. `manifest_digest` and `config_digest` follow the rewrites below;
/// `layers` keeps the truth about the blobs as built, whatever the manifest and config later claim.
#[derive(Clone, Debug)]
pub struct WrittenImage {
    /// The layout directory.
    pub path: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<WrittenLayer>,
}

#[derive(Clone, Debug)]
pub struct WrittenLayer {
    /// Digest of the blob as stored (compressed).
    pub digest: String,
    /// sha256 of the uncompressed stream, trailing bytes included.
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

impl WrittenImage {
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.path, digest)
    }

    /// Changes a blob's bytes in place (flip a byte, truncate, …): its digest no longer matches.
    pub fn edit_blob(&self, digest: &str, edit: impl FnOnce(&mut Vec<u8>)) {
        let path = self.blob_path(digest);
        let mut bytes = fs::read(&path).unwrap();
        edit(&mut bytes);
        fs::write(&path, bytes).unwrap();
    }

    /// Flips a byte in the middle of a blob: same size, another digest.
    pub fn corrupt_blob(&self, digest: &str) {
        self.edit_blob(digest, |bytes| {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
        });
    }

    pub fn manifest(&self) -> Value {
        read_json(&self.blob_path(&self.manifest_digest))
    }

    pub fn config(&self) -> Value {
        read_json(&self.blob_path(&self.config_digest))
    }

    /// Edits the config and stores it as a new blob, updating the manifest and the indexes above
    /// it to match, so that only what `edit` changed is wrong.
    pub fn rewrite_config(&mut self, edit: impl FnOnce(&mut Value)) {
        let mut config = self.config();
        edit(&mut config);
        let descriptor = store_blob(&self.path, &to_json(&config));
        self.rewrite_manifest(|manifest| {
            manifest["config"]["digest"] = descriptor["digest"].clone();
            manifest["config"]["size"] = descriptor["size"].clone();
        });
    }

    /// Edits the manifest and stores it as a new blob, updating `index.json` (and any nested index)
    /// to point at it. To lie about a layer: `|m| m["layers"][0]["size"] = json!(1)`.
    pub fn rewrite_manifest(&mut self, edit: impl FnOnce(&mut Value)) {
        let mut manifest = self.manifest();
        edit(&mut manifest);
        let descriptor = store_blob(&self.path, &to_json(&manifest));
        let digest = descriptor["digest"].as_str().unwrap();
        let index_path = self.path.join("index.json");
        let mut index = read_json(&index_path);
        if relink(&self.path, &mut index, &self.manifest_digest, &descriptor) {
            write_file(&index_path, &to_json(&index));
        }
        self.manifest_digest = digest.to_owned();
        if let Some(config) = manifest["config"]["digest"].as_str() {
            self.config_digest = config.to_owned();
        }
    }

    /// Edits `index.json` in place.
    pub fn rewrite_index(&self, edit: impl FnOnce(&mut Value)) {
        let path = self.path.join("index.json");
        let mut index = read_json(&path);
        edit(&mut index);
        write_file(&path, &to_json(&index));
    }

    /// The chain ID after each layer, from the real diff IDs.
    pub fn chain_ids(&self) -> Vec<String> {
        let mut chain: Vec<String> = Vec::new();
        for layer in &self.layers {
            let next = match chain.last() {
                None => layer.diff_id.clone(),
                Some(parent) => sha256(format!("{parent} {}", layer.diff_id).as_bytes()),
            };
            chain.push(next);
        }
        chain
    }

    /// The chain ID of the whole image.
    pub fn chain_id(&self) -> String {
        self.chain_ids()
            .pop()
            .expect("an image without layers has no chain ID")
    }
}

/// Points the descriptors of `old` in `index` (and in the index blobs below it) at `new`, storing
/// each nested index it changes as a new blob. Returns whether `index` changed.
fn relink(layout: &Path, index: &mut Value, old: &str, new: &Value) -> bool {
    let mut changed = false;
    for descriptor in index["manifests"].as_array_mut().into_iter().flatten() {
        let digest = descriptor["digest"].as_str().unwrap_or_default().to_owned();
        let is_index = [media_type::OCI_INDEX, media_type::DOCKER_MANIFEST_LIST]
            .contains(&descriptor["mediaType"].as_str().unwrap_or_default());
        if digest == old {
            descriptor["digest"] = new["digest"].clone();
            descriptor["size"] = new["size"].clone();
            changed = true;
        } else if is_index {
            let mut child = read_json(&blob_path(layout, &digest));
            if relink(layout, &mut child, old, new) {
                let child = store_blob(layout, &to_json(&child));
                descriptor["digest"] = child["digest"].clone();
                descriptor["size"] = child["size"].clone();
                changed = true;
            }
        }
    }
    changed
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256: digest");
    layout.join("blobs/sha256").join(hex)
}

/// Stores `bytes` as a blob; returns its descriptor.
fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let mut descriptor = store_blob(layout, bytes);
    descriptor["mediaType"] = json!(media_type);
    descriptor
}

/// Stores `bytes` as a blob; returns its digest and size, the fields a rewrite updates.
fn store_blob(layout: &Path, bytes: &[u8]) -> Value {
    let digest = sha256(bytes);
    write_file(&blob_path(layout, &digest), bytes);
    json!({"digest": digest, "size": bytes.len()})
}

fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Layouts are written by the test process (maybe root) and read by the test uid: world-readable
/// whatever the umask.
fn create_dir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn write_file(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}
