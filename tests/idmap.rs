//! Rootless fidelity in both id-mapping modes: with the single map, image owners other than
//! 0:0 are recorded in `user.rootlesscontainers`; with the test user's subordinate range they
//! are set for real (as podman's rootless storage does), and only ids beyond the range are
//! recorded. Setuid bits, file capabilities, xattrs, FIFOs, hardlinks and unfriendly modes are
//! kept either way. Then: removing all of it again, as the user.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// `cap_net_raw+ep` as a v2 `security.capability` value.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn fidelity_image(env: &TestEnv, name: &str) -> WrittenImage {
    let file = |path: &str, mode: u32| Entry::file(path, path.as_bytes()).mode(mode);
    let lower = Layer::new()
        .entry(Entry::dir("etc"))
        .entry(file("etc/shadow", 0o640).owner(0, 42))
        .entry(Entry::dir("home/u").mode(0o700).owner(1000, 1000))
        .entry(file("home/u/f", 0o644).owner(1000, 1000))
        .entry(Entry::dir("ids"))
        .entry(file("ids/top-of-range", 0o644).owner(65536, 65536))
        .entry(file("ids/beyond-range", 0o644).owner(65537, 65537))
        .entry(file("ids/sssd", 0o644).owner(172_761_424, 5))
        .entry(Entry::dir("bin"))
        .entry(file("bin/su", 0o4755))
        .entry(file("bin/wall", 0o2755).owner(0, 5))
        .entry(file("bin/ping", 0o755).xattr("security.capability", CAP_NET_RAW))
        .entry(file("bin/tagged", 0o644).xattr("user.origin", b"image"))
        .entry(Entry::fifo("run-fifo").mode(0o640).owner(1000, 1000))
        .entry(Entry::dir("ro").mode(0o555))
        .entry(file("ro/file", 0o444))
        .entry(Entry::dir("locked").mode(0o000))
        .entry(file("locked/secret", 0o000))
        .entry(Entry::dir("search-only").mode(0o111))
        .entry(file("search-only/x", 0o600))
        .entry(file("read-only-file", 0o400));
    let upper = Layer::new()
        .entry(file("ro/new", 0o644).owner(1000, 1000))
        .entry(Entry::hardlink("ro/link", "ro/file"))
        .entry(file("locked/more", 0o600))
        .entry(file("search-only/y", 0o600))
        .entry(Entry::file("read-only-file", b"replaced").mode(0o400))
        .entry(file("home/u/g", 0o600).owner(1000, 1000));
    let image = Image::new()
        .layer(lower)
        .layer(upper)
        .write(&env.path().join(name));
    env.own(&image.path);
    image
}

#[test]
fn owners_modes_and_xattrs_survive_in_both_mapping_modes() {
    for idmap in modes() {
        let env = TestEnv::new().with_idmap(idmap);
        let image = fidelity_image(&env, "img");
        let dest = env.dest("rootfs");
        env.unpack(&image.path, &dest).success();
        let tree = Tree::scan(&dest);
        let owner = |path: &str| image_owner(tree.node(path), idmap);
        // A test process that is not root cannot look inside these to check (home/u is a
        // subordinate id's 0700 directory under the auto map).
        let hidden = |path: &str| {
            !running_as_root()
                && (path.starts_with("locked/")
                    || path.starts_with("search-only/")
                    || idmap == IdMap::Auto && path.starts_with("home/u/"))
        };

        for (path, expected) in [
            ("etc/shadow", (0, 42)),
            ("home/u", (1000, 1000)),
            ("home/u/f", (1000, 1000)),
            ("home/u/g", (1000, 1000)),
            ("ids/top-of-range", (65536, 65536)),
            ("ids/beyond-range", (65537, 65537)),
            ("ids/sssd", (172_761_424, 5)),
            ("bin/su", (0, 0)),
            ("bin/wall", (0, 5)),
            ("ro/new", (1000, 1000)),
        ]
        .into_iter()
        .filter(|(path, _)| !hidden(path))
        {
            assert_eq!(owner(path), expected, "{idmap:?}: owner of {path}");
        }
        if idmap == IdMap::Auto {
            // Inside the range, owners are real: no record needed, and the host sees subuids.
            let (start, _) = subordinate_range().unwrap();
            for path in ["etc/shadow", "home/u/f", "ids/top-of-range"] {
                if !hidden(path) {
                    assert_eq!(tree.node(path).rootless(), None, "{path} needs no record");
                }
            }
            if !hidden("home/u/f") {
                assert_eq!(tree.node("home/u/f").uid, start + 999);
            }
            assert_eq!(tree.node("ids/top-of-range").uid, start + 65535);
            // Beyond it, the user keeps the file and the record says who owns it.
            assert_eq!(tree.node("ids/beyond-range").uid, test_ids().0);
            assert_eq!(
                tree.node("ids/sssd").rootless(),
                Some((Some(172_761_424), None))
            );
        }
        // The FIFO's owner can only be set for real (no user.* xattrs on FIFOs).
        let fifo = tree.node("run-fifo");
        assert_eq!((fifo.kind, fifo.mode), (Kind::Fifo, 0o640));
        if idmap == IdMap::Auto {
            assert_eq!(owner("run-fifo"), (1000, 1000));
        }

        let mode = |path: &str| tree.node(path).mode;
        assert_eq!(mode("bin/su"), 0o4755);
        assert_eq!(mode("bin/wall"), 0o2755);
        assert_eq!(mode("ro"), 0o555);
        assert_eq!(mode("locked"), 0o000);
        if !hidden("locked/secret") {
            assert_eq!(mode("locked/secret"), 0o000);
        }
        assert_eq!(mode("search-only"), 0o111);
        assert_eq!(mode("read-only-file"), 0o400);
        assert_eq!(tree.node("read-only-file").hash, Some(sha256(b"replaced")));
        for path in ["ro/new", "locked/more", "search-only/y"] {
            if !hidden(path) {
                assert!(tree.contains_key(path), "{idmap:?}: {path} was not written");
            }
        }
        let (file, link) = (tree.node("ro/file"), tree.node("ro/link"));
        assert_eq!(
            (file.ino, file.nlink),
            (link.ino, 2),
            "hardlink into a read-only dir"
        );

        assert_eq!(
            tree.node("bin/tagged")
                .xattrs
                .get("user.origin")
                .map(Vec::as_slice),
            Some(&b"image"[..])
        );
        // File capabilities are set inside the namespace, so the kernel stores them as v3,
        // bound to the namespace's root: the user's own uid (see the README).
        let cap = &tree.node("bin/ping").xattrs["security.capability"];
        assert_eq!((cap.len(), cap[3]), (24, 3), "{idmap:?}: {cap:?}");
        assert_eq!(
            u32::from_le_bytes(cap[20..24].try_into().unwrap()),
            test_ids().0
        );
    }
}

#[test]
fn the_store_records_its_mapping_and_never_mixes_two() {
    let Some(_) = required_subordinate_range() else {
        return;
    };
    let env = TestEnv::new().with_idmap(IdMap::Auto);
    let image = fidelity_image(&env, "img");
    env.unpack(&image.path, env.dest("first")).success();
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(env.store().join("store.json")).unwrap()).unwrap();
    assert!(config["idmap"]["subordinate"].is_object(), "{config}");

    let store = env.store();
    let dest = env.dest("second");
    let out = env.strata(args![
        "unpack", "--idmap", "single", "--store", store, image.path, dest
    ]);
    let error = out.failure();
    assert!(
        error.contains("subordinate") && error.contains("another --store"),
        "{error}"
    );
    assert!(!dest.exists());
    // A store of its own for the other mapping works.
    let other = env.path().join("single-store");
    let dest = env.dest("third");
    env.strata(args![
        "unpack", "--idmap", "single", "--store", other, image.path, dest
    ])
    .success();
}

#[test]
fn missing_or_failing_id_tools_fall_back_to_the_single_map_with_one_warning() {
    let Some(_) = required_subordinate_range() else {
        return;
    };
    let env = TestEnv::new().with_idmap(IdMap::Auto);
    let image = fidelity_image(&env, "img");
    // A newuidmap that fails, first on PATH: its exit status must be noticed. And no tools.
    let broken = env.mkdir("broken-tools");
    for tool in ["newuidmap", "newgidmap"] {
        let script = broken.join(tool);
        fs::write(
            &script,
            "#!/bin/sh\necho 'refusing for the test' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cases = [
        (
            format!("{}:/usr/bin:/bin", broken.display()),
            "refusing for the test",
        ),
        (
            env.mkdir("no-tools").display().to_string(),
            "newuidmap is not installed",
        ),
    ];
    for (n, (path, why)) in cases.into_iter().enumerate() {
        let dest = env.dest(&format!("rootfs-{n}"));
        let mut command = env.strata_command(args!["unpack", "--no-store", image.path, dest]);
        let out = run(command.env("PATH", path));
        out.success();
        let warnings: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(warnings.len(), 1, "{out}");
        assert!(
            warnings[0].starts_with("strata: warning:") && warnings[0].contains(why),
            "{out}"
        );
        // The single map: the image owner is recorded, the file belongs to the user.
        let node = Tree::scan(&dest).node("home/u/f").clone();
        assert_eq!(
            (node.uid, node.rootless()),
            (test_ids().0, Some((Some(1000), Some(1000))))
        );
    }
}

#[test]
fn a_non_root_user_removes_everything_strata_made() {
    for idmap in modes() {
        let env = TestEnv::new().with_idmap(idmap);
        let image = fidelity_image(&env, "img");
        let dest = env.dest("rootfs");
        env.unpack(&image.path, &dest).success();
        if idmap == IdMap::Auto {
            // What plain `rm -rf` as the user cannot do: subuid-owned and mode-000 content.
            let rm = run(env.command("rm").arg("-rf").arg(&dest));
            assert!(
                !rm.status.success() && dest.exists(),
                "rm -rf should fail here: {rm}"
            );
        }
        env.strata(args!["rmtree", dest]).success();
        assert!(!dest.exists(), "{idmap:?}: rmtree left {}", dest.display());

        // Forget the image: gc then frees every snapshot, and the store itself can go.
        let store = env.store();
        let listing = env
            .strata(args!["ls", "--json", "--store", store])
            .success()
            .json();
        assert_eq!(listing.as_array().unwrap().len(), 2, "{listing}");
        assert_eq!(
            listing[1]["images"][0],
            format!("{}", fs::canonicalize(&image.path).unwrap().display())
        );
        env.strata(args!["rm", "--store", store, image.path])
            .success();
        let gc = env
            .strata(args!["gc", "--store", store])
            .success()
            .stdout
            .clone();
        assert!(gc.starts_with("removed 2 snapshots"), "{gc}");
        let listing = env
            .strata(args!["ls", "--json", "--store", store])
            .success()
            .json();
        assert_eq!(listing, serde_json::json!([]));
        env.strata(args!["rmtree", store]).success();
        assert!(!store.exists());
    }
}

#[test]
fn a_rootfs_unpacked_with_subordinate_ids_runs_under_the_same_mapping() {
    let Some((start, count)) = required_subordinate_range() else {
        return;
    };
    if !Path::new("/bin/busybox").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install busybox-static"
        );
        return;
    }
    let env = TestEnv::new().with_idmap(IdMap::Auto);
    let busybox = fs::read("/bin/busybox").unwrap();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("bin"))
                .entry(Entry::file("bin/sh", &busybox).mode(0o755))
                .entry(Entry::dir("home/u").mode(0o700).owner(1000, 1000))
                .entry(
                    Entry::file("home/u/notes", b"mine\n")
                        .mode(0o600)
                        .owner(1000, 1000),
                )
                .entry(
                    Entry::file("etc/shadow", b"root:*::::::\n")
                        .mode(0o640)
                        .owner(0, 42),
                ),
        )
        .write(&env.path().join("img"));
    env.own(&image.path);
    let dest = env.dest("rootfs");
    env.unpack(&image.path, &dest).success();

    // The user's own mapping, as podman or `unshare --map-auto` would set it up.
    let users = format!("{start},1,{count}");
    let script = "id -u; id -g; stat -c '%u:%g %a' /home/u/notes /etc/shadow; \
                  read -r line < /home/u/notes; echo \"$line\"";
    let out = run(env.command("unshare").args([
        "--map-user=0",
        "--map-group=0",
        &format!("--map-users={users}"),
        &format!("--map-groups={users}"),
        &format!("--root={}", dest.display()),
        "/bin/sh",
        "-c",
        script,
    ]));
    out.success();
    assert_eq!(out.stdout, "0\n0\n1000:1000 600\n0:42 640\nmine\n");
}
