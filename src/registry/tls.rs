//! The TLS a registry is reached with: the system's root certificates, plus a `certs.d`
//! directory laid out as containers' (`*.crt`: CAs to trust as well; `NAME.cert` with
//! `NAME.key`: a client certificate), or no verification at all with `--tls-verify=false`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use super::RegistryError;

/// Where a registry's certificates are looked for when `--cert-dir` is not given, as podman
/// looks: the user's own, then the system's.
fn default_cert_dirs(host: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        dirs.push(
            Path::new(&home)
                .join(".config/containers/certs.d")
                .join(host),
        );
    }
    dirs.push(Path::new("/etc/containers/certs.d").join(host));
    dirs.push(Path::new("/etc/docker/certs.d").join(host));
    dirs
}

/// The TLS configuration for `host`: `cert_dir` if given, else the first of the default
/// directories that exists.
pub fn config(
    host: &str,
    cert_dir: Option<&Path>,
    verify: bool,
) -> Result<TlsConfig, RegistryError> {
    let dir = match cert_dir {
        Some(dir) => Some(dir.to_owned()),
        None => default_cert_dirs(host).into_iter().find(|dir| dir.is_dir()),
    };
    let mut roots: Vec<Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    let mut client_cert = None;
    if let Some(dir) = &dir {
        let bad = |path: &Path, detail: String| RegistryError::CertDir {
            path: path.to_owned(),
            detail,
        };
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|error| bad(dir, error.to_string()))?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()
            .map_err(|error| bad(dir, error.to_string()))?;
        entries.sort();
        for path in &entries {
            match path.extension().and_then(|e| e.to_str()) {
                Some("crt") => roots.extend(certificates(path)?),
                Some("cert") if client_cert.is_none() => {
                    let key = path.with_extension("key");
                    let pem = fs::read(&key).map_err(|error| {
                        bad(&key, format!("the key for {}: {error}", path.display()))
                    })?;
                    let key =
                        PrivateKey::from_pem(&pem).map_err(|error| bad(&key, error.to_string()))?;
                    client_cert = Some(ClientCert::new_with_certs(&certificates(path)?, key));
                }
                _ => {}
            }
        }
    }
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .client_cert(client_cert)
        .disable_verification(!verify)
        .build())
}

/// Every certificate in the PEM file `path`.
fn certificates(path: &Path) -> Result<Vec<Certificate<'static>>, RegistryError> {
    let bad = |detail: String| RegistryError::CertDir {
        path: path.to_owned(),
        detail,
    };
    let pem = fs::read(path).map_err(|error| bad(error.to_string()))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(certificate) = item.map_err(|error| bad(error.to_string()))? {
            certificates.push(certificate);
        }
    }
    if certificates.is_empty() {
        return Err(bad("no PEM certificate in it".to_owned()));
    }
    Ok(certificates)
}
