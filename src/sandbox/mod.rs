//! The parent's side of the helper: find it, start it with a request, feed it a layer, and turn
//! its one-line reply (or its death) into a result.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;

use anyhow::{Context, Result, anyhow, bail};

use crate::protocol::{Applied, Compression, Op, RESULT_FD, Reply, Request};

/// The `strata-helper` program: `$STRATA_HELPER`, else the file beside the running binary.
#[derive(Clone, Debug)]
pub struct Helper {
    program: PathBuf,
}

impl Helper {
    pub fn locate() -> Result<Helper> {
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
        Ok(Helper { program })
    }

    /// Applies the layer read from `blob` to `root`. An error reading `blob` (a digest or size
    /// mismatch, detected while streaming) wins over what the helper made of the cut stream.
    pub fn apply(
        &self,
        root: &Path,
        compression: Compression,
        blob: &mut dyn Read,
    ) -> Result<Applied> {
        match self.run(root, Op::Apply { compression }, Some(blob))? {
            Reply::Applied(applied) => Ok(applied),
            other => Err(anyhow!(
                "helper gave an unexpected reply to apply: {other:?}"
            )),
        }
    }

    /// Copies the tree at `source` into the empty directory `root`.
    pub fn copy(&self, source: &Path, root: &Path) -> Result<()> {
        self.run(
            root,
            Op::Copy {
                source: source.to_path_buf(),
            },
            None,
        )
        .map(drop)
    }

    /// Empties `root` (whatever modes and owners its contents have).
    pub fn clear(&self, root: &Path) -> Result<()> {
        self.run(root, Op::Clear, None).map(drop)
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

    fn run(&self, root: &Path, op: Op, input: Option<&mut dyn Read>) -> Result<Reply> {
        let request = Request {
            root: root.to_path_buf(),
            op,
        };
        let (mut results, results_writer) = io::pipe().context("creating the result pipe")?;
        let writer_fd = results_writer.as_raw_fd();
        let mut command = Command::new(&self.program);
        command
            .arg(serde_json::to_string(&request)?)
            .env_clear()
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: the hook makes only async-signal-safe syscalls (fcntl, dup2, prctl).
        unsafe {
            command.pre_exec(move || {
                if writer_fd == RESULT_FD {
                    if libc::fcntl(RESULT_FD, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(writer_fd, RESULT_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // The helper dies with strata: a killed run leaves no process writing its store.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        drop(results_writer);
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.take(64 * 1024).read_to_string(&mut text);
            text
        });

        let feed_error = match (input, child.stdin.take()) {
            (Some(input), Some(mut stdin)) => feed(input, &mut stdin).err(),
            _ => None,
        };
        let mut reply = String::new();
        let read = results.read_to_string(&mut reply);
        let status = child.wait().context("waiting for the helper")?;
        let stderr = stderr_reader.join().unwrap_or_default();

        if let Some(err) = feed_error {
            return Err(err);
        }
        read.context("reading the helper's reply")?;
        match serde_json::from_str::<Reply>(reply.trim()) {
            Ok(Reply::Error { error }) => Err(anyhow!(error)),
            Ok(reply) if status.success() => Ok(reply),
            _ => Err(anyhow!(died(status, &stderr))),
        }
    }
}

/// Streams `input` to the helper. The helper quitting early (a broken pipe) is not an error
/// here: its reply says why, unless the rest of `input` fails verification, which then explains
/// the helper's failure better (a corrupt blob is first of all a digest mismatch).
fn feed(input: &mut dyn Read, stdin: &mut impl Write) -> Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        match stdin.write_all(&buf[..n]) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                io::copy(input, &mut io::sink())?;
                return Ok(());
            }
            other => other.context("writing the layer to the helper")?,
        }
    }
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
