//! Running `strata unpack` both ways, with a store and without: both must give the same tree.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::run::{Output, TestEnv};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Store,
    NoStore,
    /// A store of its own that extracts layers side by side (`--jobs 4`): with the overlay
    /// snapshotter, all but the first into parentless snapshots.
    SideBySide,
}

/// A DEST path that no other unpack in this test binary uses. Every DEST name starts with
/// `rootfs`, which is how the escape tests tell DEST from the rest of the scratch dir.
pub fn fresh_dest(env: &TestEnv, mode: Mode) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let label = match mode {
        Mode::Store => "store",
        Mode::NoStore => "nostore",
        Mode::SideBySide => "side",
    };
    env.dest(&format!("rootfs-{label}-{n}"))
}

/// The store [`Mode::SideBySide`] unpacks use, beside the env's own.
pub fn side_by_side_store(env: &TestEnv) -> PathBuf {
    env.path().join("side-by-side-store")
}

/// `strata unpack [--store S | --no-store | --store S2 --jobs 4] --json EXTRA… IMAGE DEST` as
/// the env's user.
pub fn run_unpack(env: &TestEnv, mode: Mode, extra: &[&str], image: &OsStr, dest: &Path) -> Output {
    if mode == Mode::Store && extra.is_empty() {
        return env.unpack(image, dest);
    }
    let mut args: Vec<OsString> = vec!["unpack".into()];
    match mode {
        Mode::Store => args.extend(["--store".into(), env.store().into_os_string()]),
        Mode::NoStore => args.push("--no-store".into()),
        Mode::SideBySide => {
            args.extend(["--store".into(), side_by_side_store(env).into_os_string()]);
            args.extend(["--jobs".into(), "4".into()]);
        }
    }
    args.push("--json".into());
    args.extend(extra.iter().map(OsString::from));
    args.extend([image.to_owned(), dest.as_os_str().to_owned()]);
    env.strata(args)
}
