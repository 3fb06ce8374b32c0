//! The helper's sandbox, observed from outside while it works: namespaces, id map, mounts,
//! capabilities, no_new_privs, seccomp and open fds, read from /proc of the live helper
//! processes (the applier, and the inflater that feeds it).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Which process of the helper program to look for.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// The sandboxed job, once it has entered its namespaces.
    Applier,
    /// The process that decompresses and hashes the layer.
    Inflater,
}

/// The `strata-helper` in `role` whose parent is `parent`.
fn find_helper(parent: u32, role: Role, deadline: Instant) -> Option<u32> {
    while Instant::now() < deadline {
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let is_child = status.lines().any(|l| l == format!("PPid:\t{parent}"));
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let is_helper = cmdline.contains("strata-helper");
            let ready = match role {
                // Once it is in a user namespace of its own whose uid map is written, it is
                // worth inspecting.
                Role::Applier => {
                    let userns = |pid: u32| fs::read_link(format!("/proc/{pid}/ns/user")).ok();
                    cmdline.contains(r#"{"job":"#)
                        && userns(pid) != userns(parent)
                        && fs::read_to_string(format!("/proc/{pid}/uid_map"))
                            .is_ok_and(|m| m.split_whitespace().next() == Some("0"))
                }
                // Its wall goes up before it reads anything.
                Role::Inflater => {
                    cmdline.contains(r#"{"inflate":"#)
                        && status_field(pid, "Seccomp").is_ok_and(|mode| mode == "2")
                }
            };
            if is_child && is_helper && ready {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn status_field(pid: u32, field: &str) -> Result<String, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|err| format!("no status of {pid}: {err}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:\t")).map(str::to_owned))
        .ok_or_else(|| format!("no {field} in status of {pid}"))
}

/// How the fd `fd` of `pid` was opened: `O_RDONLY`, `O_WRONLY` or `O_RDWR`.
fn access_mode(pid: u32, fd: u32) -> i32 {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .unwrap();
    i32::from_str_radix(flags.trim(), 8).unwrap() & libc::O_ACCMODE
}

/// `pid`'s mappings of layers' rings, as /proc/PID/maps shows them: the ring's inode and the
/// mapping's permissions.
fn ring_mappings(pid: u32) -> Vec<(u64, String)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|line| line.contains("memfd:strata-ring"))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[4].parse().unwrap(), fields[1].to_owned())
        })
        .collect()
}

/// The permissions of `pid`'s one mapping of a layer's ring.
fn ring_mapping(pid: u32) -> String {
    match &ring_mappings(pid)[..] {
        [(_, permissions)] => permissions.clone(),
        other => panic!("not one ring mapped: {other:?}"),
    }
}

fn field(pid: u32, field: &str) -> String {
    status_field(pid, field).unwrap()
}

/// A layer that keeps a helper busy for a while: a large file of zeros compresses to little.
fn slow_image(env: &TestEnv) -> WrittenImage {
    let big = vec![0u8; 256 << 20];
    Image::new()
        .layer(
            Layer::new()
                .file("big", &big, 0o644)
                .compression(Compression::Zstd),
        )
        .write(&env.path().join("slow"))
}

#[test]
fn the_helper_runs_confined() {
    let env = TestEnv::new();
    let image = slow_image(&env);
    env.own(&image.path);
    let dest = env.dest("rootfs");
    let strata = env.spawn(args!["unpack", "--no-store", image.path, dest]);
    let helper = find_helper(
        strata.id(),
        Role::Applier,
        Instant::now() + Duration::from_secs(20),
    )
    .expect("no helper seen within 20 s");

    // Its own user, mount, network and IPC namespaces; the same PID namespace.
    for ns in ["user", "mnt", "net", "ipc"] {
        let ours = fs::read_link(format!("/proc/{}/ns/{ns}", strata.id())).unwrap();
        let its = fs::read_link(format!("/proc/{helper}/ns/{ns}")).unwrap();
        assert_ne!(ours, its, "the helper shares the {ns} namespace");
    }
    // The single-id map: the user is root inside, nobody else exists.
    let (uid, gid) = test_ids();
    let map = |file: &str| fs::read_to_string(format!("/proc/{helper}/{file}")).unwrap();
    assert_eq!(
        map("uid_map").split_whitespace().collect::<Vec<_>>(),
        ["0", &uid.to_string(), "1"]
    );
    assert_eq!(
        map("gid_map").split_whitespace().collect::<Vec<_>>(),
        ["0", &gid.to_string(), "1"]
    );
    assert_eq!(map("setgroups").trim(), "deny");
    // One mount: the target, as `/`. Nothing of the host is reachable.
    let mounts = map("mountinfo");
    assert_eq!(mounts.lines().count(), 1, "mounts: {mounts}");
    assert_eq!(
        mounts.split_whitespace().nth(4),
        Some("/"),
        "mounts: {mounts}"
    );
    // Capabilities: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, MKNOD, SETFCAP; empty bounding set.
    // (Read once reduced, or after 20 s: a loaded machine may show the helper between its
    // pivot and the end of its lockdown, with the full set a new user namespace gives.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while field(helper, "CapPrm") != "000000008800001b" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(field(helper, "CapEff"), "000000008800001b");
    assert_eq!(field(helper, "CapPrm"), "000000008800001b");
    assert_eq!(field(helper, "CapBnd"), "0000000000000000");
    assert_eq!(field(helper, "CapAmb"), "0000000000000000");
    assert_eq!(field(helper, "NoNewPrivs"), "1");
    // Then the seccomp filter (mode 2), its last step; what it refuses is tested in the
    // helper's own tests, under the same filter.
    while field(helper, "Seccomp") != "2" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(field(helper, "Seccomp"), "2");
    assert_eq!(field(helper, "Seccomp_filters"), "1");
    // The job maps its ring once it is locked down.
    while ring_mappings(helper).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Nothing inherited: besides stdin (the ring's announcements), stdout, stderr, the result
    // pipe and the layer's ring (read-only, and mapped so), only what the helper opened itself
    // inside its new root.
    for entry in fs::read_dir(format!("/proc/{helper}/fd")).unwrap() {
        let entry = entry.unwrap();
        let fd: u32 = entry.file_name().to_string_lossy().parse().unwrap();
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        match fd {
            0 | 2 | 3 | 6 => assert!(target.starts_with("pipe:"), "fd {fd} is {target}"),
            1 => assert_eq!(target, "/dev/null"),
            5 => {
                assert!(target.starts_with("/memfd:strata-ring"), "fd 5 is {target}");
                assert_eq!(access_mode(helper, 5), libc::O_RDONLY);
                assert_eq!(ring_mapping(helper), "r--s");
                // Sealed (strata maps it before it starts the helper): reopened for writing,
                // as anyone who can reach the descriptor could, it still takes no write.
                let written = match fs::OpenOptions::new().write(true).open(entry.path()) {
                    Ok(mut ring) => std::io::Write::write_all(&mut ring, b"x").is_ok(),
                    Err(_) => false,
                };
                assert!(!written, "the applier's ring takes writes");
            }
            _ => assert!(target == "/" || target == "/big", "stray fd {fd}: {target}"),
        }
    }

    let out = Output::from(strata.wait_with_output().unwrap());
    out.success();
    assert_eq!(
        fs::metadata(Path::new(&dest).join("big")).unwrap().len(),
        256 << 20
    );
}

#[test]
fn the_inflater_holds_nothing_but_its_pipes() {
    let env = TestEnv::new();
    let image = slow_image(&env);
    env.own(&image.path);
    let dest = env.dest("rootfs");
    let strata = env.spawn(args!["unpack", "--no-store", image.path, dest]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let inflater =
        find_helper(strata.id(), Role::Inflater, deadline).expect("no inflater seen within 20 s");
    let applier =
        find_helper(strata.id(), Role::Applier, deadline).expect("no applier seen within 20 s");

    // strata's own namespaces (it needs none to hold nothing), no capabilities, no privilege to
    // gain, and the wall up on every thread.
    for ns in ["user", "mnt", "net", "ipc"] {
        let ours = fs::read_link(format!("/proc/{}/ns/{ns}", strata.id())).unwrap();
        let its = fs::read_link(format!("/proc/{inflater}/ns/{ns}")).unwrap();
        assert_eq!(ours, its, "the inflater has a {ns} namespace of its own");
    }
    assert_eq!(field(inflater, "CapEff"), "0000000000000000");
    assert_eq!(field(inflater, "NoNewPrivs"), "1");
    let threads = fs::read_dir(format!("/proc/{inflater}/task")).unwrap();
    for task in threads {
        let status = task.unwrap().path().join("status");
        let status = fs::read_to_string(status).unwrap();
        assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
        assert!(status.contains("\nSeccomp_filters:\t1\n"), "{status}");
    }
    // Its fds: the compressed layer in, the ring's announcements out, stderr, the result
    // pipe, the ring it writes and the slots given back; nothing else.
    let fds: Vec<(u32, String)> = fs::read_dir(format!("/proc/{inflater}/fd"))
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let fd = entry.file_name().to_string_lossy().parse().unwrap();
            let target = fs::read_link(entry.path()).unwrap();
            (fd, target.to_string_lossy().into_owned())
        })
        .collect();
    let mut numbers: Vec<u32> = fds.iter().map(|(fd, _)| *fd).collect();
    numbers.sort();
    assert_eq!(numbers, [0, 1, 2, 3, 5, 6], "{fds:?}");
    for (fd, target) in &fds {
        match fd {
            5 => assert!(target.starts_with("/memfd:strata-ring"), "{fds:?}"),
            _ => assert!(target.starts_with("pipe:"), "{fds:?}"),
        }
    }
    assert_eq!(access_mode(inflater, 5), libc::O_RDWR);
    assert_eq!(ring_mapping(inflater), "rw-s");

    // Two rings, and no pipe between the helpers: strata reads the inflater's ring and writes
    // the applier's, hashing what it copies, which neither helper can write.
    let ring = |pid: u32| fs::metadata(format!("/proc/{pid}/fd/5")).unwrap().ino();
    let (inflated, applied) = (ring(inflater), ring(applier));
    assert_ne!(inflated, applied, "the inflater writes the applier's ring");
    let stream_out = &fds.iter().find(|(fd, _)| *fd == 1).unwrap().1;
    let applier_in = fs::read_link(format!("/proc/{applier}/fd/0")).unwrap();
    assert_ne!(applier_in.to_string_lossy(), *stream_out);
    let wanted = [(inflated, "r--s".to_owned()), (applied, "rw-s".to_owned())];
    let mut held = ring_mappings(strata.id());
    while !wanted.iter().all(|ring| held.contains(ring)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        held = ring_mappings(strata.id());
    }
    assert!(wanted.iter().all(|ring| held.contains(ring)), "{held:?}");

    let out = Output::from(strata.wait_with_output().unwrap());
    out.success();
}
