//! strata-helper: the only process that touches the contents of snapshots and destinations.
//!
//! Started by `strata` with one JSON request argument and the result pipe on fd 3. Still
//! single-threaded, it enters its namespaces, pivots into the target directory, locks itself
//! down, does the one job asked (apply the layer on stdin, copy a tree, or clear one), and writes
//! one JSON line. It never execs, loads libraries or looks up names after the pivot.

mod confine;

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use nix::unistd::getppid;
use strata::extract::NeedsLowers;
use strata::protocol::{CONTROL_FD, Onto, Op, RESULT_FD, Reply, Request};
use strata::{extract, tree};

fn main() -> ExitCode {
    let (Some(mut results), Some(control)) = (adopt_fd(RESULT_FD), adopt_fd(CONTROL_FD)) else {
        eprintln!(
            "strata-helper: no pipes on fds {RESULT_FD} and {CONTROL_FD}; this program is run by strata"
        );
        return ExitCode::from(2);
    };
    let reply = run(&mut results, control).unwrap_or_else(|err| {
        match err
            .chain()
            .find_map(|cause| cause.downcast_ref::<NeedsLowers>())
        {
            Some(NeedsLowers(why)) => Reply::NeedsLowers {
                needs_lowers: why.clone(),
            },
            None => Reply::Error {
                error: format!("{err:#}"),
            },
        }
    });
    let failed = matches!(reply, Reply::Error { .. });
    let mut line = serde_json::to_vec(&reply).expect("replies serialize");
    line.push(b'\n');
    if results.write_all(&line).is_err() || failed {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The tree a copy reads: one directory, or the read-only overlay of several, mounted over the
/// top one (overlayfs resolves its layers before the mount covers them).
fn open_source(sources: &[PathBuf]) -> Result<OwnedFd> {
    let top = sources.first().context("a copy needs a source")?;
    if sources.len() > 1 {
        confine::mount_overlay(top, sources, None)?;
    }
    tree::open_dir(top).with_context(|| format!("opening {}", top.display()))
}

/// Takes ownership of an fd the parent installed, if it is open.
fn adopt_fd(fd: i32) -> Option<File> {
    // SAFETY: fcntl only inspects the descriptor; from_raw_fd takes ownership of an open fd
    // that nothing else in this process uses.
    unsafe { (libc::fcntl(fd, libc::F_GETFD) >= 0).then(|| File::from_raw_fd(fd)) }
}

fn run(results: &mut File, control: File) -> Result<Reply> {
    let parent = getppid();
    let request = std::env::args().nth(1).context("no request argument")?;
    let request: Request = serde_json::from_str(&request).context("reading the request")?;
    // SAFETY: umask only changes this process's file creation mask; modes are set explicitly.
    unsafe { libc::umask(0) };
    confine::close_fds_from(CONTROL_FD + 1)?;
    confine::enter_user_namespace(&request.idmap, results, control)?;
    confine::make_mounts_private()?;
    let overlay = match &request.op {
        Op::Apply {
            onto: Onto::Overlay(overlay),
            ..
        } => Some(overlay),
        _ => None,
    };
    if let Some(overlay) = overlay {
        let upper = Some((overlay.upper.as_path(), overlay.work.as_path()));
        confine::mount_overlay(&request.root, &overlay.lowers, upper)?;
    }
    // Trees outside the root are opened before the pivot hides them: the source of a copy
    // and the overlay's lower layers, which Landlock lets the helper read; a second tree to
    // apply to, and the overlay's upper directory, which it may write.
    let open =
        |dir: &Path| tree::open_dir(dir).with_context(|| format!("opening {}", dir.display()));
    let (overlay_upper, overlay_lowers) = match overlay {
        Some(overlay) => (
            Some(open(&overlay.upper)?),
            overlay
                .lowers
                .iter()
                .map(|dir| open(dir))
                .collect::<Result<Vec<_>>>()?,
        ),
        None => (None, Vec::new()),
    };
    let (source, second_root) = match &request.op {
        Op::Copy { sources } => (Some(open_source(sources)?), None),
        Op::Apply {
            also_to: Some(dir), ..
        } => (None, Some(open(dir)?)),
        _ => (None, None),
    };
    confine::pivot_into(&request.root)?;
    let writable: Vec<_> = [&second_root, &overlay_upper]
        .into_iter()
        .flatten()
        .map(|fd| fd.as_fd())
        .collect();
    let readable: Vec<_> = source
        .iter()
        .chain(&overlay_lowers)
        .map(|fd| fd.as_fd())
        .collect();
    confine::lock_down(&readable, &writable, parent)?;
    let root = tree::open_dir(Path::new("/")).context("opening the new root")?;

    match request.op {
        Op::Apply {
            compression, onto, ..
        } => {
            // SAFETY: fd 0 is the layer pipe the parent set up; nothing else here reads stdin.
            let stdin = unsafe { File::from_raw_fd(0) };
            // Small reads: the kernel copies each into a buffer still in the CPU's cache.
            // Reading 200 MB through a 1 MiB buffer took four times the CPU (measured).
            let input = BufReader::with_capacity(64 * 1024, stdin);
            let lowers: Vec<_> = overlay_lowers.iter().map(|fd| fd.as_fd()).collect();
            // The overlay's upper directory is open exactly when the layer goes onto one.
            let main = match (&overlay_upper, onto) {
                (Some(upper), _) => extract::Tree::Overlay {
                    merged: root.as_fd(),
                    upper: upper.as_fd(),
                    lowers: &lowers,
                },
                (None, Onto::Parentless) => extract::Tree::Parentless(root.as_fd()),
                (None, _) => extract::Tree::Plain(root.as_fd()),
            };
            let trees: Vec<_> = std::iter::once(main)
                .chain(
                    second_root
                        .as_ref()
                        .map(|fd| extract::Tree::Plain(fd.as_fd())),
                )
                .collect();
            let applied =
                extract::apply_layer(input, compression, &trees, request.idmap.mapped_ids())?;
            Ok(Reply::Applied(applied))
        }
        Op::Copy { .. } => {
            let source = source.expect("opened above for Op::Copy");
            tree::copy(source.as_fd(), root.as_fd())?;
            Ok(Reply::Done { done: true })
        }
        Op::Clear => {
            tree::clear(root.as_fd())?;
            Ok(Reply::Done { done: true })
        }
    }
}
