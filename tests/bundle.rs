//! `strata bundle`: a runtime bundle that runc (Debian's, installed by `.ci/run`) runs as the
//! unprivileged test user, in both id-mapping modes; the image's user, given by name, resolved
//! through the image's own `/etc/passwd` and `/etc/group`.
//!
//! crun is not among the runtimes tried: Debian's crun 1.8 refuses to run at all on a host
//! whose cgroups are mounted in hybrid mode, as this machine's are ("cgroups in hybrid mode not
//! supported"), whatever the bundle.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;

/// An image with busybox as its shell, a user `app` (1000, in group `staff` too, which a
/// rootless runtime does not set) and a `Cmd`
/// that says who it runs as; its config's `User` is `user`.
fn shell_image(env: &TestEnv, name: &str, user: &str) -> Option<WrittenImage> {
    if !Path::new("/bin/busybox").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install busybox-static"
        );
        return None;
    }
    let busybox = fs::read("/bin/busybox").unwrap();
    let mut image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("bin"))
                .entry(Entry::file("bin/busybox", &busybox).mode(0o755))
                .entry(Entry::symlink("bin/sh", "busybox"))
                .entry(Entry::dir("etc"))
                .entry(Entry::file(
                    "etc/passwd",
                    b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
                ))
                .entry(Entry::file(
                    "etc/group",
                    b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
                ))
                .entry(Entry::dir("home/app").mode(0o700).owner(1000, 1000))
                .entry(
                    Entry::file("home/app/notes", b"mine\n")
                        .mode(0o600)
                        .owner(1000, 1000),
                ),
        )
        .write(&env.path().join(name));
    image.rewrite_config(|config| {
        config["config"] = json!({
            "User": user,
            "Env": ["GREETING=hello from the bundle"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo \"$GREETING\"; id -u; id -G; pwd; cat /home/app/notes 2>&1 || true"],
            "WorkingDir": "/etc",
        });
    });
    image.rewrite_manifest(|manifest| {
        manifest["annotations"] = json!({"org.opencontainers.image.title": "shell"});
    });
    env.own(&image.path);
    Some(image)
}

/// `runc run` of the bundle `dir` as the test user: its output.
fn runc(env: &TestEnv, dir: &Path, id: &str) -> Output {
    let state = env.mkdir(&format!("runc-{id}"));
    run(env
        .command("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(dir)
        .arg(id))
}

#[test]
fn runc_runs_the_bundle_as_the_images_user() {
    let env = TestEnv::new();
    // With the single map, only root exists inside: the image's root user.
    let Some(image) = shell_image(&env, "root-image", "root") else {
        return;
    };
    let dir = env.path().join("bundle-single");
    env.strata(args![
        "bundle",
        "--no-store",
        "--idmap",
        "single",
        &image.path,
        &dir
    ])
    .success();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    let rootfs = fs::metadata(dir.join("rootfs")).unwrap();
    assert_eq!(rootfs.permissions().mode() & 0o7777, 0o755);
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["annotations"]["org.opencontainers.image.title"],
        "shell"
    );
    assert_eq!(config["process"]["cwd"], "/etc");
    let out = runc(&env, &dir, "single");
    out.success();
    assert_eq!(
        out.stdout, "hello from the bundle\n0\n0\n/etc\nmine\n",
        "{out}"
    );

    // With subordinate ids, a user given by name: uid 1000, its groups from /etc/group, and a
    // shell it can run, in a rootfs it can reach.
    if required_subordinate_range().is_none() {
        return;
    }
    let Some(image) = shell_image(&env, "app-image", "app") else {
        return;
    };
    let dir = env.path().join("bundle-auto");
    let store = env.store();
    env.strata(args![
        "bundle",
        "--store",
        store,
        "--idmap",
        "auto",
        &image.path,
        &dir
    ])
    .success();
    let out = runc(&env, &dir, "auto");
    out.success();
    assert_eq!(
        out.stdout, "hello from the bundle\n1000\n1000\n/etc\nmine\n",
        "{out}"
    );
}

#[test]
fn a_user_the_image_does_not_have_is_refused_and_leaves_no_bundle() {
    let env = TestEnv::new();
    let Some(image) = shell_image(&env, "image", "nobody-here") else {
        return;
    };
    let dir = env.path().join("bundle");
    let out = env.strata(args![
        "bundle",
        "--no-store",
        "--idmap",
        "single",
        &image.path,
        &dir
    ]);
    assert_mentions(out.failure(), &["nobody-here", "/etc/passwd"]);
    assert!(!dir.exists(), "the bundle directory was left behind");
}
