//! Image archives, read in place: `oci-archive:` and `docker-archive:` as skopeo writes them,
//! and `docker save`'s two forms (the legacy `<id>/layer.tar` one, and moby 25's OCI layout
//! with a `manifest.json`), built here. Every tree is compared with the same image's tree
//! unpacked from its OCI layout.

mod common;
use common::*;

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::json;

/// Writes `archive` with skopeo from the `v1` image of `layout`: an OCI archive as it is
/// (same manifest, same blobs); a Docker archive as skopeo converts it.
fn skopeo_copy(layout: &Path, archive: &str) {
    let preserve = archive.starts_with("oci-archive:");
    let output = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .args(preserve.then_some("--preserve-digests"))
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(archive)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "skopeo copy to {archive}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn skopeos_archives_give_the_layouts_tree_in_every_mode() {
    if !have_registry_tools() {
        return;
    }
    let env = TestEnv::new();
    let image = sample_image(&env.path().join("layout"));
    // Docker's formats have no zstd: skopeo refuses to write such a layer to a docker-archive.
    let gzip_image = sample_image_with(&env.path().join("gzip-layout"), Compression::Gzip);
    let oci_archive = env.path().join("image-oci.tar");
    let docker_archive = env.path().join("image-docker.tar");
    skopeo_copy(
        &image.path,
        &format!("oci-archive:{}:v1", oci_archive.display()),
    );
    skopeo_copy(
        &gzip_image.path,
        &format!("docker-archive:{}:app:v1", docker_archive.display()),
    );

    let oci = |suffix: &str| format!("oci-archive:{}{suffix}", oci_archive.display());
    let docker = |suffix: &str| format!("docker-archive:{}{suffix}", docker_archive.display());
    for (source, image, same_manifest) in [
        (oci(""), &image, true),
        (oci(":v1"), &image, true),
        // skopeo decompresses the layers of a docker-archive; its manifest is made for it,
        // as containers/image makes it.
        (docker(""), &gzip_image, false),
        (docker(":app:v1"), &gzip_image, false),
        (docker(":docker.io/library/app:v1"), &gzip_image, false),
        (docker(":@0"), &gzip_image, false),
    ] {
        let env = TestEnv::new();
        let expected = layout_tree(&env, image);
        let [stored, _] = unpack_both(&env, &source);
        assert_same_tree(("layout", &expected), (&source, &stored.tree));
        assert_eq!(stored.report["source"], source.as_str());
        assert_eq!(
            stored.report["chain_id"],
            image.chain_id().as_str(),
            "{source}"
        );
        if same_manifest {
            assert_eq!(
                stored.report["manifest"],
                image.manifest_digest.as_str(),
                "{source}"
            );
        }
    }

    let line = env
        .unpack(
            format!("docker-archive:{}:app:v2", docker_archive.display()),
            env.dest("rootfs-v2"),
        )
        .failure()
        .to_owned();
    assert_mentions(&line, &["app:v2", "not found", "app:v1"]);
    let line = env
        .unpack(
            format!("oci-archive:{}:v2", oci_archive.display()),
            env.dest("rootfs-oci-v2"),
        )
        .failure()
        .to_owned();
    assert_mentions(&line, &["v2", "not found", "v1"]);
}

/// A `docker save` archive of `images` (each a name and an image), in the legacy form
/// (`<id>/layer.tar`, `<id>.json`) or moby 25's (an OCI layout, `manifest.json` naming
/// `blobs/sha256/<hex>`; a name is then also an OCI tag).
fn docker_save(path: &Path, images: &[(&str, &[Layer])], moby25: bool) -> Vec<String> {
    let mut builder = tar::Builder::new(fs::File::create(path).unwrap());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, bytes).unwrap();
    };
    let mut entries = Vec::new();
    let mut index = Vec::new();
    let mut chain_ids = Vec::new();
    for (name, layers) in images {
        let tars: Vec<Vec<u8>> = layers.iter().map(Layer::tar).collect();
        let diff_ids: Vec<String> = tars.iter().map(|tar| sha256(tar)).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": host_arch(),
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let config_digest = sha256(&config);
        let blob_name = |digest: &str| format!("blobs/sha256/{}", &digest[7..]);
        let config_name = if moby25 {
            blob_name(&config_digest)
        } else {
            format!("{}.json", &config_digest[7..])
        };
        add(&config_name, &config);
        let mut layer_names = Vec::new();
        let mut descriptors = Vec::new();
        for (tar, diff_id) in tars.iter().zip(&diff_ids) {
            let layer_name = if moby25 {
                blob_name(diff_id)
            } else {
                format!("{}/layer.tar", &sha256(diff_id.as_bytes())[7..])
            };
            add(&layer_name, tar);
            layer_names.push(layer_name);
            descriptors.push(json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": diff_id,
                "size": tar.len(),
            }));
        }
        if moby25 {
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": config.len(),
                },
                "layers": descriptors,
            }))
            .unwrap();
            let manifest_digest = sha256(&manifest);
            add(&blob_name(&manifest_digest), &manifest);
            index.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": name.split(':').nth(1).unwrap()},
            }));
        }
        entries.push(json!({"Config": config_name, "RepoTags": [name], "Layers": layer_names}));
        chain_ids.push(chain_id_of(&diff_ids));
    }
    add("manifest.json", &serde_json::to_vec(&entries).unwrap());
    if moby25 {
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add(
            "index.json",
            &serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": index})).unwrap(),
        );
    }
    builder.into_inner().unwrap();
    chain_ids
}

/// The chain ID of a stack of diff IDs (image-spec config.md).
fn chain_id_of(diff_ids: &[String]) -> String {
    let mut chain = diff_ids[0].clone();
    for diff_id in &diff_ids[1..] {
        chain = sha256(format!("{chain} {diff_id}").as_bytes());
    }
    chain
}

fn app_layers() -> Vec<Layer> {
    vec![
        Layer::new()
            .dir("etc", 0o755)
            .file("etc/app.conf", b"port=80\n", 0o644)
            .file("etc/old", b"old", 0o644),
        Layer::new()
            .whiteout("etc/old")
            .symlink("conf", "etc/app.conf")
            .hardlink("etc/app.link", "etc/app.conf"),
    ]
}

fn tool_layers() -> Vec<Layer> {
    vec![Layer::new().file("tool", b"#!/bin/sh\n", 0o755)]
}

#[test]
fn both_forms_of_docker_save_archives() {
    let env = TestEnv::new();
    // The same two images, written as an OCI layout too, for their trees.
    let app_layout = env.path().join("app-layout");
    let mut app = Image::new();
    for layer in app_layers() {
        app = app.layer(layer);
    }
    let app_tree = layout_tree(&env, &app.write(&app_layout));
    let mut tool = Image::new();
    for layer in tool_layers() {
        tool = tool.layer(layer);
    }
    let tool_tree = layout_tree(&env, &tool.write(&env.path().join("tool-layout")));

    let (app_layers, tool_layers) = (app_layers(), tool_layers());
    let images: &[(&str, &[Layer])] = &[("app:v1", &app_layers), ("tool:v2", &tool_layers)];
    for moby25 in [false, true] {
        let archive = env.path().join(format!("save-{moby25}.tar"));
        let chain_ids = docker_save(&archive, images, moby25);
        let archive = archive.display();

        let line = env
            .unpack(
                format!("docker-archive:{archive}"),
                env.dest(&format!("rootfs-which-{moby25}")),
            )
            .failure()
            .to_owned();
        assert_mentions(&line, &["holds 2 images", "app:v1", "tool:v2", ":@N"]);

        let mut sources = vec![
            (
                format!("docker-archive:{archive}:app:v1"),
                &app_tree,
                &chain_ids[0],
            ),
            (
                format!("docker-archive:{archive}:docker.io/library/app:v1"),
                &app_tree,
                &chain_ids[0],
            ),
            (
                format!("docker-archive:{archive}:@1"),
                &tool_tree,
                &chain_ids[1],
            ),
        ];
        if moby25 {
            // The same archive is an OCI layout too.
            sources.push((
                format!("oci-archive:{archive}:v1"),
                &app_tree,
                &chain_ids[0],
            ));
            sources.push((
                format!("oci-archive:{archive}:v2"),
                &tool_tree,
                &chain_ids[1],
            ));
        }
        for (source, tree, chain_id) in sources {
            let env = TestEnv::new();
            let [stored, _] = unpack_both(&env, &source);
            assert_same_tree(("layout", tree), (&source, &stored.tree));
            assert_eq!(stored.report["chain_id"], chain_id.as_str(), "{source}");
        }
        let line = env
            .unpack(
                format!("docker-archive:{archive}:@2"),
                env.dest(&format!("rootfs-at2-{moby25}")),
            )
            .failure()
            .to_owned();
        assert_mentions(&line, &["holds 2 images", "@2"]);
    }
}

#[test]
fn a_corrupt_layer_in_an_archive_commits_nothing() {
    let env = TestEnv::new();
    let archive = env.path().join("save.tar");
    let layers = app_layers();
    docker_save(&archive, &[("app:v1", &layers)], false);
    // Flip one byte of the first layer's file contents (past its header), in place.
    let mut bytes = fs::read(&archive).unwrap();
    let marker = b"port=80";
    let at = bytes
        .windows(marker.len())
        .position(|window| window == marker)
        .unwrap();
    bytes[at] ^= 0x20;
    fs::write(&archive, bytes).unwrap();

    let source = format!("docker-archive:{}:app:v1", archive.display());
    for line in fail_both(&env, &source) {
        assert_mentions(&line, &["layer 1/2", "sha256:"]);
    }
    assert!(snapshots(&env).is_empty(), "{:?}", snapshots(&env));
}

#[test]
fn an_archive_header_claiming_gigabytes_is_refused_in_bounded_memory() {
    let env = TestEnv::new();
    // A GNU long name that claims 3 GiB, in a sparse file: read whole, it would take them.
    let archive = env.path().join("huge-name.tar");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_size(3 << 30);
    header.set_path("././@LongLink").unwrap();
    header.set_cksum();
    let file = fs::File::create(&archive).unwrap();
    std::io::Write::write_all(&mut &file, header.as_bytes()).unwrap();
    file.set_len(512 + (3 << 30) + 1024).unwrap();

    for source in [
        format!("oci-archive:{}", archive.display()),
        format!("docker-archive:{}", archive.display()),
    ] {
        let out = env.strata(args![
            "unpack",
            "--no-store",
            &source,
            env.dest(&format!("rootfs-{}", &source[..3]))
        ]);
        let line = out.failure();
        assert_mentions(line, &[&archive.display().to_string(), "GNU long name"]);
    }
}
