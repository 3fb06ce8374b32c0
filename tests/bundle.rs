//! `strata bundle`: a runtime bundle that runc and crun (Debian's, installed by `.ci/run`) run
//! as the unprivileged test user, in both id-mapping modes; the image's user, given by name,
//! resolved through the image's own `/etc/passwd` and `/etc/group`.
//!
//! Debian's crun 1.8 refuses to run at all on a host whose cgroups are mounted in hybrid mode
//! (v1 and v2 together), whatever the bundle: there, and only for that error, crun is passed
//! over with a note.

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
                // Readable by its owner alone, who is not the namespace's root: the helper
                // that looks the user up reads it with CAP_DAC_READ_SEARCH, its only one.
                .entry(
                    Entry::file("etc/group", b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n")
                        .mode(0o600)
                        .owner(1000, 1000),
                )
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
            "Labels": {
                "org.opencontainers.image.title": "shell",
                "run.oci.keep_original_groups": "1",
            },
        });
    });
    env.own(&image.path);
    Some(image)
}

/// `strata bundle OPTIONS IMAGE DIR`.
fn make_bundle(env: &TestEnv, image: &WrittenImage, dir: &Path, options: &[&str]) -> Output {
    let mut command = env.strata_command(["bundle"]);
    command.args(options).arg(&image.path).arg(dir);
    run(&mut command)
}

/// The runtimes tried.
const RUNTIMES: [&str; 2] = ["runc", "crun"];

/// What crun says on a host whose cgroups it cannot handle, before it looks at the bundle.
const CRUN_HYBRID_CGROUPS: &str = "cgroups in hybrid mode not supported";

/// `RUNTIME run` of the bundle `dir` as the test user, and its output; `None` if the runtime
/// cannot run on this host at all.
fn run_bundle(env: &TestEnv, runtime: &str, dir: &Path, id: &str) -> Option<Output> {
    let state = env.mkdir(&format!("{runtime}-{id}"));
    let out = run(env
        .command(runtime)
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(dir)
        .arg(id));
    if runtime == "crun" && out.stderr.contains(CRUN_HYBRID_CGROUPS) {
        eprintln!("note: crun cannot run on this host: {}", out.stderr.trim());
        return None;
    }
    Some(out)
}

/// Each runtime that runs here prints `expected` from the bundle `dir`.
#[track_caller]
fn assert_runs(env: &TestEnv, dir: &Path, id: &str, expected: &str) {
    for runtime in RUNTIMES {
        if let Some(out) = run_bundle(env, runtime, dir, id) {
            out.success();
            assert_eq!(out.stdout, expected, "{runtime}: {out}");
        }
    }
}

#[test]
fn runtimes_run_the_bundle_as_the_images_user() {
    let env = TestEnv::new();
    // With the single map, only root exists inside: the image's root user.
    let Some(image) = shell_image(&env, "root-image", "root") else {
        return;
    };
    let dir = env.path().join("bundle-single");
    make_bundle(&env, &image, &dir, &["--no-store", "--idmap", "single"]).success();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    let rootfs = fs::metadata(dir.join("rootfs")).unwrap();
    assert_eq!(rootfs.permissions().mode() & 0o7777, 0o755);
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    // The config's labels and the keys it implies, as image-spec conversion.md has it; not a
    // label a runtime would act on.
    let annotations = &config["annotations"];
    assert_eq!(annotations["org.opencontainers.image.title"], "shell");
    assert_eq!(annotations["org.opencontainers.image.os"], "linux");
    assert!(
        annotations.get("run.oci.keep_original_groups").is_none(),
        "{annotations}"
    );
    assert_eq!(config["process"]["cwd"], "/etc");
    assert_runs(
        &env,
        &dir,
        "single",
        "hello from the bundle\n0\n0\n/etc\nmine\n",
    );

    // With subordinate ids, a user given by name: uid 1000 and its group, and a shell it can
    // run, in a rootfs it can reach.
    if required_subordinate_range().is_none() {
        return;
    }
    let Some(image) = shell_image(&env, "app-image", "app") else {
        return;
    };
    let dir = env.path().join("bundle-auto");
    let store = env.store();
    let store = store.to_str().unwrap();
    make_bundle(&env, &image, &dir, &["--store", store, "--idmap", "auto"]).success();
    assert_runs(
        &env,
        &dir,
        "auto",
        "hello from the bundle\n1000\n1000\n/etc\nmine\n",
    );
}

/// A user the image does not have, or one the id map cannot hold (a runtime would refuse to
/// start the bundle): refused, with no bundle left.
#[test]
fn a_user_the_bundle_cannot_run_as_is_refused_and_leaves_no_bundle() {
    let env = TestEnv::new();
    let rows: [(&str, &[&str]); 2] = [
        ("nobody-here", &["nobody-here", "/etc/passwd"]),
        ("app", &["1000:1000", "single", "--idmap auto"]),
    ];
    for (user, words) in rows {
        let Some(image) = shell_image(&env, user, user) else {
            return;
        };
        let dir = env.path().join(format!("bundle-{user}"));
        let out = make_bundle(&env, &image, &dir, &["--no-store", "--idmap", "single"]);
        assert_mentions(out.failure(), words);
        assert!(!dir.exists(), "the bundle directory was left behind");
    }
}
