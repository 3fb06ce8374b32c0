//! Attacks by a compromised decoder. This program plays the inflater when a wrapper given to
//! strata as its helper starts it in that role, and attacks as the wrapper says:
//! - `claim`: it ignores the blob, writes a tar stream of its own choosing into its ring, and
//!   replies that it inflated the layer, with the diff ID the image's config lists. strata must
//!   refuse the layer, naming the digest of the stream the applier was given, and commit
//!   nothing.
//! - `stall`: it announces a slot out of order, then neither reads its blob nor exits. strata
//!   must stop it and fail, not wait forever on a pipe it no longer reads.
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

/// Set by the wrapper when it starts this program as the inflater: which attack.
const FORGE: &str = "STRATA_TEST_FORGE";

fn main() {
    match std::env::var(FORGE).as_deref() {
        Ok("claim") => return claim(),
        Ok("stall") => return stall(),
        _ => {}
    }
    let tests: [(&str, fn()); 2] = [
        (
            "a_decoder_that_sends_its_own_stream_cannot_name_it",
            a_decoder_that_sends_its_own_stream_cannot_name_it,
        ),
        (
            "a_decoder_that_stalls_after_a_bad_announcement_is_stopped",
            a_decoder_that_stalls_after_a_bad_announcement_is_stopped,
        ),
    ];
    // Takes what libtest would of `cargo test`'s arguments: name filters, `--list`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|arg| !arg.starts_with('-')).collect();
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|filter| name.contains(filter.as_str())) {
            continue;
        }
        if args.iter().any(|arg| arg == "--list") {
            println!("{name}: test");
            continue;
        }
        test();
        println!("test {name} ... ok");
    }
}

/// The ring as the parent installs it for an inflater (the memory on fd 5, the announcements
/// on stdout, slots given back on fd 6), and its result pipe (fd 3).
fn inflaters_fds() -> (OwnedFd, File, File, File) {
    // SAFETY: the descriptors the parent installed for the inflater; nothing else uses them.
    unsafe {
        (
            OwnedFd::from_raw_fd(5),
            File::from_raw_fd(1),
            File::from_raw_fd(6),
            File::from_raw_fd(3),
        )
    }
}

/// `stall`: slot 1 announced where slot 0 is due; then nothing, for an hour.
fn stall() {
    let (_memory, mut announce, _given_back, _results) = inflaters_fds();
    let word = (1u64 << 32 | 100).to_le_bytes();
    announce.write_all(&word).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3600));
}

/// Writes a wrapper for `env` that starts the real helper, but this program, doing `attack`,
/// as the inflater (with `claimed` for it to claim); returns its path.
fn forging_helper(env: &TestEnv, attack: &str, claimed: &str) -> std::path::PathBuf {
    // The test uid must reach this program: a copy in the scratch dir.
    let forger = env.path().join("forger");
    fs::copy(std::env::current_exe().unwrap(), &forger).unwrap();
    let helper = strata_bin().with_file_name("strata-helper");
    let wrapper = env.path().join("helper-wrapper");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  '{{\"inflate\"'*) {FORGE}={attack} \
         STRATA_TEST_CLAIMED={claimed} exec {} \"$@\" ;;\nesac\nexec {} \"$@\"\n",
        forger.display(),
        helper.display()
    );
    fs::write(&wrapper, script).unwrap();
    for program in [&forger, &wrapper] {
        fs::set_permissions(program, fs::Permissions::from_mode(0o755)).unwrap();
        env.own(program);
    }
    wrapper
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

/// `claim`: the forged stream, and a reply that claims the layer's diff ID.
fn claim() {
    let (memory, announce, given_back, mut results) = inflaters_fds();
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

    let wrapper = forging_helper(&env, "claim", real_diff_id);

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

fn a_decoder_that_stalls_after_a_bad_announcement_is_stopped() {
    let env = TestEnv::new();
    // Incompressible, and larger than the pipe the blob is sent through: the sender blocks
    // unless the stalled inflater is stopped.
    let mut noise = vec![0u8; 4 << 20];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for byte in noise.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let image = Image::new()
        .layer(
            Layer::new()
                .file("noise", &noise, 0o644)
                .compression(Compression::Gzip),
        )
        .write(&env.path().join("img"));
    env.own(&image.path);
    let wrapper = forging_helper(&env, "stall", "-");
    let dest = env.dest("rootfs");
    let started = std::time::Instant::now();
    let out = run(env
        .strata_command(args!["unpack", "--no-store", &image.path, &dest])
        .env("STRATA_HELPER", &wrapper));
    assert_mentions(
        out.failure(),
        &["layer 1", "announced where slot 0 was due"],
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "strata waited on the stalled inflater"
    );
    assert!(fs::symlink_metadata(&dest).is_err(), "DEST was left behind");
}
