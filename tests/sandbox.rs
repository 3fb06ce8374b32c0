//! The helper's sandbox, observed from outside while it works: namespaces, id map, mounts,
//! capabilities, no_new_privs and open fds, read from /proc of the live helper process.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The `strata-helper` whose parent is `parent`, once it has entered its namespaces.
fn find_helper(parent: u32, deadline: Instant) -> Option<u32> {
    while Instant::now() < deadline {
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let is_child = status.lines().any(|l| l == format!("PPid:\t{parent}"));
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_helper = String::from_utf8_lossy(&cmdline).contains("strata-helper");
            // The uid map is written once the helper has unshared: then it is worth inspecting.
            let mapped = fs::read_to_string(format!("/proc/{pid}/uid_map"))
                .is_ok_and(|m| m.split_whitespace().next() == Some("0"));
            if is_child && is_helper && mapped {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:\t")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {field} in status of {pid}"))
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
    let helper = find_helper(strata.id(), Instant::now() + Duration::from_secs(20))
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
    while status_field(helper, "CapPrm") != "000000008800001b" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status_field(helper, "CapEff"), "000000008800001b");
    assert_eq!(status_field(helper, "CapPrm"), "000000008800001b");
    assert_eq!(status_field(helper, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(helper, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(helper, "NoNewPrivs"), "1");
    // Then the seccomp filter (mode 2), its last step; what it refuses is tested in the
    // helper's own tests, under the same filter.
    while status_field(helper, "Seccomp") != "2" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status_field(helper, "Seccomp"), "2");
    assert_eq!(status_field(helper, "Seccomp_filters"), "1");
    // Nothing inherited: besides stdin (the layer), stdout, stderr and the result pipe, only
    // what the helper opened itself inside its new root.
    for entry in fs::read_dir(format!("/proc/{helper}/fd")).unwrap() {
        let entry = entry.unwrap();
        let fd: u32 = entry.file_name().to_string_lossy().parse().unwrap();
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        match fd {
            0 | 2 | 3 => assert!(target.starts_with("pipe:"), "fd {fd} is {target}"),
            1 => assert_eq!(target, "/dev/null"),
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
