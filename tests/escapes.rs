//! Hostile layers: symlinks, hardlinks, whiteouts and names that try to reach outside DEST.
//! Each test plants a honeypot owned by the user running strata (so an escape would succeed if
//! the sandbox let it), runs the attack with the store and with `--no-store`, and checks that
//! nothing outside DEST and the store changed: the honeypot, the image layout, the scratch dir.

mod common;
use common::*;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

/// Unpacks IMAGE with the store, with `--no-store`, and side by side; all must succeed.
/// Returns every tree.
fn unpack_both(env: &TestEnv, image: impl AsRef<OsStr>) -> [Tree; 3] {
    let image = image.as_ref();
    [Mode::Store, Mode::NoStore, Mode::SideBySide].map(|mode| {
        let dest = fresh_dest(env, mode);
        run_unpack(env, mode, &[], image, &dest).success();
        Tree::scan(&dest)
    })
}

/// After a failed unpack the store is still usable: a good image unpacks with it.
#[track_caller]
fn assert_store_still_works(env: &TestEnv) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("good-image-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("etc/", 0o755)
                .file("etc/good", b"good", 0o644),
        )
        .write(&env.path().join(name));
    let dest = fresh_dest(env, Mode::Store);
    env.unpack(&image.path, &dest).success();
    let tree = Tree::scan(&dest);
    assert_eq!(
        tree.node("etc/good").hash.as_deref(),
        Some(sha256(b"good").as_str())
    );
}

/// A directory with a file in it, owned by the user strata runs as, outside DEST.
struct Honeypot {
    dir: PathBuf,
}

impl Honeypot {
    fn new(env: &TestEnv) -> Honeypot {
        let dir = env.mkdir("honeypot");
        fs::write(dir.join("file"), b"secret").unwrap();
        env.own(&dir);
        Honeypot { dir }
    }

    /// The honeypot's absolute path, as a symlink target.
    fn abs(&self) -> String {
        self.dir.to_str().unwrap().to_owned()
    }

    /// Absolute path of the file inside it.
    fn file(&self) -> String {
        format!("{}/file", self.abs())
    }

    /// Where the honeypot's path lands inside DEST when resolved as chroot does: the same
    /// path, relative to the root.
    fn clamped(&self) -> String {
        self.abs().trim_start_matches('/').to_owned()
    }
}

/// What lies outside DEST and the store, scanned before an attack and compared after it.
struct Watch {
    outside: Tree,
    host_passwd: Tree,
}

impl Watch {
    fn start(env: &TestEnv) -> Watch {
        Watch {
            outside: scan_outside(env),
            host_passwd: Tree::scan("/etc/passwd"),
        }
    }

    #[track_caller]
    fn assert_unchanged(&self, env: &TestEnv) {
        let changes = Tree::diff(&self.outside, &scan_outside(env));
        assert!(
            changes.is_empty(),
            "changed outside DEST and the store:\n{}",
            changes.join("\n")
        );
        let passwd = Tree::diff(&self.host_passwd, &Tree::scan("/etc/passwd"));
        assert!(passwd.is_empty(), "host /etc/passwd changed: {passwd:?}");
    }
}

/// The scratch dir minus DEST (`rootfs*`), the stores, and the scratch dir's own entry (its
/// times change when DEST appears).
fn scan_outside(env: &TestEnv) -> Tree {
    let side_store = side_by_side_store(env);
    let side_store = side_store.file_name().unwrap().to_str().unwrap();
    let mut tree = Tree::scan(env.path());
    tree.nodes.retain(|path, _| {
        let first = path.split('/').next().unwrap();
        path != "." && first != "store" && first != side_store && !first.starts_with("rootfs")
    });
    tree
}

#[track_caller]
fn assert_symlink(tree: &Tree, path: &str, target: &str) {
    let node = tree.node(path);
    assert_eq!(
        node.kind,
        Kind::Symlink,
        "{path} in {}",
        tree.root.display()
    );
    assert_eq!(node.target.as_deref(), Some(Path::new(target)), "{path}");
}

fn image_path(env: &TestEnv) -> PathBuf {
    env.path().join("img")
}

// ---------------------------------------------------------------------------------------------
// Symlinked parents
// ---------------------------------------------------------------------------------------------

#[test]
fn absolute_symlink_parent_in_the_same_layer_lands_inside_dest() {
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(
            Layer::new()
                .symlink("evil", pot.abs())
                .file("evil/pwned", b"pwned", 0o644),
        )
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_symlink(&tree, "evil", &pot.abs());
        assert_file(&tree, &format!("{}/pwned", pot.clamped()), b"pwned");
    }
    watch.assert_unchanged(&env);
}

#[test]
fn absolute_symlink_parent_from_a_lower_layer_lands_inside_dest() {
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(Layer::new().symlink("evil", pot.abs()))
        .layer(Layer::new().file("evil/pwned", b"pwned", 0o644))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_symlink(&tree, "evil", &pot.abs());
        assert_file(&tree, &format!("{}/pwned", pot.clamped()), b"pwned");
    }
    watch.assert_unchanged(&env);
}

#[test]
fn relative_symlink_climbing_out_is_clamped_to_the_root() {
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(Layer::new().symlink("up", "../../../../../../.."))
        .layer(Layer::new().file(format!("up/{}/pwned", pot.clamped()), b"pwned", 0o644))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_file(&tree, &format!("{}/pwned", pot.clamped()), b"pwned");
    }
    watch.assert_unchanged(&env);
}

#[test]
fn symlink_chains_climbing_out_are_clamped_to_the_root() {
    // `a -> b -> ../../..` is the root; `c -> d -> ../honeypot` is /honeypot of the image, not
    // the honeypot beside DEST.
    let env = TestEnv::new();
    let _pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(
            Layer::new()
                .symlink("a", "b")
                .symlink("b", "../../..")
                .file("a/x", b"x", 0o644)
                .symlink("c", "d")
                .symlink("d", "../honeypot"),
        )
        .layer(Layer::new().file("c/pwned", b"pwned", 0o644))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_file(&tree, "x", b"x");
        assert_file(&tree, "honeypot/pwned", b"pwned");
        assert_symlink(&tree, "b", "../../..");
    }
    watch.assert_unchanged(&env);
}

#[test]
fn dot_dot_symlink_parent_is_clamped_to_the_root() {
    // Charliecloud's case: `l -> ..` then `l/x` writes DEST/x, not a file beside DEST.
    let env = TestEnv::new();
    let _pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(
            Layer::new()
                .symlink("l", "..")
                .file("l/x", b"x", 0o644)
                .dir("sub/", 0o755)
                .symlink("sub/up", "../..")
                .file("sub/up/y", b"y", 0o644),
        )
        .layer(Layer::new().file("l/honeypot/pwned", b"pwned", 0o644))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_file(&tree, "x", b"x");
        assert_file(&tree, "y", b"y");
        assert_file(&tree, "honeypot/pwned", b"pwned");
        assert_symlink(&tree, "l", "..");
    }
    watch.assert_unchanged(&env);
}

#[test]
fn symlink_replacing_a_directory_in_the_same_layer_is_followed_inside() {
    // Never reuse a resolved directory across an entry that may have replaced it.
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("d/", 0o755)
                .file("d/before", b"1", 0o644)
                .symlink("d", pot.abs())
                .file("d/x", b"x", 0o644),
        )
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_symlink(&tree, "d", &pot.abs());
        assert_file(&tree, &format!("{}/x", pot.clamped()), b"x");
        assert!(!tree.contains_key(&format!("{}/before", pot.clamped())));
    }
    watch.assert_unchanged(&env);
}

// ---------------------------------------------------------------------------------------------
// The final component is never followed
// ---------------------------------------------------------------------------------------------

#[test]
fn directory_entry_over_an_outside_symlink_replaces_the_symlink() {
    // `link -> /honeypot` then `link/` as a 0777 directory: the honeypot keeps its mode.
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let dir_entry = || {
        Entry::dir("link/")
            .mode(0o777)
            .owner(1000, 1000)
            .mtime(1_000_000_000)
            .xattr("user.pwned", b"1")
    };
    let same_layer = Image::new()
        .layer(Layer::new().symlink("link", pot.abs()).entry(dir_entry()))
        .write(&env.path().join("same-layer"));
    let later_layer = Image::new()
        .layer(Layer::new().symlink("link", pot.abs()))
        .layer(Layer::new().entry(dir_entry()))
        .write(&env.path().join("later-layer"));
    let watch = Watch::start(&env);
    for image in [same_layer, later_layer] {
        for tree in unpack_both(&env, &image.path) {
            let link = tree.node("link");
            assert_eq!((link.kind, link.mode), (Kind::Dir, 0o777));
            assert_eq!(link.rootless(), Some((Some(1000), Some(1000))));
        }
    }
    watch.assert_unchanged(&env);
}

#[test]
fn entries_named_like_an_outside_symlink_replace_it() {
    // A file (with mode, owner and xattr), a FIFO and a hardlink, each over a symlink to the
    // honeypot's file: chmod, chown, setxattr and writes must hit the new entry, not the file.
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(
            Layer::new()
                .file("target", b"inside", 0o644)
                .symlink("as-file", pot.file())
                .symlink("as-fifo", pot.file())
                .symlink("as-hardlink", pot.file()),
        )
        .layer(
            Layer::new()
                .entry(
                    Entry::file("as-file", b"pwned")
                        .mode(0o4777)
                        .owner(1000, 1000)
                        .xattr("user.pwned", b"1"),
                )
                .fifo("as-fifo", 0o777)
                .hardlink("as-hardlink", "target"),
        )
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_file(&tree, "as-file", b"pwned");
        assert_eq!(tree.node("as-file").mode, 0o4777);
        assert_eq!(tree.node("as-fifo").kind, Kind::Fifo);
        assert_file(&tree, "as-hardlink", b"inside");
        assert_eq!(tree.node("as-hardlink").ino, tree.node("target").ino);
    }
    watch.assert_unchanged(&env);
}

// ---------------------------------------------------------------------------------------------
// Hardlinks
// ---------------------------------------------------------------------------------------------

#[test]
fn hardlink_to_host_etc_passwd_fails_when_the_image_has_none() {
    // The target resolves inside the root, where there is no etc/passwd.
    let env = TestEnv::new();
    let _pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("etc/", 0o755)
                .hardlink("stolen", "/etc/passwd"),
        )
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    fail_both(&env, &image.path);
    watch.assert_unchanged(&env);
    assert_store_still_works(&env);
}

#[test]
fn hardlink_to_etc_passwd_links_the_images_own_file() {
    let env = TestEnv::new();
    let _pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(Layer::new().dir("etc/", 0o755).file(
            "etc/passwd",
            b"root:x:0:0::/:/bin/false\n",
            0o644,
        ))
        .layer(Layer::new().hardlink("stolen", "/etc/passwd"))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_file(&tree, "stolen", b"root:x:0:0::/:/bin/false\n");
        let (stolen, passwd) = (tree.node("stolen"), tree.node("etc/passwd"));
        assert_eq!((stolen.ino, stolen.nlink), (passwd.ino, 2));
    }
    watch.assert_unchanged(&env);
}

#[test]
fn hardlink_target_climbing_out_of_the_root_fails() {
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    for (i, target) in [
        "../../outside".to_owned(),
        "../honeypot/file".to_owned(),
        format!("/../../../../..{}", pot.file()),
    ]
    .into_iter()
    .enumerate()
    {
        let image = Image::new()
            .layer(Layer::new().hardlink("stolen", &target))
            .write(&env.path().join(format!("img-{i}")));
        let watch = Watch::start(&env);
        fail_both(&env, &image.path);
        watch.assert_unchanged(&env);
    }
    assert_eq!(scan_outside(&env).node("honeypot/file").nlink, 1);
    assert_store_still_works(&env);
}

#[test]
fn hardlink_target_through_an_outside_symlink_fails_when_nothing_is_there() {
    // `evil -> /honeypot`, then a hardlink to `evil/file`: resolved inside the root, where the
    // file does not exist.
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(Layer::new().symlink("evil", pot.abs()))
        .layer(Layer::new().hardlink("stolen", "evil/file"))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    fail_both(&env, &image.path);
    watch.assert_unchanged(&env);
    assert_eq!(scan_outside(&env).node("honeypot/file").nlink, 1);
    assert_store_still_works(&env);
}

#[test]
fn hardlink_target_through_an_outside_symlink_links_the_file_inside() {
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let inside = format!("{}/file", pot.clamped());
    let image = Image::new()
        .layer(
            Layer::new()
                .file(&inside, b"inside", 0o644)
                .symlink("evil", pot.abs()),
        )
        .layer(Layer::new().hardlink("stolen", "evil/file"))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_file(&tree, "stolen", b"inside");
        assert_eq!(tree.node("stolen").ino, tree.node(&inside).ino);
        assert_eq!(tree.node("stolen").nlink, 2);
    }
    watch.assert_unchanged(&env);
}

#[test]
fn hardlink_created_through_an_outside_symlink_lands_inside() {
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let image = Image::new()
        .layer(
            Layer::new()
                .file("payload", b"payload", 0o644)
                .symlink("evil", pot.abs()),
        )
        .layer(Layer::new().hardlink("evil/planted", "payload"))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        let planted = format!("{}/planted", pot.clamped());
        assert_file(&tree, &planted, b"payload");
        assert_eq!(tree.node(&planted).ino, tree.node("payload").ino);
    }
    watch.assert_unchanged(&env);
}

// ---------------------------------------------------------------------------------------------
// Whiteouts
// ---------------------------------------------------------------------------------------------

#[test]
fn whiteout_of_dot_dot_is_refused() {
    // `.wh...` would remove `..`, the parent: a `..` component, refused.
    let env = TestEnv::new();
    let _pot = Honeypot::new(&env);
    for (i, name) in ["a/b/.wh...", ".wh..."].into_iter().enumerate() {
        let image = Image::new()
            .layer(
                Layer::new()
                    .dir("a/", 0o755)
                    .dir("a/b/", 0o755)
                    .file("a/b/file", b"x", 0o644),
            )
            .layer(Layer::new().entry(Entry::file(name, b"")))
            .write(&env.path().join(format!("img-{i}")));
        let watch = Watch::start(&env);
        for line in fail_both(&env, &image.path) {
            assert!(line.contains(".."), "{name}: {line}");
        }
        watch.assert_unchanged(&env);
    }
    assert_store_still_works(&env);
}

#[test]
fn whiteout_through_an_outside_symlink_stays_inside() {
    // `evil -> /honeypot` then `evil/.wh.file` removes the image's /honeypot/file, if any,
    // never the real one.
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let inside = format!("{}/file", pot.clamped());
    let image = Image::new()
        .layer(
            Layer::new()
                .symlink("evil", pot.abs())
                .file(&inside, b"inside", 0o644)
                .symlink("dangling", format!("{}/nowhere", pot.abs())),
        )
        .layer(Layer::new().whiteout("evil/file").whiteout("dangling/file"))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert!(!tree.contains_key(&inside), "{inside} should be whited out");
        assert_symlink(&tree, "evil", &pot.abs());
    }
    watch.assert_unchanged(&env);
}

#[test]
fn directory_the_layer_made_then_replaced_by_a_symlink_takes_its_subtree_along() {
    // `a/` and `a/b/` made, then `a -> etc`: names under `a/b` now resolve through the
    // symlink, into a directory of the layer below, and must be treated as such (side by
    // side, as needing that layer), not as new names in a directory the layer made.
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("etc/", 0o755)
                .dir("etc/b/", 0o755)
                .file("etc/b/passwd", b"lower", 0o644)
                .file("etc/b/new", b"lower", 0o644),
        )
        .layer(
            Layer::new()
                .dir("a/", 0o755)
                .dir("a/b/", 0o755)
                .symlink("a", "etc")
                .whiteout("a/b/passwd")
                .file("a/b/new", b"upper", 0o644),
        )
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert_symlink(&tree, "a", "etc");
        assert!(
            !tree.contains_key("etc/b/passwd"),
            "etc/b/passwd should be whited out"
        );
        assert_file(&tree, "etc/b/new", b"upper");
    }
    watch.assert_unchanged(&env);
}

#[test]
fn opaque_marker_through_an_outside_symlink_stays_inside() {
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    let inside = format!("{}/file", pot.clamped());
    let image = Image::new()
        .layer(
            Layer::new()
                .symlink("evil", pot.abs())
                .file(&inside, b"inside", 0o644),
        )
        .layer(Layer::new().opaque("evil"))
        .write(&image_path(&env));
    let watch = Watch::start(&env);
    for tree in unpack_both(&env, &image.path) {
        assert!(!tree.contains_key(&inside), "{inside} should be hidden");
        assert_symlink(&tree, "evil", &pot.abs());
    }
    watch.assert_unchanged(&env);
}

// ---------------------------------------------------------------------------------------------
// The root and `..`
// ---------------------------------------------------------------------------------------------

#[test]
fn root_entry_that_is_a_symlink_is_refused() {
    // CVE-2021-29136: a symlink at `/` would redirect everything after it.
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    for (i, target) in ["/etc".to_owned(), pot.abs()].into_iter().enumerate() {
        let image = Image::new()
            .layer(Layer::new().file("lower", b"x", 0o644))
            .layer(
                Layer::new()
                    .symlink("/", &target)
                    .file("/pwned", b"pwned", 0o644),
            )
            .write(&env.path().join(format!("img-{i}")));
        let watch = Watch::start(&env);
        for line in fail_both(&env, &image.path) {
            assert!(line.contains("root directory"), "/ -> {target}: {line}");
        }
        watch.assert_unchanged(&env);
    }
    assert_store_still_works(&env);
}

#[test]
fn dot_entry_that_is_a_symlink_is_refused() {
    let env = TestEnv::new();
    let pot = Honeypot::new(&env);
    for (i, name) in [".", "./"].into_iter().enumerate() {
        let image = Image::new()
            .layer(
                Layer::new()
                    .symlink(name, pot.abs())
                    .file("pwned", b"pwned", 0o644),
            )
            .write(&env.path().join(format!("img-{i}")));
        let watch = Watch::start(&env);
        for line in fail_both(&env, &image.path) {
            assert!(line.contains("root directory"), "{name:?}: {line}");
        }
        watch.assert_unchanged(&env);
    }
    assert_store_still_works(&env);
}

#[test]
fn root_entry_that_is_not_a_directory_is_refused() {
    let env = TestEnv::new();
    let _pot = Honeypot::new(&env);
    for (i, entry) in [Entry::file("/", b"a file"), Entry::fifo("./")]
        .into_iter()
        .enumerate()
    {
        let image = Image::new()
            .layer(Layer::new().entry(entry))
            .write(&env.path().join(format!("img-{i}")));
        let watch = Watch::start(&env);
        for line in fail_both(&env, &image.path) {
            assert!(line.contains("root directory"), "{line}");
        }
        watch.assert_unchanged(&env);
    }
    assert_store_still_works(&env);
}

#[test]
fn dot_dot_components_are_refused() {
    let env = TestEnv::new();
    let _pot = Honeypot::new(&env);
    let entries = [
        Entry::file("../x", b"pwned"),
        Entry::file("a/../../x", b"pwned"),
        Entry::file("/../x", b"pwned"),
        Entry::file("../honeypot/pwned", b"pwned"),
        Entry::file("../honeypot/file", b"pwned"),
        Entry::dir("../newdir/"),
        Entry::symlink("../link", "/etc"),
    ];
    for (i, entry) in entries.into_iter().enumerate() {
        let image = Image::new()
            .layer(Layer::new().file("lower", b"x", 0o644))
            .layer(Layer::new().dir("a/", 0o755).entry(entry.clone()))
            .write(&env.path().join(format!("img-{i}")));
        let watch = Watch::start(&env);
        for line in fail_both(&env, &image.path) {
            assert!(line.contains(".."), "{entry:?}: {line}");
        }
        watch.assert_unchanged(&env);
    }
    assert_store_still_works(&env);
}
