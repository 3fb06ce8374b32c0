//! Memory stays bounded whatever a layer holds: the peak RSS of strata and its helpers, as
//! GNU time reports it (the largest of strata and the processes it waited for), stays under
//! 64 MB for layers whose entries once cost memory each.

mod common;
use common::*;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

/// Runs `strata ARGS` under GNU time; returns its output and peak RSS in bytes. (Measured
/// there, not with getrusage here: a child forked from this test counts this test's memory
/// until it execs.)
fn unpack_measured(env: &TestEnv, args: &[&OsStr], rss_file: &Path) -> (Output, u64) {
    let strata = env.strata_command(args);
    let mut timed = env.command("/usr/bin/time");
    timed
        .args(["-f", "%M", "-o"])
        .arg(rss_file)
        .arg(strata.get_program())
        .args(strata.get_args());
    let out = run(&mut timed);
    let kib: u64 = fs::read_to_string(rss_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (out, kib * 1024)
}

#[test]
fn memory_stays_bounded_whatever_the_entries() {
    const LIMIT: u64 = 64 << 20;
    let env = TestEnv::new();
    // 100,000 whiteouts below parents that do not exist, with long names; then 60,000
    // device nodes (skipped, each reported) with long names.
    let parent = "nowhere/".repeat(50);
    let mut whiteouts = Layer::new()
        .long_names(LongNames::Pax)
        .file("kept", "x", 0o644);
    for i in 0..100_000 {
        whiteouts = whiteouts.whiteout(&format!("{parent}{}/gone{i}", i % 1000));
    }
    let device_dir = "devices/".repeat(120);
    let mut devices = Layer::new().long_names(LongNames::Pax);
    for i in 0..60_000 {
        devices = devices.char_device(format!("{device_dir}null{i}"), 1, 3);
    }
    let image = Image::new()
        .layer(whiteouts)
        .layer(devices)
        .write(&env.path().join("many"));
    env.own(&image.path);
    let store = env.store();
    let rss_file = env.path().join("rss");
    for mode in ["--store", "--no-store"] {
        let dest = env.dest(&format!("rootfs{mode}"));
        let mut args = vec![OsStr::new("unpack"), OsStr::new(mode)];
        if mode == "--store" {
            args.push(store.as_os_str());
        }
        args.extend([
            OsStr::new("--json"),
            image.path.as_os_str(),
            dest.as_os_str(),
        ]);
        let (out, peak) = unpack_measured(&env, &args, &rss_file);
        out.success();
        let report = out.json();
        assert_eq!(
            report["layers"][1]["skipped"].as_array().unwrap().len(),
            1000
        );
        assert_eq!(report["layers"][1]["skipped_omitted"], 59_000);
        assert!(
            out.stdout.len() < 1 << 20,
            "{mode}: a report of {} bytes",
            out.stdout.len()
        );
        assert!(peak < LIMIT, "{mode}: peak RSS {} MB", peak >> 20);
        assert!(peak > 1 << 20, "{mode}: implausible peak RSS {peak}");
    }
}
