//! Credentials, found where podman, skopeo and docker keep them, and the challenges a
//! registry answers 401 with.
//!
//! Where credentials are looked for, first to last (as containers/image does):
//! 1. `--creds USER[:PASSWORD]`;
//! 2. `--authfile`, else `$REGISTRY_AUTH_FILE`: that file alone;
//! 3. otherwise `$XDG_RUNTIME_DIR/containers/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json`
//!    (`~/.config`), then `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`).
//!
//! In each file, a `credHelpers` entry for the host (or `credsStore`, for every host) runs
//! `docker-credential-NAME get`; otherwise `auths` is searched for the repository, its
//! parents, then the host, each key as written before keys that only normalise to it.

use std::collections::BTreeMap;
use std::env;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use super::RegistryError;
use super::reference::DOCKER_HUB;

/// The most read of an auth file, or of what a credential helper prints.
const MAX_AUTH_FILE: u64 = 1 << 20;

/// What proves who the user is to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// None found: anonymous.
    Anonymous,
    /// A user name and password, sent as Basic auth (to the registry, or to its token
    /// server).
    Basic {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), traded for an access token.
    IdentityToken(String),
}

/// Passwords stay out of logs and panics.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user:?}, …)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(…)"),
        }
    }
}

/// Where to look for credentials: what the user gave on the command line.
#[derive(Clone, Default)]
pub struct AuthOptions {
    /// `--creds USER[:PASSWORD]`.
    pub creds: Option<String>,
    /// `--authfile`.
    pub authfile: Option<PathBuf>,
}

/// The password of `--creds` stays out of logs and panics.
impl fmt::Debug for AuthOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthOptions")
            .field("creds", &self.creds.as_ref().map(|_| "…"))
            .field("authfile", &self.authfile)
            .finish()
    }
}

/// The credentials found for a repository, and where they were looked for (for the message
/// when the registry wants some and there are none).
#[derive(Clone, Debug)]
pub struct Found {
    /// What was found.
    pub credentials: Credentials,
    /// The files looked in, in order.
    pub searched: Vec<PathBuf>,
}

impl AuthOptions {
    /// The credentials for `repository` on `host`.
    pub fn find(&self, host: &str, repository: &str) -> Result<Found, RegistryError> {
        if let Some(creds) = &self.creds {
            let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
            return Ok(Found {
                credentials: Credentials::Basic {
                    user: user.to_owned(),
                    password: password.to_owned(),
                },
                searched: Vec::new(),
            });
        }
        let files = self.files();
        for file in &files {
            if let Some(credentials) = from_file(file, host, repository)? {
                return Ok(Found {
                    credentials,
                    searched: files,
                });
            }
        }
        Ok(Found {
            credentials: Credentials::Anonymous,
            searched: files,
        })
    }

    /// The auth files to read, first to last: the one the user named, alone; else the
    /// default ones.
    fn files(&self) -> Vec<PathBuf> {
        let var = |name| {
            env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        if let Some(file) = self.authfile.clone().or_else(|| var("REGISTRY_AUTH_FILE")) {
            return vec![file];
        }
        let home = var("HOME");
        let config_home =
            var("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
        let docker_config =
            var("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker")));
        [
            var("XDG_RUNTIME_DIR").map(|dir| dir.join("containers/auth.json")),
            config_home.map(|dir| dir.join("containers/auth.json")),
            docker_config.map(|dir| dir.join("config.json")),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// An auth file: containers' `auth.json` or docker's `config.json`.
#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The credentials `file` holds for `repository` on `host`, if any; a missing file holds
/// none.
fn from_file(
    file: &Path,
    host: &str,
    repository: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let text = match fs::File::open(file) {
        Ok(opened) => {
            let mut text = Vec::new();
            opened
                .take(MAX_AUTH_FILE)
                .read_to_end(&mut text)
                .map_err(|error| RegistryError::AuthFile {
                    file: file.to_owned(),
                    detail: error.to_string(),
                })?;
            text
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(RegistryError::AuthFile {
                file: file.to_owned(),
                detail: error.to_string(),
            });
        }
    };
    // Not serde's own message, which can quote a value: a secret.
    let parsed: AuthFile =
        serde_json::from_slice(&text).map_err(|error| RegistryError::AuthFile {
            file: file.to_owned(),
            detail: format!(
                "not an auth file (line {}, column {})",
                error.line(),
                error.column()
            ),
        })?;
    let named = parsed
        .cred_helpers
        .iter()
        .find(|(key, _)| normalise_key(key) == host)
        .map(|(_, helper)| helper);
    if let Some(helper) = named {
        return run_helper(helper, host, Missing::Fails);
    }
    if let Some(helper) = &parsed.creds_store {
        // Left behind by a Docker Desktop that is gone, often: then it has nothing.
        return run_helper(helper, host, Missing::HasNothing);
    }
    let Some(entry) = lookup(&parsed.auths, host, repository) else {
        return Ok(None);
    };
    let bad = |detail: &str| RegistryError::AuthFile {
        file: file.to_owned(),
        detail: format!("the entry for {host}: {detail}"),
    };
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(token.clone())));
    }
    let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let decoded = BASE64
        .decode(auth.trim())
        .map_err(|_| bad("'auth' is not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("'auth' is not UTF-8"))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| bad("'auth' is not base64 of USER:PASSWORD"))?;
    Ok(Some(Credentials::Basic {
        user: user.to_owned(),
        password: password.to_owned(),
    }))
}

/// The entry for the repository itself, else its nearest parent, else the host: containers'
/// rule, which docker's files (keyed by host, or by Docker Hub's old URL) also satisfy. At
/// each scope a key written as the scope wins over one that only normalises to it.
fn lookup<'a>(
    auths: &'a BTreeMap<String, AuthEntry>,
    host: &str,
    repository: &str,
) -> Option<&'a AuthEntry> {
    let mut scope = format!("{host}/{repository}");
    loop {
        let exact = auths.get(&scope);
        let normalised = || {
            auths
                .iter()
                .find(|(key, _)| normalise_key(key) == scope)
                .map(|(_, entry)| entry)
        };
        if let Some(entry) = exact.or_else(normalised) {
            return Some(entry);
        }
        scope.truncate(scope.rfind('/')?);
    }
}

/// An auth file's key as `HOST[/PATH]`: without a scheme or docker's `/v1/` suffix, and with
/// Docker Hub's old names as `docker.io`.
fn normalise_key(key: &str) -> String {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (host, path) = key.split_once('/').unwrap_or((key, ""));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        host => host,
    };
    let path = path.trim_end_matches('/');
    if path.is_empty() || path == "v1" || path == "v2" {
        host.to_owned()
    } else {
        format!("{host}/{path}")
    }
}

/// What `docker-credential-NAME get` prints.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// What a credential helper that is not installed means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// An error: it was named for this registry.
    Fails,
    /// No credentials: it was named for every registry (`credsStore`).
    HasNothing,
}

/// Asks `docker-credential-NAME` for `host`'s credentials. It says "credentials not found"
/// when it has none.
fn run_helper(
    name: &str,
    host: &str,
    missing: Missing,
) -> Result<Option<Credentials>, RegistryError> {
    let program = format!("docker-credential-{name}");
    let failed = |detail: String| RegistryError::CredentialHelper {
        program: program.clone(),
        host: host.to_owned(),
        detail,
    };
    // Docker Hub's credentials are stored under its old URL.
    let server = if host == DOCKER_HUB {
        "https://index.docker.io/v1/"
    } else {
        host
    };
    let spawned = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        // Not on PATH (which reads as "permission denied" when PATH has a directory this user
        // cannot search).
        Err(error)
            if missing == Missing::HasNothing
                && matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
        {
            return Ok(None);
        }
        spawned => spawned.map_err(|error| failed(error.to_string()))?,
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading has its answer below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut output = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        stdout
            .take(MAX_AUTH_FILE)
            .read_to_end(&mut output)
            .map_err(|error| failed(error.to_string()))?;
    }
    let status = child.wait().map_err(|error| failed(error.to_string()))?;
    let printed = String::from_utf8_lossy(&output);
    if !status.success() {
        if printed.contains("credentials not found") {
            return Ok(None);
        }
        let first_line = printed.lines().next().unwrap_or("").trim();
        return Err(failed(format!("{status}: {first_line}")));
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&output).map_err(|error| failed(format!("its answer: {error}")))?;
    Ok(Some(if answer.username == "<token>" {
        Credentials::IdentityToken(answer.secret)
    } else {
        Credentials::Basic {
            user: answer.username,
            password: answer.secret,
        }
    }))
}

/// What a registry's 401 asks for (its `WWW-Authenticate` header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Basic auth, with the user's credentials.
    Basic,
    /// A token from `realm`, for `service`.
    Bearer {
        /// The token server's URL.
        realm: String,
        /// The `service` to ask a token for, if the registry names one.
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` header: a scheme, then `key="value"` pairs.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let parameters = parameters(rest);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => Some(Challenge::Bearer {
                realm: parameters.get("realm")?.clone(),
                service: parameters.get("service").cloned(),
            }),
            _ => None,
        }
    }
}

/// `key="value", key=value, …`, keys in lower case; a quoted value may hold commas and
/// escaped quotes.
fn parameters(text: &str) -> BTreeMap<String, String> {
    let mut parameters = BTreeMap::new();
    let mut rest = text.trim_start();
    while let Some(equals) = rest.find('=') {
        let key = rest[..equals]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = &rest[equals + 1..];
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((at, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                    '"' => {
                        end = at + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        parameters.insert(key, value);
        rest = rest.trim_start().trim_start_matches(',').trim_start();
    }
    parameters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let bearer = |realm: &str, service: Option<&str>| {
            Some(Challenge::Bearer {
                realm: realm.to_owned(),
                service: service.map(str::to_owned),
            })
        };
        let table = [
            (r#"Basic realm="Registry Realm""#, Some(Challenge::Basic)),
            ("basic", Some(Challenge::Basic)),
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#,
                bearer("https://auth.docker.io/token", Some("registry.docker.io")),
            ),
            (
                r#"Bearer realm="http://127.0.0.1:1/t?a=1,b=2", service=reg"#,
                bearer("http://127.0.0.1:1/t?a=1,b=2", Some("reg")),
            ),
            (r#"Bearer realm="a\"b""#, bearer("a\"b", None)),
            (r#"Bearer service="x""#, None),
            (r#"Negotiate abc"#, None),
        ];
        for (header, expected) in table {
            assert_eq!(Challenge::parse(header), expected, "{header}");
        }
    }

    #[test]
    fn keys_normalise() {
        for (key, normal) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("quay.io", "quay.io"),
            ("http://localhost:5000/v2/", "localhost:5000"),
            ("reg.io/org/app", "reg.io/org/app"),
            ("reg.io/org/", "reg.io/org"),
        ] {
            assert_eq!(normalise_key(key), normal, "{key}");
        }
    }

    #[test]
    fn the_nearest_entry_wins() {
        let entry = |user: &str| AuthEntry {
            auth: Some(BASE64.encode(format!("{user}:pw"))),
            identitytoken: None,
        };
        let auths: BTreeMap<String, AuthEntry> = [
            ("reg.io".to_owned(), entry("host")),
            ("reg.io/org".to_owned(), entry("org")),
            ("reg.io/org/app".to_owned(), entry("app")),
            ("https://index.docker.io/v1/".to_owned(), entry("hub")),
        ]
        .into_iter()
        .collect();
        let user = |host, repository| {
            lookup(&auths, host, repository).map(|entry| entry.auth.clone().unwrap())
        };
        assert_eq!(user("reg.io", "org/app"), Some(BASE64.encode("app:pw")));
        assert_eq!(user("reg.io", "org/other"), Some(BASE64.encode("org:pw")));
        assert_eq!(user("reg.io", "other/app"), Some(BASE64.encode("host:pw")));
        assert_eq!(
            user("docker.io", "library/debian"),
            Some(BASE64.encode("hub:pw"))
        );
        assert_eq!(user("other.io", "app"), None);
        // A host is matched whole, not as a prefix.
        assert_eq!(user("reg.iox", "app"), None);

        // A key written as the host wins over one that normalises to it, whatever the order.
        let both: BTreeMap<String, AuthEntry> = [
            ("docker.io".to_owned(), entry("current")),
            ("https://index.docker.io/v1/".to_owned(), entry("stale")),
        ]
        .into_iter()
        .collect();
        let found = lookup(&both, "docker.io", "library/debian").unwrap();
        assert_eq!(found.auth, Some(BASE64.encode("current:pw")));
    }

    #[test]
    fn auth_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        let write = |text: &str| fs::write(&file, text).unwrap();
        let find = || from_file(&file, "reg.io", "app");

        write(&format!(
            r#"{{"auths":{{"reg.io":{{"auth":"{}"}}}}}}"#,
            BASE64.encode("u:p:w")
        ));
        assert_eq!(
            find().unwrap(),
            Some(Credentials::Basic {
                user: "u".into(),
                password: "p:w".into()
            })
        );
        write(r#"{"auths":{"reg.io":{"auth":"","identitytoken":"tok"}}}"#);
        assert_eq!(
            find().unwrap(),
            Some(Credentials::IdentityToken("tok".into()))
        );
        write(r#"{"auths":{"other.io":{"auth":"eDp5"}}}"#);
        assert_eq!(find().unwrap(), None);
        write(r#"{"auths":{"reg.io":{"auth":"not base64!"}}}"#);
        let error = find().unwrap_err().to_string();
        assert!(
            error.contains("auth.json") && error.contains("base64"),
            "{error}"
        );
        write("{");
        assert!(find().is_err());
        // serde would quote the value; the secret stays out of the message.
        write(&format!(
            r#"{{"auths":{{"reg.io":"{}"}}}}"#,
            BASE64.encode("u:s3cret")
        ));
        let error = find().unwrap_err().to_string();
        assert!(!error.contains(&BASE64.encode("u:s3cret")), "{error}");
        fs::remove_file(&file).unwrap();
        assert_eq!(find().unwrap(), None);
    }
}
