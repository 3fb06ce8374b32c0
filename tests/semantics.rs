//! Layer semantics (image-spec layer.md with umoci as the reference): one test per
//! rule. Every image is unpacked through the store and with `--no-store`, and again from the
//! store once it holds every layer: all three must produce the same tree.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

/// A fresh layout directory inside the scratch dir.
fn layout(env: &TestEnv, name: &str) -> PathBuf {
    env.path().join(name)
}

#[track_caller]
fn assert_absent(tree: &Tree, path: &str) {
    assert!(
        !tree.contains_key(path),
        "{path} should not exist in {}",
        tree.root.display()
    );
}

#[track_caller]
fn assert_no_whiteouts(tree: &Tree) {
    let whiteouts: Vec<&String> = tree
        .keys()
        .filter(|path| path.split('/').any(|part| part.starts_with(".wh.")))
        .collect();
    assert!(
        whiteouts.is_empty(),
        "whiteout files in {}: {whiteouts:?}",
        tree.root.display()
    );
}

/// Paths under `dir` (not `dir` itself).
fn children<'a>(tree: &'a Tree, dir: &str) -> Vec<&'a str> {
    let prefix = format!("{dir}/");
    tree.keys()
        .filter_map(|path| path.strip_prefix(&prefix))
        .collect()
}

/// `path` in every committed snapshot of the store that has it.
fn store_copies(env: &TestEnv, path: &str) -> Vec<PathBuf> {
    fs::read_dir(env.store().join("snapshots"))
        .unwrap()
        .map(|snapshot| snapshot.unwrap().path().join("fs").join(path))
        .filter(|copy| fs::symlink_metadata(copy).is_ok())
        .collect()
}

/// The `skipped` list of layer `index` in a report.
fn skipped(report: &Value, index: usize) -> &Vec<Value> {
    report["layers"][index]["skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("no skipped list for layer {index} in {report}"))
}

fn mtime(seconds: u64) -> (i64, i64) {
    (seconds as i64, 0)
}

const T1: u64 = 1_000_000_000;
const T2: u64 = 1_100_000_000;
const T3: u64 = 1_200_000_000;

// ---------------------------------------------------------------------------------------------
// Whiteouts
// ---------------------------------------------------------------------------------------------

#[test]
fn whiteout_removes_a_lower_file() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("etc/", 0o755)
                .file("etc/gone", b"lower", 0o644)
                .file("etc/kept", b"lower", 0o644),
        )
        .layer(Layer::new().whiteout("etc/gone"))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_absent(&u.tree, "etc/gone");
        assert_file(&u.tree, "etc/kept", b"lower");
        assert_no_whiteouts(&u.tree);
    }
}

#[test]
fn whiteout_removes_a_lower_directory_with_its_subtree() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("d/", 0o755)
                .file("d/f", b"x", 0o644)
                .dir("d/sub/", 0o755)
                .file("d/sub/deep", b"x", 0o644)
                .symlink("d/sub/link", "../f")
                .file("other", b"kept", 0o644),
        )
        .layer(Layer::new().whiteout("d"))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_absent(&u.tree, "d");
        assert!(children(&u.tree, "d").is_empty());
        assert_file(&u.tree, "other", b"kept");
        assert_no_whiteouts(&u.tree);
    }
}

#[test]
fn whiteout_and_opaque_files_never_appear_in_the_result() {
    // Whiteouts in the first layer (nothing below), at the root, in subdirectories, for
    // absent paths, plus opaque markers: none of them is ever written out.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("a/", 0o755)
                .whiteout("a/nothing")
                .whiteout("nothing")
                .opaque("a")
                .opaque("")
                .file("a/f", b"1", 0o644),
        )
        .layer(
            Layer::new()
                .whiteout("a/f")
                .opaque("a")
                .file("a/g", b"2", 0o644)
                .whiteout("missing/dir/x"),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_no_whiteouts(&u.tree);
        assert_eq!(children(&u.tree, "a"), ["g"]);
        assert_absent(&u.tree, "missing");
    }
}

/// An update layer, as a package upgrade makes: many files of a lower directory rewritten (the
/// writer threads replace them), one of a hardlink pair, a symlink and a directory replaced
/// by files, with a whiteout of a rewritten name and an opaque marker in another directory.
#[test]
fn an_update_layer_rewrites_lower_files_and_only_them() {
    let env = TestEnv::new();
    let names: Vec<String> = (0..300).map(|i| format!("usr/lib/f{i:03}")).collect();
    let mut lower = Layer::new()
        .dir("usr/", 0o755)
        .dir("usr/lib/", 0o755)
        .dir("usr/lib/sub/", 0o755)
        .file("usr/lib/sub/inner", b"lower", 0o644)
        .dir("opt/", 0o755)
        .file("opt/old", b"lower", 0o644);
    for name in &names {
        lower = lower.file(name, b"lower", 0o644);
    }
    let lower = lower
        .hardlink("usr/lib/pair", "usr/lib/f000")
        .symlink("usr/lib/link", "f001");
    let mut update = Layer::new();
    for (i, name) in names.iter().enumerate().filter(|(i, _)| i % 3 != 2) {
        let entry = Entry::file(name, format!("update {i}"))
            .mode(0o640 + (i as u32 % 2) * 0o100)
            .owner(0, i as u64 % 2);
        update = update.entry(entry);
    }
    let image = Image::new()
        .layer(lower)
        .layer(
            update
                .file("usr/lib/pair", b"pair alone", 0o644)
                .file("usr/lib/link", b"a file where a symlink was", 0o644)
                .file("usr/lib/sub", b"a file where a directory was", 0o644)
                .whiteout("usr/lib/f003")
                .file("usr/lib/f000", b"written twice", 0o600)
                .opaque("opt")
                .file("opt/new", b"new", 0o644),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let tree = &u.tree;
        for (i, name) in names.iter().enumerate().skip(1) {
            let expected = if i % 3 == 2 {
                "lower".to_owned()
            } else {
                format!("update {i}")
            };
            assert_file(tree, name, expected.as_bytes());
        }
        assert_eq!(tree.node("usr/lib/f004").mode, 0o640);
        assert_eq!(tree.node("usr/lib/f001").mode, 0o740);
        assert_file(tree, "usr/lib/f000", b"written twice");
        assert_eq!(tree.node("usr/lib/f000").mode, 0o600);
        assert_file(tree, "usr/lib/pair", b"pair alone");
        assert_eq!(tree.node("usr/lib/pair").nlink, 1);
        assert_file(tree, "usr/lib/link", b"a file where a symlink was");
        assert_file(tree, "usr/lib/sub", b"a file where a directory was");
        assert_absent(tree, "usr/lib/sub/inner");
        assert_eq!(children(tree, "opt"), ["new"]);
        assert_eq!(children(tree, "usr/lib").len(), 303);
        assert_no_whiteouts(tree);
    }
}

#[test]
fn whiteout_spares_a_file_written_earlier_in_the_same_layer() {
    // layer.md: files present in the same layer as a whiteout can only be hidden by whiteouts
    // in subsequent layers.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("replaced", b"lower", 0o644))
        .layer(
            Layer::new()
                .file("replaced", b"upper", 0o644)
                .whiteout("replaced")
                .file("new", b"upper", 0o644)
                .whiteout("new"),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "replaced", b"upper");
        assert_file(&u.tree, "new", b"upper");
        assert_no_whiteouts(&u.tree);
    }
}

#[test]
fn whiteout_of_an_absent_path_is_harmless() {
    // Nothing there, a missing parent, and a parent that is a file.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("file", b"x", 0o644))
        .layer(
            Layer::new()
                .whiteout("missing")
                .whiteout("no/such/dir/x")
                .whiteout("file/x"),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "file", b"x");
        assert_eq!(u.tree.keys().collect::<Vec<_>>(), [".", "file"]);
    }
}

#[test]
fn bare_whiteout_is_an_error() {
    for name in ["d/.wh.", ".wh."] {
        let env = TestEnv::new();
        let image = Image::new()
            .layer(Layer::new().dir("d/", 0o755).file("d/f", b"x", 0o644))
            .layer(Layer::new().entry(Entry::file(name, b"")))
            .write(&layout(&env, "img"));
        for line in fail_both(&env, &image.path) {
            assert!(line.contains(".wh."), "{name}: {line}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Opaque directories
// ---------------------------------------------------------------------------------------------

fn lower_with_dir_d() -> Layer {
    Layer::new()
        .dir("d/", 0o755)
        .file("d/old", b"lower", 0o644)
        .dir("d/olddir/", 0o755)
        .file("d/olddir/x", b"lower", 0o644)
        .file("outside", b"lower", 0o644)
}

#[test]
fn opaque_dir_hides_lower_children_and_keeps_same_layer_ones() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(lower_with_dir_d())
        .layer(
            Layer::new()
                .dir("d/", 0o755)
                .opaque("d")
                .file("d/new", b"upper", 0o644),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(u.tree.node("d").kind, Kind::Dir);
        assert_eq!(children(&u.tree, "d"), ["new"]);
        assert_file(&u.tree, "d/new", b"upper");
        assert_file(&u.tree, "outside", b"lower");
    }
}

#[test]
fn opaque_marker_after_its_siblings_keeps_them() {
    // The marker applies as if it came first in the layer, wherever it is in the tar.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(lower_with_dir_d())
        .layer(
            Layer::new()
                .dir("d/", 0o755)
                .file("d/new", b"upper", 0o644)
                .dir("d/newdir/", 0o755)
                .file("d/newdir/f", b"upper", 0o644)
                .opaque("d"),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(children(&u.tree, "d"), ["new", "newdir", "newdir/f"]);
        assert_file(&u.tree, "d/new", b"upper");
        assert_file(&u.tree, "d/newdir/f", b"upper");
        assert_no_whiteouts(&u.tree);
    }
}

#[test]
fn opaque_dir_hides_lower_content_of_subdirectories_written_again() {
    // d/olddir is named again in the opaque layer: it is kept, but what lower layers put in it
    // is hidden all the same.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(lower_with_dir_d())
        .layer(
            Layer::new()
                .opaque("d")
                .dir("d/olddir/", 0o755)
                .file("d/olddir/y", b"upper", 0o644),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(children(&u.tree, "d"), ["olddir", "olddir/y"]);
        assert_file(&u.tree, "d/olddir/y", b"upper");
    }
}

#[test]
fn opaque_root_hides_every_lower_entry() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(lower_with_dir_d())
        .layer(Layer::new().opaque("").file("only", b"upper", 0o644))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(u.tree.keys().collect::<Vec<_>>(), [".", "only"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Replacement
// ---------------------------------------------------------------------------------------------

#[test]
fn directory_over_directory_merges_and_takes_the_new_metadata() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("d/").mode(0o755).mtime(T1))
                .file("d/lower", b"1", 0o644),
        )
        .layer(
            Layer::new()
                .entry(Entry::dir("d/").mode(0o750).mtime(T2))
                .file("d/upper", b"2", 0o644),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let d = u.tree.node("d");
        assert_eq!((d.kind, d.mode, d.mtime), (Kind::Dir, 0o750, mtime(T2)));
        assert_file(&u.tree, "d/lower", b"1");
        assert_file(&u.tree, "d/upper", b"2");
    }
}

#[test]
fn file_replaces_a_directory() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().dir("x/", 0o755).file("x/child", b"1", 0o644))
        .layer(Layer::new().file("x", b"now a file", 0o600))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "x", b"now a file");
        assert_eq!(u.tree.node("x").mode, 0o600);
        assert_absent(&u.tree, "x/child");
    }
}

#[test]
fn directory_replaces_a_file() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("x", b"a file", 0o644))
        .layer(Layer::new().dir("x/", 0o710).file("x/child", b"1", 0o644))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let x = u.tree.node("x");
        assert_eq!((x.kind, x.mode), (Kind::Dir, 0o710));
        assert_file(&u.tree, "x/child", b"1");
    }
}

#[test]
fn symlink_replaces_a_directory() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("x/", 0o755)
                .file("x/child", b"1", 0o644)
                .file("target", b"t", 0o644),
        )
        .layer(Layer::new().symlink("x", "target"))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let x = u.tree.node("x");
        assert_eq!(x.kind, Kind::Symlink);
        assert_eq!(x.target.as_deref(), Some(Path::new("target")));
        assert!(children(&u.tree, "x").is_empty());
        assert_file(&u.tree, "target", b"t");
    }
}

#[test]
fn file_replaces_a_symlink_and_leaves_its_target_alone() {
    // The final component is never followed: the link is replaced, not written through.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("target", b"original", 0o644)
                .symlink("relative", "target")
                .symlink("absolute", "/target"),
        )
        .layer(Layer::new().file("relative", b"new relative", 0o600).file(
            "absolute",
            b"new absolute",
            0o600,
        ))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "relative", b"new relative");
        assert_file(&u.tree, "absolute", b"new absolute");
        assert_file(&u.tree, "target", b"original");
        assert_eq!(u.tree.node("target").mode, 0o644);
        assert_eq!(u.tree.node("target").nlink, 1);
    }
}

#[test]
fn hardlink_replaces_an_existing_file() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("a", b"A", 0o644).file("b", b"B", 0o600))
        .layer(Layer::new().hardlink("b", "a"))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "b", b"A");
        let (a, b) = (u.tree.node("a"), u.tree.node("b"));
        assert_eq!(a.ino, b.ino);
        assert_eq!((a.nlink, b.mode), (2, 0o644));
    }
}

// ---------------------------------------------------------------------------------------------
// Hardlinks
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_linked(tree: &Tree, paths: &[&str]) {
    let first = tree.node(paths[0]);
    for path in paths {
        let node = tree.node(path);
        assert_eq!(
            (node.dev, node.ino),
            (first.dev, first.ino),
            "{path} and {} should be one inode in {}",
            paths[0],
            tree.root.display()
        );
        assert_eq!(node.nlink, paths.len() as u64, "nlink of {path}");
    }
}

#[test]
fn hardlink_in_the_same_layer_shares_the_inode() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("a", b"data", 0o640)
                .dir("d/", 0o755)
                .hardlink("d/b", "a"),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_linked(&u.tree, &["a", "d/b"]);
        assert_file(&u.tree, "d/b", b"data");
        assert_eq!(u.tree.node("d/b").mode, 0o640);
    }
}

#[test]
fn hardlink_to_a_lower_layer_file_shares_the_inode() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("a", b"lower", 0o644))
        .layer(Layer::new().hardlink("b", "a"))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_linked(&u.tree, &["a", "b"]);
        assert_file(&u.tree, "b", b"lower");
    }
}

#[test]
fn hardlink_with_an_absolute_or_dot_slash_target() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("etc/", 0o755)
                .file("etc/a", b"data", 0o644)
                .hardlink("abs", "/etc/a")
                .hardlink("dot", "./etc/a"),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_linked(&u.tree, &["etc/a", "abs", "dot"]);
    }
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_itself() {
    // The target's last component is not followed.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("file", b"data", 0o644)
                .symlink("sym", "file")
                .hardlink("link", "sym"),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let link = u.tree.node("link");
        assert_eq!(link.kind, Kind::Symlink);
        assert_eq!(link.target.as_deref(), Some(Path::new("file")));
        assert_linked(&u.tree, &["sym", "link"]);
        assert_eq!(u.tree.node("file").nlink, 1);
    }
}

#[test]
fn hardlink_to_a_fifo_shares_the_inode() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().fifo("fifo", 0o640).hardlink("link", "fifo"))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(u.tree.node("link").kind, Kind::Fifo);
        assert_linked(&u.tree, &["fifo", "link"]);
    }
}

#[test]
fn hardlink_chain_shares_one_inode() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("a", b"data", 0o644)
                .hardlink("b", "a")
                .hardlink("c", "b"),
        )
        .layer(Layer::new().hardlink("d", "c"))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_linked(&u.tree, &["a", "b", "c", "d"]);
    }
}

#[test]
fn dest_shares_no_inode_with_the_store_but_keeps_its_own_hardlinks() {
    // DEST is a copy, never hardlinks into the store.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("a", b"data", 0o644).hardlink("b", "a"))
        .write(&layout(&env, "img"));
    let [stored, _] = unpack_both(&env, &image.path);
    assert_eq!(stored.mode, Mode::Store);
    assert_linked(&stored.tree, &["a", "b"]);

    let dest_ino = fs::metadata(stored.dest.join("a")).unwrap().ino();
    let copies = store_copies(&env, "a");
    assert!(!copies.is_empty(), "no snapshot in the store holds a");
    for copy in copies {
        assert_ne!(
            fs::metadata(&copy).unwrap().ino(),
            dest_ino,
            "{} shares its inode with DEST",
            copy.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------------

#[test]
fn setuid_setgid_and_sticky_bits_are_kept() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("setuid", b"x", 0o4755)
                .file("setgid", b"x", 0o2755)
                .file("both", b"x", 0o6711)
                .dir("sgid-dir/", 0o2775)
                .dir("tmp/", 0o1777),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let modes: Vec<(&str, Kind, u32)> = ["setuid", "setgid", "both", "sgid-dir", "tmp"]
            .into_iter()
            .map(|path| (path, u.tree.node(path).kind, u.tree.node(path).mode))
            .collect();
        assert_eq!(
            modes,
            [
                ("setuid", Kind::File, 0o4755),
                ("setgid", Kind::File, 0o2755),
                ("both", Kind::File, 0o6711),
                ("sgid-dir", Kind::Dir, 0o2775),
                ("tmp", Kind::Dir, 0o1777),
            ]
        );
    }
}

#[test]
fn mode_0000_file_keeps_its_mode_and_contents() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("locked", b"secret", 0o000))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let node = u.tree.node("locked");
        assert_eq!((node.kind, node.mode, node.size), (Kind::File, 0, 6));
        if running_as_root() {
            assert_file(&u.tree, "locked", b"secret");
        }
    }
}

#[test]
fn mode_0000_directory_is_written_into_by_later_entries_and_layers() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("d/").mode(0o000).mtime(T1))
                .file("d/same-layer", b"1", 0o644)
                .dir("d/sub/", 0o000),
        )
        .layer(Layer::new().file("d/later-layer", b"2", 0o644))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let d = u.tree.node("d");
        assert_eq!((d.kind, d.mode, d.mtime), (Kind::Dir, 0, mtime(T1)));
        // Only root can look inside a mode-000 directory to check.
        if running_as_root() {
            assert_eq!(u.tree.node("d/sub").mode, 0);
            assert_file(&u.tree, "d/same-layer", b"1");
            assert_file(&u.tree, "d/later-layer", b"2");
        }
    }
}

#[test]
fn many_directories_below_one_nobody_may_search_all_get_their_modes_and_times() {
    // Enough directories that the end of the layer fixes them on several threads; the
    // unsearchable one above them must come last.
    let env = TestEnv::new();
    let mut layer = Layer::new()
        .entry(Entry::dir("locked/").mode(0o000).mtime(T1))
        .dir("open/", 0o755);
    for i in 0..600 {
        let (mode, parent) = if i % 2 == 0 {
            (0o755, "locked")
        } else {
            (0o711, "open")
        };
        layer = layer.entry(
            Entry::dir(format!("{parent}/d{i:03}/"))
                .mode(mode)
                .mtime(T2),
        );
    }
    let image = Image::new().layer(layer).write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let locked = u.tree.node("locked");
        assert_eq!((locked.mode, locked.mtime), (0, mtime(T1)));
        for i in (1..600).step_by(2) {
            let d = u.tree.node(&format!("open/d{i:03}"));
            assert_eq!(
                (d.kind, d.mode, d.mtime),
                (Kind::Dir, 0o711, mtime(T2)),
                "d{i:03}"
            );
        }
        // Only root can look inside a mode-000 directory to check.
        if running_as_root() {
            for i in (0..600).step_by(2) {
                let d = u.tree.node(&format!("locked/d{i:03}"));
                assert_eq!((d.mode, d.mtime), (0o755, mtime(T2)), "d{i:03}");
            }
        }
    }
}

#[test]
fn read_only_directory_is_written_into_by_a_later_layer() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("ro/").mode(0o555).mtime(T1))
                .file("ro/lower", b"1", 0o644),
        )
        .layer(Layer::new().file("ro/upper", b"2", 0o644))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let ro = u.tree.node("ro");
        assert_eq!((ro.mode, ro.mtime), (0o555, mtime(T1)));
        assert_file(&u.tree, "ro/lower", b"1");
        assert_file(&u.tree, "ro/upper", b"2");
    }
}

#[test]
fn read_only_file_is_replaced_by_a_later_layer() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("f", b"old", 0o400))
        .layer(Layer::new().file("f", b"new", 0o640))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "f", b"new");
        assert_eq!(u.tree.node("f").mode, 0o640);
    }
}

// ---------------------------------------------------------------------------------------------
// Times
// ---------------------------------------------------------------------------------------------

#[test]
fn file_and_symlink_mtimes_are_exact_including_pax_subsecond_times() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::file("plain", b"x").mtime(T1))
                .entry(
                    Entry::file("pax", b"x")
                        .mtime(T2)
                        .pax("mtime", "1600000000.5"),
                )
                .entry(Entry::symlink("link", "plain").mtime(T3))
                .entry(Entry::fifo("fifo").mtime(T2)),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(u.tree.node("plain").mtime, mtime(T1));
        // The PAX record overrides the header's whole seconds.
        assert_eq!(u.tree.node("pax").mtime, (1_600_000_000, 500_000_000));
        assert_eq!(u.tree.node("link").mtime, mtime(T3));
        assert_eq!(u.tree.node("fifo").mtime, mtime(T2));
    }
}

#[test]
fn directory_mtime_is_the_entrys_even_after_children_are_added() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("d/").mtime(T1))
                .file("d/a", b"1", 0o644)
                .entry(Entry::dir("d/sub/").mtime(T2))
                .file("d/sub/x", b"1", 0o644)
                .symlink("d/sub/link", "x")
                .file("d/b", b"1", 0o644),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(u.tree.node("d").mtime, mtime(T1));
        assert_eq!(u.tree.node("d/sub").mtime, mtime(T2));
    }
}

#[test]
fn lower_directory_not_named_by_a_later_layer_keeps_its_mtime() {
    // The later layer adds to one directory and removes from another without naming either.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("added-to/").mtime(T1))
                .file("added-to/old", b"1", 0o644)
                .entry(Entry::dir("removed-from/").mtime(T2))
                .file("removed-from/gone", b"1", 0o644)
                .file("removed-from/kept", b"1", 0o644),
        )
        .layer(
            Layer::new()
                .file("added-to/new", b"2", 0o644)
                .whiteout("removed-from/gone"),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "added-to/new", b"2");
        assert_absent(&u.tree, "removed-from/gone");
        assert_eq!(u.tree.node("added-to").mtime, mtime(T1));
        assert_eq!(u.tree.node("removed-from").mtime, mtime(T2));
    }
}

#[test]
fn hardlink_to_a_lower_link_group_keeps_the_groups_directory_times() {
    // Through overlayfs the link copies the lower file up and its other names are relinked:
    // their directory, which the later layer does not name, keeps its time all the same.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("group/").mtime(T1))
                .file("group/original", b"shared", 0o644)
                .hardlink("group/second", "group/original"),
        )
        .layer(
            Layer::new()
                .entry(Entry::dir("elsewhere/").mtime(T2))
                .hardlink("elsewhere/third", "group/original"),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_linked(
            &u.tree,
            &["group/original", "group/second", "elsewhere/third"],
        );
        assert_eq!(u.tree.node("group").mtime, mtime(T1));
        assert_eq!(u.tree.node("elsewhere").mtime, mtime(T2));
    }
}

#[test]
fn hardlink_to_a_link_group_two_layers_down_relinks_only_its_visible_names() {
    // The group's names are looked for in the layer that holds the file: the one a middle
    // layer whited out stays gone, and a file of the middle layer is no member.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("group/original", b"shared", 0o644)
                .hardlink("group/second", "group/original")
                .hardlink("group/third", "group/original"),
        )
        .layer(
            Layer::new()
                .whiteout("group/third")
                .file("group/unrelated", b"other", 0o644),
        )
        .layer(Layer::new().hardlink("elsewhere", "group/second"))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_linked(&u.tree, &["group/original", "group/second", "elsewhere"]);
        assert_absent(&u.tree, "group/third");
        assert_file(&u.tree, "group/unrelated", b"other");
        assert_eq!(u.tree.node("group/unrelated").nlink, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Extended attributes
// ---------------------------------------------------------------------------------------------

#[test]
fn user_xattrs_are_set_on_files_and_directories() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("d/").xattr("user.dir", b"on a dir"))
                .entry(
                    Entry::file("d/f", b"x")
                        .xattr("user.one", b"1")
                        .xattr("user.binary", [0u8, 0xff, 0x10]),
                ),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let d = u.tree.node("d");
        assert_eq!(
            d.xattrs.get("user.dir").map(Vec::as_slice),
            Some(&b"on a dir"[..])
        );
        let f = &u.tree.node("d/f").xattrs;
        assert_eq!(f.get("user.one").map(Vec::as_slice), Some(&b"1"[..]));
        assert_eq!(
            f.get("user.binary").map(Vec::as_slice),
            Some(&[0u8, 0xff, 0x10][..])
        );
        assert!(skipped(&u.report, 0).is_empty(), "{}", u.report);
    }
}

#[test]
fn trusted_and_selinux_xattrs_are_skipped_with_a_reason() {
    // README: xattrs the kernel refuses to an unprivileged user are listed in `skipped`; the
    // entry itself is still written.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new().dir("etc/", 0o755).entry(
                Entry::file("etc/secret", b"x")
                    .xattr("trusted.overlay.opaque", b"y")
                    .xattr("security.selinux", b"system_u:object_r:etc_t:s0")
                    .xattr("user.kept", b"1"),
            ),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let node = u.tree.node("etc/secret");
        assert_file(&u.tree, "etc/secret", b"x");
        assert_eq!(
            node.xattrs.keys().collect::<Vec<_>>(),
            ["user.kept"],
            "only the user.* xattr is set"
        );
        let skipped = skipped(&u.report, 0);
        for name in ["trusted.overlay.opaque", "security.selinux"] {
            assert!(
                skipped.iter().any(|s| s["path"] == "etc/secret"
                    && s["reason"].as_str().is_some_and(|r| r.contains(name))),
                "{:?}: no skipped entry for etc/secret naming {name}: {skipped:?}",
                u.mode
            );
        }
        assert_eq!(skipped.len(), 2, "{skipped:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Long names
// ---------------------------------------------------------------------------------------------

/// A layer whose directory, file names and link targets are all longer than the 100-byte
/// header field.
fn long_names_layer(long_names: LongNames) -> (Layer, String, String) {
    let dir = "d".repeat(120);
    let file = format!("{dir}/{}", "f".repeat(150));
    let layer = Layer::new()
        .long_names(long_names)
        .dir(format!("{dir}/"), 0o755)
        .file(&file, b"deep", 0o644)
        .symlink(format!("{dir}/{}", "s".repeat(110)), format!("/{file}"))
        .hardlink(format!("{dir}/{}", "h".repeat(130)), &file);
    (layer, dir, file)
}

fn check_long_names(long_names: LongNames) {
    let env = TestEnv::new();
    let (layer, dir, file) = long_names_layer(long_names);
    let image = Image::new().layer(layer).write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(u.tree.node(&dir).kind, Kind::Dir);
        assert_file(&u.tree, &file, b"deep");
        let link = u.tree.node(&format!("{dir}/{}", "s".repeat(110)));
        assert_eq!(link.kind, Kind::Symlink);
        assert_eq!(link.target.as_deref(), Some(Path::new(&format!("/{file}"))));
        assert_linked(&u.tree, &[&file, &format!("{dir}/{}", "h".repeat(130))]);
        assert_eq!(children(&u.tree, &dir).len(), 3);
    }
}

#[test]
fn gnu_long_names_and_link_targets() {
    check_long_names(LongNames::Gnu);
}

#[test]
fn pax_long_names_and_link_targets() {
    check_long_names(LongNames::Pax);
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

#[test]
fn absolute_and_dot_slash_names_are_made_relative() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("/etc/", 0o751)
                .file("/etc/x", b"absolute", 0o644)
                .file("./etc/y", b"dot slash", 0o644)
                .file(".//etc//z", b"doubled", 0o644),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(u.tree.node("etc").mode, 0o751);
        assert_file(&u.tree, "etc/x", b"absolute");
        assert_file(&u.tree, "etc/y", b"dot slash");
        assert_file(&u.tree, "etc/z", b"doubled");
        assert_eq!(children(&u.tree, "etc"), ["x", "y", "z"]);
    }
}

#[test]
fn root_directory_entries_are_accepted() {
    // Docker writes `./` first; `/` and `.` as directories are the same thing.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().dir("./", 0o755).file("./a", b"a", 0o644))
        .layer(
            Layer::new()
                .dir("/", 0o755)
                .dir(".", 0o755)
                .file("b", b"b", 0o644),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(u.tree.node(".").kind, Kind::Dir);
        assert_file(&u.tree, "a", b"a");
        assert_file(&u.tree, "b", b"b");
    }
}

#[test]
fn duplicate_file_then_file_the_later_wins() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("f", b"first", 0o644)
                .file("f", b"second", 0o600),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "f", b"second");
        assert_eq!((u.tree.node("f").mode, u.tree.node("f").nlink), (0o600, 1));
    }
}

#[test]
fn duplicate_file_then_directory_the_later_wins() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("x", b"first", 0o644)
                .dir("x/", 0o750)
                .file("x/child", b"c", 0o644),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let x = u.tree.node("x");
        assert_eq!((x.kind, x.mode), (Kind::Dir, 0o750));
        assert_file(&u.tree, "x/child", b"c");
    }
}

#[test]
fn duplicate_directory_then_file_the_later_wins() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("x/", 0o755)
                .file("x/child", b"c", 0o644)
                .file("x", b"second", 0o640),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "x", b"second");
        assert_eq!(u.tree.node("x").mode, 0o640);
        assert_absent(&u.tree, "x/child");
    }
}

// ---------------------------------------------------------------------------------------------
// FIFOs and devices
// ---------------------------------------------------------------------------------------------

#[test]
fn fifo_is_created_with_its_mode() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("run/", 0o755)
                .fifo("run/fifo", 0o640)
                .fifo("run/open", 0o666),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        let fifo = u.tree.node("run/fifo");
        assert_eq!((fifo.kind, fifo.mode), (Kind::Fifo, 0o640));
        let open = u.tree.node("run/open");
        assert_eq!((open.kind, open.mode), (Kind::Fifo, 0o666));
    }
}

#[test]
fn device_nodes_are_skipped_and_reported() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("dev/", 0o755)
                .char_device("dev/null", 1, 3)
                .block_device("dev/sda", 8, 0)
                .file("dev/regular", b"kept", 0o644),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(children(&u.tree, "dev"), ["regular"]);
        assert_eq!(
            json!(skipped(&u.report, 0)),
            json!([
                {"path": "dev/null", "reason": "device node"},
                {"path": "dev/sda", "reason": "device node"},
            ]),
            "{:?}",
            u.mode
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Owners
// ---------------------------------------------------------------------------------------------

/// Unpacks one layer of `entries` and returns both trees.
fn unpack_entries(env: &TestEnv, entries: Vec<Entry>) -> [Unpacked; 2] {
    let layer = entries.into_iter().fold(Layer::new(), Layer::entry);
    let image = Image::new().layer(layer).write(&layout(env, "img"));
    unpack_both(env, &image.path)
}

#[track_caller]
fn assert_owned_by_user(env: &TestEnv, tree: &Tree, path: &str) {
    let node = tree.node(path);
    assert_eq!(
        (node.uid, node.gid),
        (env.uid(), env.gid()),
        "{path} on disk belongs to the user running strata"
    );
}

#[test]
fn owner_1000_is_recorded_in_the_rootless_xattr() {
    let env = TestEnv::new();
    for u in unpack_entries(&env, vec![Entry::file("f", b"x").owner(1000, 1000)]) {
        assert_owned_by_user(&env, &u.tree, "f");
        assert_eq!(u.tree.node("f").rootless(), Some((Some(1000), Some(1000))));
    }
}

#[test]
fn root_uid_with_another_gid_records_only_the_gid() {
    // 0xFFFFFFFF ("no change") for the uid.
    let env = TestEnv::new();
    for u in unpack_entries(&env, vec![Entry::file("f", b"x").owner(0, 42)]) {
        assert_owned_by_user(&env, &u.tree, "f");
        assert_eq!(u.tree.node("f").rootless(), Some((None, Some(42))));
    }
}

#[test]
fn root_owner_records_nothing() {
    let env = TestEnv::new();
    for u in unpack_entries(
        &env,
        vec![
            Entry::dir("d/").owner(0, 0),
            Entry::file("d/f", b"x").owner(0, 0),
        ],
    ) {
        for path in ["d", "d/f"] {
            assert_owned_by_user(&env, &u.tree, path);
            assert_eq!(u.tree.node(path).rootless(), None, "{path}");
        }
    }
}

#[test]
fn huge_uid_is_recorded() {
    // Beyond the octal header field: GNU base-256 and a PAX `uid` record.
    let env = TestEnv::new();
    let entries = vec![
        Entry::file("gnu", b"x")
            .owner(172_761_424, 5)
            .long_names(LongNames::Gnu),
        Entry::file("pax", b"x")
            .owner(172_761_424, 5)
            .long_names(LongNames::Pax),
    ];
    for u in unpack_entries(&env, entries) {
        for path in ["gnu", "pax"] {
            assert_owned_by_user(&env, &u.tree, path);
            assert_eq!(
                u.tree.node(path).rootless(),
                Some((Some(172_761_424), Some(5))),
                "{path}"
            );
        }
    }
}

#[test]
fn directory_owner_is_recorded() {
    let env = TestEnv::new();
    let entries = vec![
        Entry::dir("home/").owner(0, 0),
        Entry::dir("home/user/").owner(1000, 100).mode(0o700),
        Entry::file("home/user/.profile", b"x").owner(1000, 100),
    ];
    for u in unpack_entries(&env, entries) {
        assert_owned_by_user(&env, &u.tree, "home/user");
        assert_eq!(
            u.tree.node("home/user").rootless(),
            Some((Some(1000), Some(100)))
        );
        assert_eq!(u.tree.node("home/user").mode, 0o700);
        assert_eq!(u.tree.node("home").rootless(), None);
    }
}

#[test]
fn merged_directory_takes_the_new_owner() {
    // Directory over directory updates the metadata, owner included.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("was-user/").owner(1000, 1000))
                .entry(Entry::dir("was-root/").owner(0, 0)),
        )
        .layer(
            Layer::new()
                .entry(Entry::dir("was-user/").owner(0, 0))
                .entry(Entry::dir("was-root/").owner(2000, 2000)),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_eq!(u.tree.node("was-user").rootless(), None);
        assert_eq!(
            u.tree.node("was-root").rootless(),
            Some((Some(2000), Some(2000)))
        );
    }
}

#[test]
fn symlink_with_an_owner_is_created() {
    // Symlinks cannot carry user.* xattrs: the owner is lost, but the entry must not fail.
    let env = TestEnv::new();
    for u in unpack_entries(
        &env,
        vec![Entry::symlink("link", "/etc/passwd").owner(1000, 1000)],
    ) {
        let link = u.tree.node("link");
        assert_eq!(link.kind, Kind::Symlink);
        assert_eq!(link.target.as_deref(), Some(Path::new("/etc/passwd")));
        assert_owned_by_user(&env, &u.tree, "link");
        assert_eq!(link.rootless(), None);
    }
}

// ---------------------------------------------------------------------------------------------
// Compression and media types
// ---------------------------------------------------------------------------------------------

/// A layer of several entries, so that a multi-member gzip has several members.
fn several_entries(compression: Compression) -> Layer {
    Layer::new()
        .compression(compression)
        .dir("etc/", 0o755)
        .file("etc/one", b"1", 0o644)
        .file("etc/two", b"2", 0o644)
        .symlink("etc/three", "two")
}

#[track_caller]
fn assert_several_entries(tree: &Tree) {
    assert_file(tree, "etc/one", b"1");
    assert_file(tree, "etc/two", b"2");
    assert_eq!(tree.node("etc/three").kind, Kind::Symlink);
}

fn check_compression(compression: Compression) {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(several_entries(compression))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_several_entries(&u.tree);
    }
}

#[test]
fn gzip_layer() {
    check_compression(Compression::Gzip);
}

#[test]
fn multi_member_gzip_layer_is_read_to_the_end() {
    check_compression(Compression::GzipMultiMember);
}

#[test]
fn zstd_layer() {
    check_compression(Compression::Zstd);
}

#[test]
fn uncompressed_layer() {
    check_compression(Compression::None);
}

#[test]
fn docker_media_types_with_every_compression() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("gzip", b"1", 0o644))
        .layer(
            Layer::new()
                .file("none", b"2", 0o644)
                .compression(Compression::None),
        )
        .layer(
            Layer::new()
                .file("zstd", b"3", 0o644)
                .compression(Compression::Zstd),
        )
        .docker_media_types()
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "gzip", b"1");
        assert_file(&u.tree, "none", b"2");
        assert_file(&u.tree, "zstd", b"3");
    }
}

#[test]
fn oci_uncompressed_media_type_holding_gzip_is_accepted() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(several_entries(Compression::Gzip).media_type(media_type::OCI_LAYER))
        .write(&layout(&env, "img"));
    assert_eq!(image.layers[0].media_type, media_type::OCI_LAYER);
    for u in unpack_both(&env, &image.path) {
        assert_several_entries(&u.tree);
    }
}

#[test]
fn trailing_bytes_after_the_tar_end_count_in_the_diff_id() {
    let trailing = [&[0u8; 4096][..], b"junk after the end blocks"].concat();
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("gzip", b"1", 0o644)
                .trailing_bytes(&trailing),
        )
        .layer(
            Layer::new()
                .file("zstd", b"2", 0o644)
                .compression(Compression::Zstd)
                .trailing_bytes(&trailing),
        )
        .layer(
            Layer::new()
                .file("none", b"3", 0o644)
                .compression(Compression::None)
                .trailing_bytes(&trailing),
        )
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "gzip", b"1");
        assert_file(&u.tree, "zstd", b"2");
        assert_file(&u.tree, "none", b"3");
        assert_eq!(u.report["chain_id"], image.chain_id().as_str());
    }
}

// ---------------------------------------------------------------------------------------------
// Image references
// ---------------------------------------------------------------------------------------------

/// A layout holding two tagged images, each with a file `which` naming it.
fn two_tagged_images(env: &TestEnv) -> WrittenIndex {
    ImageIndex::new()
        .image(
            Image::new()
                .tag("one")
                .layer(Layer::new().file("which", b"one", 0o644)),
        )
        .image(
            Image::new()
                .tag("two")
                .layer(Layer::new().file("which", b"two", 0o644)),
        )
        .write(&layout(env, "tagged"))
}

fn reference(path: &Path, suffix: &str) -> String {
    format!("{}{suffix}", path.display())
}

#[test]
fn image_path_alone_names_the_only_image() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("which", b"only", 0o644))
        .write(&layout(&env, "img"));
    for u in unpack_both(&env, &image.path) {
        assert_file(&u.tree, "which", b"only");
        assert_eq!(u.report["manifest"], image.manifest_digest.as_str());
    }
}

#[test]
fn image_path_colon_tag_selects_the_tagged_image() {
    let env = TestEnv::new();
    let index = two_tagged_images(&env);
    for (tag, image) in ["one", "two"].into_iter().zip(&index.images) {
        for u in unpack_both(&env, reference(&index.path, &format!(":{tag}"))) {
            assert_file(&u.tree, "which", tag.as_bytes());
            assert_eq!(u.report["manifest"], image.manifest_digest.as_str());
        }
    }
}

#[test]
fn image_path_at_digest_selects_the_manifest() {
    let env = TestEnv::new();
    let index = two_tagged_images(&env);
    let two = &index.images[1];
    for u in unpack_both(
        &env,
        reference(&index.path, &format!("@{}", two.manifest_digest)),
    ) {
        assert_file(&u.tree, "which", b"two");
        assert_eq!(u.report["manifest"], two.manifest_digest.as_str());
    }
}

#[test]
fn oci_prefixed_reference_with_and_without_a_tag() {
    let env = TestEnv::new();
    let index = two_tagged_images(&env);
    for u in unpack_both(&env, format!("oci:{}:two", index.path.display())) {
        assert_file(&u.tree, "which", b"two");
    }
    let single = Image::new()
        .layer(Layer::new().file("which", b"only", 0o644))
        .write(&layout(&env, "single"));
    for u in unpack_both(&env, format!("oci:{}", single.path.display())) {
        assert_file(&u.tree, "which", b"only");
    }
}

/// A foreign-platform image listed before the host's, and an attestation listed first of all.
fn multi_platform(nested: bool) -> ImageIndex {
    let index = ImageIndex::new()
        .image(
            Image::new()
                .platform(&format!("linux/{}/v8", foreign_arch()))
                .layer(Layer::new().file("arch", foreign_arch(), 0o644)),
        )
        .image(
            Image::new()
                .platform(&format!("linux/{}", host_arch()))
                .layer(Layer::new().file("arch", host_arch(), 0o644)),
        )
        .attestation();
    if nested {
        index.nested().tag("latest")
    } else {
        index
    }
}

#[test]
fn multi_platform_index_picks_the_host_platform_past_an_attestation() {
    let env = TestEnv::new();
    let index = multi_platform(false).write(&layout(&env, "multi"));
    for u in unpack_both(&env, &index.path) {
        assert_file(&u.tree, "arch", host_arch().as_bytes());
        assert_eq!(
            u.report["manifest"],
            index.images[1].manifest_digest.as_str()
        );
    }
}

#[test]
fn platform_flag_selects_another_platform() {
    let env = TestEnv::new();
    let index = multi_platform(false).write(&layout(&env, "multi"));
    let platform = format!("linux/{}/v8", foreign_arch());
    for u in unpack_both_with(&env, &["--platform", &platform], &index.path) {
        assert_file(&u.tree, "arch", foreign_arch().as_bytes());
        assert_eq!(
            u.report["manifest"],
            index.images[0].manifest_digest.as_str()
        );
    }
}

#[test]
fn nested_index_is_followed_to_the_host_platform() {
    let env = TestEnv::new();
    let index = multi_platform(true).write(&layout(&env, "nested"));
    for image in [
        index.path.display().to_string(),
        reference(&index.path, ":latest"),
    ] {
        for u in unpack_both(&env, &image) {
            assert_file(&u.tree, "arch", host_arch().as_bytes());
        }
    }
}

#[test]
fn docker_manifest_list_is_followed_to_the_host_platform() {
    let env = TestEnv::new();
    let index = multi_platform(true)
        .docker_media_types()
        .write(&layout(&env, "docker"));
    for u in unpack_both(&env, reference(&index.path, ":latest")) {
        assert_file(&u.tree, "arch", host_arch().as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// The JSON report
// ---------------------------------------------------------------------------------------------

#[test]
fn json_report_names_manifest_chain_and_every_layer() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("a", b"1", 0o644))
        .layer(
            Layer::new()
                .dir("dev/", 0o755)
                .char_device("dev/null", 1, 3)
                .compression(Compression::Zstd),
        )
        .write(&layout(&env, "img"));
    let chain_ids = image.chain_ids();
    // The source as the store records it: the layout's path, made absolute.
    let source = std::fs::canonicalize(&image.path).unwrap();
    for u in unpack_both(&env, &image.path) {
        let expected = json!({
            "source": source,
            "manifest": image.manifest_digest,
            "chain_id": image.chain_id(),
            "rootfs": u.dest,
            "layers": [
                {
                    "digest": image.layers[0].digest,
                    "diff_id": image.layers[0].diff_id,
                    "chain_id": chain_ids[0],
                    "cached": false,
                    "parentless": false,
                    "skipped": [],
                },
                {
                    "digest": image.layers[1].digest,
                    "diff_id": image.layers[1].diff_id,
                    "chain_id": chain_ids[1],
                    "cached": false,
                    "parentless": false,
                    "skipped": [{"path": "dev/null", "reason": "device node"}],
                },
            ],
        });
        assert_eq!(u.report, expected, "{:?}", u.mode);
    }
}

#[test]
fn second_unpack_with_the_store_reports_every_layer_cached() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("a", b"1", 0o644))
        .layer(Layer::new().file("b", b"2", 0o644))
        .write(&layout(&env, "img"));
    let first = fresh_dest(&env, Mode::Store);
    env.unpack(&image.path, &first).success();
    let second = fresh_dest(&env, Mode::Store);
    let report = env.unpack(&image.path, &second).success().json();
    assert_eq!(report["chain_id"], image.chain_id().as_str());
    let cached: Vec<&Value> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| &layer["cached"])
        .collect();
    assert_eq!(cached, [true, true], "{report}");
    let tree = Tree::scan(&second);
    assert_file(&tree, "a", b"1");
    assert_file(&tree, "b", b"2");
}
