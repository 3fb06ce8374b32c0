//! The parent's side of the helper: find it, start it in a role, install its id maps, feed it
//! a layer (through an inflater when the blob is compressed), and turn the one-line replies (or
//! deaths) into a result.

mod blob;
mod idmap;
mod pass;
mod verdict;

pub use blob::Blob;
pub use idmap::{IdMap, IdMapMode, IdRange, subordinate};
pub use verdict::AppliedLayer;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strata_ring::{Announcer, Filler};

use crate::protocol::{
    CONTROL_FD, ExecUser, GIVEN_BACK_FD, MAPS_READY, MAPS_WANTED, Onto, Op, RESULT_FD, RING_FD,
    Reply, Request, Role, Whiteouts,
};
use pass::{Passed, Relay, Relayed};
use verdict::{Source, verdict};

/// The most of the helper's reply that is read.
const REPLY_LIMIT: u64 = 4 << 20;

/// The `strata-helper` program: `$STRATA_HELPER`, else the file beside the running binary.
#[derive(Clone, Debug)]
pub struct Helper {
    program: PathBuf,
    idmap: IdMap,
}

impl Helper {
    /// The helper program, its jobs to run with `idmap`.
    pub fn locate(idmap: IdMap) -> Result<Helper> {
        let program = match std::env::var_os("STRATA_HELPER") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()
                .context("finding the running strata binary")?
                .with_file_name("strata-helper"),
        };
        if !program.is_file() {
            bail!(
                "strata-helper not found at {} (set STRATA_HELPER to its path)",
                program.display()
            );
        }
        Ok(Helper { program, idmap })
    }

    /// The ids its namespaces map.
    pub fn idmap(&self) -> IdMap {
        self.idmap
    }

    /// The same program with another id map.
    pub fn with_idmap(&self, idmap: IdMap) -> Helper {
        Helper {
            program: self.program.clone(),
            idmap,
        }
    }

    /// The helper for a run asked to use `mode`, on a store whose snapshots were made with
    /// `recorded` (a store never mixes two mappings). In auto mode without a recorded mapping,
    /// subordinate ids are tried on `probe_dir` (an empty directory); if they are missing or do
    /// not work, the single map is used and the reason comes back as a warning.
    pub fn choose(
        mode: IdMapMode,
        recorded: Option<IdMap>,
        probe_dir: &Path,
    ) -> Result<(Helper, Option<String>)> {
        let single = Helper::locate(IdMap::Single)?;
        match (mode, recorded) {
            (IdMapMode::Single, Some(map @ IdMap::Subordinate { .. })) => bail!(
                "the store's snapshots were made with the {map} map; --idmap single would mix \
                 two mappings in one store (use another --store)"
            ),
            (IdMapMode::Single, _) => Ok((single, None)),
            (IdMapMode::Auto, Some(map)) => Ok((single.with_idmap(map), None)),
            (IdMapMode::Auto, None) => match subordinate() {
                Err(why) => Ok((single, Some(format!("using the single-id map: {why}")))),
                Ok(map) => {
                    let candidate = single.with_idmap(map);
                    match candidate.clear(probe_dir) {
                        Ok(()) => Ok((candidate, None)),
                        Err(err) => {
                            let why = format!(
                                "subordinate ids do not work ({err:#}); using the single-id map"
                            );
                            Ok((single, Some(why)))
                        }
                    }
                }
            },
        }
    }

    /// Applies the layer `blob` `onto` `root`, and to the directory `also_to` in the same
    /// pass, and returns the applier's account with the stream's diff ID. An error sending
    /// `blob` (a digest or size mismatch, detected while streaming) wins over what the helpers
    /// made of the cut stream. A layer [`Onto::Parentless`] that needs the layers below fails
    /// with [`crate::protocol::NeedsLowers`].
    pub fn apply(
        &self,
        root: &Path,
        onto: Onto,
        also_to: Option<&Path>,
        blob: &Blob,
    ) -> Result<AppliedLayer> {
        self.start_apply(root, onto, also_to)?
            .set_up_and_apply(blob)
    }

    /// Extracts the plain tar archive `blob` into `root`, as [`Helper::apply`] applies a layer
    /// but for what `.wh.` names mean: here they are files like any other.
    pub fn extract(&self, root: &Path, blob: &Blob) -> Result<AppliedLayer> {
        let op = Op::Apply {
            onto: Onto::Plain,
            also_to: None,
            whiteouts: Whiteouts::Keep,
        };
        self.start_with_ring(root, op)?.set_up_and_apply(blob)
    }

    /// [`Helper::apply`] in steps: a helper started now is set up (namespaces, id maps,
    /// lockdown; [`Started::set_up`]) and fed its layer ([`Started::apply`]) later, so that
    /// its start can overlap the layer before.
    pub fn start_apply(&self, root: &Path, onto: Onto, also_to: Option<&Path>) -> Result<Started> {
        let op = Op::Apply {
            onto,
            also_to: also_to.map(Path::to_path_buf),
            whiteouts: Whiteouts::Apply,
        };
        self.start_with_ring(root, op)
    }

    /// Starts an apply job `op` in `root`, with the ring it will read its stream from. The
    /// parent maps the ring first, which seals it against every other writer: the helper gets
    /// a ring no one but the parent can ever write.
    fn start_with_ring(&self, root: &Path, op: Op) -> Result<Started> {
        let ring = NewRing::create()?;
        let writer = strata_ring::writer(&ring.writable, ring.announce, ring.given_back)
            .context("mapping the layer's ring")?;
        let fds = [ring.readable.as_raw_fd(), ring.give_back.as_raw_fd()];
        let mut started = self.start(
            &self.job(root, op),
            ring.announced.into(),
            Stdio::null(),
            Some(fds),
        )?;
        started.ring = Some(writer);
        Ok(started)
    }

    /// Copies the tree `sources` stands for (one directory, or the overlay of several, top
    /// first) into the empty directory `root`.
    pub fn copy(&self, sources: &[PathBuf], root: &Path) -> Result<()> {
        let op = Op::Copy {
            sources: sources.to_vec(),
        };
        self.run_to_done(&self.job(root, op))
    }

    /// Looks `user` (an image config's `User`) up in the `/etc/passwd` and `/etc/group` of
    /// the rootfs `root`: a helper reads them, as the parent never opens a path from a layer.
    pub fn look_up_user(&self, root: &Path, user: &str) -> Result<ExecUser> {
        let op = Op::LookUpUser {
            user: user.to_owned(),
        };
        match self.run(&self.job(root, op))? {
            Reply::User { user } => Ok(user),
            other => bail!("the helper gave an unexpected reply: {other:?}"),
        }
    }

    /// Empties `root` (whatever modes and owners its contents have).
    pub fn clear(&self, root: &Path) -> Result<()> {
        self.run_to_done(&self.job(root, Op::Clear))
    }

    /// Empties and removes `dir`; a missing `dir` is fine. An empty one needs no helper (so
    /// cleaning up still works when the helper cannot start).
    pub fn remove_dir(&self, dir: &Path) -> Result<()> {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() != Some(libc::ENOTEMPTY) => {
                return Err(e).with_context(|| format!("removing {}", dir.display()));
            }
            Err(_) => {}
        }
        self.clear(dir)?;
        std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
    }

    fn job(&self, root: &Path, op: Op) -> Role {
        Role::Job(Request {
            root: root.to_path_buf(),
            idmap: self.idmap,
            op,
        })
    }

    /// Runs a job that takes no input; its reply.
    fn run(&self, role: &Role) -> Result<Reply> {
        self.start(role, Stdio::null(), Stdio::null(), None)?
            .set_up()?
            .reply()
    }

    /// Runs a job that takes no input and replies that it is done.
    fn run_to_done(&self, role: &Role) -> Result<()> {
        match self.run(role)? {
            Reply::Done { done: true } => Ok(()),
            other => bail!("the helper gave an unexpected reply: {other:?}"),
        }
    }

    /// Starts the helper program in `role`, reading `stdin` and writing `stdout`, with a
    /// layer's `ring` (its memory and the pipe of slots given back) as fds [`RING_FD`] and
    /// [`GIVEN_BACK_FD`]. The calling thread must outlive it: its parent-death signal follows
    /// the thread that started it.
    fn start(
        &self,
        role: &Role,
        stdin: Stdio,
        stdout: Stdio,
        ring: Option<[RawFd; 2]>,
    ) -> Result<Started> {
        let (results, results_writer) = io::pipe().context("creating the result pipe")?;
        let (control_reader, control) = io::pipe().context("creating the control pipe")?;
        let fds = [results_writer.as_raw_fd(), control_reader.as_raw_fd()];
        let mut command = Command::new(&self.program);
        command
            .arg(serde_json::to_string(role)?)
            .env_clear()
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped());
        // SAFETY: the hook makes only async-signal-safe syscalls (fcntl, dup2, prctl).
        unsafe { command.pre_exec(move || install_fds(fds, ring)) };
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        drop((results_writer, control_reader));
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.take(64 * 1024).read_to_string(&mut text);
            text
        });
        Ok(Started {
            helper: self.clone(),
            ring: None,
            child,
            results,
            control: Some(control),
            stderr_reader: Some(stderr_reader),
            map_error: None,
            finished: false,
        })
    }
}

/// A new ring (see `strata-ring`) and its pipes, each end yet to be handed to its writer or
/// reader: one of the two is a helper.
struct NewRing {
    writable: OwnedFd,
    readable: OwnedFd,
    /// The announcements: the reader's end, and the writer's.
    announced: File,
    announce: File,
    /// Slots given back: the writer's end, and the reader's.
    given_back: File,
    give_back: File,
}

impl NewRing {
    fn create() -> Result<NewRing> {
        let (writable, readable) = strata_ring::create().context("creating a layer's ring")?;
        let (announced, announce) = io::pipe().context("creating a ring's pipes")?;
        let (given_back, give_back) = io::pipe().context("creating a ring's pipes")?;
        let file = |end: OwnedFd| File::from(end);
        Ok(NewRing {
            writable,
            readable,
            announced: file(announced.into()),
            announce: file(announce.into()),
            given_back: file(given_back.into()),
            give_back: file(give_back.into()),
        })
    }
}

/// Where the applier's ring is filled from: always by the parent, which hashes what it writes.
enum Feed {
    /// An inflater, started, waiting for the compressed blob on its stdin, and the reader's
    /// end of the ring it writes the tar stream into.
    Inflater(Started, strata_ring::Reader),
    /// The blob itself: it is the tar stream.
    Blob,
}

/// A helper started (see [`Helper::start_apply`]). Dropped unfinished, it is killed: it must
/// not take the end of its stdin for an empty layer.
pub struct Started {
    /// The program and id map it was started with.
    helper: Helper,
    /// For an apply job: the writer of the ring it reads its layer from.
    ring: Option<(Filler, Announcer)>,
    child: Child,
    results: io::PipeReader,
    /// Until the helper is set up: how it learns that its id maps are written.
    control: Option<io::PipeWriter>,
    stderr_reader: Option<thread::JoinHandle<String>>,
    /// Writing its id maps failed: it cannot do anything, and this says why.
    map_error: Option<anyhow::Error>,
    finished: bool,
}

impl Started {
    /// Waits until the helper is in its namespaces, writing its id maps when it asks for
    /// subordinate ids (only a process outside the namespace can). Any thread may do this.
    pub fn set_up(mut self) -> Result<Started> {
        let mut control = self.control.take().expect("set up once");
        if let IdMap::Subordinate { uids, gids } = self.helper.idmap {
            let mut byte = [0u8];
            if self.results.read_exact(&mut byte).is_ok() && byte == MAPS_WANTED {
                match write_id_maps(self.child.id(), uids, gids) {
                    Ok(()) => control
                        .write_all(&MAPS_READY)
                        .context("releasing the helper")?,
                    Err(err) => self.map_error = Some(err),
                }
            }
        }
        Ok(self)
    }

    /// Starts what feeds the helper `blob` (an inflater starts while the helper enters its
    /// namespaces), sets the helper up, and feeds it.
    fn set_up_and_apply(self, blob: &Blob) -> Result<AppliedLayer> {
        let feed = self.feed(blob)?;
        self.set_up()?.apply_fed(blob, feed)
    }

    /// Feeds the set-up helper the layer `blob` and returns its account of it (see
    /// [`Helper::apply`]). The parent writes the helper's ring: from the blob, when it is the
    /// tar stream, whose digest (checked on the way) is then the diff ID; else from the ring
    /// of an inflater it sends the blob to, hashing what it copies.
    pub fn apply(self, blob: &Blob) -> Result<AppliedLayer> {
        let feed = self.feed(blob)?;
        self.apply_fed(blob, feed)
    }

    /// Starts what the helper's ring is filled from: for a compressed blob, an inflater.
    fn feed(&self, blob: &Blob) -> Result<Feed> {
        if !blob.needs_inflating()? {
            return Ok(Feed::Blob);
        }
        let ring = NewRing::create()?;
        let role = Role::Inflate(blob.compression());
        let fds = [ring.writable.as_raw_fd(), ring.given_back.as_raw_fd()];
        let inflater = self
            .helper
            .start(&role, Stdio::piped(), ring.announce.into(), Some(fds))?;
        let inflated = strata_ring::Reader::new(&ring.readable, ring.announced, ring.give_back)
            .context("mapping the inflater's ring")?;
        Ok(Feed::Inflater(inflater, inflated))
    }

    /// [`Started::apply`], once `feed` is started. An error sending or reading the blob (a
    /// mismatch) is told first, whatever the helpers made of it: a blob that fails to verify
    /// is first of all a mismatch.
    fn apply_fed(mut self, blob: &Blob, feed: Feed) -> Result<AppliedLayer> {
        let ring = self.ring.take().context("the helper takes no layer")?;
        match feed {
            Feed::Inflater(mut inflater, inflated) => {
                let mut compressed = inflater
                    .child
                    .stdin
                    .take()
                    .context("the inflater's stdin")?;
                // Not reaped before the scope ends (`reply` waits for it), so the pid is its.
                let inflater_pid = Pid::from_raw(inflater.child.id() as i32);
                let (sent, relayed) = thread::scope(|scope| {
                    let relay = scope.spawn(move || {
                        let relayed = Relay::run(inflated, ring);
                        if !matches!(
                            relayed,
                            Ok(Relayed {
                                passed: Passed::Whole,
                                ..
                            })
                        ) {
                            // Nothing more of it is taken: stopped, it cannot leave the
                            // blob's sender waiting on a pipe it no longer reads.
                            let _ = kill(inflater_pid, Signal::SIGKILL);
                        }
                        relayed
                    });
                    let sent = blob.send(&mut compressed);
                    drop(compressed);
                    let relayed = relay
                        .join()
                        .unwrap_or_else(|_| Err(anyhow!("the relay thread panicked")));
                    (sent, relayed)
                });
                // The relay is done, so the inflater has ended its stream or been hung up
                // on: its reply comes now, before the applier's.
                let reply = inflater.reply();
                let applier = self.reply();
                let source = Source::Inflater {
                    blob: sent?,
                    relayed,
                    reply,
                };
                verdict(source, applier)
            }
            Feed::Blob => {
                let filled = blob.fill(ring);
                let applier = self.reply();
                let (passed, hashed) = filled?;
                verdict(Source::Blob { hashed, passed }, applier)
            }
        }
    }

    /// Waits for the helper's one reply and its exit: the reply, unless it is an error or the
    /// helper died without one. A failure to write its id maps comes first.
    fn reply(mut self) -> Result<Reply> {
        self.finished = true;
        // The reply is one line (skipped paths are capped at a thousand, names in it at 256
        // bytes): more than REPLY_LIMIT is a helper gone wrong, not to be read whole.
        let mut reply = String::new();
        let read = (&mut self.results)
            .take(REPLY_LIMIT + 1)
            .read_to_string(&mut reply);
        if reply.len() as u64 > REPLY_LIMIT {
            let _ = self.child.kill();
        }
        let status = self.child.wait().context("waiting for the helper")?;
        let stderr = self
            .stderr_reader
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();

        if let Some(err) = self.map_error.take() {
            return Err(err);
        }
        read.context("reading the helper's reply")?;
        if reply.len() as u64 > REPLY_LIMIT {
            bail!("the helper's reply is over {} MiB", REPLY_LIMIT >> 20);
        }
        match serde_json::from_str::<Reply>(reply.trim()) {
            Ok(Reply::Error { error }) => Err(anyhow!(error)),
            // A failure, told once the other process's account is in (see `verdict`).
            Ok(reply @ Reply::CutShort { .. }) => Ok(reply),
            Ok(reply) if status.success() => Ok(reply),
            _ => Err(anyhow!(died(status, &stderr))),
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// In the child between fork and exec: the result pipe becomes fd 3 and the control pipe fd 4,
/// a ring's memory and given-back pipe fds 5 and 6 (each first moved out of the way, as any
/// may already sit on another's number), and the helper is set to die with strata, so a
/// killed run leaves no process writing its store.
fn install_fds(fds: [RawFd; 2], ring: Option<[RawFd; 2]>) -> io::Result<()> {
    let check = |rc: i32| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain syscalls on descriptors this child owns.
    unsafe {
        let high = |fd| check(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10));
        let pipes = [high(fds[0])?, high(fds[1])?];
        let ring = match ring {
            Some([memory, given_back]) => Some([high(memory)?, high(given_back)?]),
            None => None,
        };
        // dup2 clears close-on-exec on the new descriptor.
        check(libc::dup2(pipes[0], RESULT_FD))?;
        check(libc::dup2(pipes[1], CONTROL_FD))?;
        if let Some([memory, given_back]) = ring {
            check(libc::dup2(memory, RING_FD))?;
            check(libc::dup2(given_back, GIVEN_BACK_FD))?;
        }
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
    }
    Ok(())
}

/// Runs `newuidmap` and `newgidmap` for the helper `pid`, side by side (each is a setuid
/// program that takes milliseconds to start): container 0 is the user, 1..=N the subordinate
/// range. Their exit status is checked (youki's is not).
fn write_id_maps(pid: u32, uids: IdRange, gids: IdRange) -> Result<()> {
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let mut running = Vec::new();
    for (tool, own, range) in [("newuidmap", uid, uids), ("newgidmap", gid, gids)] {
        let args = [pid, 0, own, 1, 1, range.start, range.count].map(|n| n.to_string());
        let child = Command::new(tool)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {tool}"));
        running.push((tool, args, child));
    }
    for (tool, args, child) in running {
        let output = child?
            .wait_with_output()
            .with_context(|| format!("waiting for {tool}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let why = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            bail!(
                "{tool} {} failed ({}): {}",
                args.join(" "),
                output.status,
                why.trim()
            );
        }
    }
    Ok(())
}

fn died(status: ExitStatus, stderr: &str) -> String {
    let how = match status.signal() {
        Some(signal) => format!("was killed by signal {signal}"),
        None => format!("exited with {status} without a reply"),
    };
    match stderr.lines().rev().find(|line| !line.trim().is_empty()) {
        Some(last) => format!("strata-helper {how}: {}", last.trim()),
        None => format!("strata-helper {how}"),
    }
}
