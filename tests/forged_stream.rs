//! An attack on the diff ID: a compromised decoder. This program plays the inflater when a
//! wrapper given to strata as its helper starts it in that role: it ignores the blob, writes a
//! tar stream of its own choosing into its ring, and replies that it inflated the layer, with
//! the diff ID the image's config lists. strata must refuse the layer, naming the digest of
//! the stream the applier was given, and commit nothing.
//!
//! A test without libtest's harness (`harness = false`): as the inflater, this program's
//! stdout is the ring's announcement pipe, where the harness would print.

mod common;
use common::*;

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;

/// Set by the wrapper when it starts this program as the inflater.
const FORGE: &str = "STRATA_TEST_FORGE";

fn main() {
    if std::env::var_os(FORGE).is_some() {
        forge();
        return;
    }
    // Takes what libtest would of `cargo test`'s arguments: a name filter, `--list`.
    let name = "a_decoder_that_sends_its_own_stream_cannot_name_it";
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        println!("{name}: test");
        return;
    }
    let mut filters = args.iter().filter(|arg| !arg.starts_with('-')).peekable();
    if filters.peek().is_some() && !filters.any(|filter| name.contains(filter.as_str())) {
        return;
    }
    a_decoder_that_sends_its_own_stream_cannot_name_it();
    println!("test {name} ... ok");
}

/// The stream the forger sends in place of the layer's.
fn forged_stream() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let data = b"not in the image\n";
    let mut header = tar::Header::new_ustar();
    header.set_path("etc/forged").unwrap();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, &data[..]).unwrap();
    builder.into_inner().unwrap()
}

/// The inflater's part, forged: its ring as the parent installs it (the memory on fd 5, the
/// announcements on stdout, slots given back on fd 6), and its reply on fd 3.
fn forge() {
    // SAFETY: the descriptors the parent installed for the inflater; nothing else uses them.
    let (memory, announce, given_back, mut results) = unsafe {
        (
            OwnedFd::from_raw_fd(5),
            File::from_raw_fd(1),
            File::from_raw_fd(6),
            File::from_raw_fd(3),
        )
    };
    let (mut filler, mut announcer) = strata_ring::writer(&memory, announce, given_back).unwrap();
    let stream = forged_stream();
    let mut rest = &stream[..];
    loop {
        let filled = filler
            .fill(|slot| std::io::Read::read(&mut rest, slot))
            .unwrap()
            .unwrap();
        if filled.is_empty() {
            break;
        }
        announcer.announce(filled).unwrap();
    }
    drop(announcer);
    let claimed = std::env::var("STRATA_TEST_CLAIMED").unwrap();
    let reply = json!({ "inflated": stream.len(), "diff_id": claimed });
    writeln!(results, "{reply}").unwrap();
}

fn a_decoder_that_sends_its_own_stream_cannot_name_it() {
    let env = TestEnv::new();
    let image = Image::new()
        .layer(
            Layer::new()
                .file("etc/data", b"the layer\n", 0o644)
                .compression(Compression::Gzip),
        )
        .write(&env.path().join("img"));
    env.own(&image.path);
    let real_diff_id = &image.layers[0].diff_id;

    // The test uid must reach this program: a copy beside the image.
    let forger = env.path().join("forger");
    fs::copy(std::env::current_exe().unwrap(), &forger).unwrap();
    let helper = strata_bin().with_file_name("strata-helper");
    let wrapper = env.path().join("helper-wrapper");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  '{{\"inflate\"'*) {FORGE}=1 STRATA_TEST_CLAIMED={real_diff_id} \
         exec {} \"$@\" ;;\nesac\nexec {} \"$@\"\n",
        forger.display(),
        helper.display()
    );
    fs::write(&wrapper, script).unwrap();
    for program in [&forger, &wrapper] {
        fs::set_permissions(program, fs::Permissions::from_mode(0o755)).unwrap();
        env.own(program);
    }

    let dest = env.dest("rootfs");
    let store = env.store();
    let out = run(env
        .strata_command(args!["unpack", "--store", &store, &image.path, &dest])
        .env("STRATA_HELPER", &wrapper));
    let forged = sha256(&forged_stream());
    assert_mentions(out.failure(), &["diff ID mismatch", real_diff_id, &forged]);
    assert!(fs::symlink_metadata(&dest).is_err(), "DEST was left behind");
    for chain_id in [real_diff_id, &forged] {
        let snapshot = snapshot_dir(&env, chain_id);
        assert!(!snapshot.exists(), "{} was committed", snapshot.display());
    }

    // With the real inflater, the same store takes the image.
    env.unpack(&image.path, &dest).success();
    assert_eq!(
        fs::read(Path::new(&dest).join("etc/data")).unwrap(),
        b"the layer\n"
    );
    assert!(!dest.join("etc/forged").exists());
}
