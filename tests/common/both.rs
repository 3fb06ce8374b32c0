//! Running `strata unpack` every way (with a store, cold and warm, without one, side by side):
//! all must give the same tree, or fail alike.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::run::{Output, TestEnv};
use super::tree::{Kind, Node, Tree};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Store,
    NoStore,
    /// A store of its own that extracts layers side by side (`--jobs 4`): with the overlay
    /// snapshotter, all but the first into parentless snapshots.
    SideBySide,
}

/// A DEST path that no other unpack in this test binary uses. Every DEST name starts with
/// `rootfs`, which is how the escape tests tell DEST from the rest of the scratch dir.
pub fn fresh_dest(env: &TestEnv, mode: Mode) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let label = match mode {
        Mode::Store => "store",
        Mode::NoStore => "nostore",
        Mode::SideBySide => "side",
    };
    env.dest(&format!("rootfs-{label}-{n}"))
}

/// The store [`Mode::SideBySide`] unpacks use, beside the env's own.
pub fn side_by_side_store(env: &TestEnv) -> PathBuf {
    env.path().join("side-by-side-store")
}

/// `strata unpack [--store S | --no-store | --store S2 --jobs 4] --json EXTRA… IMAGE DEST` as
/// the env's user.
pub fn run_unpack(env: &TestEnv, mode: Mode, extra: &[&str], image: &OsStr, dest: &Path) -> Output {
    if mode == Mode::Store && extra.is_empty() {
        return env.unpack(image, dest);
    }
    let mut args: Vec<OsString> = vec!["unpack".into()];
    match mode {
        Mode::Store => args.extend(["--store".into(), env.store().into_os_string()]),
        Mode::NoStore => args.push("--no-store".into()),
        Mode::SideBySide => {
            args.extend(["--store".into(), side_by_side_store(env).into_os_string()]);
            args.extend(["--jobs".into(), "4".into()]);
        }
    }
    args.push("--json".into());
    args.extend(extra.iter().map(OsString::from));
    args.extend([image.to_owned(), dest.as_os_str().to_owned()]);
    env.strata(args)
}

/// What one successful unpack produced.
pub struct Unpacked {
    pub mode: Mode,
    pub dest: PathBuf,
    pub tree: Tree,
    pub report: Value,
}

/// Unpacks IMAGE with the store and with `--no-store`, then from the filled store; all must
/// succeed with the same tree.
pub fn unpack_both(env: &TestEnv, image: impl AsRef<OsStr>) -> [Unpacked; 2] {
    unpack_both_with(env, &[], image)
}

/// [`unpack_both`] with extra arguments before IMAGE (`--platform …`).
pub fn unpack_both_with(env: &TestEnv, extra: &[&str], image: impl AsRef<OsStr>) -> [Unpacked; 2] {
    let image = image.as_ref();
    let unpacked = [Mode::Store, Mode::NoStore].map(|mode| {
        let dest = fresh_dest(env, mode);
        let out = run_unpack(env, mode, extra, image, &dest);
        out.success();
        Unpacked {
            mode,
            tree: Tree::scan(&dest),
            report: out.json(),
            dest,
        }
    });
    assert_same_tree(
        ("store", &unpacked[0].tree),
        ("no-store", &unpacked[1].tree),
    );
    // The store run filled DEST along with the snapshots; a second run finds every layer
    // committed and copies DEST out of the snapshots: the same tree again.
    let warm = fresh_dest(env, Mode::Store);
    run_unpack(env, Mode::Store, extra, image, &warm).success();
    assert_same_tree(("store", &unpacked[0].tree), ("warm", &Tree::scan(&warm)));
    // Side by side into a store of its own, DEST copied from the snapshots: the same again.
    let side = fresh_dest(env, Mode::SideBySide);
    run_unpack(env, Mode::SideBySide, extra, image, &side).success();
    assert_same_tree(
        ("store", &unpacked[0].tree),
        ("side by side", &Tree::scan(&side)),
    );
    unpacked
}

/// Runs an unpack that must fail, in every mode (side by side too); returns the error line of
/// each. DEST must not be left behind, nor a staging directory beside it.
pub fn fail_both(env: &TestEnv, image: impl AsRef<OsStr>) -> [String; 3] {
    let image = image.as_ref();
    [Mode::Store, Mode::NoStore, Mode::SideBySide].map(|mode| {
        let dest = fresh_dest(env, mode);
        let out = run_unpack(env, mode, &[], image, &dest);
        let line = out.failure().to_owned();
        assert!(
            fs::symlink_metadata(&dest).is_err(),
            "{mode:?}: {} left behind after a failure: {out}",
            dest.display()
        );
        let debris: Vec<_> = fs::read_dir(env.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".rootfs"))
            .collect();
        assert!(debris.is_empty(), "{mode:?}: staging left: {debris:?}");
        line
    })
}

/// What must agree between the store and `--no-store` trees. Directory sizes and times are left
/// out: sizes depend on the directory's history, and implicitly created parents get the time of
/// extraction. Tests check the directory times they care about.
pub fn comparable(node: &Node) -> String {
    let dir = node.kind == Kind::Dir;
    format!(
        "{:?} mode={:o} owner={}:{} size={:?} hash={:?} target={:?} nlink={} mtime={:?} xattrs={:?}",
        node.kind,
        node.mode,
        node.uid,
        node.gid,
        (!dir).then_some(node.size),
        node.hash,
        node.target,
        node.nlink,
        (!dir).then_some(node.mtime),
        node.xattrs,
    )
}

/// Paths that share an inode, as sets of two or more.
pub fn link_groups(tree: &Tree) -> BTreeSet<Vec<String>> {
    let mut by_inode: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for (path, node) in tree.iter().filter(|(_, node)| node.kind != Kind::Dir) {
        by_inode
            .entry((node.dev, node.ino))
            .or_default()
            .push(path.clone());
    }
    by_inode
        .into_values()
        .filter(|paths| paths.len() > 1)
        .collect()
}

#[track_caller]
pub fn assert_same_tree((a_name, a_tree): (&str, &Tree), (b_name, b_tree): (&str, &Tree)) {
    let describe = |tree: &Tree| -> BTreeMap<String, String> {
        tree.iter()
            .map(|(path, node)| (path.clone(), comparable(node)))
            .collect()
    };
    let (a, b) = (describe(a_tree), describe(b_tree));
    let differences: Vec<String> = a
        .keys()
        .chain(b.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|path| a.get(*path) != b.get(*path))
        .map(|path| {
            format!(
                "{path}:\n  {a_name:8} {:?}\n  {b_name:8} {:?}",
                a.get(path),
                b.get(path)
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "the {a_name} and {b_name} trees differ:\n{}",
        differences.join("\n")
    );
    assert_eq!(
        link_groups(a_tree),
        link_groups(b_tree),
        "hardlinks differ between the {a_name} and {b_name} trees"
    );
}

/// The tree of `image` unpacked from its layout (`--no-store`): what an image read any other
/// way (a registry, an archive) must give.
pub fn layout_tree(env: &TestEnv, image: &super::fixture::WrittenImage) -> Tree {
    let dest = fresh_dest(env, Mode::NoStore);
    run_unpack(env, Mode::NoStore, &[], image.path.as_os_str(), &dest).success();
    Tree::scan(&dest)
}
