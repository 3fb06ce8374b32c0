//! Go's `archive/tar`, run as `tests/oracle/main.go`: built once per test run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The oracle's binary, built on first use (`go` must be installed: Debian's golang-go).
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // This file also serves the fuzz target, a crate below, and strata's own tests, a
        // workspace above.
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = ["tests/oracle", "../tests/oracle", "crates/tar/tests/oracle"]
            .into_iter()
            .map(|dir| crate_dir.join(dir))
            .find(|dir| dir.is_dir())
            .expect("the oracle's source");
        let out = std::env::temp_dir().join(format!("strata-tar-oracle-{}", std::process::id()));
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("main.go")
            .current_dir(&dir)
            .env(
                "GOCACHE",
                std::env::temp_dir().join("strata-tar-oracle-cache"),
            )
            .status()
            .expect("running go (install Debian's golang-go)");
        assert!(status.success(), "building the Go oracle failed");
        out
    })
}

/// Go's views of the archives at `paths`, in order.
pub fn views_of_files(paths: &[PathBuf]) -> Vec<Value> {
    let output = Command::new(binary()).args(paths).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
        .stdout
        .split(|&c| c == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect()
}

/// One oracle process, asked about archive after archive.
pub struct Oracle {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Oracle {
    pub fn start() -> Oracle {
        let mut child = Command::new(binary())
            .arg("-stream")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Oracle {
            child,
            input,
            output,
        }
    }

    pub fn view(&mut self, archive: &[u8]) -> Value {
        self.input
            .write_all(&(archive.len() as u32).to_le_bytes())
            .unwrap();
        self.input.write_all(archive).unwrap();
        self.input.flush().unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("oracle said {line:?}: {err}"))
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
