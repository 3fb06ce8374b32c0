//! Reading an image from a registry, per the OCI distribution spec: manifests and configs by
//! tag or digest, layer blobs as streams (resumed with `Range` where a connection drops), with
//! the user's credentials (Basic, or Bearer tokens from the registry's token server) and TLS.
//!
//! Only the parent talks to the network; what it reads here is checked by the caller like any
//! other blob (documents against their digests, layers as they stream). Requests that fail
//! for a reason that may pass (a connection error, 429, 5xx) are tried again with backoff.
//! Redirects are followed by hand, so the registry's credentials go only to the registry.

mod auth;
mod blob;
mod error;
mod reference;
mod tls;

use std::cell::RefCell;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ureq::http::Response;
use ureq::{Agent, Body};

pub use self::auth::AuthOptions;
use self::auth::{Challenge, Credentials, Found};
pub use self::blob::BlobStream;
pub use self::error::{Place, RegistryError};
pub use self::reference::{RegistryRef, Version};
use crate::digest::Digest;

/// How many times a request that failed for a reason that may pass is tried again.
const RETRIES: u32 = 4;
/// The first wait before trying again; each next one doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest a `Retry-After` is waited for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// The most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// The longest a request for anything but a layer blob may take, whatever the server does (a
/// byte a minute would pass the per-read timeout): a manifest, a config, a token.
const DOCUMENT_DEADLINE: Duration = Duration::from_secs(120);
/// The longest a read may wait for a byte.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The most read of an error's body, or of a token server's answer.
const MAX_SMALL_BODY: u64 = 64 << 10;
/// The media types a manifest request accepts: OCI's and Docker's, indexes and manifests, and
/// Docker schema 1 (refused after, with a clear message, rather than as "not found").
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.v1+prettyjws, \
    application/vnd.docker.distribution.manifest.v1+json";

/// How to reach registries: what `--creds`, `--authfile`, `--cert-dir` and `--tls-verify`
/// say.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Where credentials come from.
    pub auth: AuthOptions,
    /// A `certs.d`-style directory of CAs and client certificates; else the registry's
    /// directory under `~/.config/containers/certs.d`, `/etc/containers/certs.d` or
    /// `/etc/docker/certs.d`.
    pub cert_dir: Option<PathBuf>,
    /// Verify the registry's certificate; with `false`, plain HTTP is also tried.
    pub tls_verify: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            auth: AuthOptions::default(),
            cert_dir: None,
            tls_verify: true,
        }
    }
}

/// What a request fetches, which says how long it may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transfer {
    /// A small document: a manifest, a config, a token, a ping.
    Document,
    /// A layer blob, of any size.
    Blob,
}

/// A manifest or index as the registry served it.
#[derive(Debug)]
pub struct Fetched {
    /// Its `Content-Type`.
    pub media_type: String,
    /// Its `Docker-Content-Digest`, if the registry sent a valid one.
    pub digest: Option<Digest>,
    /// Its bytes, at most the limit asked for.
    pub bytes: Vec<u8>,
}

/// A repository on a registry, connected: where it answers, and how to authenticate there.
/// Shared by the threads that download its blobs.
pub struct Repository {
    reference: RegistryRef,
    place: Place,
    agent: Agent,
    /// `https://HOST`, or `http://HOST` for a registry without TLS with `--tls-verify=false`.
    base: String,
    credentials: Found,
    /// The `Authorization` header the registry last accepted, or asked for.
    authorization: Mutex<Option<String>>,
}

/// Where, without the credentials and the `Authorization` header, which stay out of logs.
impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Repository({} at {})", self.place, self.base)
    }
}

impl Repository {
    /// Connects to the registry of `reference`: checks it speaks the distribution API
    /// (`GET /v2/`), over TLS, or else, with `--tls-verify=false`, plain HTTP.
    pub fn connect(
        reference: &RegistryRef,
        options: &PullOptions,
    ) -> Result<Arc<Repository>, RegistryError> {
        let place = Place::new(&reference.host, &reference.repository);
        let tls = tls::config(
            &reference.host,
            options.cert_dir.as_deref(),
            options.tls_verify,
        )?;
        let agent: Agent = Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .timeout_global(Some(DOCUMENT_DEADLINE))
            .build()
            .into();
        let credentials = options.auth.find(&reference.host, &reference.repository)?;
        let mut repository = Repository {
            reference: reference.clone(),
            place,
            agent,
            base: format!("https://{}", reference.api_host()),
            credentials,
            authorization: Mutex::new(None),
        };
        match repository.ping() {
            Err(RegistryError::Network { .. } | RegistryError::Tls { .. })
                if !options.tls_verify =>
            {
                repository.base = format!("http://{}", reference.api_host());
                repository.ping()?;
            }
            result => result?,
        }
        Ok(Arc::new(repository))
    }

    /// `GET /v2/`: a registry answers 200, or 401 if it wants credentials (asked for by the
    /// first request that needs them).
    fn ping(&self) -> Result<(), RegistryError> {
        let what = "checking it is a registry (GET /v2/)";
        let landed = RefCell::default();
        let response = self.retrying(what, || {
            self.get(
                &format!("{}/v2/", self.base),
                &[],
                Transfer::Document,
                &landed,
            )
        })?;
        match response.status().as_u16() {
            200 | 401 => Ok(()),
            status => Err(self.status_error(what, status, response)),
        }
    }

    /// The manifest or index `version` (a tag or a digest), at most `limit` bytes.
    pub fn manifest(&self, version: &str, limit: u64) -> Result<Fetched, RegistryError> {
        let what = format!("manifest {version}");
        let path = format!("/v2/{}/manifests/{version}", self.reference.repository);
        let accept = [("Accept", MANIFEST_TYPES.to_owned())];
        let mut response = self.request(&what, &path, &accept, Transfer::Document)?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let media_type = header("content-type")
            .map(|t| t.split(';').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default();
        let digest = header("docker-content-digest").and_then(|d| Digest::parse(&d).ok());
        let bytes = self.read_limited(&what, &mut response, limit)?;
        Ok(Fetched {
            media_type,
            digest,
            bytes,
        })
    }

    /// A small blob (a config), which is a `what`, at most `limit` bytes; the caller checks
    /// its digest.
    pub fn small_blob(
        &self,
        what: &str,
        digest: &Digest,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let path = format!("/v2/{}/blobs/{digest}", self.reference.repository);
        let mut response = self.request(what, &path, &[], Transfer::Document)?;
        self.read_limited(what, &mut response, limit)
    }

    /// Streams the blob `digest`, of `size` bytes; the caller checks it as it reads.
    pub fn blob(self: &Arc<Self>, digest: &Digest, size: u64) -> BlobStream {
        BlobStream::new(Arc::clone(self), digest.clone(), size)
    }

    fn read_limited(
        &self,
        what: &str,
        response: &mut Response<Body>,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut bytes = Vec::new();
        response
            .body_mut()
            .as_reader()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| self.network_error(what, &ureq::Error::Io(error)))?;
        if bytes.len() as u64 > limit {
            return Err(RegistryError::Protocol {
                place: self.place.clone(),
                detail: format!(
                    "{what} is more than the {} MiB strata reads of it",
                    limit >> 20
                ),
            });
        }
        Ok(bytes)
    }

    /// GETs `path` of the registry, with `headers`: authenticates when it answers 401, tries
    /// again what may pass; returns a 200 or 206 response, or the error the rest mean.
    fn request(
        &self,
        what: &str,
        path: &str,
        headers: &[(&str, String)],
        transfer: Transfer,
    ) -> Result<Response<Body>, RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut authenticated = false;
        let landed = RefCell::default();
        loop {
            let response = self.retrying(what, || self.get(&url, headers, transfer, &landed))?;
            match response.status().as_u16() {
                200 | 206 => return Ok(response),
                // Where a redirect led (blob storage) asks for credentials: not the
                // registry's to give, nor its token server's to receive.
                401 if !self.is_registry(&landed.borrow()) => {
                    let what = format!("{what}, redirected to {}", origin(&landed.borrow()));
                    return Err(self.status_error(&what, 401, response));
                }
                401 if !authenticated => {
                    self.authenticate(&response)?;
                    authenticated = true;
                }
                // An anonymous token that does not open the repository: it is private, or
                // not there.
                401 if self.credentials.credentials == Credentials::Anonymous => {
                    return Err(self.no_credentials());
                }
                401 => {
                    return Err(RegistryError::Refused {
                        place: self.place.clone(),
                        host: self.reference.host.clone(),
                        message: error_message(response),
                    });
                }
                404 => {
                    return Err(RegistryError::NotFound {
                        place: self.place.clone(),
                        what: what.to_owned(),
                        message: error_message(response),
                    });
                }
                status => return Err(self.status_error(what, status, response)),
            }
        }
    }

    /// Runs `send` until it gets a response that is not worth waiting out (not 429 or 5xx),
    /// or a connection error that is not worth trying again, or it has tried [`RETRIES`]
    /// more times.
    fn retrying(
        &self,
        what: &str,
        mut send: impl FnMut() -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut attempt = 0;
        loop {
            let wait = match send() {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if !(status == 429 || (500..600).contains(&status)) || attempt == RETRIES {
                        return Ok(response);
                    }
                    retry_after(&response)
                }
                Err(error) if is_transient(&error) && attempt < RETRIES => None,
                Err(error) => return Err(self.network_error(what, &error)),
            };
            thread::sleep(wait.unwrap_or_else(|| backoff(attempt)));
            attempt += 1;
        }
    }

    /// GETs `url`, following redirects; the registry's `Authorization` goes only to the
    /// registry's own origin. `landed` is set to the URL that answered.
    fn get(
        &self,
        url: &str,
        headers: &[(&str, String)],
        transfer: Transfer,
        landed: &RefCell<String>,
    ) -> Result<Response<Body>, ureq::Error> {
        let mut url = url.to_owned();
        let authorization = self
            .authorization
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.agent.get(&url);
            if transfer == Transfer::Blob {
                // As long as it takes, so long as bytes keep coming (the per-read timeout).
                request = request.config().timeout_global(None).build();
            }
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            if let Some(authorization) = &authorization
                && self.is_registry(&url)
            {
                request = request.header("Authorization", authorization);
            }
            let response = request.call()?;
            if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                *landed.borrow_mut() = url;
                return Ok(response);
            }
            let location = response
                .headers()
                .get("location")
                .and_then(|value| value.to_str().ok())
                .ok_or(ureq::Error::RedirectFailed)?;
            url = resolve_location(&url, location);
        }
        Err(ureq::Error::TooManyRedirects)
    }

    /// Whether `url` is the registry's own: its credentials may go there, and its challenges
    /// be answered.
    fn is_registry(&self, url: &str) -> bool {
        origin(url) == origin(&self.base)
    }

    /// Answers a 401: the credentials as Basic auth, or a token for them from the token
    /// server the challenge names.
    fn authenticate(&self, response: &Response<Body>) -> Result<(), RegistryError> {
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|value| value.to_str().ok())
            .and_then(Challenge::parse);
        let authorization = match (challenge, &self.credentials.credentials) {
            (None, _) => {
                return Err(RegistryError::Protocol {
                    place: self.place.clone(),
                    detail:
                        "401 Unauthorized without a challenge strata can answer (WWW-Authenticate)"
                            .to_owned(),
                });
            }
            (Some(Challenge::Basic), Credentials::Basic { user, password }) => {
                basic(user, password)
            }
            (Some(Challenge::Basic), _) => return Err(self.no_credentials()),
            (Some(Challenge::Bearer { realm, service }), credentials) => {
                format!(
                    "Bearer {}",
                    self.token(&realm, service.as_deref(), credentials)?
                )
            }
        };
        *self.authorization.lock().unwrap_or_else(|p| p.into_inner()) = Some(authorization);
        Ok(())
    }

    /// A pull token for the repository from the token server at `realm`: asked for with the
    /// user's Basic credentials (or none: an anonymous token), or traded for their identity
    /// token (OAuth2 `refresh_token`).
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        credentials: &Credentials,
    ) -> Result<String, RegistryError> {
        let what = format!("getting a token from {realm}");
        let scope = format!("repository:{}:pull", self.reference.repository);
        let mut response = self.retrying(&what, || {
            let mut query: Vec<(&str, &str)> = vec![("scope", &scope)];
            query.extend(service.map(|service| ("service", service)));
            match credentials {
                Credentials::IdentityToken(token) => {
                    let mut form = query.clone();
                    form.extend([
                        ("grant_type", "refresh_token"),
                        ("client_id", "strata"),
                        ("refresh_token", token),
                    ]);
                    self.agent.post(realm).send_form(form)
                }
                Credentials::Basic { user, password } => self
                    .agent
                    .get(realm)
                    .query_pairs(query)
                    .header("Authorization", basic(user, password))
                    .call(),
                Credentials::Anonymous => self.agent.get(realm).query_pairs(query).call(),
            }
        })?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 if credentials == &Credentials::Anonymous => {
                return Err(self.no_credentials());
            }
            401 | 403 => {
                return Err(RegistryError::Refused {
                    place: self.place.clone(),
                    host: self.reference.host.clone(),
                    message: error_message(response),
                });
            }
            status => return Err(self.status_error(&what, status, response)),
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = self.read_limited(&what, &mut response, MAX_SMALL_BODY)?;
        let answer: Answer =
            serde_json::from_slice(&bytes).map_err(|error| RegistryError::Protocol {
                place: self.place.clone(),
                detail: format!("{what}: the answer is not a token: {error}"),
            })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| RegistryError::Protocol {
                place: self.place.clone(),
                detail: format!("{what}: the answer holds no token"),
            })
    }

    /// The registry wants credentials the user has not given: where they were looked for.
    fn no_credentials(&self) -> RegistryError {
        RegistryError::NoCredentials {
            place: self.place.clone(),
            host: self.reference.host.clone(),
            searched: self.credentials.searched.clone(),
        }
    }

    fn status_error(&self, what: &str, status: u16, response: Response<Body>) -> RegistryError {
        RegistryError::Status {
            place: self.place.clone(),
            what: what.to_owned(),
            status,
            message: error_message(response),
        }
    }

    fn network_error(&self, what: &str, error: &ureq::Error) -> RegistryError {
        let place = self.place.clone();
        if is_tls(error) {
            return RegistryError::Tls {
                place,
                detail: error.to_string(),
            };
        }
        RegistryError::Network {
            place,
            what: what.to_owned(),
            detail: error.to_string(),
        }
    }
}

/// A TLS failure: a certificate not trusted, or a server that does not speak TLS. (rustls's
/// errors come wrapped in an I/O error.)
fn is_tls(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) => true,
        ureq::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// The `Authorization` header of Basic auth.
fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

/// How long to wait before trying again for the `attempt`th time (from 0).
fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF * 2u32.pow(attempt)
}

/// Connection errors worth trying again: not a name that does not resolve, nor a TLS failure.
fn is_transient(error: &ureq::Error) -> bool {
    !is_tls(error)
        && matches!(
            error,
            ureq::Error::Io(_)
                | ureq::Error::ConnectionFailed
                | ureq::Error::Timeout(_)
                | ureq::Error::Protocol(_)
        )
}

/// The wait a 429 or 503 asks for in seconds (`Retry-After`), capped.
fn retry_after(response: &Response<Body>) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// What a registry's error body says (`{"errors":[{"code":…,"message":…}]}`), on one line.
fn error_message(mut response: Response<Body>) -> String {
    let mut bytes = Vec::new();
    let _ = response
        .body_mut()
        .as_reader()
        .take(MAX_SMALL_BODY)
        .read_to_end(&mut bytes);
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Errors>(&bytes) {
        Ok(Errors { errors }) => errors
            .iter()
            .map(|e| format!("{} {}", e.code, e.message).trim().to_owned())
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => String::new(),
    };
    // One line, and nothing a terminal would act on.
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |at| after_scheme + at);
    &url[..end]
}

/// Where a `Location` header sends a request for `url`.
fn resolve_location(url: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_owned()
    } else if location.starts_with("//") {
        let scheme = url.split("://").next().unwrap_or("https");
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        format!("{}{location}", origin(url))
    } else {
        let path_end = url.split('?').next().unwrap_or(url);
        let directory = &path_end[..path_end.rfind('/').map_or(path_end.len(), |at| at + 1)];
        format!("{directory}{location}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_locations() {
        assert_eq!(
            origin("https://reg.io:5000/v2/a/blobs/x"),
            "https://reg.io:5000"
        );
        assert_eq!(origin("http://127.0.0.1"), "http://127.0.0.1");
        let from = "https://reg.io/v2/a/blobs/sha256:x?y=1";
        for (location, to) in [
            ("https://cdn.io/b?sig=1", "https://cdn.io/b?sig=1"),
            ("//cdn.io/b", "https://cdn.io/b"),
            ("/other", "https://reg.io/other"),
            ("rel", "https://reg.io/v2/a/blobs/rel"),
        ] {
            assert_eq!(resolve_location(from, location), to, "{location}");
        }
    }
}
