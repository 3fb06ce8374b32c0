//! Why a registry could not be read: one line each, naming the registry and repository.

use std::fmt;
use std::path::PathBuf;

/// Why a registry could not be read. Each message is one line naming the registry and
/// repository.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{place}: {what}: {detail}")]
    Network {
        place: Place,
        what: String,
        detail: String,
    },
    #[error(
        "{place}: TLS verification failed: {detail} (give the registry's CA with --cert-dir DIR, \
         or use --tls-verify=false)"
    )]
    Tls { place: Place, detail: String },
    #[error("{place}: {what}: HTTP {status}{}", server_says(.message))]
    Status {
        place: Place,
        what: String,
        status: u16,
        message: String,
    },
    #[error("{place}: {what}: not found (HTTP 404){}", server_says(.message))]
    NotFound {
        place: Place,
        what: String,
        message: String,
    },
    #[error("{place}: 401 Unauthorized: no credentials for {host} in {}", files(.searched))]
    NoCredentials {
        place: Place,
        host: String,
        searched: Vec<PathBuf>,
    },
    #[error("{place}: 401 Unauthorized: the credentials for {host} were refused{}", server_says(.message))]
    Refused {
        place: Place,
        host: String,
        message: String,
    },
    #[error("{place}: {detail}")]
    Protocol { place: Place, detail: String },
    #[error("reading the auth file {}: {detail}", .file.display())]
    AuthFile { file: PathBuf, detail: String },
    #[error("asking {program} for the credentials of {host}: {detail}")]
    CredentialHelper {
        program: String,
        host: String,
        detail: String,
    },
    #[error("reading certificates from {}: {detail}", .path.display())]
    CertDir { path: PathBuf, detail: String },
}

fn server_says(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn files(files: &[PathBuf]) -> String {
    if files.is_empty() {
        "no auth file (give --authfile or --creds)".to_owned()
    } else {
        files
            .iter()
            .map(|file| file.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A repository on a registry, as messages name it: `HOST/REPOSITORY`.
#[derive(Clone, Debug)]
pub struct Place(String);

impl Place {
    /// The repository `repository` on `host`.
    pub fn new(host: &str, repository: &str) -> Place {
        Place(format!("{host}/{repository}"))
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "registry {}", self.0)
    }
}
