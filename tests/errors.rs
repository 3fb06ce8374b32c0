//! Every bad input gets a clear one-line error, and loses nothing: no DEST, no staging directory
//! beside it, no snapshot committed for the layer at fault, no active snapshot left in the
//! store's `tmp/`, and the same store unpacks a good image afterwards.

mod common;
use common::*;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

/// Asserts that `line` does not mention `word` (case-insensitively).
#[track_caller]
fn assert_not_mentions(line: &str, word: &str) {
    assert!(
        !line.to_lowercase().contains(&word.to_lowercase()),
        "the error should not mention {word:?}: {line}"
    );
}

/// Asserts what a failed unpack into `dest` must leave behind: no DEST, no staging directory,
/// no committed snapshot for any of `failing_chains`, nothing in the store's `tmp/`.
#[track_caller]
fn assert_nothing_left(env: &TestEnv, dest: &Path, failing_chains: &[&str]) {
    assert!(
        fs::symlink_metadata(dest).is_err(),
        "{} was left behind",
        dest.display()
    );
    assert_no_staging_or_store_debris(env, dest, failing_chains);
}

/// Like [`assert_nothing_left`] minus DEST itself (for a DEST that existed before).
#[track_caller]
fn assert_no_staging_or_store_debris(env: &TestEnv, dest: &Path, failing_chains: &[&str]) {
    let mut left = Vec::new();
    for staging in staging_dirs(dest) {
        left.push(format!("staging directory {staging} beside DEST"));
    }
    for chain in failing_chains {
        if snapshot_dir(env, chain).exists() {
            left.push(format!(
                "a committed snapshot for the failing chain {chain}"
            ));
        }
    }
    for active in names_in(&env.store().join("tmp")) {
        left.push(format!("active snapshot tmp/{active} in the store"));
    }
    assert!(left.is_empty(), "the failed unpack left: {left:#?}");
}

fn base_layer() -> Layer {
    Layer::new()
        .dir("etc/", 0o755)
        .file("etc/base", b"base layer\n", 0o644)
}

fn good_top_layer() -> Layer {
    Layer::new().file("etc/good", b"good layer\n", 0o644)
}

/// Unpacks a good two-layer image (its first layer is [`base_layer`]) with the test's store
/// into a new DEST, checks the result, and returns the JSON report.
#[track_caller]
fn assert_store_recovers(env: &TestEnv) -> Value {
    let image = Image::new()
        .layer(base_layer())
        .layer(good_top_layer())
        .write(&env.path().join("good-image"));
    let dest = env.dest("recovered");
    let out = env.unpack(&image.path, &dest);
    out.success();
    let tree = Tree::scan(&dest);
    assert_eq!(
        tree.node("etc/base").hash.as_deref(),
        Some(sha256(b"base layer\n").as_str())
    );
    assert_eq!(
        tree.node("etc/good").hash.as_deref(),
        Some(sha256(b"good layer\n").as_str())
    );
    assert_eq!(
        tree.keys().collect::<Vec<_>>(),
        [".", "etc", "etc/base", "etc/good"]
    );
    for chain in image.chain_ids() {
        assert!(
            snapshot_dir(env, &chain).join("fs").is_dir(),
            "no snapshot for {chain}"
        );
    }
    assert_eq!(names_in(&env.store().join("tmp")), Vec::<String>::new());
    out.json()
}

/// Bytes no compressor can shrink much, the same on every run.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Text that compresses into real (not stored) blocks.
fn text(lines: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| format!("line {i}: {} {}\n", i * i, i % 7))
        .collect::<String>()
        .into_bytes()
}

/// A one-layer image at `env/img` whose layer holds `etc/data` with `data`.
fn data_image(env: &TestEnv, data: &[u8], compression: Compression) -> WrittenImage {
    Image::new()
        .layer(
            Layer::new()
                .dir("etc/", 0o755)
                .file("etc/data", data, 0o644)
                .file("etc/after", b"after the data\n", 0o644)
                .compression(compression),
        )
        .write(&env.path().join("img"))
}

/// A small one-layer image at `env/img`.
fn small_image(env: &TestEnv) -> WrittenImage {
    data_image(env, b"some data\n", Compression::Gzip)
}

/// Stores `bytes` as a blob of the image's layout; returns its digest.
fn store_blob(image: &WrittenImage, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let path = image.blob_path(&digest);
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    digest
}

/// Replaces layer `index`'s blob with `blob`, digest and size updated in the manifest, so that
/// only the content is wrong. Returns the new digest.
fn replace_layer_blob(image: &mut WrittenImage, index: usize, blob: &[u8]) -> String {
    let digest = store_blob(image, blob);
    let size = blob.len();
    image.rewrite_manifest(|manifest| {
        manifest["layers"][index]["digest"] = json!(digest);
        manifest["layers"][index]["size"] = json!(size);
    });
    digest
}

fn layer_blob(image: &WrittenImage, index: usize) -> Vec<u8> {
    fs::read(image.blob_path(&image.layers[index].digest)).unwrap()
}

/// Sets a zstd frame's first block to the reserved block type, which every decoder refuses.
fn corrupt_first_zstd_block(frame: &mut [u8]) {
    assert_eq!(frame[..4], [0x28, 0xb5, 0x2f, 0xfd], "not a zstd frame");
    let descriptor = frame[4];
    let single_segment = descriptor & 0x20 != 0;
    let window = usize::from(!single_segment);
    let dictionary = [0, 1, 2, 4][usize::from(descriptor & 0x03)];
    let content_size = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let block = 5 + window + dictionary + content_size;
    frame[block] |= 0b110;
}

/// `strata unpack --store S --json IMAGE DEST` into a new `DEST` named `rootfs`.
fn unpack_fails(env: &TestEnv, image: impl AsRef<std::ffi::OsStr>) -> (Output, PathBuf) {
    let dest = env.dest("rootfs");
    let out = env.unpack(image, &dest);
    (out, dest)
}

fn image_with_tag(image: &WrittenImage, tag: &str) -> OsString {
    let mut reference = image.path.clone().into_os_string();
    reference.push(":");
    reference.push(tag);
    reference
}

// ---------------------------------------------------------------------------------------------
// The layout and its JSON documents
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_index_json_is_named() {
    let env = TestEnv::new();
    let image = small_image(&env);
    fs::remove_file(image.path.join("index.json")).unwrap();

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["index.json"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn garbled_index_json_is_named() {
    let env = TestEnv::new();
    let image = small_image(&env);
    fs::write(
        image.path.join("index.json"),
        b"{\"schemaVersion\": 2, \"manif",
    )
    .unwrap();

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["index.json"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn missing_oci_layout_is_named() {
    let env = TestEnv::new();
    let image = small_image(&env);
    fs::remove_file(image.path.join("oci-layout")).unwrap();

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["oci-layout"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn garbled_manifest_is_named_by_digest() {
    let env = TestEnv::new();
    let image = small_image(&env);
    let garbled = b"{\"schemaVersion\": 2, \"config\": [";
    let digest = store_blob(&image, garbled);
    image.rewrite_index(|index| {
        index["manifests"][0]["digest"] = json!(digest);
        index["manifests"][0]["size"] = json!(garbled.len());
    });

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["manifest", &digest]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn garbled_config_is_named_by_digest() {
    let env = TestEnv::new();
    let mut image = small_image(&env);
    let garbled = b"{\"architecture\": \"amd64\", \"rootfs\": {";
    let digest = store_blob(&image, garbled);
    image.rewrite_manifest(|manifest| {
        manifest["config"]["digest"] = json!(digest);
        manifest["config"]["size"] = json!(garbled.len());
    });

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["config", &digest]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn config_without_rootfs_is_refused() {
    let env = TestEnv::new();
    let mut image = small_image(&env);
    image.rewrite_config(|config| {
        config.as_object_mut().unwrap().remove("rootfs");
    });

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["config", &image.config_digest, "rootfs"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn unknown_tag_lists_the_available_tags() {
    let env = TestEnv::new();
    let index = ImageIndex::new()
        .image(
            Image::new()
                .layer(Layer::new().file("one", b"1", 0o644))
                .tag("v1"),
        )
        .image(
            Image::new()
                .layer(Layer::new().file("two", b"2", 0o644))
                .tag("v2"),
        )
        .write(&env.path().join("img"));

    let (out, dest) = unpack_fails(&env, image_with_tag(&index.images[0], "nope"));
    assert_mentions(out.failure(), &["nope", "v1", "v2"]);
    let chains: Vec<String> = index.images.iter().map(|i| i.chain_id()).collect();
    assert_nothing_left(&env, &dest, &[&chains[0], &chains[1]]);
    assert_store_recovers(&env);
}

#[test]
fn missing_manifest_blob_is_named_by_digest() {
    let env = TestEnv::new();
    let image = small_image(&env);
    fs::remove_file(image.blob_path(&image.manifest_digest)).unwrap();

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &[&image.manifest_digest, "missing"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn manifest_digest_mismatch_is_named() {
    let env = TestEnv::new();
    let image = small_image(&env);
    // Same size, other content: `"schemaVersion"` becomes `"schemaVersioN"`.
    image.edit_blob(&image.manifest_digest, |bytes| {
        let at = bytes
            .windows(13)
            .position(|w| w == b"schemaVersion")
            .unwrap();
        bytes[at + 12] = b'N';
    });

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(
        out.failure(),
        &["manifest", &image.manifest_digest, "digest"],
    );
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn docker_schema1_manifest_is_refused() {
    let env = TestEnv::new();
    let image = small_image(&env);
    let schema1 = serde_json::to_vec(&json!({
        "schemaVersion": 1,
        "name": "library/hello",
        "tag": "latest",
        "architecture": host_arch(),
        "fsLayers": [{"blobSum": image.layers[0].digest}],
        "history": [{"v1Compatibility": "{}"}],
        "signatures": [],
    }))
    .unwrap();
    let digest = store_blob(&image, &schema1);
    image.rewrite_index(|index| {
        index["manifests"][0] = json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "digest": digest,
            "size": schema1.len(),
        });
    });

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["schema 1", &digest]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

// ---------------------------------------------------------------------------------------------
// Layer blobs: presence, digest, size, diff ID
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_layer_blob_is_named_by_digest() {
    let env = TestEnv::new();
    let image = small_image(&env);
    let layer = &image.layers[0].digest;
    fs::remove_file(image.blob_path(layer)).unwrap();

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["layer 1", layer, "missing"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn layer_blob_digest_mismatch_names_the_blob_digest() {
    let env = TestEnv::new();
    let image = data_image(&env, &noise(16 * 1024), Compression::Gzip);
    let layer = image.layers[0].digest.clone();
    image.corrupt_blob(&layer);

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["layer 1", &layer, "digest"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn layer_blob_longer_than_its_descriptor_is_refused() {
    let env = TestEnv::new();
    let mut image = small_image(&env);
    let layer = image.layers[0].digest.clone();
    let declared = image.layers[0].size - 10;
    image.rewrite_manifest(|manifest| manifest["layers"][0]["size"] = json!(declared));

    let (out, dest) = unpack_fails(&env, &image.path);
    let line = out.failure();
    assert_mentions(line, &["layer 1", &layer, &declared.to_string(), "bytes"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn layer_blob_shorter_than_its_descriptor_is_refused() {
    let env = TestEnv::new();
    let mut image = small_image(&env);
    let layer = image.layers[0].digest.clone();
    let declared = image.layers[0].size + 10;
    image.rewrite_manifest(|manifest| manifest["layers"][0]["size"] = json!(declared));

    let (out, dest) = unpack_fails(&env, &image.path);
    let line = out.failure();
    assert_mentions(line, &["layer 1", &layer, &declared.to_string(), "bytes"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn diff_id_mismatch_names_the_layer_and_both_digests() {
    let env = TestEnv::new();
    let mut image = small_image(&env);
    let wrong = sha256(b"not the layer");
    image.rewrite_config(|config| config["rootfs"]["diff_ids"][0] = json!(wrong));

    let (out, dest) = unpack_fails(&env, &image.path);
    let line = out.failure();
    assert_mentions(
        line,
        &[
            "layer 1",
            &image.layers[0].digest,
            "diff id",
            &wrong,
            &image.layers[0].diff_id,
        ],
    );
    // Neither the chain the config claims nor the real one is committed.
    assert_nothing_left(&env, &dest, &[&wrong, &image.chain_id()]);
    assert_store_recovers(&env);
}

/// An uncompressed blob is its own tar stream: no inflater, and its digest, checked as it
/// streams, is the diff ID the config must list.
#[test]
fn uncompressed_layer_whose_config_lists_another_diff_id_is_refused() {
    let env = TestEnv::new();
    let mut image = data_image(&env, b"some data\n", Compression::None);
    assert_eq!(image.layers[0].digest, image.layers[0].diff_id);
    let wrong = sha256(b"not the layer");
    image.rewrite_config(|config| config["rootfs"]["diff_ids"][0] = json!(wrong));

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(
        out.failure(),
        &["layer 1", "diff id", &wrong, &image.layers[0].digest],
    );
    assert_nothing_left(&env, &dest, &[&wrong, &image.chain_id()]);
    assert_store_recovers(&env);
}

/// Docker's `…diff.tar` and OCI's `…tar` may hold a compressed stream: the first bytes decide
/// that it goes through an inflater, and the diff ID is the uncompressed stream's.
#[test]
fn a_compressed_blob_declared_uncompressed_is_inflated() {
    let env = TestEnv::new();
    for (name, media_type) in [
        ("oci", media_type::OCI_LAYER),
        ("docker", media_type::DOCKER_LAYER),
    ] {
        let image = Image::new()
            .layer(
                Layer::new()
                    .file("etc/data", b"data\n", 0o644)
                    .compression(Compression::Gzip)
                    .media_type(media_type),
            )
            .write(&env.path().join(name));
        assert_ne!(image.layers[0].digest, image.layers[0].diff_id);
        let dest = env.dest(&format!("{name}-rootfs"));
        env.strata(args!["unpack", "--no-store", &image.path, &dest])
            .success();
        assert_eq!(
            fs::read(Path::new(&dest).join("etc/data")).unwrap(),
            b"data\n"
        );
    }
}

#[test]
fn unsupported_layer_media_type_is_named() {
    let env = TestEnv::new();
    let media_type = "application/vnd.example.layer.v1.tar+lz4";
    let image = Image::new()
        .layer(
            Layer::new()
                .file("etc/data", b"data\n", 0o644)
                .media_type(media_type),
        )
        .write(&env.path().join("img"));

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(
        out.failure(),
        &["layer 1", &image.layers[0].digest, media_type],
    );
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

// ---------------------------------------------------------------------------------------------
// Layer streams: compression and tar
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_gzip_layer_is_reported_as_truncated_not_as_a_digest_mismatch() {
    let env = TestEnv::new();
    let mut image = data_image(&env, &noise(64 * 1024), Compression::Gzip);
    let blob = layer_blob(&image, 0);
    let digest = replace_layer_blob(&mut image, 0, &blob[..blob.len() / 2]);

    let (out, dest) = unpack_fails(&env, &image.path);
    let line = out.failure();
    assert_mentions(line, &["layer 1", &digest, "gzip", "truncated"]);
    assert_not_mentions(line, "mismatch");
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn gzip_layer_with_a_bad_crc_is_reported_as_corrupt() {
    let env = TestEnv::new();
    let mut image = data_image(&env, &noise(16 * 1024), Compression::Gzip);
    let mut blob = layer_blob(&image, 0);
    // The trailer is CRC32 then ISIZE, 4 bytes each.
    let crc = blob.len() - 8;
    blob[crc] ^= 0xff;
    let digest = replace_layer_blob(&mut image, 0, &blob);

    let (out, dest) = unpack_fails(&env, &image.path);
    let line = out.failure();
    assert_mentions(line, &["layer 1", &digest, "gzip", "corrupt"]);
    assert_not_mentions(line, "mismatch");
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn truncated_zstd_layer_is_reported_as_truncated() {
    let env = TestEnv::new();
    let mut image = data_image(&env, &text(20_000), Compression::Zstd);
    let blob = layer_blob(&image, 0);
    let digest = replace_layer_blob(&mut image, 0, &blob[..blob.len() / 2]);

    let (out, dest) = unpack_fails(&env, &image.path);
    let line = out.failure();
    assert_mentions(line, &["layer 1", &digest, "zstd", "truncated"]);
    assert_not_mentions(line, "mismatch");
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn corrupt_zstd_layer_is_reported_as_corrupt() {
    let env = TestEnv::new();
    let mut image = data_image(&env, &text(20_000), Compression::Zstd);
    let mut blob = layer_blob(&image, 0);
    corrupt_first_zstd_block(&mut blob);
    let digest = replace_layer_blob(&mut image, 0, &blob);

    let (out, dest) = unpack_fails(&env, &image.path);
    let line = out.failure();
    assert_mentions(line, &["layer 1", &digest, "zstd", "corrupt"]);
    assert_not_mentions(line, "mismatch");
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn layer_that_is_not_a_tar_archive_is_refused() {
    let env = TestEnv::new();
    let garbage: Vec<u8> = b"this is not a tar archive, just some text. "
        .iter()
        .copied()
        .cycle()
        .take(1024)
        .collect();
    let image = Image::new()
        .layer(Layer::from_tar(&garbage).compression(Compression::None))
        .write(&env.path().join("img"));

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["layer 1", &image.layers[0].digest, "tar"]);
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn tar_header_claiming_10_gib_fails_quickly_without_allocating_it() {
    let env = TestEnv::new();
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..3].copy_from_slice(b"big");
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(DEFAULT_MTIME);
    header.set_size(10 << 30);
    header.set_cksum();
    let mut stream = header.as_bytes().to_vec();
    stream.extend_from_slice(b"only a few bytes follow");
    let image = Image::new()
        .layer(Layer::from_tar(&stream).compression(Compression::None))
        .write(&env.path().join("img"));

    // A 4 GiB address space: allocating what the header claims would abort, not fail cleanly.
    let dest = env.dest("rootfs");
    let store = env.store();
    let strata = env.strata_command(args![
        "unpack", "--store", store, "--json", image.path, dest
    ]);
    let mut command = env.command("sh");
    command.args(["-c", "ulimit -v 4194304 && exec \"$0\" \"$@\""]);
    command.arg(strata.get_program()).args(strata.get_args());
    let started = Instant::now();
    let out = run(&mut command);
    let took = started.elapsed();

    assert_mentions(out.failure(), &["layer 1", &image.layers[0].digest, "big"]);
    assert!(
        took < Duration::from_secs(20),
        "failing took {took:?}: {out}"
    );
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

// ---------------------------------------------------------------------------------------------
// DEST
// ---------------------------------------------------------------------------------------------

#[test]
fn non_empty_dest_is_refused_and_left_untouched() {
    let env = TestEnv::new();
    let image = small_image(&env);
    let dest = env.mkdir("rootfs");
    fs::write(dest.join("precious"), b"keep me\n").unwrap();
    env.own(&dest.join("precious"));

    let out = env.unpack(&image.path, &dest);
    assert_mentions(out.failure(), &["not empty", &dest.display().to_string()]);
    assert_eq!(names_in(&dest), ["precious"]);
    assert_eq!(fs::read(dest.join("precious")).unwrap(), b"keep me\n");
    assert_no_staging_or_store_debris(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

#[test]
fn dest_that_is_a_file_is_refused_and_left_untouched() {
    let env = TestEnv::new();
    let image = small_image(&env);
    let dest = env.path().join("rootfs");
    fs::write(&dest, b"a file\n").unwrap();
    env.own(&dest);

    let out = env.unpack(&image.path, &dest);
    assert_mentions(
        out.failure(),
        &["not a directory", &dest.display().to_string()],
    );
    assert!(fs::symlink_metadata(&dest).unwrap().is_file());
    assert_eq!(fs::read(&dest).unwrap(), b"a file\n");
    assert_no_staging_or_store_debris(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

// ---------------------------------------------------------------------------------------------
// Failing midway
// ---------------------------------------------------------------------------------------------

#[test]
fn failure_in_the_second_of_three_layers_keeps_the_first_layers_snapshot() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(base_layer())
        .layer(Layer::new().file("etc/middle", noise(16 * 1024), 0o644))
        .layer(Layer::new().file("etc/top", b"top\n", 0o644))
        .write(&env.path().join("img"));
    let middle = image.layers[1].digest.clone();
    image.edit_blob(&middle, |bytes| {
        let at = bytes.len() / 2;
        bytes[at] ^= 0x55;
    });
    let chains = image.chain_ids();

    let (out, dest) = unpack_fails(&env, &image.path);
    assert_mentions(out.failure(), &["layer 2/3", &middle]);
    assert_nothing_left(&env, &dest, &[&chains[1], &chains[2]]);
    assert_eq!(snapshots(&env), [hex(&chains[0])]);

    let report = assert_store_recovers(&env);
    let cached: Vec<&Value> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| &layer["cached"])
        .collect();
    assert_eq!(cached, [&json!(true), &json!(false)], "{report}");
    assert_eq!(report["layers"][0]["chain_id"], json!(chains[0]));
}

// ---------------------------------------------------------------------------------------------
// The kernel
// ---------------------------------------------------------------------------------------------

#[test]
fn unavailable_user_namespaces_are_reported_with_the_sysctl_to_allow_them() {
    let env = TestEnv::new();
    let unshare_works = env
        .command("unshare")
        .args(["--user", "--map-root-user", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !unshare_works {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs util-linux's unshare and unprivileged user namespaces"
        );
        eprintln!("skipped: `unshare --user --map-root-user` does not work here");
        return;
    }
    let image = small_image(&env);
    let dest = env.dest("rootfs");
    let store = env.store();
    let mut command = env.command("unshare");
    command.args([
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$0\" \"$@\"",
    ]);
    command.arg(strata_bin());
    command.args(args![
        "unpack", "--store", store, "--json", image.path, dest
    ]);
    let out = run(&mut command);

    assert_mentions(
        out.failure(),
        &["user namespaces are unavailable", "sysctl"],
    );
    assert_nothing_left(&env, &dest, &[&image.chain_id()]);
    assert_store_recovers(&env);
}

// ---------------------------------------------------------------------------------------------
// --no-store
// ---------------------------------------------------------------------------------------------

/// `strata unpack --no-store --json IMAGE DEST` into a new DEST named `rootfs`.
fn unpack_without_store_fails(env: &TestEnv, image: &WrittenImage) -> (Output, PathBuf) {
    let dest = env.dest("rootfs");
    let out = env.strata(args!["unpack", "--no-store", "--json", image.path, dest]);
    (out, dest)
}

#[track_caller]
fn assert_no_store_created(env: &TestEnv) {
    for store in [env.store(), env.path().join(".local/share/strata")] {
        assert!(
            fs::symlink_metadata(&store).is_err(),
            "--no-store created {}",
            store.display()
        );
    }
}

#[test]
fn no_store_digest_mismatch_leaves_no_dest() {
    let env = TestEnv::new();
    let image = data_image(&env, &noise(16 * 1024), Compression::Gzip);
    let layer = image.layers[0].digest.clone();
    image.corrupt_blob(&layer);

    let (out, dest) = unpack_without_store_fails(&env, &image);
    assert_mentions(out.failure(), &["layer 1", &layer, "digest"]);
    assert_nothing_left(&env, &dest, &[]);
    assert_no_store_created(&env);
}

#[test]
fn no_store_diff_id_mismatch_leaves_no_dest() {
    let env = TestEnv::new();
    let mut image = small_image(&env);
    let wrong = sha256(b"not the layer");
    image.rewrite_config(|config| config["rootfs"]["diff_ids"][0] = json!(wrong));

    let (out, dest) = unpack_without_store_fails(&env, &image);
    assert_mentions(
        out.failure(),
        &["layer 1", "diff id", &wrong, &image.layers[0].diff_id],
    );
    assert_nothing_left(&env, &dest, &[]);
    assert_no_store_created(&env);
}

#[test]
fn no_store_failure_in_a_later_layer_leaves_no_dest() {
    let env = TestEnv::new();
    let mut image = Image::new()
        .layer(base_layer())
        .layer(Layer::new().file("etc/top", b"top\n", 0o644))
        .write(&env.path().join("img"));
    let wrong = sha256(b"not the layer");
    image.rewrite_config(|config| config["rootfs"]["diff_ids"][1] = json!(wrong));

    let (out, dest) = unpack_without_store_fails(&env, &image);
    assert_mentions(out.failure(), &["layer 2/2", "diff id", &wrong]);
    assert_nothing_left(&env, &dest, &[]);
    assert_no_store_created(&env);
}
