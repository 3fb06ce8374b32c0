//! `docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST]`, read as the distribution project's reference
//! grammar reads it, with Docker's normalisation: a first component is a host only if it has a
//! '.' or a ':', or is `localhost`; otherwise the image is on Docker Hub (as it is for
//! `index.docker.io`), and a one-component name there is in `library/`. No tag means `latest`.
//! Pure, table-tested.

use std::fmt;

use crate::digest::Digest;

/// Where Docker Hub's images are named to be.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API really is.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// An image in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `HOST[:PORT]` as the user's credentials and certificates name it (`docker.io` for
    /// Docker Hub).
    pub host: String,
    /// The repository's path, such as `library/debian`.
    pub repository: String,
    /// Which manifest in it.
    pub version: Version,
}

/// Which manifest of a repository a reference names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    /// A tag, which the registry resolves.
    Tag(String),
    /// A manifest digest, which the manifest's bytes are checked against (a tag given with it
    /// is left out, as podman does).
    Digest(Digest),
}

impl RegistryRef {
    /// Parses what follows `docker://`.
    pub fn parse(text: &str) -> Result<RegistryRef, String> {
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let digest = Digest::parse(digest).map_err(|e| e.to_string())?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/'; an earlier ':' is a port.
        let last_component = name.rfind('/').map_or(0, |slash| slash + 1);
        let (name, tag) = match name[last_component..].rfind(':') {
            Some(colon) => {
                let (name, tag) = name.split_at(last_component + colon);
                (name, Some(&tag[1..]))
            }
            None => (name, None),
        };
        if let Some(tag) = tag
            && !is_tag(tag)
        {
            return Err(format!(
                "{tag:?} is not a valid tag (letters, digits, '_', '.' and '-', at most 128)"
            ));
        }
        let (host, path) = match name.split_once('/') {
            // Docker Hub's old name is Docker Hub.
            Some(("index.docker.io", rest)) => (DOCKER_HUB.to_owned(), rest.to_owned()),
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if !is_host(&host) {
            return Err(format!("{host:?} is not a registry host (HOST[:PORT])"));
        }
        let repository = if host == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if !repository.split('/').all(is_path_component) {
            return Err(format!(
                "{repository:?} is not a repository name (lowercase letters and digits, \
                 separated by '/', '.', '_', '__' or '-')"
            ));
        }
        let version = match (digest, tag) {
            (Some(digest), _) => Version::Digest(digest),
            (None, Some(tag)) => Version::Tag(tag.to_owned()),
            (None, None) => Version::Tag("latest".to_owned()),
        };
        Ok(RegistryRef {
            host,
            repository,
            version,
        })
    }

    /// The host the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.host == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.host
        }
    }

    /// What the manifest is asked for by: the tag, or the digest.
    pub fn version_text(&self) -> &str {
        match &self.version {
            Version::Tag(tag) => tag,
            Version::Digest(digest) => digest.as_str(),
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.host, self.repository)?;
        match &self.version {
            Version::Tag(tag) => write!(f, ":{tag}"),
            Version::Digest(digest) => write!(f, "@{digest}"),
        }
    }
}

/// `HOST[:PORT]`: DNS labels joined by '.', or a bracketed IPv6 address; a port of digits.
fn is_host(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (host, Some(port)),
        _ => (text, None),
    };
    let label = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.split('.').all(label),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    tag.len() <= 128
        && tag.starts_with(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-')
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    component.starts_with(alphanumeric)
        && component.ends_with(alphanumeric)
        && component
            .split(alphanumeric)
            .filter(|separator| !separator.is_empty())
            .all(|separator| {
                matches!(separator, "." | "_" | "__") || separator.chars().all(|c| c == '-')
            })
        && component
            .chars()
            .all(|c| alphanumeric(c) || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises_as_docker_does() {
        let digest = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        let tag = |t: &str| Version::Tag(t.to_owned());
        let table: &[(&str, &str, &str, Version)] = &[
            ("debian", "docker.io", "library/debian", tag("latest")),
            ("debian:12", "docker.io", "library/debian", tag("12")),
            ("user/app:v1", "docker.io", "user/app", tag("v1")),
            (
                "docker.io/debian",
                "docker.io",
                "library/debian",
                tag("latest"),
            ),
            (
                "index.docker.io/debian",
                "docker.io",
                "library/debian",
                tag("latest"),
            ),
            ("quay.io/org/app", "quay.io", "org/app", tag("latest")),
            ("localhost/app:x", "localhost", "app", tag("x")),
            (
                "127.0.0.1:5000/a/b:1.0",
                "127.0.0.1:5000",
                "a/b",
                tag("1.0"),
            ),
            ("localhost:5000/app", "localhost:5000", "app", tag("latest")),
            ("[::1]:5000/app", "[::1]:5000", "app", tag("latest")),
            (
                &format!("ghcr.io/o/app@sha256:{HEX}"),
                "ghcr.io",
                "o/app",
                Version::Digest(digest.clone()),
            ),
            (
                &format!("app:v1@sha256:{HEX}"),
                "docker.io",
                "library/app",
                Version::Digest(digest),
            ),
            (
                "my.reg/a.b/c_d/e__f/g-h--i",
                "my.reg",
                "a.b/c_d/e__f/g-h--i",
                tag("latest"),
            ),
        ];
        for (text, host, repository, version) in table {
            let parsed = RegistryRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (
                    parsed.host.as_str(),
                    parsed.repository.as_str(),
                    &parsed.version
                ),
                (*host, *repository, version),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_what_docker_refuses() {
        for text in [
            "",
            "Debian",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "reg.io/",
            "app:",
            "app:-x",
            "app:a/b",
            "reg_io.com/app",
            "reg.io:/app",
            "reg.io:123456/app",
            "app@sha256:1234",
            "app@md5:abcd",
            &format!("app:{}", "x".repeat(129)),
        ] {
            assert!(RegistryRef::parse(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn docker_hub_is_reached_at_its_api_host() {
        let hub = RegistryRef::parse("debian").unwrap();
        assert_eq!(hub.api_host(), "registry-1.docker.io");
        let local = RegistryRef::parse("localhost:5000/app").unwrap();
        assert_eq!(local.api_host(), "localhost:5000");
    }

    #[test]
    fn displays_normalised() {
        assert_eq!(
            RegistryRef::parse("debian").unwrap().to_string(),
            "docker://docker.io/library/debian:latest"
        );
        let text = format!("docker://reg.io:5000/a/b@sha256:{HEX}");
        assert_eq!(
            RegistryRef::parse(&text["docker://".len()..])
                .unwrap()
                .to_string(),
            text
        );
    }
}
