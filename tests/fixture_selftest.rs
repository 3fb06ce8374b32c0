//! Checks the test support itself: the fixture builder with independent readers (the tar crate,
//! serde_json, flate2, zstd), the run-as-test-user plumbing with plain shell commands, and the
//! tree scanner on trees made here. Only the last test runs `strata` itself.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use serde_json::{Value, json};
use tar::EntryType;

/// One entry as the tar crate reads it back.
#[derive(Debug)]
struct Seen {
    name: Vec<u8>,
    kind: EntryType,
    link: Option<Vec<u8>>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    device: (u32, u32),
    data: Vec<u8>,
    pax: BTreeMap<String, Vec<u8>>,
}

fn read_entries(tar: &[u8]) -> Vec<Seen> {
    let mut archive = tar::Archive::new(tar);
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let pax = match entry.pax_extensions().unwrap() {
            None => BTreeMap::new(),
            Some(records) => records
                .map(|record| record.unwrap())
                .map(|r| (r.key().unwrap().to_owned(), r.value_bytes().to_vec()))
                .collect(),
        };
        let header = entry.header();
        let mut read = Seen {
            name: entry.path_bytes().into_owned(),
            kind: header.entry_type(),
            link: entry.link_name_bytes().map(|link| link.into_owned()),
            mode: header.mode().unwrap(),
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            mtime: header.mtime().unwrap(),
            device: (
                header.device_major().unwrap().unwrap_or_default(),
                header.device_minor().unwrap().unwrap_or_default(),
            ),
            data: Vec::new(),
            pax,
        };
        entry.read_to_end(&mut read.data).unwrap();
        seen.push(read);
    }
    seen
}

/// Entry types as stored, GNU and PAX helper entries included.
fn raw_kinds(tar: &[u8]) -> Vec<u8> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().unwrap().raw(true);
    entries
        .map(|entry| entry.unwrap().header().entry_type().as_byte())
        .collect()
}

fn names(seen: &[Seen]) -> Vec<&[u8]> {
    seen.iter().map(|entry| entry.name.as_slice()).collect()
}

fn decompress(blob: &[u8], compression: Compression) -> Vec<u8> {
    let mut tar = Vec::new();
    match compression {
        Compression::None => tar.extend_from_slice(blob),
        Compression::Gzip | Compression::GzipMultiMember => {
            flate2::read::MultiGzDecoder::new(blob)
                .read_to_end(&mut tar)
                .unwrap();
        }
        Compression::Zstd => tar = zstd::decode_all(blob).unwrap(),
    }
    tar
}

/// The decompressed gzip members of `blob`, one by one.
fn gzip_members(blob: &[u8]) -> Vec<Vec<u8>> {
    let mut rest = blob;
    let mut members = Vec::new();
    while !rest.is_empty() {
        let mut decoder = flate2::bufread::GzDecoder::new(rest);
        let mut member = Vec::new();
        decoder.read_to_end(&mut member).unwrap();
        rest = decoder.into_inner();
        members.push(member);
    }
    members
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// What a walk from `index.json` found: the manifests it reached, and every descriptor whose
/// digest or size does not match its blob.
#[derive(Debug, Default)]
struct Walk {
    manifests: Vec<String>,
    problems: Vec<String>,
}

fn walk(layout: &Path) -> Walk {
    let mut walk = Walk::default();
    walk_index(layout, &read_json(&layout.join("index.json")), &mut walk);
    walk
}

fn walk_index(layout: &Path, index: &Value, walk: &mut Walk) {
    for descriptor in index["manifests"].as_array().unwrap() {
        let bytes = check_blob(layout, descriptor, walk);
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        match descriptor["mediaType"].as_str().unwrap() {
            media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST => {
                walk_index(layout, &json, walk)
            }
            _ => {
                walk.manifests
                    .push(descriptor["digest"].as_str().unwrap().to_owned());
                check_blob(layout, &json["config"], walk);
                for layer in json["layers"].as_array().unwrap() {
                    check_blob(layout, layer, walk);
                }
            }
        }
    }
}

fn check_blob(layout: &Path, descriptor: &Value, walk: &mut Walk) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().unwrap();
    let bytes = fs::read(blob_path(layout, digest)).unwrap();
    if sha256(&bytes) != digest {
        walk.problems
            .push(format!("{digest} holds {}", sha256(&bytes)));
    }
    if descriptor["size"] != json!(bytes.len()) {
        walk.problems.push(format!(
            "{digest} is {} bytes, not {}",
            bytes.len(),
            descriptor["size"]
        ));
    }
    bytes
}

#[test]
fn entries_come_out_as_written() {
    let layer = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .symlink("lib", "usr/lib")
        .hardlink("bin/sh2", "bin/sh")
        .fifo("run/fifo", 0o600)
        .char_device("dev/null", 1, 3)
        .block_device("dev/sda", 8, 0)
        .whiteout("etc/old")
        .whiteout("top")
        .opaque("var/cache")
        .opaque("")
        .entry(
            Entry::file("x", b"..")
                .owner(1000, 42)
                .mtime(1_700_000_000)
                .xattr("user.foo", b"bar")
                .xattr("security.capability", [1u8, 0, 0, 2])
                .mode(0o4755),
        )
        .entry(Entry::new(EntryType::new(b'Z'), "odd"));
    let seen = read_entries(&layer.tar());

    let expected: [&[u8]; 13] = [
        b"etc/",
        b"etc/hosts",
        b"lib",
        b"bin/sh2",
        b"run/fifo",
        b"dev/null",
        b"dev/sda",
        b"etc/.wh.old",
        b".wh.top",
        b"var/cache/.wh..wh..opq",
        b".wh..wh..opq",
        b"x",
        b"odd",
    ];
    assert_eq!(names(&seen), expected);
    let kinds: Vec<u8> = seen.iter().map(|entry| entry.kind.as_byte()).collect();
    assert_eq!(kinds, b"502163400000Z");

    assert_eq!(seen[0].mode, 0o755);
    assert_eq!(seen[1].data, b"127.0.0.1 localhost\n");
    assert_eq!(seen[2].link.as_deref(), Some(&b"usr/lib"[..]));
    assert_eq!(seen[3].link.as_deref(), Some(&b"bin/sh"[..]));
    assert_eq!(seen[4].mode, 0o600);
    assert_eq!(seen[5].device, (1, 3));
    assert_eq!(seen[6].device, (8, 0));
    assert!(seen[7].data.is_empty());

    let x = &seen[11];
    assert_eq!(
        (x.mode, x.uid, x.gid, x.mtime),
        (0o4755, 1000, 42, 1_700_000_000)
    );
    assert_eq!(x.data, b"..");
    assert_eq!(x.pax["SCHILY.xattr.user.foo"], b"bar");
    assert_eq!(x.pax["SCHILY.xattr.security.capability"], [1, 0, 0, 2]);
    assert_eq!(seen[1].mtime, DEFAULT_MTIME);
    assert_eq!((seen[1].uid, seen[1].gid), (0, 0));
}

#[test]
fn attack_names_reach_the_stream_verbatim() {
    let hostile: [&[u8]; 9] = [
        b"../evil",
        b"/abs",
        b"./x",
        b"a/../../b",
        b".",
        b"/",
        b"..",
        b"//double//slash",
        b"not-utf8-\xff\xfe",
    ];
    for long_names in [LongNames::Gnu, LongNames::Pax] {
        let mut layer = Layer::new().long_names(long_names);
        for name in hostile {
            layer = layer.entry(Entry::file(name, b"pwned"));
        }
        layer = layer
            .file("/", b"a file called /", 0o644)
            .symlink("escape", "/etc")
            .symlink("up", "../../../../tmp")
            .hardlink("shadow", "../../etc/shadow");
        let seen = read_entries(&layer.tar());

        let mut expected = hostile.to_vec();
        expected.extend([&b"/"[..], b"escape", b"up", b"shadow"]);
        assert_eq!(names(&seen), expected, "{long_names:?}");
        let links: Vec<_> = seen[10..].iter().map(|e| e.link.clone().unwrap()).collect();
        assert_eq!(
            links,
            [&b"/etc"[..], b"../../../../tmp", b"../../etc/shadow"]
        );
    }
}

#[test]
fn long_names_use_gnu_or_pax_records() {
    let long_dir = "d".repeat(90);
    let long_name = format!("{long_dir}/{}", "f".repeat(60));
    let long_target = format!("../{}", "t".repeat(150));
    let fits = "n".repeat(100);
    let layer = |long_names| {
        Layer::new()
            .long_names(long_names)
            .dir(&long_dir, 0o755)
            .file(&long_name, b"deep", 0o644)
            .symlink(format!("{long_dir}/link"), &long_target)
            .hardlink(format!("{long_dir}/{}", "h".repeat(40)), &long_name)
            .file(&fits, b"", 0o644)
    };
    let expected = [
        long_dir.as_bytes(),
        long_name.as_bytes(),
        format!("{long_dir}/link").as_bytes(),
        format!("{long_dir}/{}", "h".repeat(40)).as_bytes(),
        fits.as_bytes(),
    ]
    .map(<[u8]>::to_vec);

    let gnu = layer(LongNames::Gnu).tar();
    // L for each name over 100 bytes, K for each link target over 100 bytes; `fits` needs none.
    assert_eq!(raw_kinds(&gnu), b"5L0K2LK10");
    let seen = read_entries(&gnu);
    assert_eq!(
        seen.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(seen[2].link.as_deref(), Some(long_target.as_bytes()));
    assert_eq!(seen[3].link.as_deref(), Some(long_name.as_bytes()));
    assert_eq!(seen[1].data, b"deep");

    let pax = layer(LongNames::Pax).tar();
    // Every entry carries its name as a PAX `path` record, long or not.
    assert_eq!(raw_kinds(&pax), b"x5x0x2x1x0");
    let seen = read_entries(&pax);
    assert_eq!(
        seen.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(seen[2].pax["linkpath"], long_target.as_bytes());
    assert_eq!(seen[4].pax["path"], fits.as_bytes());

    // Ids beyond the header's octal field: GNU base-256 in the header, or PAX records.
    let big = |long_names| {
        Layer::new()
            .entry(
                Entry::file("f", "")
                    .owner(3_000_000, 5)
                    .long_names(long_names),
            )
            .tar()
    };
    assert_eq!(read_entries(&big(LongNames::Gnu))[0].uid, 3_000_000);
    let seen = read_entries(&big(LongNames::Pax));
    assert_eq!(seen[0].pax["uid"], b"3000000");
    assert!(!seen[0].pax.contains_key("gid"));

    // One entry can differ from its layer, so both kinds can meet in one stream.
    let mixed = Layer::new()
        .entry(Entry::file(&long_name, b"").long_names(LongNames::Pax))
        .file(&long_name, b"", 0o644)
        .tar();
    assert_eq!(raw_kinds(&mixed), b"x0L0");
}

#[test]
fn blobs_decompress_to_the_diff_id() {
    let env = TestEnv::new();
    for (i, compression) in [
        Compression::None,
        Compression::Gzip,
        Compression::GzipMultiMember,
        Compression::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        let layer = Layer::new()
            .dir("etc", 0o755)
            .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
            .compression(compression);
        let tar = layer.tar();
        let image = Image::new()
            .layer(layer)
            .write(&env.path().join(format!("img{i}")));

        let written = &image.layers[0];
        let blob = fs::read(image.blob_path(&written.digest)).unwrap();
        assert_eq!(sha256(&blob), written.digest);
        assert_eq!(blob.len() as u64, written.size);
        let stream = decompress(&blob, compression);
        assert_eq!(stream, tar, "{compression:?}");
        assert_eq!(sha256(&stream), written.diff_id);
        assert_eq!(
            image.config()["rootfs"]["diff_ids"],
            json!([written.diff_id])
        );

        let expected_type = match compression {
            Compression::None => media_type::OCI_LAYER,
            Compression::Gzip | Compression::GzipMultiMember => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
        };
        assert_eq!(image.manifest()["layers"][0]["mediaType"], expected_type);
        assert_eq!(written.media_type, expected_type);
        assert!(walk(&image.path).problems.is_empty());
    }
}

#[test]
fn multi_member_gzip_has_a_member_per_entry() {
    let layer = Layer::new()
        .dir("a", 0o755)
        .file("a/1", b"one", 0o644)
        .file("a/2", b"two", 0o644)
        .compression(Compression::GzipMultiMember);
    let env = TestEnv::new();
    let image = Image::new()
        .layer(layer.clone())
        .write(&env.path().join("img"));
    let blob = fs::read(image.blob_path(&image.layers[0].digest)).unwrap();

    let members = gzip_members(&blob);
    assert_eq!(members.len(), 4, "three entries and the end blocks");
    assert_eq!(members.concat(), layer.tar());
    assert_eq!(members[3], vec![0; 1024]);
    // The trap multi-member streams set: a plain GzDecoder stops after the first member.
    let mut first = Vec::new();
    flate2::read::GzDecoder::new(blob.as_slice())
        .read_to_end(&mut first)
        .unwrap();
    assert_eq!(first, members[0]);
}

#[test]
fn trailing_bytes_count_in_the_diff_id_only() {
    let plain = Layer::new().file("f", b"data", 0o644);
    let padded = plain
        .clone()
        .trailing_bytes([&[0; 4096][..], b"junk after the end"].concat());
    let tar = padded.tar();
    assert!(tar.starts_with(&plain.tar()));
    assert!(tar.ends_with(b"junk after the end"));
    assert_eq!(names(&read_entries(&tar)), [b"f"]);

    let env = TestEnv::new();
    for compression in [
        Compression::Gzip,
        Compression::GzipMultiMember,
        Compression::Zstd,
    ] {
        let image = Image::new()
            .layer(padded.clone().compression(compression))
            .write(&env.path().join(format!("{compression:?}")));
        assert_eq!(image.layers[0].diff_id, sha256(&tar));
        let blob = fs::read(image.blob_path(&image.layers[0].digest)).unwrap();
        assert_eq!(decompress(&blob, compression), tar);
    }
}

#[test]
fn raw_streams_are_stored_as_given() {
    let env = TestEnv::new();
    let full = Layer::new().file("f", b"data", 0o644).tar();
    let truncated = Layer::from_tar(&full[..700]).compression(Compression::None);
    let image = Image::new()
        .layer(truncated)
        .layer(Layer::from_tar(b"not a tar at all").media_type("application/x-custom"))
        .write(&env.path().join("img"));
    assert_eq!(
        fs::read(image.blob_path(&image.layers[0].digest)).unwrap(),
        &full[..700]
    );
    assert_eq!(image.layers[0].diff_id, sha256(&full[..700]));
    assert_eq!(image.layers[1].diff_id, sha256(b"not a tar at all"));
    assert_eq!(image.layers[1].media_type, "application/x-custom");
}

#[test]
fn docker_media_types_inside_an_oci_layout() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("a", b"a", 0o644))
        .layer(
            Layer::new()
                .file("b", b"b", 0o644)
                .compression(Compression::None),
        )
        .layer(
            Layer::new()
                .file("c", b"c", 0o644)
                .compression(Compression::Zstd),
        )
        .docker_media_types()
        .write(&env.path().join("img"));
    let manifest = image.manifest();
    assert_eq!(manifest["mediaType"], media_type::DOCKER_MANIFEST);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["config"]["mediaType"], media_type::DOCKER_CONFIG);
    let layer_types: Vec<_> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["mediaType"])
        .collect();
    assert_eq!(
        layer_types,
        [
            media_type::DOCKER_LAYER_GZIP,
            media_type::DOCKER_LAYER,
            media_type::DOCKER_LAYER
        ]
    );
    let index = read_json(&image.path.join("index.json"));
    assert_eq!(index["mediaType"], media_type::OCI_INDEX);
    assert_eq!(
        index["manifests"][0]["mediaType"],
        media_type::DOCKER_MANIFEST
    );
    assert!(walk(&image.path).problems.is_empty());
}

#[test]
fn layout_is_complete_consistent_and_reproducible() {
    let env = TestEnv::new();
    let image = || {
        Image::new()
            .layer(Layer::new().dir("etc", 0o755).file("etc/a", b"a", 0o644))
            .layer(
                Layer::new()
                    .whiteout("etc/a")
                    .compression(Compression::Zstd),
            )
            .tag("latest")
    };
    let first = image().write(&env.path().join("one"));
    let second = image().write(&env.path().join("two"));
    assert_eq!(first.manifest_digest, second.manifest_digest);
    assert_eq!(first.layers[1].digest, second.layers[1].digest);

    let layout = &first.path;
    assert_eq!(
        fs::read(layout.join("oci-layout")).unwrap(),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = read_json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "latest");
    assert_eq!(
        index["manifests"][0]["digest"],
        first.manifest_digest.as_str()
    );

    let config = first.config();
    assert_eq!(config["architecture"], host_arch());
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([first.layers[0].diff_id, first.layers[1].diff_id])
    );
    assert_eq!(
        first.manifest()["config"]["digest"],
        first.config_digest.as_str()
    );

    let walked = walk(layout);
    assert_eq!(walked.manifests, [first.manifest_digest.as_str()]);
    assert!(walked.problems.is_empty(), "{:?}", walked.problems);
    // Every file under blobs/ is named by its hash, and the test uid can read it.
    for blob in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = blob.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(sha256(&fs::read(&path).unwrap()), format!("sha256:{name}"));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
    for dir in [
        layout.clone(),
        layout.join("blobs"),
        layout.join("blobs/sha256"),
    ] {
        assert_eq!(
            fs::metadata(dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    let [l0, l1] = [&first.layers[0].diff_id, &first.layers[1].diff_id];
    assert_eq!(
        first.chain_ids(),
        [l0.clone(), sha256(format!("{l0} {l1}").as_bytes())]
    );
    assert_eq!(first.chain_id(), first.chain_ids()[1]);
}

#[test]
fn rewrites_leave_only_the_intended_lie() {
    let env = TestEnv::new();
    let mut image = Image::new()
        .layer(Layer::new().file("a", b"a", 0o644))
        .layer(Layer::new().file("b", b"b", 0o644))
        .write(&env.path().join("img"));
    let (manifest_before, config_before) =
        (image.manifest_digest.clone(), image.config_digest.clone());

    let wrong = sha256(b"wrong");
    image.rewrite_config(|config| config["rootfs"]["diff_ids"][1] = json!(wrong));
    assert_ne!(image.config_digest, config_before);
    assert_ne!(image.manifest_digest, manifest_before);
    assert_eq!(
        image.config()["rootfs"]["diff_ids"],
        json!([image.layers[0].diff_id, wrong])
    );
    assert_ne!(
        image.layers[1].diff_id, wrong,
        "layers keep the real diff IDs"
    );
    let walked = walk(&image.path);
    assert_eq!(walked.manifests, [image.manifest_digest.as_str()]);
    assert!(walked.problems.is_empty(), "{:?}", walked.problems);

    image.rewrite_manifest(|manifest| manifest["layers"][0]["size"] = json!(1));
    let walked = walk(&image.path);
    assert_eq!(walked.manifests, [image.manifest_digest.as_str()]);
    let digest = &image.layers[0].digest;
    assert_eq!(
        walked.problems,
        [format!("{digest} is {} bytes, not 1", image.layers[0].size)]
    );

    image.edit_blob(&image.layers[1].digest, |blob| {
        *blob.last_mut().unwrap() ^= 1
    });
    assert_eq!(walk(&image.path).problems.len(), 2);

    image.rewrite_index(|index| index["manifests"][0]["annotations"] = json!({REF_NAME: "v1"}));
    assert_eq!(
        read_json(&image.path.join("index.json"))["manifests"][0]["annotations"][REF_NAME],
        "v1"
    );
}

#[test]
fn multi_platform_indexes_flat_and_nested() {
    let env = TestEnv::new();
    let host = format!("linux/{}", host_arch());
    let foreign = format!("linux/{}/v8", foreign_arch());
    let images = || {
        ImageIndex::new()
            .image(Image::new().platform(&foreign).layer(Layer::new().file(
                "arch",
                foreign_arch(),
                0o644,
            )))
            .image(Image::new().platform(&host).layer(Layer::new().file(
                "arch",
                host_arch(),
                0o644,
            )))
            .attestation()
    };

    let flat = images().write(&env.path().join("flat"));
    let index = read_json(&flat.path.join("index.json"));
    let descriptors = index["manifests"].as_array().unwrap();
    assert_eq!(descriptors.len(), 3);
    // The attestation comes first, then the images in the order given.
    assert_eq!(
        descriptors[0]["platform"],
        json!({"os": "unknown", "architecture": "unknown"})
    );
    assert_eq!(
        descriptors[0]["digest"],
        flat.attestation.as_deref().unwrap()
    );
    assert_eq!(
        descriptors[0]["annotations"]["vnd.docker.reference.digest"],
        flat.images[0].manifest_digest.as_str()
    );
    assert_eq!(
        descriptors[1]["platform"],
        json!({"os": "linux", "architecture": foreign_arch(), "variant": "v8"})
    );
    assert_eq!(
        descriptors[2]["platform"],
        json!({"os": "linux", "architecture": host_arch()})
    );
    assert_eq!(flat.images[0].config()["variant"], "v8");
    assert_eq!(flat.images[0].config()["architecture"], foreign_arch());
    assert_eq!(flat.images[1].config()["architecture"], host_arch());
    let walked = walk(&flat.path);
    assert_eq!(walked.manifests.len(), 3);
    assert!(walked.problems.is_empty(), "{:?}", walked.problems);
    let attestation: Value =
        read_json(&blob_path(&flat.path, flat.attestation.as_deref().unwrap()));
    assert_eq!(attestation["layers"][0]["mediaType"], media_type::IN_TOTO);

    let mut nested = images()
        .nested()
        .tag("latest")
        .docker_media_types()
        .write(&env.path().join("nested"));
    let index = read_json(&nested.path.join("index.json"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let top = &index["manifests"][0];
    assert_eq!(top["mediaType"], media_type::DOCKER_MANIFEST_LIST);
    assert_eq!(top["annotations"][REF_NAME], "latest");
    let list = read_json(&blob_path(&nested.path, top["digest"].as_str().unwrap()));
    assert_eq!(list["mediaType"], media_type::DOCKER_MANIFEST_LIST);
    assert_eq!(
        list["manifests"][2]["digest"],
        nested.images[1].manifest_digest.as_str()
    );
    assert_eq!(
        nested.images[1].manifest()["mediaType"],
        media_type::DOCKER_MANIFEST
    );

    // A rewrite deep down re-digests the nested index and updates index.json.
    nested.images[1].rewrite_config(|config| config["rootfs"]["diff_ids"] = json!([]));
    let walked = walk(&nested.path);
    assert!(walked.problems.is_empty(), "{:?}", walked.problems);
    assert!(walked.manifests.contains(&nested.images[1].manifest_digest));
    assert!(walked.manifests.contains(&nested.images[0].manifest_digest));
    assert_ne!(
        read_json(&nested.path.join("index.json"))["manifests"][0]["digest"],
        top["digest"]
    );
}

#[test]
fn commands_run_as_the_test_user_in_a_clean_environment() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new())
        .write(&env.path().join("img"));
    let script = r#"id -u; id -g; id -G; echo "$HOME"; echo "$LANG"; echo "${STRATA_STORE-unset}"
        touch "$HOME/written" && cat "$1/index.json" >/dev/null && test -x "$2" && test -x "$3""#;
    let helper = strata_bin().with_file_name("strata-helper");
    let out =
        run(env
            .command("sh")
            .args(args!["-c", script, "sh", image.path, strata_bin(), helper]));
    out.success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let [uid, gid, groups, home, lang, store] = lines[..] else {
        panic!("{out}")
    };
    assert_eq!(
        (uid, gid),
        (
            env.uid().to_string().as_str(),
            env.gid().to_string().as_str()
        )
    );
    assert_eq!(
        (home, lang, store),
        (env.path().to_str().unwrap(), "C", "unset")
    );
    assert_eq!(
        fs::metadata(env.path().join("written")).unwrap().uid(),
        env.uid()
    );
    if running_as_root() {
        assert_eq!((env.uid(), env.gid()), (TEST_UID, TEST_GID));
        assert_eq!(
            groups, gid,
            "root's supplementary groups must not reach the test user"
        );
    }

    let honeypot = env.mkdir("area/honeypot");
    for dir in [env.path().join("area"), honeypot] {
        assert_eq!(fs::metadata(dir).unwrap().uid(), env.uid());
    }
    let dest = env.dest("rootfs");
    assert!(!dest.exists());
}

#[test]
fn output_helpers_tell_failures_from_crashes() {
    let env = TestEnv::new();
    let out = run(env
        .command("sh")
        .args(["-c", "echo progress >&2; echo 'bad layer' >&2; exit 3"]));
    assert_eq!(out.failure(), "bad layer");
    let out = run(env.command("sh").args(["-c", r#"echo '{"a": 1}'"#]));
    assert_eq!(out.success().json(), json!({"a": 1}));
}

#[test]
#[should_panic(expected = "killed by a signal")]
fn a_crash_is_not_a_clean_failure() {
    let env = TestEnv::new();
    run(env.command("sh").args(["-c", "echo dying >&2; kill -9 $$"])).failure();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the length passed.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn tree_scan_records_what_tests_assert_on() {
    let env = TestEnv::new();
    let root = env.mkdir("tree");
    fs::create_dir(root.join("dir")).unwrap();
    fs::write(root.join("dir/file"), b"content").unwrap();
    fs::set_permissions(root.join("dir/file"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("dir/file"), root.join("link")).unwrap();
    std::os::unix::fs::symlink("dir/file", root.join("sym")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    set_xattr(&root.join("dir"), "user.foo", b"bar");

    let tree = Tree::scan(&root);
    assert_eq!(
        tree.keys().collect::<Vec<_>>(),
        [".", "dir", "dir/file", "fifo", "link", "sym"]
    );
    let file = tree.node("dir/file");
    assert_eq!((file.kind, file.mode, file.size), (Kind::File, 0o4755, 7));
    assert_eq!(file.hash.as_deref(), Some(sha256(b"content").as_str()));
    assert_eq!((file.nlink, file.ino), (2, tree.node("link").ino));
    assert_eq!(tree.node("sym").kind, Kind::Symlink);
    assert_eq!(
        tree.node("sym").target.as_deref(),
        Some(Path::new("dir/file"))
    );
    assert_eq!(tree.node("fifo").kind, Kind::Fifo);
    assert_eq!(tree.node("fifo").mode, 0o600);
    assert_eq!(tree.node("dir").xattrs["user.foo"], b"bar");
    assert_eq!(tree.node(".").kind, Kind::Dir);
    assert!(tree.values().all(|node| !node.unreadable));
    assert!(Tree::diff(&tree, &Tree::scan(&root)).is_empty());

    fs::write(root.join("new"), b"").unwrap();
    fs::remove_file(root.join("sym")).unwrap();
    fs::hard_link(root.join("dir/file"), root.join("dir/again")).unwrap();
    set_xattr(&root.join("dir"), "user.foo", b"baz");
    let after = Tree::scan(&root);
    let changes = Tree::diff(&tree, &after);
    let summary: Vec<&str> = changes
        .iter()
        .map(|c| c.split(':').next().unwrap())
        .collect();
    assert_eq!(
        summary,
        [
            "changed .",
            "changed dir",
            "changed dir/file",
            "changed link",
            "removed sym",
            "added dir/again",
            "added new"
        ],
        "{changes:#?}"
    );
    assert!(changes[2].contains("nlink 2 -> 3"), "{changes:#?}");
    assert!(changes[1].contains("xattrs"), "{changes:#?}");
}

#[test]
fn tree_scan_reports_unreadable_dirs() {
    let env = TestEnv::new();
    let root = env.mkdir("tree");
    fs::create_dir(root.join("locked")).unwrap();
    fs::write(root.join("locked/inside"), b"x").unwrap();
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let tree = Tree::scan(&root);
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();

    assert_eq!(tree.node("locked").mode, 0);
    // Root reads through mode 000; anyone else sees the dir but not inside it.
    assert_eq!(tree.node("locked").unreadable, !running_as_root());
    assert_eq!(tree.contains_key("locked/inside"), running_as_root());
}

#[test]
fn rootlesscontainers_xattr_decodes() {
    // Resource{uid: 1000, gid: 42}
    assert_eq!(
        decode_rootless(&[0x08, 0xe8, 0x07, 0x10, 0x2a]),
        (Some(1000), Some(42))
    );
    // Resource{uid: 0, gid: 5}: proto3 leaves the zero uid out.
    assert_eq!(decode_rootless(&[0x10, 0x05]), (Some(0), Some(5)));
    // Resource{uid: 7, gid: 0xFFFFFFFF}: the gid needs no change.
    assert_eq!(
        decode_rootless(&[0x08, 0x07, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        (Some(7), None)
    );
    assert_eq!(decode_rootless(&[]), (Some(0), Some(0)));
}

#[test]
fn strata_unpacks_a_tiny_image_as_the_test_user() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("etc", 0o755)
                .file("etc/hello", b"hi\n", 0o640),
        )
        .write(&env.path().join("img"));
    let dest = env.dest("rootfs");
    env.strata(args!["unpack", "--no-store", image.path, dest])
        .success();

    let tree = Tree::scan(&dest);
    let hello = tree.node("etc/hello");
    assert_eq!(hello.hash.as_deref(), Some(sha256(b"hi\n").as_str()));
    assert_eq!((hello.kind, hello.mode), (Kind::File, 0o640));
    // Image root is the user: owned by it, nothing to record.
    assert_eq!(
        (hello.uid, hello.gid, hello.rootless()),
        (env.uid(), env.gid(), None)
    );
    assert_eq!(tree.node(".").mode, 0o700);
}
