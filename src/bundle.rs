//! `strata bundle`: an OCI runtime bundle, as umoci makes one: `DIR/rootfs`, unpacked as
//! [`unpack`](crate::unpack) does, and `DIR/config.json`, the rootless configuration `runc spec
//! --rootless` gives, with the image's process, user, environment and annotations, and the id
//! mappings the rootfs was made with. DIR is 0700: other host users cannot reach the setuid
//! files inside; `rootfs/` takes the mode the image gives `/` (normally 0755,
//! [`RootMode::Image`]), so that a process inside that drops root can still reach its files.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::image::Process;
use crate::protocol::{ExecUser, IdMap};
use crate::unpack::{Options, Progress, Report, RootMode, resolve, unpack_image};

/// Annotation namespaces runtimes take orders from (crun's `run.oci.*` sets groups, seccomp
/// receivers, handlers; runc's `org.criu.config`, …): an image's labels do not get to give them.
const RUNTIME_NAMESPACES: [&str; 4] = ["run.oci.", "org.criu.", "org.systemd.", "io.kubernetes."];

/// The search path a process gets when the image sets none, as runc's and Docker's default.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `strata bundle` is asked: [`Options`] with `dest` the bundle's directory (its
/// `root_mode` is not asked: the rootfs always takes the image's).
pub type BundleOptions = Options;

/// Makes the bundle `options.dest` of `options.image`; `progress` hears how the unpack goes.
/// The report's `rootfs` is `DEST/rootfs`. On failure DEST is not left behind (unless it was an
/// empty directory already).
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use strata::{BundleOptions, IdMapMode, RootMode, SnapshotterMode};
///
/// let options = BundleOptions {
///     image: "images/app:1.0".into(),
///     dest: "/tmp/app-bundle".into(), // then: runc run --bundle /tmp/app-bundle app
///     store: Some("/var/tmp/strata-store".into()),
///     platform: None,
///     idmap: IdMapMode::Auto,
///     snapshotter: SnapshotterMode::Auto,
///     root_mode: RootMode::Image,
///     jobs: 1,
///     pull: Default::default(),
/// };
/// strata::bundle(&options, &mut |_| {})?;
/// # Ok(())
/// # }
/// ```
pub fn bundle(options: &BundleOptions, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
    let dir = &options.dest;
    let created = match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("bundle directory {} is not empty", dir.display());
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", dir.display()))?;
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            true
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let made = make(options, progress);
    if made.is_err() && created {
        // Only the empty directory is left: a failed unpack leaves no rootfs.
        let _ = fs::remove_dir(dir);
    }
    made
}

fn make(options: &BundleOptions, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
    let (reference, image) = resolve(options)?;
    if image.process.args.is_empty() {
        bail!("the image gives no Entrypoint or Cmd: a bundle needs a process to run");
    }
    let rootfs = options.dest.join("rootfs");
    let unpack = Options {
        dest: rootfs.clone(),
        root_mode: RootMode::Image,
        ..options.clone()
    };
    let (report, helper) = unpack_image(&unpack, &reference, &image, progress)?;
    let config = (|| {
        let user = helper
            .look_up_user(&rootfs, &image.process.user)
            .with_context(|| format!("finding the image's user {:?}", image.process.user))?;
        check_mapped(&user, helper.idmap())?;
        let host = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let (annotations, dropped) = annotations_for_runtimes(&image.annotations);
        if !dropped.is_empty() {
            progress(Progress::Warning(format!(
                "left out of config.json, as runtimes act on them: the image's labels {}",
                dropped.join(", ")
            )));
        }
        let config = runtime_config(&image.process, &user, helper.idmap(), host, &annotations);
        let path = options.dest.join("config.json");
        fs::write(&path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))
    })();
    if let Err(err) = config {
        let _ = helper.remove_dir(&rootfs);
        return Err(err);
    }
    Ok(report)
}

/// Refuses a bundle whose user the namespace cannot hold: a runtime would refuse to start it.
fn check_mapped(user: &ExecUser, idmap: IdMap) -> Result<()> {
    let mapped = |range: Option<u32>| 1 + u64::from(range.unwrap_or(0));
    let (uids, gids) = match idmap {
        IdMap::Single => (mapped(None), mapped(None)),
        IdMap::Subordinate { uids, gids } => (mapped(Some(uids.count)), mapped(Some(gids.count))),
    };
    if u64::from(user.uid) >= uids || u64::from(user.gid) >= gids {
        bail!(
            "the image runs as {}:{}, but the {idmap} map holds only uids below {uids} and gids \
             below {gids} (with --idmap auto, a subordinate range from /etc/subuid holds more)",
            user.uid,
            user.gid
        );
    }
    Ok(())
}

/// `annotations` without the keys in namespaces runtimes act on; and those keys.
fn annotations_for_runtimes(
    annotations: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let (dropped, kept): (BTreeMap<_, _>, BTreeMap<_, _>) =
        annotations.clone().into_iter().partition(|(key, _)| {
            RUNTIME_NAMESPACES
                .iter()
                .any(|namespace| key.starts_with(namespace))
        });
    (kept, dropped.into_keys().collect())
}

/// The runtime spec's `config.json` for `process` run as `user`, in a user namespace mapping
/// ids as `idmap` (the user `host` as root, and its subordinate range above), as `runc spec
/// --rootless` lays it out.
fn runtime_config(
    process: &Process,
    user: &ExecUser,
    idmap: IdMap,
    (uid, gid): (u32, u32),
    annotations: &BTreeMap<String, String>,
) -> Value {
    let mut env = process.env.clone();
    if !env.iter().any(|var| var.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    // The runtime spec wants it absolute; Docker takes a relative one from `/`.
    let cwd = format!("/{}", process.working_dir.trim_start_matches('/'));
    let mappings = |host: u32, range: Option<(u32, u32)>| {
        let mut mappings = vec![json!({"containerID": 0, "hostID": host, "size": 1})];
        if let Some((start, count)) = range {
            mappings.push(json!({"containerID": 1, "hostID": start, "size": count}));
        }
        mappings
    };
    let (uids, gids) = match idmap {
        IdMap::Single => (None, None),
        IdMap::Subordinate { uids, gids } => (
            Some((uids.start, uids.count)),
            Some((gids.start, gids.count)),
        ),
    };
    let capabilities = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": user.uid, "gid": user.gid},
            "args": process.args,
            "env": env,
            "cwd": cwd,
            // No ambient set: runc stopped giving one (it cannot be raised without the
            // inheritable set), and it would hand these to a user the image runs as.
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "strata",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "none", "source": "/sys",
             "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "uidMappings": mappings(uid, uids),
            "gidMappings": mappings(gid, gids),
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "user"},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
        "annotations": annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::IdRange;

    #[test]
    fn a_user_the_namespace_cannot_hold_is_refused() {
        let user = |uid, gid| ExecUser { uid, gid };
        let subordinate = IdMap::Subordinate {
            uids: IdRange {
                start: 100000,
                count: 65536,
            },
            gids: IdRange {
                start: 100000,
                count: 10,
            },
        };
        let rows = [
            (user(0, 0), IdMap::Single, true),
            (user(1000, 0), IdMap::Single, false),
            (user(0, 1), IdMap::Single, false),
            (user(65536, 10), subordinate, true),
            (user(65537, 0), subordinate, false),
            (user(1000, 11), subordinate, false),
        ];
        for (user, idmap, fits) in rows {
            assert_eq!(
                check_mapped(&user, idmap).is_ok(),
                fits,
                "{user:?} {idmap:?}"
            );
        }
    }

    #[test]
    fn labels_runtimes_act_on_are_left_out() {
        let labels: BTreeMap<String, String> = [
            ("org.opencontainers.image.title", "t"),
            ("run.oci.keep_original_groups", "1"),
            ("org.criu.config", "/x"),
            ("com.example.run.oci.note", "kept"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (kept, dropped) = annotations_for_runtimes(&labels);
        assert_eq!(
            kept.keys().collect::<Vec<_>>(),
            ["com.example.run.oci.note", "org.opencontainers.image.title"]
        );
        assert_eq!(dropped, ["org.criu.config", "run.oci.keep_original_groups"]);
    }

    #[test]
    fn the_config_runs_the_images_process_as_its_user_with_the_trees_mappings() {
        let process = Process {
            user: "app".into(),
            env: vec!["LANG=C".into()],
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            working_dir: "srv".into(), // relative, as Docker allows
        };
        let user = ExecUser {
            uid: 1000,
            gid: 1000,
        };
        let subordinate = IdMap::Subordinate {
            uids: IdRange {
                start: 100000,
                count: 65536,
            },
            gids: IdRange {
                start: 200000,
                count: 1000,
            },
        };
        let annotations = [("org.opencontainers.image.title".into(), "t".into())].into();
        let config = runtime_config(&process, &user, subordinate, (4242, 4343), &annotations);
        let p = &config["process"];
        assert_eq!(p["args"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(p["env"], json!([DEFAULT_PATH, "LANG=C"]));
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["user"], json!({"uid": 1000, "gid": 1000}));
        assert_eq!(
            config["linux"]["uidMappings"],
            json!([{"containerID": 0, "hostID": 4242, "size": 1},
                   {"containerID": 1, "hostID": 100000, "size": 65536}])
        );
        assert_eq!(
            config["linux"]["gidMappings"],
            json!([{"containerID": 0, "hostID": 4343, "size": 1},
                   {"containerID": 1, "hostID": 200000, "size": 1000}])
        );
        assert_eq!(config["annotations"]["org.opencontainers.image.title"], "t");

        let single = runtime_config(
            &Process::default(),
            &ExecUser { uid: 0, gid: 0 },
            IdMap::Single,
            (4242, 4343),
            &Default::default(),
        );
        assert_eq!(single["process"]["cwd"], "/");
        assert_eq!(single["process"]["env"], json!([DEFAULT_PATH]));
        assert_eq!(single["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert_eq!(
            single["linux"]["uidMappings"],
            json!([{"containerID": 0, "hostID": 4242, "size": 1}])
        );
    }
}
