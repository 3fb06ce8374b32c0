//! strata-helper: the only program that touches layer contents, snapshots and destinations.
//!
//! Started by `strata` with one JSON argument, its role, and the result pipe on fd 3, it plays
//! one of two roles and writes one JSON line:
//! - the inflater ([`inflate`]) decompresses the layer on stdin into a ring the parent reads,
//!   behind a wall that leaves it nothing but its pipes;
//! - a job: still single-threaded, it enters its namespaces, pivots into the target directory,
//!   locks itself down, and does the one job asked (apply the tar stream in its ring, copy a
//!   tree, clear one, or look a user up in its `/etc/passwd`). It never execs, loads libraries or looks up names after the pivot.

mod at;
mod chunks;
mod confine;
mod extract;
mod inflate;
mod seccomp;
mod tree;
mod users;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use nix::unistd::getppid;
use strata_protocol::{
    CONTROL_FD, GIVEN_BACK_FD, NeedsLowers, Onto, Op, RESULT_FD, RING_FD, Reply, Request, Role,
    Whiteouts,
};

fn main() -> ExitCode {
    let (Some(mut results), Some(control)) = (adopt_fd(RESULT_FD), adopt_fd(CONTROL_FD)) else {
        eprintln!(
            "strata-helper: no pipes on fds {RESULT_FD} and {CONTROL_FD}; this program is run by strata"
        );
        return ExitCode::from(2);
    };
    let reply = run(&mut results, control).unwrap_or_else(|err| {
        if let Some(NeedsLowers(why)) = err.chain().find_map(|cause| cause.downcast_ref()) {
            Reply::NeedsLowers {
                needs_lowers: why.clone(),
            }
        } else if err.is::<extract::CutShort>() {
            Reply::CutShort {
                cut_short: format!("{err:#}"),
            }
        } else {
            Reply::Error {
                error: format!("{err:#}"),
            }
        }
    });
    let failed = matches!(reply, Reply::Error { .. } | Reply::CutShort { .. });
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

/// The layer's ring (see `strata-ring`) as the parent installed it: the shared memory, the
/// announcements' pipe on fd `announcements` (stdin for the applier, stdout for the
/// inflater), and the pipe slots are given back on.
fn adopt_ring(announcements: i32) -> Result<(OwnedFd, File, File)> {
    let adopt = |fd| adopt_fd(fd).with_context(|| format!("no fd {fd} for the layer's ring"));
    Ok((
        adopt(RING_FD)?.into(),
        adopt(announcements)?,
        adopt(GIVEN_BACK_FD)?,
    ))
}

/// Takes ownership of an fd the parent installed, if it is open.
fn adopt_fd(fd: i32) -> Option<File> {
    // SAFETY: fcntl only inspects the descriptor; from_raw_fd takes ownership of an open fd
    // that nothing else in this process uses.
    unsafe { (libc::fcntl(fd, libc::F_GETFD) >= 0).then(|| File::from_raw_fd(fd)) }
}

fn run(results: &mut File, control: File) -> Result<Reply> {
    let role = std::env::args().nth(1).context("no role argument")?;
    match serde_json::from_str(&role).context("reading the role")? {
        Role::Inflate(declared) => {
            drop(control);
            confine::close_fds_from(GIVEN_BACK_FD + 1)?;
            let (ring, announce, given_back) = adopt_ring(1)?;
            let ring = strata_ring::writer(&ring, announce, given_back)
                .context("mapping the layer's ring")?;
            // SAFETY: fd 0 is the pipe the parent set up; nothing else here uses it.
            let stdin = unsafe { File::from_raw_fd(0) };
            // Small reads: the kernel copies each into a buffer still in the CPU's cache.
            // Reading 200 MB through a 1 MiB buffer took four times the CPU (measured).
            let input = inflate::AlignedReader::new(stdin, 64 * 1024);
            inflate::inflate(input, ring, declared)
        }
        Role::Job(request) => run_job(&request, results, control),
    }
}

/// In three phases: the namespaces, and what the job needs outside the root, opened before
/// the pivot hides it; the pivot and lockdown; the job.
fn run_job(request: &Request, results: &mut File, control: File) -> Result<Reply> {
    let parent = getppid();
    // SAFETY: umask only changes this process's file creation mask; modes are set explicitly.
    unsafe { libc::umask(0) };
    confine::close_fds_from(GIVEN_BACK_FD + 1)?;
    confine::enter_user_namespace(&request.idmap, results, control)?;
    confine::make_mounts_private()?;
    let job = Job::open(request)?;

    confine::pivot_into(&request.root)?;
    confine::lock_down(job.reach(), &job.readable(), &job.writable(), parent)?;
    let root = tree::open_dir(Path::new("/")).context("opening the new root")?;

    job.run(root.as_fd(), request.idmap.mapped_ids())
}

/// The most of `/etc/passwd` or `/etc/group` read: a user database is kilobytes.
const USER_FILE_LIMIT: u64 = 1 << 20;

/// The job asked, with the trees outside the root it needs, open.
enum Job {
    Apply {
        onto: OpenOnto,
        /// A second tree to write, which Landlock lets the helper write.
        also_to: Option<OwnedFd>,
        whiteouts: Whiteouts,
    },
    Copy {
        /// Which Landlock lets the helper read.
        source: OwnedFd,
    },
    Clear,
    LookUpUser {
        user: String,
    },
}

/// Where a layer goes, with the overlay's directories open.
enum OpenOnto {
    Plain,
    Parentless,
    /// Mounted at the root; Landlock lets the helper write `upper` and read `lowers`.
    Overlay {
        upper: OwnedFd,
        lowers: Vec<OwnedFd>,
    },
}

impl Job {
    /// Mounts the overlay a layer goes onto, and opens the trees the job needs outside the
    /// root, before the pivot hides them.
    fn open(request: &Request) -> Result<Job> {
        let open =
            |dir: &Path| tree::open_dir(dir).with_context(|| format!("opening {}", dir.display()));
        Ok(match &request.op {
            Op::Apply {
                onto,
                also_to,
                whiteouts,
            } => {
                let onto = match onto {
                    Onto::Plain => OpenOnto::Plain,
                    Onto::Parentless => OpenOnto::Parentless,
                    Onto::Overlay(overlay) => {
                        let upper = Some((overlay.upper.as_path(), overlay.work.as_path()));
                        confine::mount_overlay(&request.root, &overlay.lowers, upper)?;
                        OpenOnto::Overlay {
                            upper: open(&overlay.upper)?,
                            lowers: overlay
                                .lowers
                                .iter()
                                .map(|dir| open(dir))
                                .collect::<Result<_>>()?,
                        }
                    }
                };
                let also_to = also_to.as_deref().map(open).transpose()?;
                Job::Apply {
                    onto,
                    also_to,
                    whiteouts: *whiteouts,
                }
            }
            Op::Copy { sources } => Job::Copy {
                source: open_source(sources)?,
            },
            Op::Clear => Job::Clear,
            Op::LookUpUser { user } => Job::LookUpUser { user: user.clone() },
        })
    }

    /// What the job may do to the root.
    fn reach(&self) -> confine::Reach {
        match self {
            Job::LookUpUser { .. } => confine::Reach::Read,
            Job::Apply { .. } | Job::Copy { .. } | Job::Clear => confine::Reach::Write,
        }
    }

    /// What the job reads outside the root.
    fn readable(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Job::Apply {
                onto: OpenOnto::Overlay { lowers, .. },
                ..
            } => lowers.iter().map(|fd| fd.as_fd()).collect(),
            Job::Copy { source } => vec![source.as_fd()],
            _ => Vec::new(),
        }
    }

    /// What the job writes outside the root.
    fn writable(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Job::Apply { onto, also_to, .. } => {
                let upper = match onto {
                    OpenOnto::Overlay { upper, .. } => Some(upper),
                    _ => None,
                };
                upper
                    .into_iter()
                    .chain(also_to)
                    .map(|fd| fd.as_fd())
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Does the job in the tree at `root`; `mapped_ids` is how many ids the namespace maps.
    fn run(self, root: BorrowedFd, mapped_ids: u64) -> Result<Reply> {
        match self {
            Job::Apply {
                onto,
                also_to,
                whiteouts,
            } => {
                let (ring, announced, give_back) = adopt_ring(0)?;
                let input = strata_ring::Reader::new(&ring, announced, give_back)
                    .context("mapping the layer's ring")?;
                let lowers: Vec<_> = match &onto {
                    OpenOnto::Overlay { lowers, .. } => {
                        lowers.iter().map(|fd| fd.as_fd()).collect()
                    }
                    _ => Vec::new(),
                };
                let main = match &onto {
                    OpenOnto::Plain => extract::Tree::Plain(root),
                    OpenOnto::Parentless => extract::Tree::Parentless(root),
                    OpenOnto::Overlay { upper, .. } => extract::Tree::Overlay {
                        merged: root,
                        upper: upper.as_fd(),
                        lowers: &lowers,
                    },
                };
                let trees: Vec<_> = std::iter::once(main)
                    .chain(also_to.as_ref().map(|fd| extract::Tree::Plain(fd.as_fd())))
                    .collect();
                let applied = extract::apply_layer(input, &trees, mapped_ids, whiteouts)?;
                Ok(Reply::Applied(applied))
            }
            Job::Copy { source } => {
                tree::copy(source.as_fd(), root)?;
                Ok(Reply::Done { done: true })
            }
            Job::Clear => {
                tree::clear(root)?;
                Ok(Reply::Done { done: true })
            }
            Job::LookUpUser { user } => {
                let passwd = at::read_small_file(root, Path::new("etc/passwd"), USER_FILE_LIMIT)?;
                let group = at::read_small_file(root, Path::new("etc/group"), USER_FILE_LIMIT)?;
                let user = users::look_up(&user, &passwd, &group)?;
                Ok(Reply::User { user })
            }
        }
    }
}
