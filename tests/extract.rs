//! `strata extract`: any tar archive, by the sandboxed helper, `.wh.` names kept as files. The
//! tree is compared with GNU tar's of the same archive; an archive whose digest is not the one
//! given is refused with nothing left; escapes stay inside DEST; owners go as `unpack`'s.

mod common;
use common::*;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Writes `layer`'s blob (its tar stream, compressed as the layer says) as `env/name`.
fn write_archive(env: &TestEnv, name: &str, layer: &Layer) -> PathBuf {
    let path = env.path().join(name);
    fs::write(&path, layer.blob()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    env.own(&path);
    path
}

/// An archive with what a build system's tarballs hold, and the names a layer would take for
/// whiteouts.
fn source_tree(compression: Compression) -> Layer {
    Layer::new()
        .dir("pkg/", 0o755)
        .dir("pkg/bin/", 0o755)
        .file("pkg/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
        .file("pkg/README", b"read me\n", 0o644)
        .file("pkg/private", b"key\n", 0o600)
        .symlink("pkg/latest", "bin/tool")
        .symlink("pkg/abs", "/usr/share/doc")
        .hardlink("pkg/bin/tool-link", "pkg/bin/tool")
        .dir("pkg/empty/", 0o700)
        .file("pkg/.wh.hidden", b"a file, not a whiteout\n", 0o644)
        .file("pkg/.wh..wh..opq", b"not an opaque marker\n", 0o644)
        .file(
            format!("pkg/{}/deep", "long-name-".repeat(12)),
            b"long\n",
            0o644,
        )
        .compression(compression)
}

/// `strata extract --idmap single ARGS…`.
fn extract(env: &TestEnv, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Output {
    let mut command = env.strata_command(args!["extract", "--idmap", "single"]);
    command.args(args);
    run(&mut command)
}

/// GNU tar's extraction of `archive` into the new directory `dest`, as the test user.
fn gnu_tar(env: &TestEnv, archive: &Path, dest: &Path) -> Tree {
    fs::create_dir(dest).unwrap();
    env.own(dest);
    run(env
        .command("tar")
        .arg("-xpf")
        .arg(archive)
        .arg("-C")
        .arg(dest))
    .success();
    tree_without_root(dest)
}

/// The tree under `dest`, without `dest` itself (its mode is DEST's, not the archive's).
fn tree_without_root(dest: &Path) -> Tree {
    let mut tree = Tree::scan(dest);
    tree.nodes.remove(".");
    tree
}

/// Where a failed run could leave something: DEST, and staging directories beside it.
#[track_caller]
fn assert_no_dest(env: &TestEnv, dest: &Path) {
    assert!(fs::symlink_metadata(dest).is_err(), "DEST was left behind");
    let name = dest.file_name().unwrap().to_str().unwrap();
    let staging: Vec<_> = fs::read_dir(env.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|entry| entry.starts_with(&format!(".{name}.strata-")))
        .collect();
    assert!(staging.is_empty(), "staging left: {staging:?}");
}

#[test]
fn an_archive_extracts_as_gnu_tar_extracts_it_whiteout_names_and_all() {
    let env = TestEnv::new();
    for (name, compression) in [
        ("plain.tar", Compression::None),
        ("gzip.tar.gz", Compression::Gzip),
        ("zstd.tar.zst", Compression::Zstd),
    ] {
        let archive = write_archive(&env, name, &source_tree(compression));
        let oracle = gnu_tar(&env, &archive, &env.path().join(format!("tar-{name}")));
        assert_eq!(oracle.node("pkg/.wh.hidden").kind, Kind::File);
        assert_eq!(oracle.len(), 13, "{:?}", oracle.keys());

        let dest = env.dest(&format!("rootfs-{name}"));
        extract(&env, args![archive, dest]).success();
        assert_same_tree(("GNU tar", &oracle), ("strata", &tree_without_root(&dest)));
        assert_eq!(
            link_groups(&tree_without_root(&dest)),
            link_groups(&oracle),
            "{name}"
        );
    }
}

#[test]
fn a_file_on_stdin_is_read_from_where_it_stands() {
    let env = TestEnv::new();
    let layer = source_tree(Compression::Gzip);
    let blob = layer.blob();
    let archive = write_archive(&env, "in.tar.gz", &layer);
    // Something before the archive, already read by whoever handed the file on.
    let prefixed = env.path().join("prefixed");
    fs::write(&prefixed, [&b"not the archive\n"[..], &blob].concat()).unwrap();
    let mut stdin = fs::File::open(&prefixed).unwrap();
    std::io::Seek::seek(&mut stdin, std::io::SeekFrom::Start(16)).unwrap();
    let dest = env.dest("rootfs");
    let mut command =
        env.strata_command(args!["extract", "--idmap", "single", "--json", "-", &dest]);
    let out = run(command.stdin(stdin));
    let report = out.success().json();
    assert_eq!(report["archive"], sha256(&blob));
    let oracle = gnu_tar(&env, &archive, &env.path().join("tar"));
    assert_same_tree(("GNU tar", &oracle), ("strata", &tree_without_root(&dest)));
}

#[test]
fn an_archive_on_stdin_is_read_once_and_checked() {
    let env = TestEnv::new();
    let layer = source_tree(Compression::Zstd);
    let blob = layer.blob();
    let archive = write_archive(&env, "in.tar.zst", &layer);
    let dest = env.dest("rootfs");
    let mut command = env.strata_command(args![
        "extract",
        "--idmap",
        "single",
        "--json",
        "--sha256",
        sha256(&blob).trim_start_matches("sha256:"),
        "-",
        &dest
    ]);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written in small pieces: a pipe, not a file, is what strata reads.
    let mut stdin = child.stdin.take().unwrap();
    for piece in blob.chunks(1000) {
        stdin.write_all(piece).unwrap();
    }
    drop(stdin);
    let out = Output::from(child.wait_with_output().unwrap());
    let report = out.success().json();
    assert_eq!(report["archive"], sha256(&blob));
    assert_eq!(report["archive_bytes"], blob.len());
    assert_eq!(report["tar"], sha256(&layer.tar()));
    let oracle = gnu_tar(&env, &archive, &env.path().join("tar"));
    assert_same_tree(("GNU tar", &oracle), ("strata", &tree_without_root(&dest)));
}

#[test]
fn an_archive_whose_digest_is_not_the_one_given_is_refused_and_leaves_nothing() {
    let env = TestEnv::new();
    let layer = source_tree(Compression::Gzip);
    let archive = write_archive(&env, "src.tar.gz", &layer);
    let actual = sha256(&layer.blob());
    let other = sha256(b"another archive");
    let dest = env.dest("rootfs");
    let out = extract(&env, args!["--sha256", &other, &archive, &dest]);
    assert_mentions(out.failure(), &["src.tar.gz", &actual, &other]);
    assert_no_dest(&env, &dest);

    // Nor is a stream said to be of the wrong compression.
    let out = extract(&env, args!["--compression", "zstd", &archive, &dest]);
    assert_mentions(out.failure(), &["src.tar.gz", "zstd"]);
    assert_no_dest(&env, &dest);
    let out = extract(&env, args!["--compression", "none", &archive, &dest]);
    assert_mentions(out.failure(), &["src.tar.gz", "uncompressed"]);
    assert_no_dest(&env, &dest);

    // The right digest, uppercase and without its prefix as `sha256sum` users may paste it.
    let hex = actual.trim_start_matches("sha256:").to_uppercase();
    extract(&env, args!["--sha256", &hex, &archive, &dest]).success();
    assert_eq!(fs::read(dest.join("pkg/README")).unwrap(), b"read me\n");
}

#[test]
fn escapes_stay_inside_dest() {
    let env = TestEnv::new();
    let honeypot = env.mkdir("honeypot");
    fs::write(honeypot.join("file"), b"secret").unwrap();
    env.own(&honeypot);
    // Links that point out are followed as chroot would: inside DEST.
    let contained = Layer::new()
        .symlink("up", "../../../../..")
        .file("up/escaped", b"inside\n", 0o644)
        .symlink("abs", honeypot.to_str().unwrap())
        .file("abs/file", b"overwritten\n", 0o644)
        .compression(Compression::None);
    let contained = write_archive(&env, "contained.tar", &contained);
    // Names that climb out.
    let climbing = [
        ("../outside", "dotdot.tar"),
        ("pkg/../../outside", "deep.tar"),
    ]
    .map(|(entry, name)| {
        let layer = Layer::from_tar(raw_tar(&[(entry, b"x")])).compression(Compression::None);
        (name, write_archive(&env, name, &layer))
    });
    let outside = || {
        let mut tree = Tree::scan(env.path());
        tree.nodes
            .retain(|path, _| path != "." && !path.starts_with("rootfs"));
        tree
    };
    let before = outside();

    let dest = env.dest("rootfs");
    extract(&env, args![contained, dest]).success();
    assert_eq!(fs::read(dest.join("escaped")).unwrap(), b"inside\n");
    let inside = dest.join(honeypot.strip_prefix("/").unwrap()).join("file");
    assert_eq!(fs::read(inside).unwrap(), b"overwritten\n");
    for (name, archive) in climbing {
        let dest = env.dest(&format!("rootfs-{name}"));
        let out = extract(&env, args![archive, dest]);
        assert_mentions(out.failure(), &[name, "outside"]);
        assert_no_dest(&env, &dest);
    }

    let changes = Tree::diff(&before, &outside());
    assert!(changes.is_empty(), "changed outside DEST: {changes:?}");
}

/// A tar stream of regular files named as given, however they are named.
fn raw_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn owners_go_as_the_id_map_says() {
    let env = TestEnv::new();
    let layer = Layer::new()
        .entry(Entry::file("root-owned", b"r").owner(0, 0))
        .entry(Entry::file("user-owned", b"u").owner(1000, 1000))
        .compression(Compression::Gzip);
    let archive = write_archive(&env, "owners.tar.gz", &layer);
    for idmap in idmap::modes() {
        let dest = env.dest(&format!("rootfs-{}", idmap.arg()));
        let mut command = env.strata_command(args!["extract", "--idmap", idmap.arg()]);
        command.arg(&archive).arg(&dest);
        run(&mut command).success();
        let tree = Tree::scan(&dest);
        assert_eq!(image_owner(tree.node("root-owned"), idmap), (0, 0));
        assert_eq!(image_owner(tree.node("user-owned"), idmap), (1000, 1000));
    }
}
