//! One tree per image, at a bounded cost: regressions of layers whose tree depended on how
//! the chain was unpacked, and of layers that cost more than their size. Every image is
//! unpacked every way (store cold and warm, `--no-store`, side by side) and must give the
//! same tree, or fail alike.

mod common;
use common::*;

use std::os::unix::process::CommandExt;

/// A directory named again by a later layer takes that entry's xattrs alone, as umoci does,
/// and as a side-by-side snapshot's own directory shows them.
#[test]
fn a_directory_named_again_takes_only_the_new_entrys_xattrs() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new().entry(
                Entry::dir("d/")
                    .xattr("user.old", "1")
                    .xattr("user.kept", "old"),
            ),
        )
        .layer(
            Layer::new().entry(
                Entry::dir("d/")
                    .mode(0o750)
                    .xattr("user.kept", "new")
                    .xattr("user.added", "3"),
            ),
        )
        .write(&env.path().join("xattrs"));
    env.own(&image.path);
    let [store, _] = unpack_both(&env, &image.path);
    let xattrs: Vec<_> = store
        .tree
        .node("d")
        .xattrs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        xattrs,
        [("user.added", &b"3"[..]), ("user.kept", &b"new"[..])]
    );
    assert_eq!(store.tree.node("d").mode, 0o750);
}

/// A hard link to a name its own layer whited out has no target, side by side too (where the
/// whiteout is a device in the layer's snapshot).
#[test]
fn a_hardlink_to_a_name_its_layer_whited_out_is_refused_every_way() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("f", "lower", 0o644))
        .layer(Layer::new().file("other", "x", 0o644))
        .layer(Layer::new().whiteout("f").hardlink("h", "f"))
        .write(&env.path().join("link-to-whiteout"));
    env.own(&image.path);
    for line in fail_both(&env, &image.path) {
        assert_mentions(&line, &["layer 3/3", "hardlink target f does not exist"]);
    }
}

/// Skipped xattrs say why, and a layer skipping many things reports the first thousand and
/// how many more.
#[test]
fn skipped_entries_name_the_real_cause_and_are_capped() {
    let env = TestEnv::new();
    let mut layer = Layer::new().entry(
        Entry::file("podman-built", "x")
            .xattr("user.overlay.origin", b"\0\xfb")
            .xattr("trusted.md5", "x")
            .xattr("user.fine", "kept"),
    );
    for i in 0..1500 {
        layer = layer.char_device(format!("dev/null{i}"), 1, 3);
    }
    let image = Image::new().layer(layer).write(&env.path().join("skipped"));
    env.own(&image.path);
    let [store, no_store] = unpack_both(&env, &image.path);
    for report in [&store.report, &no_store.report] {
        let layer = &report["layers"][0];
        let skipped = layer["skipped"].as_array().unwrap();
        assert_eq!(skipped.len(), 1000);
        assert_eq!(layer["skipped_omitted"], 502);
        let reasons: Vec<_> = skipped[..3]
            .iter()
            .map(|s| s["reason"].as_str().unwrap())
            .collect();
        assert_eq!(
            reasons,
            [
                "xattr trusted.md5: needs privilege a user namespace does not give",
                "xattr user.overlay.origin: overlayfs metadata, not applied",
                "device node",
            ]
        );
        assert_eq!(skipped[999]["path"], "dev/null997");
    }
    assert_eq!(store.tree.node("podman-built").xattrs["user.fine"], b"kept");
}

/// A path this deep takes one fd per level to walk down holding every level open, and a
/// directory this wide as many to copy holding each subdirectory open until a thread takes
/// it: under a limit of 256 open files, copies (DEST from the store) and removal must hold a
/// bounded number.
#[test]
fn trees_of_any_depth_and_width_are_copied_and_removed_under_a_small_open_file_limit() {
    let env = TestEnv::new();
    let deep = "d/".repeat(2040) + "f";
    let mut wide = Layer::new().file("top", "x", 0o644);
    for i in 0..2000 {
        wide = wide.file(format!("wide/d{i}/f"), "f", 0o644);
    }
    let image = Image::new()
        .layer(wide.long_names(LongNames::Pax))
        .layer(
            Layer::new()
                .file(&deep, "deep", 0o644)
                .long_names(LongNames::Pax),
        )
        .tag("deep")
        .write(&env.path().join("deep"));
    env.own(&image.path);
    let reference = format!("{}:deep", image.path.display());
    let limited = |args: &[&std::ffi::OsStr], soft: u64, hard: u64| {
        let mut command = env.strata_command(args);
        // SAFETY: only setrlimit between fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    soft,
                    hard,
                )
                .map_err(std::io::Error::from)
            });
        }
        run(&mut command)
    };
    let store = env.store();
    let (cold, warm) = (env.dest("rootfs-cold"), env.dest("rootfs-warm"));
    let unpack = |dest: &std::path::Path| {
        let args = [
            "unpack".as_ref(),
            "--store".as_ref(),
            store.as_os_str(),
            reference.as_ref(),
            dest.as_os_str(),
        ];
        limited(&args, 256, 256).success();
    };
    unpack(&cold);
    unpack(&warm);
    // (Found by `find`, which walks deeper than a path can name.)
    let found = run(env
        .command("find")
        .arg(&warm)
        .args(["-type", "f", "-size", "4c"]));
    assert!(
        found.stdout.trim_end().ends_with(&format!("/{deep}")),
        "{found}"
    );
    for dest in [&cold, &warm] {
        limited(&["rmtree".as_ref(), dest.as_os_str()], 1024, 1024).success();
        assert!(!dest.exists());
    }
    limited(
        &[
            "rm".as_ref(),
            "--store".as_ref(),
            store.as_os_str(),
            reference.as_ref(),
        ],
        1024,
        1024,
    )
    .success();
    limited(
        &["gc".as_ref(), "--store".as_ref(), store.as_os_str()],
        256,
        256,
    )
    .success();
    assert!(snapshots(&env).is_empty(), "{:?}", snapshots(&env));
}

/// Debris an earlier run left in the store that cannot be removed (here an immutable file,
/// which root alone can make) is said in a warning and left in place: the store works on.
#[test]
fn debris_that_cannot_be_removed_leaves_the_store_usable() {
    if !running_as_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs this test as root"
        );
        eprintln!("skipped: needs root (chattr +i)");
        return;
    }
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().file("f", "x", 0o644))
        .write(&env.path().join("image"));
    env.own(&image.path);
    env.unpack(&image.path, env.dest("rootfs-first")).success();
    let debris = env.store().join("tmp/extract-left-by-a-crash");
    std::fs::create_dir(&debris).unwrap();
    std::fs::write(debris.join("stuck"), "x").unwrap();
    env.own(&debris);
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(debris.join("stuck"))
            .status()
    };
    if !chattr("+i").is_ok_and(|status| status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI's scratch filesystem has chattr"
        );
        eprintln!("skipped: chattr +i does not work here");
        return;
    }
    let out = env.unpack(&image.path, env.dest("rootfs-second"));
    let cleaned_up = chattr("-i");
    out.success();
    assert_mentions(
        &out.stderr,
        &["warning", "could not remove", "extract-left-by-a-crash"],
    );
    assert!(cleaned_up.unwrap().success());
    let out = env.unpack(&image.path, env.dest("rootfs-third"));
    out.success();
    assert!(!out.stderr.contains("warning"), "{out}");
    assert!(!debris.exists());
}

/// A layer makes `a/b`, then replaces `a` by a symlink to a lower `x`: the mode and times it
/// gave `a/b` went with it, and must not land on the lower `x/b`, which it never named.
#[test]
fn metadata_of_a_replaced_directory_does_not_land_on_a_symlink_target() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("x/").mtime(1_000))
                .entry(Entry::dir("x/b/").mtime(1_000)),
        )
        .layer(
            Layer::new()
                .entry(Entry::dir("a/").mtime(2_000))
                .entry(Entry::dir("a/b/").mode(0o700).mtime(2_000))
                .symlink("a", "x"),
        )
        .write(&env.path().join("image"));
    env.own(&image.path);
    let [store, _] = unpack_both(&env, &image.path);
    let lower = store.tree.node("x/b");
    assert_eq!((lower.mode, lower.mtime.0), (0o755, 1_000));
    assert_eq!(store.tree.node("a").kind, Kind::Symlink);
}

/// Files of a layer and whiteouts of them through a symlink to their directory: the result
/// may not depend on whether the writer threads were done, run after run. The whiteouts name
/// the layer's own files, which they spare.
#[test]
fn whiteouts_through_a_symlink_do_not_race_the_writers() {
    let env = TestEnv::new();
    let mut layer = Layer::new().dir("d/", 0o755).symlink("s", "d");
    for i in 0..64 {
        layer = layer.file(format!("d/a{i}"), "small", 0o644);
    }
    for i in 0..64 {
        layer = layer.whiteout(&format!("s/a{i}"));
    }
    let image = Image::new().layer(layer).write(&env.path().join("race"));
    env.own(&image.path);
    let [first, _] = unpack_both(&env, &image.path);
    let expected: Vec<_> = first.tree.keys().cloned().collect();
    // `s/aN` is `d/aN`, a file of the whiteout's own layer, which it spares.
    for i in 0..64 {
        assert_file(&first.tree, &format!("d/a{i}"), b"small");
    }
    for _ in 0..50 {
        let dest = fresh_dest(&env, Mode::NoStore);
        run_unpack(&env, Mode::NoStore, &[], image.path.as_os_str(), &dest).success();
        let found: Vec<_> = Tree::scan(&dest).keys().cloned().collect();
        assert_eq!(found, expected);
    }
}

/// A name made through a symlink to a directory of the layer (`s/x`, `s -> d`), then through
/// the directory (`d/x`), is one name: the second entry replaces the first, as it would in
/// the reverse order.
#[test]
fn a_name_made_through_an_alias_and_through_its_directory_is_one_name() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .dir("d/", 0o755)
                .symlink("s", "d")
                .file("s/x", "through s", 0o644)
                .file("d/x", "through d", 0o600)
                .file("d/y", "through d", 0o644)
                .symlink("s/y", "x")
                .dir("s/sub/", 0o700)
                .file("d/sub/z", "z", 0o644),
        )
        .write(&env.path().join("image"));
    env.own(&image.path);
    let [store, _] = unpack_both(&env, &image.path);
    let tree = &store.tree;
    assert_file(tree, "d/x", b"through d");
    assert_eq!(tree.node("d/x").mode, 0o600);
    assert_eq!(tree.node("d/y").kind, Kind::Symlink);
    assert_eq!(tree.node("d/sub").mode, 0o700);
    assert_file(tree, "d/sub/z", b"z");
}

/// A later layer that makes a directory inside one a lower layer named (`s/e` for the file
/// `s/e/f`, or through a symlink to `s`) leaves the named one's time as the image gave it.
#[test]
fn a_named_directory_keeps_its_time_when_a_later_layer_makes_one_inside_it() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("s/").mtime(1_000))
                .entry(Entry::dir("t/").mtime(2_000))
                .symlink("u", "t"),
        )
        .layer(
            Layer::new()
                .file("s/e/f", "f", 0o644)
                .file("u/e/f", "f", 0o644),
        )
        .write(&env.path().join("image"));
    env.own(&image.path);
    for unpacked in unpack_both(&env, &image.path) {
        let tree = &unpacked.tree;
        assert_eq!(tree.node("s").mtime.0, 1_000, "{:?}", unpacked.mode);
        assert_eq!(tree.node("t").mtime.0, 2_000, "{:?}", unpacked.mode);
        assert_file(tree, "t/e/f", b"f");
    }
}

/// A whiteout under a directory that does not exist yet, then that directory and names in it:
/// through an overlay, the lookup that missed must not leave the directory hidden from
/// overlayfs, which would lose its mode and time and refuse a link to its file (`Stale file
/// handle`).
#[test]
fn a_directory_made_after_a_whiteout_below_it_is_seen_through_the_overlay() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(Layer::new().dir("a/", 0o755))
        .layer(
            Layer::new()
                .dir("d/", 0o755)
                .whiteout("d/sub/x")
                .entry(Entry::dir("d/sub/").mode(0o750).mtime(3_000))
                .file("d/sub/z", "z", 0o644)
                .hardlink("h", "d/sub/z"),
        )
        .write(&env.path().join("image"));
    env.own(&image.path);
    for unpacked in unpack_both(&env, &image.path) {
        let sub = unpacked.tree.node("d/sub");
        assert_eq!(
            (sub.mode, sub.mtime.0),
            (0o750, 3_000),
            "{:?}",
            unpacked.mode
        );
        let (h, z) = (unpacked.tree.node("h"), unpacked.tree.node("d/sub/z"));
        assert_eq!((h.ino, h.nlink), (z.ino, 2));
    }
}

/// Names through symlinks whose targets climb with `..` thousands of times, while renames
/// happen elsewhere on the machine (another strata job's, say): the kernel answers a walk
/// through `..` that a rename may have raced with EAGAIN, and a walk that long always races
/// with a rename every few microseconds. Each entry must still land, every time.
#[test]
fn names_through_climbing_symlinks_land_while_renames_happen_elsewhere() {
    let env = TestEnv::new();
    let climb = "a/../".repeat(400);
    let mut lower = Layer::new().dir("a/", 0o755);
    for i in 0..20 {
        lower = lower.symlink(format!("l{i}"), format!("{climb}l{}", i + 1));
    }
    lower = lower.symlink("l20", "a").symlink("m", format!("{climb}a"));
    // Entries alternate between two parents, so that none reuses the last one's.
    let mut upper = Layer::new();
    for i in 0..2000 {
        let parent = if i % 2 == 0 { "l0" } else { "m" };
        upper = upper.file(format!("{parent}/f{i}"), "f", 0o644);
    }
    let image = Image::new()
        .layer(lower)
        .layer(upper)
        .write(&env.path().join("image"));
    env.own(&image.path);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let spot = env.path().join("renames");
    std::fs::create_dir(&spot).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let (a, b) = (spot.join("a"), spot.join("b"));
            std::fs::write(&a, "x").unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::rename(&a, &b).unwrap();
                std::fs::rename(&b, &a).unwrap();
            }
        });
        let unpacked = std::panic::catch_unwind(|| unpack_both(&env, &image.path));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let [store, _] = unpacked.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let files = store.tree.keys().filter(|path| path.starts_with("a/f"));
        assert_eq!(files.count(), 2000);
    });
}

/// A symlink to a directory 1,900 levels down (`l -> a/a/…/a`, made through it): a name below
/// it resolves to a path longer than the kernel takes at once, where each name on the way is
/// short. It lands as the kernel would put it, in every mode.
#[test]
fn names_deeper_than_a_path_can_say_land_through_a_symlink() {
    let env = TestEnv::new();
    let deep = "a/".repeat(1900);
    let long = "b".repeat(250);
    let image = Image::new()
        .layer(
            Layer::new()
                .long_names(LongNames::Pax)
                .symlink("l", deep.trim_end_matches('/')),
        )
        .layer(
            Layer::new()
                .long_names(LongNames::Pax)
                .dir(format!("l/{long}/"), 0o755)
                .file(format!("l/{long}/f"), "deep", 0o644),
        )
        .write(&env.path().join("image"));
    env.own(&image.path);
    for mode in [Mode::Store, Mode::Store, Mode::NoStore, Mode::SideBySide] {
        let dest = fresh_dest(&env, mode);
        run_unpack(&env, mode, &[], image.path.as_os_str(), &dest).success();
        // (Found by `find`, which walks deeper than a path can name.)
        let found = run(env
            .command("find")
            .arg(&dest)
            .args(["-type", "f", "-name", "f"]));
        assert!(
            found
                .stdout
                .trim_end()
                .ends_with(&format!("/{deep}{long}/f")),
            "{mode:?}: {found}"
        );
    }
}

/// `--root-mode image`: DEST takes the mode the top-most layer with an entry for `/` gives it
/// (0755 when none has one), however the chain was unpacked (the warm run reads it from the
/// snapshot's record); by default it stays 0700.
#[test]
fn the_root_takes_the_images_mode_when_asked_every_way() {
    let env = TestEnv::new();
    let with_root = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("./").mode(0o751))
                .file("a", b"a", 0o644),
        )
        .layer(Layer::new().file("b", b"b", 0o644))
        .write(&env.path().join("with-root"));
    let without_root = Image::new()
        .layer(Layer::new().file("c", b"c", 0o644))
        .write(&env.path().join("without-root"));
    // No more than 0755 on the host: others may not write DEST, nor a bit be special.
    let open_root = Image::new()
        .layer(Layer::new().entry(Entry::dir("./").mode(0o7777)))
        .write(&env.path().join("open-root"));
    for (image, expected) in [
        (&with_root, 0o751),
        (&without_root, 0o755),
        (&open_root, 0o755),
    ] {
        env.own(&image.path);
        // The store's second run is warm: it finds every layer committed.
        for mode in [Mode::Store, Mode::Store, Mode::NoStore, Mode::SideBySide] {
            let dest = fresh_dest(&env, mode);
            let args = ["--root-mode", "image"];
            run_unpack(&env, mode, &args, image.path.as_os_str(), &dest).success();
            let found = Tree::scan(&dest).node(".").mode;
            assert_eq!(found, expected, "{mode:?} {}", image.path.display());
        }
        let dest = fresh_dest(&env, Mode::NoStore);
        run_unpack(&env, Mode::NoStore, &[], image.path.as_os_str(), &dest).success();
        assert_eq!(Tree::scan(&dest).node(".").mode, 0o700);
    }
}
