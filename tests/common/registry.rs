//! Real registries on loopback: Debian's `docker-registry` (the distribution project's
//! registry), over plain HTTP, over TLS with a CA made for the test, or with htpasswd Basic
//! auth; images pushed to it by skopeo.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How a test registry is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain HTTP, anyone may pull.
    Plain,
    /// TLS with a certificate signed by a CA of the test's (in [`Registry::cert_dir`]).
    Tls,
    /// [`Security::Tls`], and clients must show a certificate the test's CA signed
    /// (`client.cert` and `client.key` in [`Registry::cert_dir`]).
    MutualTls,
    /// Plain HTTP, and htpasswd Basic auth for this user and password.
    Htpasswd { user: String, password: String },
}

/// A running `docker-registry`, stopped on drop.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    security: Security,
}

/// Whether the registry and skopeo are installed; CI must have them.
pub fn have_registry_tools() -> bool {
    let have = ["/usr/bin/docker-registry", "/usr/bin/skopeo"]
        .iter()
        .all(|tool| Path::new(tool).exists());
    assert!(
        have || std::env::var_os("CI").is_none(),
        "CI must install docker-registry and skopeo"
    );
    if !have {
        eprintln!("docker-registry or skopeo missing: test skipped");
    }
    have
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a registry; `None` when the tools are missing (outside CI).
    pub fn start(security: Security) -> Option<Registry> {
        if !have_registry_tools() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        match &security {
            Security::Plain => {}
            Security::Tls | Security::MutualTls => {
                make_certificates(dir.path());
                config += &format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    dir.path().join("server.crt").display(),
                    dir.path().join("server.key").display()
                );
                if security == Security::MutualTls {
                    config += &format!(
                        "    clientcas:\n      - {}\n",
                        dir.path().join("ca.crt").display()
                    );
                }
            }
            Security::Htpasswd { user, password } => {
                let hash = bcrypt::hash(password, 4).unwrap();
                fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
                config += &format!(
                    "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                );
            }
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = Registry {
            child,
            dir,
            addr,
            security,
        };
        wait_for_port(port);
        Some(registry)
    }

    /// A directory, readable by anyone, laid out as containers' `certs.d/HOST`: the test CA
    /// as `ca.crt`, and for [`Security::MutualTls`], the client's `client.cert` and
    /// `client.key`.
    pub fn cert_dir(&self, under: &Path) -> PathBuf {
        assert_ne!(self.security, Security::Plain);
        let dir = under.join("certs");
        fs::create_dir_all(&dir).unwrap();
        let mut files = vec!["ca.crt"];
        if self.security == Security::MutualTls {
            files.extend(["client.cert", "client.key"]);
        }
        for file in files {
            fs::copy(self.dir.path().join(file), dir.join(file)).unwrap();
            fs::set_permissions(dir.join(file), fs::Permissions::from_mode(0o644)).unwrap();
        }
        dir
    }

    /// The manifest (or index, or list) the registry serves for `name`, as skopeo reads it.
    pub fn raw_manifest(&self, name: &str) -> serde_json::Value {
        let output = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{name}", self.addr))
            .output()
            .unwrap();
        assert!(output.status.success(), "skopeo inspect {name}");
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// `docker://ADDR/NAME` for strata.
    pub fn image(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr)
    }

    /// Pushes the OCI layout image `source` (skopeo's `oci:PATH[:TAG]`) to `name`
    /// (`REPO:TAG`) with skopeo, as it is: same manifest, same blobs.
    pub fn push(&self, source: &str, name: &str) {
        self.push_with(&["--preserve-digests"], source, name);
    }

    /// [`Registry::push`] of an index with every image it lists (`skopeo copy --all`).
    pub fn push_all(&self, source: &str, name: &str) {
        self.push_with(&["--all", "--preserve-digests"], source, name);
    }

    /// Pushes with skopeo's `extra` options (`--format v2s2`: converted to Docker's media
    /// types; `--preserve-digests`: as it is).
    pub fn push_with(&self, extra: &[&str], source: &str, name: &str) {
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        command.args(extra);
        if let Security::Htpasswd { user, password } = &self.security {
            command.arg(format!("--dest-creds={user}:{password}"));
        }
        if matches!(self.security, Security::Tls | Security::MutualTls) {
            command.arg(format!(
                "--dest-cert-dir={}",
                self.cert_dir(self.dir.path()).display()
            ));
        }
        let output = command
            .arg(source)
            .arg(format!("docker://{}/{name}", self.addr))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "skopeo copy {source} {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something listens on the loopback `port`.
pub fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on port {port}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A CA (`ca.crt`), a server certificate it signed for 127.0.0.1 (`server.crt`,
/// `server.key`), and a client certificate (`client.cert`, `client.key`), in `dir`, by
/// openssl.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (CI installs it)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "2", "-subj", "/CN=strata test CA"][..],
            &new_key,
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    );
    // A key and a certificate the CA signs, with these extensions.
    let signed = |subject: &str, key: &str, certificate: &str, extensions: &str| {
        let csr = format!("{certificate}.csr");
        let extfile = format!("{certificate}.ext");
        openssl(
            &[
                &["req", "-subj", subject][..],
                &new_key,
                &["-keyout", key, "-out", &csr],
            ]
            .concat(),
        );
        fs::write(dir.join(&extfile), extensions).unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            &extfile,
            "-out",
            certificate,
        ]);
    };
    signed(
        "/CN=127.0.0.1",
        "server.key",
        "server.crt",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    );
    signed(
        "/CN=strata test client",
        "client.key",
        "client.cert",
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    );
}
