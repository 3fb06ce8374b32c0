//! Resolution against small layouts written by hand.

use std::fs;
use std::path::Path;

use serde_json::{Value, json};
use tempfile::TempDir;

use super::*;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// An OCI layout in a temporary directory.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        Fixture { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stores `bytes` as a blob and returns a descriptor for it.
    fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = Digest::of_bytes(bytes);
        fs::write(self.path().join("blobs/sha256").join(digest.hex()), bytes).unwrap();
        json!({ "mediaType": media_type, "digest": digest.as_str(), "size": bytes.len() })
    }

    fn json_blob(&self, media_type: &str, document: &Value) -> Value {
        self.blob(media_type, &serde_json::to_vec(document).unwrap())
    }

    /// A config whose diff IDs are the digests of `b"diff 1"`, `b"diff 2"`, …
    fn config(&self, media_type: &str, layers: usize) -> Value {
        let diff_ids: Vec<String> = (1..=layers).map(|n| diff_id(n).to_string()).collect();
        self.json_blob(
            media_type,
            &json!({
                "architecture": "amd64",
                "os": "linux",
                "rootfs": { "type": "layers", "diff_ids": diff_ids },
            }),
        )
    }

    fn manifest(&self, media_type: &str, config: Value, layers: Vec<Value>) -> Value {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config,
            "layers": layers,
        });
        self.json_blob(media_type, &manifest)
    }

    /// A complete OCI image of `layers` gzip layers; `label` makes its digests unique.
    fn image(&self, label: &str, layers: usize) -> Value {
        let layers: Vec<Value> = (1..=layers)
            .map(|n| self.blob(OCI_GZIP, format!("{label} layer {n}").as_bytes()))
            .collect();
        let config = self.config(OCI_CONFIG, layers.len());
        self.manifest(OCI_MANIFEST, config, layers)
    }

    fn index(&self, media_type: &str, manifests: Vec<Value>) -> Value {
        self.json_blob(
            media_type,
            &json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests }),
        )
    }

    fn write_index_json(&self, manifests: Vec<Value>) {
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        fs::write(
            self.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    fn resolve(&self, suffix: &str, platform: &str) -> Result<Image, ImageError> {
        let reference = ImageRef::parse(&format!("{}{suffix}", self.path().display())).unwrap();
        super::resolve(
            &reference,
            &Platform::parse(platform).unwrap(),
            &Default::default(),
        )
    }

    /// The error message, with the temporary path shortened to `LAYOUT`.
    fn error(&self, suffix: &str) -> String {
        let error = self.resolve(suffix, "linux/amd64").unwrap_err();
        error
            .to_string()
            .replace(&self.path().display().to_string(), "LAYOUT")
    }
}

fn diff_id(n: usize) -> Digest {
    Digest::of_bytes(format!("diff {n}").as_bytes())
}

fn digest_of(descriptor: &Value) -> Digest {
    Digest::parse(descriptor["digest"].as_str().unwrap()).unwrap()
}

fn with_platform(mut descriptor: Value, platform: &str) -> Value {
    let parts: Vec<&str> = platform.split('/').collect();
    descriptor["platform"] = json!({ "os": parts[0], "architecture": parts[1] });
    if let Some(variant) = parts.get(2) {
        descriptor["platform"]["variant"] = json!(variant);
    }
    descriptor
}

fn tagged(mut descriptor: Value, tag: &str) -> Value {
    descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    descriptor
}

#[test]
fn resolves_a_single_image() {
    let layout = Fixture::new();
    let image = layout.image("a", 2);
    layout.write_index_json(vec![tagged(image.clone(), "latest")]);

    let resolved = layout.resolve("", "linux/amd64").unwrap();
    assert_eq!(resolved.manifest_digest, digest_of(&image));
    assert_eq!(resolved.layers.len(), 2);
    let first = &resolved.layers[0];
    assert_eq!(first.digest, Digest::of_bytes(b"a layer 1"));
    assert_eq!(first.size, 9);
    assert_eq!(first.media_type, OCI_GZIP);
    assert_eq!(first.compression, Compression::Gzip);
    assert_eq!(first.diff_id, diff_id(1));
    assert_eq!(resolved.layers[1].diff_id, diff_id(2));

    // Selection by tag and by digest reach the same manifest, and the layers can be opened.
    assert_eq!(
        layout
            .resolve(":latest", "linux/amd64")
            .unwrap()
            .manifest_digest,
        digest_of(&image)
    );
    let by_digest = layout
        .resolve(&format!("@{}", digest_of(&image)), "linux/amd64")
        .unwrap();
    assert_eq!(by_digest.layers, resolved.layers);
    assert!(resolved.source.open_blob(first).is_ok());
}

#[test]
fn a_lone_manifest_is_taken_whatever_its_platform() {
    let layout = Fixture::new();
    layout.write_index_json(vec![with_platform(layout.image("a", 1), "linux/s390x")]);
    assert!(layout.resolve("", "linux/amd64").is_ok());
}

#[test]
fn picks_the_platform_from_a_multi_platform_index() {
    let layout = Fixture::new();
    let amd64 = with_platform(layout.image("amd64", 1), "linux/amd64");
    let arm64 = with_platform(layout.image("arm64", 1), "linux/arm64/v8");
    let mut attestation = with_platform(layout.image("attestation", 1), "unknown/unknown");
    attestation["annotations"] = json!({ "vnd.docker.reference.type": "attestation-manifest" });
    let index = layout.index(OCI_INDEX, vec![amd64.clone(), arm64.clone(), attestation]);
    layout.write_index_json(vec![tagged(index, "latest")]);

    let resolved = |platform| layout.resolve(":latest", platform).unwrap().manifest_digest;
    assert_eq!(resolved("linux/amd64"), digest_of(&amd64));
    assert_eq!(resolved("linux/arm64/v8"), digest_of(&arm64));
    assert_eq!(resolved("linux/arm64"), digest_of(&arm64));

    let error = layout
        .resolve(":latest", "linux/riscv64")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("no image for linux/riscv64 in "),
        "{error}"
    );
    assert!(
        error.ends_with("(available: linux/amd64, linux/arm64/v8)"),
        "{error}"
    );
}

#[test]
fn attestations_beside_an_image_do_not_make_it_ambiguous() {
    let layout = Fixture::new();
    let image = tagged(with_platform(layout.image("a", 1), "linux/amd64"), "latest");
    let mut attestation = layout.image("attestation", 1);
    attestation["annotations"] = json!({ "vnd.docker.reference.type": "attestation-manifest" });
    layout.write_index_json(vec![image.clone(), attestation]);
    assert_eq!(
        layout.resolve("", "linux/amd64").unwrap().manifest_digest,
        digest_of(&image)
    );
}

#[test]
fn arm64_v8_accepts_an_arm64_entry_without_variant_but_prefers_v8() {
    let layout = Fixture::new();
    let plain = with_platform(layout.image("plain", 1), "linux/arm64");
    let v8 = with_platform(layout.image("v8", 1), "linux/arm64/v8");
    layout.write_index_json(vec![
        layout.index(OCI_INDEX, vec![plain.clone(), v8.clone()]),
    ]);
    assert_eq!(
        layout
            .resolve("", "linux/arm64/v8")
            .unwrap()
            .manifest_digest,
        digest_of(&v8)
    );

    layout.write_index_json(vec![layout.index(OCI_INDEX, vec![plain.clone()])]);
    assert_eq!(
        layout
            .resolve("", "linux/arm64/v8")
            .unwrap()
            .manifest_digest,
        digest_of(&plain)
    );
}

#[test]
fn platform_variants_listed_directly_in_index_json() {
    let layout = Fixture::new();
    let amd64 = tagged(with_platform(layout.image("amd64", 1), "linux/amd64"), "v1");
    let arm64 = tagged(
        with_platform(layout.image("arm64", 1), "linux/arm64/v8"),
        "v1",
    );
    layout.write_index_json(vec![amd64, arm64.clone()]);
    assert_eq!(
        layout
            .resolve("", "linux/arm64/v8")
            .unwrap()
            .manifest_digest,
        digest_of(&arm64)
    );
    assert_eq!(
        layout
            .resolve(":v1", "linux/arm64/v8")
            .unwrap()
            .manifest_digest,
        digest_of(&arm64)
    );
}

#[test]
fn follows_nested_indexes() {
    let layout = Fixture::new();
    let arm64 = with_platform(layout.image("arm64", 1), "linux/arm64/v8");
    let inner = with_platform(
        layout.index(OCI_INDEX, vec![arm64.clone()]),
        "linux/arm64/v8",
    );
    let outer = layout.index(OCI_INDEX, vec![inner]);
    layout.write_index_json(vec![tagged(outer.clone(), "latest")]);
    assert_eq!(
        layout
            .resolve("", "linux/arm64/v8")
            .unwrap()
            .manifest_digest,
        digest_of(&arm64)
    );

    // A platform's manifest can be named by digest although only the index is listed.
    let by_digest = layout
        .resolve(&format!("@{}", digest_of(&arm64)), "linux/amd64")
        .unwrap();
    assert_eq!(by_digest.manifest_digest, digest_of(&arm64));

    // Nesting is bounded.
    let mut deep = with_platform(layout.image("amd64", 1), "linux/amd64");
    for _ in 0..5 {
        deep = with_platform(layout.index(OCI_INDEX, vec![deep]), "linux/amd64");
    }
    layout.write_index_json(vec![deep]);
    assert_eq!(
        layout.error(""),
        "LAYOUT: image indexes nest more than 4 deep"
    );
}

#[test]
fn tags() {
    let layout = Fixture::new();
    let a = layout.image("a", 1);
    let b = layout.image("b", 1);
    layout.write_index_json(vec![tagged(a.clone(), "a"), tagged(b.clone(), "b")]);

    assert_eq!(
        layout.resolve(":b", "linux/amd64").unwrap().manifest_digest,
        digest_of(&b)
    );
    assert_eq!(
        layout.error(":c"),
        "tag 'c' not found in LAYOUT (available: a, b)"
    );
    assert_eq!(
        layout.error(""),
        "LAYOUT holds several images; choose one as LAYOUT:TAG or LAYOUT@DIGEST (available: a, b)"
    );

    // Two tags on one manifest are still one image.
    layout.write_index_json(vec![tagged(a.clone(), "a"), tagged(a.clone(), "latest")]);
    assert_eq!(
        layout.resolve("", "linux/amd64").unwrap().manifest_digest,
        digest_of(&a)
    );

    // Untagged entries are offered by digest.
    layout.write_index_json(vec![tagged(a, "a"), b.clone()]);
    let available = format!("(available: @{}, a)", digest_of(&b));
    let error = layout.error("");
    assert!(error.ends_with(&available), "{error}");

    let other = Digest::of_bytes(b"other");
    assert_eq!(
        layout.error(&format!("@{other}")),
        format!("{other} is not listed in LAYOUT/index.json nor in an index it lists")
    );
}

#[test]
fn docker_manifests_in_an_oci_layout() {
    let layout = Fixture::new();
    let gzip = layout.blob("application/vnd.docker.image.rootfs.diff.tar.gzip", b"one");
    let plain = layout.blob("application/vnd.docker.image.rootfs.diff.tar", b"two");
    let zstd = layout.blob(
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        b"three",
    );
    let config = layout.config(DOCKER_CONFIG, 3);
    let manifest = with_platform(
        layout.manifest(DOCKER_MANIFEST, config, vec![gzip, plain, zstd]),
        "linux/amd64",
    );
    let list = layout.index(DOCKER_LIST, vec![manifest.clone()]);
    layout.write_index_json(vec![list]);

    let image = layout.resolve("", "linux/amd64").unwrap();
    assert_eq!(image.manifest_digest, digest_of(&manifest));
    let compressions: Vec<Compression> =
        image.layers.iter().map(|layer| layer.compression).collect();
    assert_eq!(
        compressions,
        [Compression::Gzip, Compression::Detect, Compression::Zstd]
    );
}

#[test]
fn manifests_without_media_type_are_accepted() {
    let layout = Fixture::new();
    let config = layout.config(OCI_CONFIG, 0);
    let manifest = layout.json_blob(
        OCI_MANIFEST,
        &json!({ "schemaVersion": 2, "config": config, "layers": [] }),
    );
    layout.write_index_json(vec![manifest]);
    assert!(layout.resolve("", "linux/amd64").unwrap().layers.is_empty());
}

#[test]
fn blobs_are_verified_before_parsing() {
    let layout = Fixture::new();
    let image = layout.image("a", 1);
    let digest = digest_of(&image);
    let size = image["size"].as_u64().unwrap();

    let mut wrong_size = image.clone();
    wrong_size["size"] = json!(size + 1);
    layout.write_index_json(vec![wrong_size]);
    assert_eq!(
        layout.error(""),
        format!(
            "manifest {digest} is {size} bytes, but its descriptor says {}",
            size + 1
        )
    );

    let mut huge = image.clone();
    huge["size"] = json!(10_000_000_000u64);
    layout.write_index_json(vec![huge]);
    assert_eq!(
        layout.error(""),
        format!(
            "manifest {digest} is 10000000000 bytes, more than the 4 MiB we read of a JSON document"
        )
    );

    // Same size, different content.
    layout.write_index_json(vec![image]);
    let path = layout.path().join("blobs/sha256").join(digest.hex());
    let tampered = fs::read_to_string(&path)
        .unwrap()
        .replace("layers", "LAYERS");
    fs::write(&path, &tampered).unwrap();
    let actual = Digest::of_bytes(tampered.as_bytes());
    assert_eq!(
        layout.error(""),
        format!("manifest {digest} is corrupt: its content has digest {actual}")
    );

    fs::remove_file(&path).unwrap();
    assert_eq!(
        layout.error(""),
        format!("blob {digest} is missing from the layout LAYOUT")
    );
}

#[test]
fn garbled_documents_name_the_file_and_the_parse_error() {
    let layout = Fixture::new();
    fs::write(layout.path().join("index.json"), "{").unwrap();
    let error = layout.error("");
    assert!(
        error.starts_with("garbled LAYOUT/index.json: serde failed: EOF while parsing"),
        "{error}"
    );

    let manifest = layout.json_blob(OCI_MANIFEST, &json!({ "schemaVersion": 2, "layers": [] }));
    layout.write_index_json(vec![manifest.clone()]);
    let error = layout.error("");
    let expected = format!(
        "garbled manifest {}: serde failed: missing field `config`",
        digest_of(&manifest)
    );
    assert!(error.starts_with(&expected), "{error}");

    let config = layout.json_blob(
        OCI_CONFIG,
        &json!({ "os": "linux", "rootfs": { "type": "layers", "diff_ids": [] } }),
    );
    layout.write_index_json(vec![layout.manifest(OCI_MANIFEST, config.clone(), vec![])]);
    let error = layout.error("");
    let expected = format!(
        "garbled config {}: serde failed: missing field `architecture`",
        digest_of(&config)
    );
    assert!(error.starts_with(&expected), "{error}");
}

#[test]
fn layout_errors() {
    let layout = Fixture::new();
    let error = layout.error("");
    assert!(
        error.starts_with("cannot read LAYOUT/index.json: "),
        "{error}"
    );

    fs::remove_file(layout.path().join("oci-layout")).unwrap();
    assert_eq!(
        layout.error(""),
        "not an OCI image layout: LAYOUT has no oci-layout file"
    );

    let not_a_layout = |path: &Path| match Layout::open(path).unwrap_err() {
        ImageError::NotALayout { reason, .. } => reason,
        other => panic!("{other}"),
    };
    assert_eq!(
        not_a_layout(&layout.path().join("missing")),
        "does not exist"
    );
    fs::write(layout.path().join("file"), "").unwrap();
    assert_eq!(
        not_a_layout(&layout.path().join("file")),
        "is not a directory"
    );
}

#[test]
fn unsupported_media_types() {
    let layout = Fixture::new();
    let schema1 = layout.blob(
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        b"{}",
    );
    layout.write_index_json(vec![schema1.clone()]);
    assert_eq!(
        layout.error(""),
        format!(
            "manifest {} has unsupported media type \
             application/vnd.docker.distribution.manifest.v1+prettyjws (Docker schema 1)",
            digest_of(&schema1)
        )
    );

    let good = layout.blob(OCI_GZIP, b"good");
    let odd = layout.blob("application/x-tar", b"odd");
    let manifest = layout.manifest(
        OCI_MANIFEST,
        layout.config(OCI_CONFIG, 2),
        vec![good, odd.clone()],
    );
    layout.write_index_json(vec![manifest]);
    assert_eq!(
        layout.error(""),
        format!(
            "layer 2 ({}) has unsupported media type application/x-tar",
            digest_of(&odd)
        )
    );

    let artifact_config = layout.blob("application/vnd.example.config+json", b"{}");
    let manifest = layout.manifest(OCI_MANIFEST, artifact_config, vec![]);
    layout.write_index_json(vec![manifest.clone()]);
    assert_eq!(
        layout.error(""),
        format!(
            "the config of manifest {} has unsupported media type application/vnd.example.config+json",
            digest_of(&manifest)
        )
    );

    // A document must be what its descriptor says it is.
    let config = layout.config(OCI_CONFIG, 0);
    let document =
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "config": config, "layers": [] });
    let confused = layout.json_blob(OCI_MANIFEST, &document);
    layout.write_index_json(vec![confused.clone()]);
    assert_eq!(
        layout.error(""),
        format!(
            "manifest {} declares media type {OCI_INDEX}, but an image manifest was expected",
            digest_of(&confused)
        )
    );
}

#[test]
fn only_sha256_digests() {
    let layout = Fixture::new();
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    layout.write_index_json(vec![
        json!({ "mediaType": OCI_MANIFEST, "digest": sha512, "size": 2 }),
    ]);
    assert_eq!(
        layout.error(""),
        format!("manifest {sha512} does not use sha256, the only digest algorithm strata supports")
    );
}

#[test]
fn config_must_match_the_manifest() {
    let layout = Fixture::new();
    let layers = vec![
        layout.blob(OCI_GZIP, b"1"),
        layout.blob(OCI_GZIP, b"2"),
        layout.blob(OCI_GZIP, b"3"),
    ];
    let manifest = layout.manifest(OCI_MANIFEST, layout.config(OCI_CONFIG, 2), layers.clone());
    layout.write_index_json(vec![manifest.clone()]);
    assert_eq!(
        layout.error(""),
        format!(
            "manifest {} has 3 layers but its config lists 2 diff IDs",
            digest_of(&manifest)
        )
    );

    let config_with = |rootfs: Value| {
        layout.json_blob(
            OCI_CONFIG,
            &json!({ "architecture": "amd64", "os": "linux", "rootfs": rootfs }),
        )
    };
    let config = config_with(json!({ "type": "tarballs", "diff_ids": [] }));
    layout.write_index_json(vec![layout.manifest(OCI_MANIFEST, config.clone(), vec![])]);
    assert_eq!(
        layout.error(""),
        format!(
            "config {} has rootfs type 'tarballs', expected 'layers'",
            digest_of(&config)
        )
    );

    let config = config_with(json!({ "type": "layers", "diff_ids": ["sha256:nothex"] }));
    layout.write_index_json(vec![layout.manifest(
        OCI_MANIFEST,
        config.clone(),
        layers[..1].to_vec(),
    )]);
    assert_eq!(
        layout.error(""),
        format!(
            "config {} lists diff ID \"sha256:nothex\" for layer 1, which is not a sha256 digest",
            digest_of(&config)
        )
    );
}

#[test]
fn open_blob_reports_missing_blobs() {
    let layout = Fixture::new();
    let opened = Layout::open(layout.path()).unwrap();
    let absent = Digest::of_bytes(b"absent");
    let Err(error) = opened.open_blob(&absent) else {
        panic!("{absent} opened");
    };
    assert_eq!(
        error.to_string(),
        format!(
            "blob {absent} is missing from the layout {}",
            layout.path().display()
        )
    );
}
