//! Running the CLI the way it is meant to be used: as an unprivileged user.
//!
//! When the tests run as root (CI does), the CLI runs as [`TEST_UID`]:[`TEST_GID`], an id with no
//! passwd entry and no subordinate range; otherwise as the current user.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TEST_UID: u32 = 4242;
pub const TEST_GID: u32 = 4242;

/// Builds a CLI argument list from strings and paths alike: `args!["unpack", image.path, dest]`.
#[macro_export]
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        [$(::std::ffi::OsString::from(::std::convert::AsRef::<::std::ffi::OsStr>::as_ref(&$arg))),*]
    };
}

/// Asserts that `line` mentions each of `words` (case-insensitively).
#[track_caller]
pub fn assert_mentions(line: &str, words: &[&str]) {
    eprintln!("error line: {line}");
    let lower = line.to_lowercase();
    for word in words {
        assert!(
            lower.contains(&word.to_lowercase()),
            "the error does not mention {word:?}: {line}"
        );
    }
}

pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The (uid, gid) the CLI runs as.
pub fn test_ids() -> (u32, u32) {
    if running_as_root() {
        (TEST_UID, TEST_GID)
    } else {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }
}

/// The `strata` binary the tests run, with `strata-helper` beside it.
pub fn strata_bin() -> PathBuf {
    binaries_dir().join("strata")
}

/// Cargo's target dir may sit where the test uid cannot go (`/root/…`), so as root both binaries
/// are copied, once per test binary, to a world-readable dir that is removed at exit.
fn binaries_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_copies() {
        if let Some(dir) = DIR.get() {
            let _ = fs::remove_dir_all(dir);
        }
    }

    DIR.get_or_init(|| {
        let strata = Path::new(env!("CARGO_BIN_EXE_strata"));
        // The helper is a crate of its own: `cargo test` on the workspace builds it beside
        // `strata` (its own tests need it).
        let helper = &strata.with_file_name("strata-helper");
        assert!(
            helper.exists(),
            "no {} (build the workspace: `cargo test` or `cargo build`)",
            helper.display()
        );
        if !running_as_root() {
            return strata.parent().unwrap().to_owned();
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-test-bin.")
            .tempdir_in(scratch_base())
            .unwrap()
            .keep();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        for binary in [strata, helper] {
            let copy = dir.join(binary.file_name().unwrap());
            fs::copy(binary, &copy).unwrap();
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        }
        // SAFETY: registers a plain function; it only runs at exit, after DIR is set.
        unsafe { libc::atexit(remove_copies) };
        dir
    })
}

/// Where scratch and binary dirs go. The test uid has to be able to walk down to them.
fn scratch_base() -> PathBuf {
    let base = std::env::temp_dir();
    if running_as_root() {
        for dir in base.ancestors() {
            let mode = fs::metadata(dir).unwrap().permissions().mode();
            assert!(
                mode & 0o001 != 0,
                "uid {TEST_UID} cannot traverse {}: point TMPDIR elsewhere",
                dir.display()
            );
        }
    }
    base
}

/// A scratch dir owned by the test uid, removed on drop (kept when `STRATA_TEST_KEEP` is set).
pub struct TestEnv {
    dir: PathBuf,
    uid: u32,
    gid: u32,
    idmap: IdMap,
}

/// The `--idmap` a TestEnv's unpacks use unless the test gives one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdMap {
    /// The default: expectations then do not depend on whether this machine gives the test
    /// user a subordinate range.
    Single,
    Auto,
}

impl IdMap {
    pub fn arg(self) -> &'static str {
        match self {
            IdMap::Single => "single",
            IdMap::Auto => "auto",
        }
    }
}

impl Default for TestEnv {
    fn default() -> TestEnv {
        TestEnv::new()
    }
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let (uid, gid) = test_ids();
        let dir = tempfile::Builder::new()
            .prefix("strata-test.")
            .tempdir_in(scratch_base())
            .unwrap()
            .keep();
        let env = TestEnv {
            dir,
            uid,
            gid,
            idmap: IdMap::Single,
        };
        env.own(&env.dir);
        env
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// A store path inside the scratch dir, not yet created.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// A path inside the scratch dir that does not exist yet.
    pub fn dest(&self, name: &str) -> PathBuf {
        let dest = self.dir.join(name);
        assert!(
            fs::symlink_metadata(&dest).is_err(),
            "{} already exists",
            dest.display()
        );
        dest
    }

    /// Creates a dir (and its parents) inside the scratch dir, owned by the test uid: honeypots
    /// must be writable by the CLI's user, or an escape would fail for the wrong reason.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            for created in Path::new(name)
                .ancestors()
                .filter(|a| !a.as_os_str().is_empty())
            {
                std::os::unix::fs::lchown(self.dir.join(created), Some(self.uid), Some(self.gid))
                    .unwrap();
            }
        }
        dir
    }

    /// Gives `path` and everything below it (symlinks not followed) to the test uid.
    pub fn own(&self, path: &Path) {
        if !running_as_root() {
            return;
        }
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).unwrap();
        if fs::symlink_metadata(path).unwrap().is_dir() {
            for entry in fs::read_dir(path).unwrap() {
                self.own(&entry.unwrap().path());
            }
        }
    }

    /// Any program, as the test uid, in a clean environment: `PATH`, `HOME` (the scratch dir, so
    /// the default store lands there too), `LANG=C`, and `RUST_BACKTRACE` if set, nothing else.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or("/usr/bin:/bin".into()),
            )
            .env("HOME", &self.dir)
            .env("LANG", "C")
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        if let Some(backtrace) = std::env::var_os("RUST_BACKTRACE") {
            command.env("RUST_BACKTRACE", backtrace);
        }
        if running_as_root() {
            // Setting the uid as root also makes std call setgroups(0): no supplementary groups
            // survive (the self-test checks it), so no `groups(&[])` or pre_exec is needed.
            command.uid(self.uid).gid(self.gid);
        }
        command
    }

    /// A TestEnv whose unpacks use `idmap`.
    pub fn with_idmap(mut self, idmap: IdMap) -> TestEnv {
        self.idmap = idmap;
        self
    }

    pub fn idmap(&self) -> IdMap {
        self.idmap
    }

    /// `strata ARGS`; an `unpack` without `--idmap` gets the env's, and without
    /// `--snapshotter` the one `STRATA_TEST_SNAPSHOTTER` names, if set (CI runs the suite once
    /// per snapshotter).
    pub fn strata_command(&self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Command {
        let mut args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        if args.first().is_some_and(|a| a == "unpack") {
            let given = |flag: &str| args.iter().any(|a| a == flag);
            let mut extra: Vec<OsString> = Vec::new();
            if !given("--idmap") {
                extra.extend(["--idmap".into(), self.idmap.arg().into()]);
            }
            if let Some(snapshotter) = std::env::var_os("STRATA_TEST_SNAPSHOTTER")
                && !given("--snapshotter")
            {
                extra.extend(["--snapshotter".into(), snapshotter]);
            }
            args.splice(1..1, extra);
        }
        let mut command = self.command(strata_bin());
        command.args(args);
        command
    }

    /// Runs `strata ARGS` to completion.
    pub fn strata(&self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Output {
        run(&mut self.strata_command(args))
    }

    /// `strata unpack --store <env.store()> --json IMAGE DEST`, the common case.
    pub fn unpack(&self, image: impl AsRef<OsStr>, dest: impl AsRef<OsStr>) -> Output {
        let store = self.store();
        self.strata(args!["unpack", "--store", store, "--json", image, dest])
    }

    /// `strata unpack --store <env.store()> --json EXTRA… IMAGE DEST`.
    pub fn unpack_with(
        &self,
        extra: &[&str],
        image: impl AsRef<OsStr>,
        dest: impl AsRef<OsStr>,
    ) -> Output {
        let store = self.store();
        let mut args: Vec<OsString> = args!["unpack", "--store", store, "--json"].into();
        args.extend(extra.iter().map(OsString::from));
        args.extend([image.as_ref().to_owned(), dest.as_ref().to_owned()]);
        self.strata(args)
    }

    /// Starts `strata ARGS` with stdout and stderr piped, for tests that kill it midway.
    /// `Output::from(child.wait_with_output().unwrap())` collects it.
    pub fn spawn(&self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Child {
        self.strata_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::env::var_os("STRATA_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.dir.display());
            return;
        }
        if fs::remove_dir_all(&self.dir).is_ok() {
            return;
        }
        // A non-root user cannot remove subuid-owned files, nor read its own mode-000 dirs; the
        // CLI's rmtree works inside the user namespace, where it can.
        let _ = self.strata_command(args!["rmtree", self.dir]).output();
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                eprintln!("warning: could not remove {}: {e}", self.dir.display())
            }
            _ => {}
        }
    }
}

/// How long one run may take before the test kills it: a deadlock must fail a test, not hang CI.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `command` to completion, capturing its output. Panics if it outlives [`TIMEOUT`] (after
/// killing it), or if something it started still holds its stdout or stderr seconds after it
/// exited: a helper left running is a bug.
pub fn run(command: &mut Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = Capture::start(child.stdout.take().unwrap());
    let stderr = Capture::start(child.stderr.take().unwrap());
    let so_far = || {
        format!(
            "\n--- stdout\n{}--- stderr\n{}---",
            stdout.text(),
            stderr.text()
        )
    };

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} ran over {TIMEOUT:?} and was killed{}",
                so_far()
            );
        }
        thread::sleep(POLL);
    };
    let grace = Instant::now() + Duration::from_secs(10);
    while !(stdout.done() && stderr.done()) {
        if Instant::now() > grace {
            panic!(
                "{command:?} exited ({status}) but left a process holding its output{}",
                so_far()
            );
        }
        thread::sleep(POLL);
    }
    Output {
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}

const POLL: Duration = Duration::from_millis(5);

/// Reads a pipe to its end on a thread of its own, keeping what came so far readable.
struct Capture {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: thread::JoinHandle<()>,
}

impl Capture {
    fn start(mut pipe: impl Read + Send + 'static) -> Capture {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&bytes);
        let reader = thread::spawn(move || {
            let mut buf = [0; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Capture { bytes, reader }
    }

    fn done(&self) -> bool {
        self.reader.is_finished()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}

/// A finished command, with helpers that show everything it printed when they fail.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(output: std::process::Output) -> Output {
        Output {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}---",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Output {
    /// Asserts exit status 0.
    #[track_caller]
    pub fn success(&self) -> &Output {
        assert!(self.status.success(), "command failed: {self}");
        self
    }

    /// stdout parsed as one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {self}"))
    }

    /// Asserts a clean failure and returns the last line of stderr, the one that names the fault.
    /// A signal or a Rust panic (exit 101) is a crash, not a clean failure.
    #[track_caller]
    pub fn failure(&self) -> &str {
        match self.status.code() {
            Some(0) => panic!("succeeded, a failure was expected: {self}"),
            Some(101) => panic!("panicked, a clean failure was expected: {self}"),
            None => panic!("killed by a signal, a clean failure was expected: {self}"),
            Some(_) => {}
        }
        self.stderr
            .lines()
            .rfind(|line| !line.trim().is_empty())
            .unwrap_or_else(|| panic!("failed without a word on stderr: {self}"))
    }
}
