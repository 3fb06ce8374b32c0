//! The reference check: a real multi-layer Debian-based image, built from this machine's own
//! files with GNU tar (as root, so the layers carry real owners, setuid bits, whiteouts and an
//! opaque directory), unpacked by strata in both id-mapping modes and by umoci twice: rootless
//! as the test uid (strata's single map must give the same tree, recorded owners included),
//! and as root, which keeps real owners (strata's owners, read back through the mapping or the
//! record, must equal them).
//!
//! (Debian's umoci 0.4.7 cannot build the image itself: `umoci insert` writes truncated layers,
//! which strata rightly refuses.)

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use common::*;

/// A layer of `paths` under `dir`, as GNU tar run by root writes it: numeric owners, modes,
/// times, hardlinks.
fn gnu_tar(dir: &Path, paths: &[&str]) -> Layer {
    let output = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-cf", "-", "-C"])
        .arg(dir)
        .args(paths)
        .output()
        .expect("running tar");
    assert!(
        output.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Layer::from_tar(output.stdout)
}

/// What strata and umoci must agree on for one path. Directory times are left out where the
/// tools legitimately differ: directories a layer creates implicitly get the time of extraction.
/// `owner` is how the path's image owner is read.
fn comparable(path: &str, node: &Node, owner: impl Fn(&str, &Node) -> String) -> String {
    let mtime = if node.kind == Kind::Dir {
        None
    } else {
        Some(node.mtime.0)
    };
    let user_xattrs: Vec<_> = node
        .xattrs
        .iter()
        .filter(|(name, _)| name.starts_with("user.") && *name != ROOTLESS_XATTR)
        .collect();
    format!(
        "{:?} {:o} size={} hash={:?} target={:?} nlink={} owner={} mtime={mtime:?} xattrs={user_xattrs:?}",
        node.kind,
        node.mode,
        if node.kind == Kind::Dir { 0 } else { node.size },
        node.hash,
        node.target,
        node.nlink,
        owner(path, node),
    )
}

/// The paths whose comparable forms differ, each with both forms.
type Owner<'a> = &'a dyn Fn(&str, &Node) -> String;

fn differences(ours: &Tree, theirs: &Tree, ours_owner: Owner, their_owner: Owner) -> Vec<String> {
    let paths: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    paths
        .into_iter()
        .filter(|path| *path != ".")
        .filter_map(|path| {
            let a = ours.get(path).map(|n| comparable(path, n, ours_owner));
            let b = theirs.get(path).map(|n| comparable(path, n, their_owner));
            (a != b).then(|| format!("{path}:\n  strata {a:?}\n  umoci  {b:?}"))
        })
        .collect()
}

#[test]
fn strata_and_umoci_unpack_a_debian_image_to_the_same_tree() {
    if !running_as_root() || Command::new("umoci").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root with umoci"
        );
        eprintln!("skipped: needs root (to build the image with real owners) and umoci");
        return;
    }
    let env = TestEnv::new();
    let stage = env.path().join("stage");

    // Extra content: owners inside and far beyond any subuid range, hardlinks, a symlink into a
    // lower layer, a FIFO, a read-only directory holding a mode-000 file.
    let extra = stage.join("srv/extra");
    fs::create_dir_all(&extra).unwrap();
    fs::write(extra.join("user-file"), "owned by 1000\n").unwrap();
    std::os::unix::fs::chown(extra.join("user-file"), Some(1000), Some(1000)).unwrap();
    fs::write(extra.join("huge-id"), "sssd user\n").unwrap();
    std::os::unix::fs::chown(extra.join("huge-id"), Some(172_761_424), Some(5)).unwrap();
    fs::hard_link(extra.join("user-file"), extra.join("user-file-link")).unwrap();
    symlink("/etc/os-release", extra.join("os-release")).unwrap();
    let fifo_mode = nix::sys::stat::Mode::from_bits_truncate(0o640);
    nix::unistd::mkfifo(&extra.join("fifo"), fifo_mode).unwrap();
    fs::create_dir(extra.join("locked")).unwrap();
    fs::write(extra.join("locked/secret"), "mode 000\n").unwrap();
    fs::set_permissions(
        extra.join("locked/secret"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    fs::set_permissions(extra.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
    // Removals: a whiteout for a file, one for a directory, an opaque directory.
    let removals = env.path().join("removals");
    for dir in ["etc/apt", "usr/bin", "usr/lib"] {
        fs::create_dir_all(removals.join(dir)).unwrap();
    }
    fs::write(removals.join("etc/.wh.motd"), "").unwrap();
    fs::write(removals.join("usr/bin/.wh.chsh"), "").unwrap();
    fs::write(removals.join("usr/lib/.wh.os-release"), "").unwrap();
    fs::write(removals.join("etc/apt/.wh..wh..opq"), "").unwrap();
    fs::write(
        removals.join("etc/apt/only-file"),
        "the opaque dir holds only this\n",
    )
    .unwrap();

    let layout = env.path().join("debian");
    Image::new()
        .layer(gnu_tar(Path::new("/"), &["etc"]))
        .layer(gnu_tar(Path::new("/"), &["usr/bin", "usr/sbin"]))
        .layer(gnu_tar(&stage, &["srv"]))
        .layer(gnu_tar(&removals, &["etc", "usr"]))
        .tag("img")
        .write(&layout);
    env.own(&layout);
    let image = format!("{}:img", layout.display());

    let ours = env.dest("strata-rootfs");
    env.unpack(&image, &ours).success();
    let reference = env.dest("umoci-rootfs");
    let umoci_out = run(env
        .command("umoci")
        .args(["raw", "unpack", "--rootless", "--image", &image])
        .arg(&reference));
    umoci_out.success();

    let (ours, reference) = (Tree::scan(&ours), Tree::scan(&reference));
    assert!(
        ours.len() > 2000,
        "the image should be realistic, has {} paths",
        ours.len()
    );
    assert!(!ours.contains_key("etc/motd") && !ours.contains_key("usr/bin/chsh"));
    assert!(ours.contains_key("etc/apt/only-file") && !ours.contains_key("etc/apt/sources.list.d"));
    assert_eq!(
        ours.node("srv/extra/huge-id").rootless(),
        Some((Some(172_761_424), Some(5)))
    );

    let recorded = |_: &str, node: &Node| format!("{:?}", node.rootless().unwrap_or((None, None)));
    let found = differences(&ours, &reference, &recorded, &recorded);
    assert!(
        found.is_empty(),
        "{} differences from rootless umoci:\n{}",
        found.len(),
        found.join("\n")
    );

    // As root, umoci keeps the real owners: the reference for both of strata's mappings.
    let root_reference = env.path().join("umoci-as-root");
    let status = Command::new("umoci")
        .args(["raw", "unpack", "--image", &image])
        .arg(&root_reference)
        .status()
        .unwrap();
    assert!(status.success());
    let root_reference = Tree::scan(&root_reference);
    let real = |_: &str, node: &Node| format!("{:?}", (node.uid, node.gid));
    for idmap in modes() {
        let env = TestEnv::new().with_idmap(idmap);
        let dest = env.dest("rootfs");
        env.unpack(&image, &dest).success();
        let tree = Tree::scan(&dest);
        // Symlinks cannot carry the owner record: under the single map their owner is lost
        // (as with umoci --rootless); under the subordinate map it is real.
        let decoded = |path: &str, node: &Node| match (idmap, node.kind) {
            (IdMap::Single, Kind::Symlink) => real(path, root_reference.node(path)),
            _ => format!("{:?}", image_owner(node, idmap)),
        };
        let found = differences(&tree, &root_reference, &decoded, &real);
        assert!(
            found.is_empty(),
            "{idmap:?}: {} differences from umoci as root:\n{}",
            found.len(),
            found.join("\n")
        );
    }
}
