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

/// The most RSS strata and its helpers may take.
const LIMIT: u64 = 64 << 20;

#[test]
fn memory_stays_bounded_whatever_the_entries() {
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

/// A layer of 30,000 directories with a file in each, whose paths are 3 KB long: what
/// the applier keeps of each name it wrote (for whiteouts to spare, for the writer threads,
/// for the directories' modes and times at the end) may not grow with the names' length. Kept
/// as paths, they took over 200 MB. The directories' modes and times are still as the image
/// says, those set early too, and a named directory changed again later keeps its time.
#[test]
fn memory_stays_bounded_whatever_the_names() {
    let env = TestEnv::new();
    let dir = format!("{}/", "d".repeat(200)).repeat(14);
    let mut layer = Layer::new()
        .long_names(LongNames::Pax)
        .entry(Entry::dir("early/").mtime(1_000));
    let mut made = String::new();
    for component in dir.split_inclusive('/') {
        made.push_str(component);
        layer = layer.dir(&made, 0o755);
    }
    let name = "f".repeat(200);
    for i in 0..30_000 {
        layer = layer
            .entry(
                Entry::dir(format!("{dir}{name}{i}/"))
                    .mode(0o750)
                    .mtime(2_000),
            )
            .file(format!("{dir}{name}{i}/f"), "", 0o644);
    }
    layer = layer.file("early/late", "", 0o644);
    // A whiteout of one of them in a later layer, for the store to have a chain.
    let image = Image::new()
        .layer(layer)
        .layer(Layer::new().whiteout(&format!("{dir}{name}0")))
        .write(&env.path().join("long"));
    env.own(&image.path);
    let rss_file = env.path().join("rss");
    let dest = env.dest("rootfs");
    let args = [
        OsStr::new("unpack"),
        OsStr::new("--no-store"),
        image.path.as_os_str(),
        dest.as_os_str(),
    ];
    let (out, peak) = unpack_measured(&env, &args, &rss_file);
    out.success();
    assert!(peak < LIMIT, "peak RSS {} MB", peak >> 20);
    let tree = Tree::scan(&dest);
    assert_eq!(tree.node("early").mtime.0, 1_000);
    let made: Vec<_> = tree
        .iter()
        .filter(|(path, node)| path.starts_with(&dir) && node.kind == Kind::Dir)
        .collect();
    assert_eq!(made.len(), 29_999);
    for (path, node) in made {
        assert_eq!((node.mode, node.mtime.0), (0o750, 2_000), "{path}");
    }
}
