//! The unpack pipeline and the snapshot store: what is extracted and what is reused, where the
//! store lives, what DEST looks like, what the CLI prints, and what survives a killed run or a
//! concurrent one.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

/// What is in the store's `tmp/`: active snapshots or debris.
fn store_tmp(env: &TestEnv) -> Vec<String> {
    names_in(&env.store().join("tmp"))
}

/// The chain IDs as sorted hex, as [`snapshots`] lists them.
fn sorted_hex(chain_ids: &[String]) -> Vec<String> {
    let mut hexes: Vec<String> = chain_ids.iter().map(|c| hex(c).to_owned()).collect();
    hexes.sort();
    hexes
}

/// The `cached` flag of every layer in a `--json` report.
fn cached(report: &Value) -> Vec<bool> {
    report["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no layers in {report}"))
        .iter()
        .map(|layer| {
            layer["cached"]
                .as_bool()
                .unwrap_or_else(|| panic!("no cached flag in {report}"))
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// What two unpacks of one image must agree on, path by path, the root's own node left out:
/// everything but inode numbers and devices, with hard links given as the first path of their
/// inode.
fn comparable(tree: &Tree) -> BTreeMap<String, String> {
    let mut first_of_inode: BTreeMap<u64, &str> = BTreeMap::new();
    for (path, node) in tree.iter() {
        if node.kind != Kind::Dir {
            first_of_inode.entry(node.ino).or_insert(path);
        }
    }
    tree.iter()
        .filter(|(path, _)| path.as_str() != ".")
        .map(|(path, node)| {
            let link = match node.kind {
                Kind::Dir => None,
                _ => Some(first_of_inode[&node.ino]),
            };
            let text = format!(
                "{:?} {:o} {}:{} size={} hash={:?} target={:?} nlink={} inode-of={link:?} \
                 mtime={:?} xattrs={:?} unreadable={}",
                node.kind,
                node.mode,
                node.uid,
                node.gid,
                if node.kind == Kind::Dir { 0 } else { node.size },
                node.hash,
                node.target,
                node.nlink,
                node.mtime,
                node.xattrs,
                node.unreadable,
            );
            (path.clone(), text)
        })
        .collect()
}

#[track_caller]
fn assert_same_tree(a: &Path, b: &Path) {
    let (a_tree, b_tree) = (comparable(&Tree::scan(a)), comparable(&Tree::scan(b)));
    let differences: Vec<String> = a_tree
        .keys()
        .chain(b_tree.keys())
        .filter(|path| a_tree.get(*path) != b_tree.get(*path))
        .map(|path| {
            format!(
                "{path}:\n  {}: {:?}\n  {}: {:?}",
                a.display(),
                a_tree.get(path),
                b.display(),
                b_tree.get(path)
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "the trees differ:\n{}",
        differences.join("\n")
    );
}

fn file_hash(tree: &Tree, path: &str) -> String {
    tree.node(path)
        .hash
        .clone()
        .unwrap_or_else(|| panic!("{path} is not a readable file"))
}

/// Three layers with files, a hard link, a symlink, a whiteout, a replacement and a read-only
/// file; every directory is named, so that every directory time comes from the image.
fn layer1() -> Layer {
    Layer::new()
        .dir("bin/", 0o755)
        .dir("etc/", 0o755)
        .dir("usr/", 0o755)
        .dir("usr/lib/", 0o755)
        .file("bin/sh", b"#!shell\n", 0o755)
        .hardlink("bin/sh2", "bin/sh")
        .symlink("lib", "usr/lib")
        .file("etc/passwd", b"root:x:0:0\n", 0o644)
        .file("etc/readonly", b"read only\n", 0o444)
        .file("usr/lib/libc.so", b"libc\n", 0o755)
}

fn layer2() -> Layer {
    Layer::new()
        .dir("etc/", 0o755)
        .dir("var/", 0o755)
        .file("etc/motd", b"hello\n", 0o644)
        .file("etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n", 0o644)
        .file("var/data", b"data\n", 0o600)
}

fn layer3() -> Layer {
    Layer::new().dir("etc/", 0o755).whiteout("etc/motd").file(
        "etc/hosts",
        b"127.0.0.1 localhost\n",
        0o644,
    )
}

/// Like [`layer3`], for an image that shares [`layer1`] and [`layer2`] only.
fn other_layer3() -> Layer {
    Layer::new().dir("etc/", 0o755).whiteout("etc/passwd").file(
        "etc/other",
        b"the other image\n",
        0o644,
    )
}

fn three_layer_image(dir: &Path) -> WrittenImage {
    Image::new()
        .layer(layer1())
        .layer(layer2())
        .layer(layer3())
        .write(dir)
}

/// Checks the tree [`three_layer_image`] gives.
#[track_caller]
fn assert_three_layer_tree(dest: &Path) {
    let tree = Tree::scan(dest);
    assert_eq!(
        tree.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            ".",
            "bin",
            "bin/sh",
            "bin/sh2",
            "etc",
            "etc/hosts",
            "etc/passwd",
            "etc/readonly",
            "lib",
            "usr",
            "usr/lib",
            "usr/lib/libc.so",
            "var",
            "var/data",
        ]
    );
    assert_eq!(
        file_hash(&tree, "etc/passwd"),
        sha256(b"root:x:0:0\nuser:x:1000:1000\n")
    );
    assert_eq!(
        file_hash(&tree, "etc/hosts"),
        sha256(b"127.0.0.1 localhost\n")
    );
    assert_eq!(file_hash(&tree, "etc/readonly"), sha256(b"read only\n"));
    assert_eq!(tree.node("etc/readonly").mode, 0o444);
    assert_eq!(tree.node("var/data").mode, 0o600);
    assert_eq!(tree.node("bin/sh").ino, tree.node("bin/sh2").ino);
    assert_eq!(tree.node("bin/sh").nlink, 2);
    assert_eq!(
        tree.node("lib").target.as_deref(),
        Some(Path::new("usr/lib"))
    );
}

/// `strata unpack --store S --json IMAGE DEST`, asserted to succeed; returns the report.
#[track_caller]
fn unpack_ok(env: &TestEnv, image: &WrittenImage, dest: &Path) -> Value {
    let out = env.unpack(&image.path, dest);
    out.success();
    out.json()
}

// ---------------------------------------------------------------------------------------------
// Extracting and reusing snapshots
// ---------------------------------------------------------------------------------------------

#[test]
fn first_unpack_extracts_every_layer_and_commits_one_snapshot_per_layer() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let dest = env.dest("rootfs");

    let report = unpack_ok(&env, &image, &dest);
    assert_eq!(cached(&report), [false, false, false], "{report}");
    assert_three_layer_tree(&dest);
    assert_eq!(snapshots(&env), sorted_hex(&image.chain_ids()));
    for chain in image.chain_ids() {
        let info: Value = serde_json::from_slice(
            &fs::read(snapshot_dir(&env, &chain).join("info.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(info["chain_id"], json!(chain), "{info}");
    }
    assert_eq!(store_tmp(&env), Vec::<String>::new());
}

#[test]
fn second_unpack_extracts_nothing_and_gives_the_same_tree() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let first = env.dest("first");
    unpack_ok(&env, &image, &first);
    let store_before = Tree::scan(env.store().join("snapshots"));

    let second = env.dest("second");
    let report = unpack_ok(&env, &image, &second);
    assert_eq!(cached(&report), [true, true, true], "{report}");
    assert_same_tree(&first, &second);
    assert_three_layer_tree(&second);
    assert_eq!(snapshots(&env), sorted_hex(&image.chain_ids()));
    let store_after = Tree::scan(env.store().join("snapshots"));
    assert_eq!(
        Tree::diff(&store_before, &store_after),
        Vec::<String>::new(),
        "the second unpack changed the snapshots"
    );
    assert_eq!(store_tmp(&env), Vec::<String>::new());
}

#[test]
fn image_sharing_lower_layers_extracts_only_its_new_top_layer() {
    let env = TestEnv::new();
    let first = three_layer_image(&env.path().join("first-img"));
    unpack_ok(&env, &first, &env.dest("first"));
    let other = Image::new()
        .layer(layer1())
        .layer(layer2())
        .layer(other_layer3())
        .write(&env.path().join("other-img"));
    assert_eq!(first.chain_ids()[..2], other.chain_ids()[..2]);

    let dest = env.dest("other");
    let report = unpack_ok(&env, &other, &dest);
    assert_eq!(cached(&report), [true, true, false], "{report}");
    let tree = Tree::scan(&dest);
    assert_eq!(
        tree.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            ".",
            "bin",
            "bin/sh",
            "bin/sh2",
            "etc",
            "etc/motd",
            "etc/other",
            "etc/readonly",
            "lib",
            "usr",
            "usr/lib",
            "usr/lib/libc.so",
            "var",
            "var/data",
        ]
    );
    assert_eq!(file_hash(&tree, "etc/motd"), sha256(b"hello\n"));
    assert_eq!(file_hash(&tree, "etc/other"), sha256(b"the other image\n"));
    let mut all_chains = first.chain_ids();
    all_chains.push(other.chain_id());
    assert_eq!(snapshots(&env), sorted_hex(&all_chains));
}

// ---------------------------------------------------------------------------------------------
// Layers side by side (--jobs)
// ---------------------------------------------------------------------------------------------

/// `strata unpack --store S --jobs N --json IMAGE DEST`.
fn unpack_side_by_side(env: &TestEnv, jobs: u32, image: &Path, dest: &Path) -> Output {
    let (store, jobs) = (env.store(), jobs.to_string());
    env.strata(args![
        "unpack", "--store", store, "--jobs", jobs, "--json", image, dest
    ])
}

/// The `parentless` flag of every layer in a `--json` report.
fn parentless(report: &Value) -> Vec<bool> {
    let layers = report["layers"].as_array().unwrap();
    layers
        .iter()
        .map(|layer| layer["parentless"].as_bool().unwrap())
        .collect()
}

/// Whether the env's store keeps layer diffs (side by side extraction needs them).
fn overlay_store(env: &TestEnv) -> bool {
    let config: Value =
        serde_json::from_slice(&fs::read(env.store().join("store.json")).unwrap()).unwrap();
    config["snapshotter"] == "overlay"
}

#[test]
fn jobs_without_a_store_is_refused() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let dest = env.dest("rootfs");
    let out = env.strata(args![
        "unpack",
        "--no-store",
        "--jobs",
        "2",
        &image.path,
        &dest
    ]);
    out.failure();
    assert_mentions(&out.stderr, &["--no-store", "--jobs"]);
    assert!(fs::symlink_metadata(&dest).is_err(), "DEST made");
}

#[test]
fn side_by_side_layers_go_into_parentless_snapshots_committed_in_order() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let dest = env.dest("rootfs");

    let out = unpack_side_by_side(&env, 3, &image.path, &dest);
    out.success();
    let report = out.json();
    assert_three_layer_tree(&dest);
    assert_eq!(snapshots(&env), sorted_hex(&image.chain_ids()));
    assert_eq!(store_tmp(&env), Vec::<String>::new());
    let chain_ids = image.chain_ids();
    for (index, chain) in chain_ids.iter().enumerate() {
        let info: Value =
            serde_json::from_slice(&fs::read(snapshot_dir(&env, chain).join("info.json")).unwrap())
                .unwrap();
        let parent = index.checked_sub(1).map(|below| chain_ids[below].as_str());
        assert_eq!(info["parent"].as_str(), parent, "{info}");
    }
    if overlay_store(&env) {
        // The first layer goes on its (empty) parent; the others on nothing, their whiteouts
        // kept as overlayfs keeps them: a whiteout device.
        assert_eq!(parentless(&report), [false, true, true], "{report}");
        let motd =
            fs::symlink_metadata(snapshot_dir(&env, &chain_ids[2]).join("fs/etc/motd")).unwrap();
        assert!(
            motd.file_type().is_char_device() && motd.rdev() == 0,
            "{motd:?}"
        );
    } else {
        assert_eq!(parentless(&report), [false, false, false], "{report}");
    }
    // From the snapshots alone, the same tree again.
    let warm = env.dest("warm");
    assert_eq!(cached(&unpack_ok(&env, &image, &warm)), [true, true, true]);
    assert_same_tree(&dest, &warm);
}

#[test]
fn side_by_side_layer_that_needs_the_layers_below_is_applied_on_them() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(layer1())
        // A hardlink to a file of the layer below.
        .layer(
            Layer::new()
                .dir("bin/", 0o755)
                .hardlink("bin/sh3", "bin/sh"),
        )
        // A file in a directory the layer does not name: its mode and times come from below.
        .layer(Layer::new().file("usr/lib/extra", b"extra\n", 0o644))
        .write(&env.path().join("img"));
    let dest = env.dest("rootfs");

    let out = unpack_side_by_side(&env, 3, &image.path, &dest);
    out.success();
    assert_eq!(parentless(&out.json()), [false, false, false]);
    let tree = Tree::scan(&dest);
    assert_eq!(tree.node("bin/sh3").ino, tree.node("bin/sh").ino);
    assert_eq!(tree.node("bin/sh").nlink, 3);
    assert_eq!(file_hash(&tree, "usr/lib/extra"), sha256(b"extra\n"));
    assert_eq!(tree.node("usr/lib").mode, 0o755);
    let no_store = env.dest("no-store");
    env.strata(args!["unpack", "--no-store", &image.path, &no_store])
        .success();
    assert_same_tree(&dest, &no_store);
    assert_eq!(store_tmp(&env), Vec::<String>::new());
}

#[test]
fn side_by_side_corrupt_layer_commits_nothing_from_it_up() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(layer1())
        .layer(layer2())
        .layer(layer3())
        .layer(
            Layer::new()
                .dir("opt/", 0o755)
                .file("opt/top", b"top\n", 0o644),
        )
        .write(&env.path().join("img"));
    let corrupt = image.layers[2].digest.clone();
    image.corrupt_blob(&corrupt);
    let dest = env.dest("rootfs");

    let out = unpack_side_by_side(&env, 4, &image.path, &dest);
    assert_mentions(out.failure(), &["layer 3", &corrupt, "digest"]);
    assert!(fs::symlink_metadata(&dest).is_err(), "DEST left behind");
    assert_eq!(staging_dirs(&dest), Vec::<String>::new());
    // The layers below it are good and stay; nothing of it or above it does.
    let chain_ids = image.chain_ids();
    assert_eq!(snapshots(&env), sorted_hex(&chain_ids[..2]));
    assert_eq!(store_tmp(&env), Vec::<String>::new());

    // The store goes on: an image with the same two layers below reuses them.
    let good = three_layer_image(&env.path().join("good-img"));
    let report = unpack_ok(&env, &good, &env.dest("good"));
    assert_eq!(cached(&report), [true, true, false], "{report}");
}

// ---------------------------------------------------------------------------------------------
// DEST and store permissions
// ---------------------------------------------------------------------------------------------

#[test]
fn dest_is_created_mode_0700() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let dest = env.dest("rootfs");
    unpack_ok(&env, &image, &dest);
    assert_eq!(mode(&dest), 0o700);
    let meta = fs::metadata(&dest).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (env.uid(), env.gid()));
}

#[test]
fn dest_stays_0700_when_the_image_has_an_entry_for_its_root() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("./", 0o755)
                .file("./etc-file", b"x\n", 0o644),
        )
        .write(&env.path().join("img"));
    let dest = env.dest("rootfs");
    unpack_ok(&env, &image, &dest);
    assert_eq!(mode(&dest), 0o700);
}

#[test]
fn existing_empty_dest_directory_is_accepted() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let dest = env.mkdir("rootfs");
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).unwrap();

    unpack_ok(&env, &image, &dest);
    assert_three_layer_tree(&dest);
    assert_eq!(mode(&dest), 0o700);
    assert_eq!(staging_dirs(&dest), Vec::<String>::new());
}

#[test]
fn store_directories_are_private() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    unpack_ok(&env, &image, &env.dest("rootfs"));

    let store = env.store();
    let mut dirs = vec![store.clone(), store.join("snapshots"), store.join("tmp")];
    dirs.extend(image.chain_ids().iter().map(|c| snapshot_dir(&env, c)));
    for dir in dirs {
        let meta = fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir(), "{} is not a directory", dir.display());
        assert_eq!(
            meta.mode() & 0o7777,
            0o700,
            "{} has mode {:o}",
            dir.display(),
            meta.mode() & 0o7777
        );
        assert_eq!((meta.uid(), meta.gid()), (env.uid(), env.gid()));
    }
}

// ---------------------------------------------------------------------------------------------
// --no-store and the store's location
// ---------------------------------------------------------------------------------------------

fn default_store(env: &TestEnv) -> PathBuf {
    env.path().join(".local/share/strata")
}

#[test]
fn no_store_gives_the_same_tree_as_the_store_and_creates_no_store() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let direct = env.dest("direct");
    let out = env.strata(args!["unpack", "--no-store", "--json", image.path, direct]);
    out.success();
    assert_eq!(cached(&out.json()), [false, false, false]);
    assert!(
        !default_store(&env).exists(),
        "--no-store created the default store"
    );
    assert_eq!(
        names_in(env.path()),
        ["direct", "img"],
        "--no-store left something beside DEST"
    );

    let stored = env.dest("stored");
    unpack_ok(&env, &image, &stored);
    assert_three_layer_tree(&direct);
    assert_same_tree(&direct, &stored);
}

/// Runs `strata unpack --json IMAGE DEST` with `vars` set (and `extra` arguments first).
fn unpack_with_env(
    env: &TestEnv,
    image: &WrittenImage,
    dest: &Path,
    extra: &[&str],
    vars: &[(&str, &Path)],
) -> Value {
    let mut command = env.strata_command(["unpack"]);
    command.args(extra).arg("--json").arg(&image.path).arg(dest);
    for (name, value) in vars {
        command.env(name, value);
    }
    let out = run(&mut command);
    out.success();
    out.json()
}

/// Asserts that `store` holds the image's snapshots and that none of `others` exists.
#[track_caller]
fn assert_store_used(image: &WrittenImage, store: &Path, others: &[PathBuf]) {
    assert_eq!(
        snapshots_in(store),
        sorted_hex(&image.chain_ids()),
        "no snapshots in {}",
        store.display()
    );
    for other in others {
        assert!(
            fs::symlink_metadata(other).is_err(),
            "{} was created",
            other.display()
        );
    }
}

#[test]
fn default_store_is_under_home() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    unpack_with_env(&env, &image, &env.dest("rootfs"), &[], &[]);
    assert_store_used(&image, &default_store(&env), &[]);
}

#[test]
fn strata_store_variable_chooses_the_store() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let store = env.path().join("from-variable");
    unpack_with_env(
        &env,
        &image,
        &env.dest("rootfs"),
        &[],
        &[("STRATA_STORE", &store)],
    );
    assert_store_used(&image, &store, &[default_store(&env)]);
}

#[test]
fn xdg_data_home_chooses_the_store() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let data = env.path().join("xdg-data");
    unpack_with_env(
        &env,
        &image,
        &env.dest("rootfs"),
        &[],
        &[("XDG_DATA_HOME", &data)],
    );
    assert_store_used(&image, &data.join("strata"), &[default_store(&env)]);
}

#[test]
fn strata_store_variable_wins_over_xdg_data_home() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let store = env.path().join("from-variable");
    let data = env.path().join("xdg-data");
    unpack_with_env(
        &env,
        &image,
        &env.dest("rootfs"),
        &[],
        &[("STRATA_STORE", &store), ("XDG_DATA_HOME", &data)],
    );
    assert_store_used(&image, &store, &[data, default_store(&env)]);
}

#[test]
fn store_option_wins_over_strata_store_variable() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let option = env.path().join("from-option");
    let variable = env.path().join("from-variable");
    let option_arg = option.to_str().unwrap().to_owned();
    unpack_with_env(
        &env,
        &image,
        &env.dest("rootfs"),
        &["--store", &option_arg],
        &[("STRATA_STORE", &variable)],
    );
    assert_store_used(&image, &option, &[variable, default_store(&env)]);
}

// ---------------------------------------------------------------------------------------------
// DEST is a copy
// ---------------------------------------------------------------------------------------------

#[test]
fn changing_dest_after_unpack_does_not_change_the_store() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let first = env.dest("first");
    unpack_ok(&env, &image, &first);
    let snapshots = env.store().join("snapshots");
    let before = Tree::scan(&snapshots);

    // As the user would: make the read-only file writable, then overwrite files in place
    // (`>` truncates the same inode, so a tree sharing inodes with the store would show it).
    let out = run(env.command("sh").args([
        "-c",
        "chmod u+w first/etc/readonly && echo changed > first/etc/readonly \
         && echo changed > first/etc/passwd && echo changed > first/bin/sh",
    ]));
    out.success();
    assert_eq!(fs::read(first.join("bin/sh2")).unwrap(), b"changed\n");

    let second = env.dest("second");
    let report = unpack_ok(&env, &image, &second);
    assert_eq!(cached(&report), [true, true, true], "{report}");
    assert_three_layer_tree(&second);
    // Whatever the snapshotter keeps there, none of it changed.
    assert_eq!(
        Tree::diff(&before, &Tree::scan(&snapshots)),
        Vec::<String>::new()
    );
}

// ---------------------------------------------------------------------------------------------
// Killed runs
// ---------------------------------------------------------------------------------------------

/// Files in the top layer of [`many_files_image`]: enough that extracting them takes seconds
/// (about 5 s on a disk at 1 ms per file create, against the ~2 ms it takes to notice the
/// extraction and kill), few enough that the run after a kill stays near 10 s.
const MANY_FILES: usize = 5_000;

/// A small base layer, then `MANY_FILES` small files under `many/dNN/`.
fn many_files_image(dir: &Path) -> WrittenImage {
    let mut top = Layer::new().dir("many/", 0o755);
    for d in 0..MANY_FILES.div_ceil(1000) {
        top = top.dir(format!("many/d{d:02}/"), 0o755);
    }
    for i in 0..MANY_FILES {
        top = top.file(
            format!("many/d{:02}/f{i:05}", i / 1000),
            format!("file {i}\n"),
            0o644,
        );
    }
    Image::new().layer(layer1()).layer(top).write(dir)
}

#[track_caller]
fn assert_many_files_tree(dest: &Path) {
    let tree = Tree::scan(dest);
    let files = tree
        .iter()
        .filter(|(path, node)| path.starts_with("many/") && node.kind == Kind::File)
        .count();
    assert_eq!(files, MANY_FILES);
    assert_eq!(file_hash(&tree, "many/d00/f00000"), sha256(b"file 0\n"));
    let last = MANY_FILES - 1;
    assert_eq!(
        file_hash(&tree, &format!("many/d{:02}/f{last:05}", last / 1000)),
        sha256(format!("file {last}\n").as_bytes())
    );
    assert_eq!(file_hash(&tree, "etc/passwd"), sha256(b"root:x:0:0\n"));
}

/// Waits until an active snapshot in the store's `tmp/` holds files of the top layer of
/// [`many_files_image`]: its extraction is under way.
fn wait_for_top_layer_extraction(env: &TestEnv, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let tmp = env.store().join("tmp");
        let started = names_in(&tmp)
            .iter()
            .any(|active| !names_in(&tmp.join(active).join("fs/many/d00")).is_empty());
        if started {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("strata exited ({status}) before the top layer was seen being extracted");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the top layer's extraction did not start within two minutes");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// A process as `/proc` shows it.
#[derive(Debug)]
struct Process {
    pid: i32,
    ppid: i32,
    uid: u32,
    args: Vec<String>,
}

fn processes() -> Vec<Process> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // Either read may fail for a process that just exited.
        let (Ok(status), Ok(cmdline)) = (
            fs::read_to_string(entry.path().join("status")),
            fs::read(entry.path().join("cmdline")),
        ) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<i64>().ok())
        };
        let (Some(ppid), Some(uid)) = (field("PPid:"), field("Uid:")) else {
            continue;
        };
        let args = cmdline
            .split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        found.push(Process {
            pid,
            ppid: ppid as i32,
            uid: uid as u32,
            args,
        });
    }
    found
}

/// Live `strata-helper` processes of the test uid working on something inside `env`.
fn helpers_in(env: &TestEnv) -> Vec<Process> {
    let scratch = env.path().to_string_lossy().into_owned();
    processes()
        .into_iter()
        .filter(|p| {
            p.uid == env.uid()
                && p.args
                    .first()
                    .is_some_and(|program| program.ends_with("strata-helper"))
                && p.args.iter().any(|arg| arg.contains(&scratch))
        })
        .collect()
}

/// Waits for `child` to exit (killing it after `limit`) and collects what it printed.
fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata ran for more than {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

#[test]
fn kill_9_of_strata_mid_extraction_loses_nothing_and_the_next_run_succeeds() {
    let env = TestEnv::new();
    let image = many_files_image(&env.path().join("img"));
    let chains = image.chain_ids();
    let dest = env.dest("rootfs");
    let store = env.store();

    let mut child = env.spawn(args![
        "unpack", "--store", store, "--json", image.path, dest
    ]);
    wait_for_top_layer_extraction(&env, &mut child);
    assert!(
        !helpers_in(&env).is_empty(),
        "no helper seen while extracting"
    );
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());

    // The parent-death signal takes the helper down with strata.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = helpers_in(&env);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "helpers outlived the killed strata: {left:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(fs::symlink_metadata(&dest).is_err(), "DEST appeared");
    assert!(
        !snapshot_dir(&env, &chains[1]).exists(),
        "the top layer was committed although its extraction was killed"
    );
    assert!(snapshot_dir(&env, &chains[0]).is_dir());
    // What a killed run cannot clean up itself, the next one must.
    assert_eq!(store_tmp(&env).len(), 1, "the killed run's active snapshot");
    assert_eq!(staging_dirs(&dest).len(), 1, "the killed run's staging dir");

    // The same unpack again: debris of the killed run is removed, the result is whole.
    let out = env.unpack(&image.path, &dest);
    out.success();
    assert_eq!(cached(&out.json()), [true, false]);
    assert_many_files_tree(&dest);
    assert_eq!(store_tmp(&env), Vec::<String>::new(), "debris left in tmp/");
    assert_eq!(staging_dirs(&dest), Vec::<String>::new());
    assert_eq!(snapshots(&env), sorted_hex(&chains));
}

#[test]
fn kill_9_of_the_helper_fails_the_unpack_cleanly_and_the_next_run_succeeds() {
    let env = TestEnv::new();
    let image = many_files_image(&env.path().join("img"));
    let chains = image.chain_ids();
    let dest = env.dest("rootfs");
    let store = env.store();

    let mut child = env.spawn(args![
        "unpack", "--store", store, "--json", image.path, dest
    ]);
    wait_for_top_layer_extraction(&env, &mut child);
    let strata_pid = child.id() as i32;
    let helpers: Vec<Process> = helpers_in(&env)
        .into_iter()
        .filter(|p| p.ppid == strata_pid)
        .collect();
    assert_eq!(helpers.len(), 1, "one helper of strata: {helpers:#?}");
    assert!(
        helpers[0].args.iter().any(|arg| arg.contains("apply")),
        "the helper is not applying a layer: {helpers:#?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helpers[0].pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let out = wait_with_deadline(child, Duration::from_secs(60));
    let line = out.failure();
    assert!(
        line.contains("helper") && line.contains("signal"),
        "the error does not say the helper was killed by a signal: {line}"
    );
    assert!(
        line.contains(&image.layers[1].digest) || line.contains("layer 2"),
        "the error does not name the layer: {line}"
    );
    assert!(fs::symlink_metadata(&dest).is_err(), "DEST appeared");
    assert_eq!(staging_dirs(&dest), Vec::<String>::new());
    assert!(!snapshot_dir(&env, &chains[1]).exists());
    assert_eq!(store_tmp(&env), Vec::<String>::new());

    let out = env.unpack(&image.path, &dest);
    out.success();
    assert_eq!(cached(&out.json()), [true, false]);
    assert_many_files_tree(&dest);
    assert_eq!(store_tmp(&env), Vec::<String>::new());
    assert_eq!(snapshots(&env), sorted_hex(&chains));
}

#[test]
fn no_store_failure_leaves_no_helper_behind() {
    // The next layer's helper is started while a layer is applied; when that layer fails,
    // it must go too, not wait on or apply anything.
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let corrupt = image.layers[0].digest.clone();
    image.corrupt_blob(&corrupt);
    let dest = env.dest("rootfs");

    let out = env.strata(args!["unpack", "--no-store", &image.path, &dest]);
    assert_mentions(out.failure(), &["layer 1", &corrupt, "digest"]);
    let helpers = helpers_in(&env);
    assert!(helpers.is_empty(), "helpers left running: {helpers:?}");
    assert!(fs::symlink_metadata(&dest).is_err(), "DEST left behind");
    assert_eq!(staging_dirs(&dest), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Concurrent runs
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_unpacks_of_one_image_into_one_store_both_succeed() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let store = env.store();
    let (a, b) = (env.dest("a"), env.dest("b"));

    let first = env.spawn(args!["unpack", "--store", store, "--json", image.path, a]);
    let second = env.spawn(args!["unpack", "--store", store, "--json", image.path, b]);
    let first = wait_with_deadline(first, Duration::from_secs(120));
    let second = wait_with_deadline(second, Duration::from_secs(120));

    first.success();
    second.success();
    assert_three_layer_tree(&a);
    assert_three_layer_tree(&b);
    assert_same_tree(&a, &b);
    assert_eq!(snapshots(&env), sorted_hex(&image.chain_ids()));
    assert_eq!(store_tmp(&env), Vec::<String>::new());
    assert_eq!(staging_dirs(&a), Vec::<String>::new());
    assert_eq!(staging_dirs(&b), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// What the CLI prints
// ---------------------------------------------------------------------------------------------

#[test]
fn quiet_success_prints_nothing() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let store = env.store();
    let dest = env.dest("rootfs");
    let out = env.strata(args![
        "unpack", "--store", store, "--quiet", image.path, dest
    ]);
    out.success();
    assert_eq!(out.stderr, "", "{out}");
    assert_eq!(out.stdout, "", "{out}");
}

#[test]
fn success_without_a_terminal_prints_no_progress() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let store = env.store();
    let dest = env.dest("rootfs");
    let out = env.strata(args!["unpack", "--store", store, image.path, dest]);
    out.success();
    assert_eq!(out.stderr, "", "{out}");
}

#[test]
fn json_prints_exactly_one_line_describing_the_unpack() {
    let env = TestEnv::new();
    let image = three_layer_image(&env.path().join("img"));
    let dest = env.dest("rootfs");
    let out = env.unpack(&image.path, &dest);
    out.success();
    assert_eq!(out.stderr, "", "{out}");
    assert!(out.stdout.ends_with('\n'), "{out}");
    assert_eq!(out.stdout.lines().count(), 1, "{out}");

    let report: Value = serde_json::from_str(out.stdout.trim_end()).unwrap();
    assert_eq!(report["manifest"], json!(image.manifest_digest));
    assert_eq!(report["chain_id"], json!(image.chain_id()));
    assert_eq!(report["rootfs"], json!(dest));
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for ((layer, written), chain) in layers.iter().zip(&image.layers).zip(image.chain_ids()) {
        assert_eq!(layer["digest"], json!(written.digest), "{report}");
        assert_eq!(layer["diff_id"], json!(written.diff_id), "{report}");
        assert_eq!(layer["chain_id"], json!(chain), "{report}");
        assert_eq!(layer["cached"], json!(false), "{report}");
        assert_eq!(layer["skipped"], json!([]), "{report}");
    }
}
