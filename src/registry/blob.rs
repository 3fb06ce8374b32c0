//! A layer blob streamed from a registry, resumed where it broke off.
//!
//! The stream only moves bytes: the reader checks the blob's size and digest as they arrive,
//! so a resumed transfer that does not continue the same blob fails there, and nothing built
//! on it is committed.

use std::io::{self, Read};
use std::sync::Arc;
use std::thread;

use ureq::BodyReader;

use super::{RETRIES, RegistryError, Repository, Transfer, backoff};
use crate::digest::Digest;

/// A blob's bytes as the registry sends them, from where the last connection stopped.
pub struct BlobStream {
    repository: Arc<Repository>,
    digest: Digest,
    size: u64,
    body: Option<BodyReader<'static>>,
    /// Bytes of the blob read so far.
    offset: u64,
    /// Connections that broke off in a row without a byte read.
    failures: u32,
}

impl BlobStream {
    pub(super) fn new(repository: Arc<Repository>, digest: Digest, size: u64) -> Self {
        BlobStream {
            repository,
            digest,
            size,
            body: None,
            offset: 0,
            failures: 0,
        }
    }

    /// Asks for the blob from `offset` on: a `Range` request when some was read. A registry
    /// that ignores the range sends it all, and what was read already is skipped.
    fn open(&mut self) -> Result<BodyReader<'static>, RegistryError> {
        let what = format!("blob {}", self.digest);
        let path = format!(
            "/v2/{}/blobs/{}",
            self.repository.reference.repository, self.digest
        );
        let range = (self.offset > 0).then(|| ("Range", format!("bytes={}-", self.offset)));
        let response = self
            .repository
            .request(&what, &path, range.as_slice(), Transfer::Blob)?;
        let partial = response.status().as_u16() == 206;
        if partial {
            let starts_at = response
                .headers()
                .get("content-range")
                .and_then(|value| value.to_str().ok())
                .and_then(|range| range.strip_prefix("bytes "))
                .and_then(|range| range.split('-').next())
                .and_then(|start| start.parse::<u64>().ok());
            if starts_at != Some(self.offset) {
                return Err(RegistryError::Protocol {
                    place: self.repository.place.clone(),
                    detail: format!(
                        "{what}: asked to resume at byte {}, the registry answered with another range",
                        self.offset
                    ),
                });
            }
        }
        let mut body = response.into_body().into_reader();
        if !partial && self.offset > 0 {
            let skipped =
                io::copy(&mut (&mut body).take(self.offset), &mut io::sink()).map_err(|error| {
                    self.repository
                        .network_error(&what, &ureq::Error::Io(error))
                })?;
            if skipped < self.offset {
                return Err(RegistryError::Protocol {
                    place: self.repository.place.clone(),
                    detail: format!("{what} was shorter when asked for again"),
                });
            }
        }
        Ok(body)
    }

    /// After a connection broke off: whether to try again, waiting first.
    fn may_resume(&mut self) -> bool {
        if self.failures == RETRIES {
            return false;
        }
        thread::sleep(backoff(self.failures));
        self.failures += 1;
        true
    }
}

impl Read for BlobStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let body = match &mut self.body {
                Some(body) => body,
                None => {
                    let body = self.open().map_err(io::Error::other)?;
                    self.body.insert(body)
                }
            };
            let broke_off = match body.read(buf) {
                Ok(0) if self.offset < self.size => {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed early")
                }
                Ok(n) => {
                    self.offset += n as u64;
                    if n > 0 {
                        self.failures = 0;
                    }
                    return Ok(n);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => error,
            };
            self.body = None;
            if !self.may_resume() {
                return Err(io::Error::other(RegistryError::Network {
                    place: self.repository.place.clone(),
                    what: format!("blob {}", self.digest),
                    detail: format!(
                        "the transfer broke off at byte {}: {broke_off}",
                        self.offset
                    ),
                }));
            }
        }
    }
}
