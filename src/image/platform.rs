//! Platforms (`os/arch[/variant]`) and how an index entry's platform is matched against one.

use std::fmt;

use oci_spec::image::Descriptor;

use super::ImageError;

/// A platform in the Go names the image spec uses (`linux/arm64/v8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v8`, `v7`, … where the architecture has variants.
    pub variant: Option<String>,
}

/// How well an index entry fits the wanted platform; the first best fit wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Fit {
    /// Same os and architecture, but the variant is only compatible (`arm64` for `arm64/v8`,
    /// or any variant when none is wanted).
    Compatible,
    Exact,
}

impl Platform {
    /// The platform this binary runs on, always `linux`.
    pub fn host() -> Platform {
        let architecture = go_architecture(std::env::consts::ARCH).to_owned();
        // Every aarch64 CPU implements ARMv8; arm64 images are tagged `v8` or not at all.
        let variant = (architecture == "arm64").then(|| "v8".to_owned());
        Platform {
            os: "linux".to_owned(),
            architecture,
            variant,
        }
    }

    /// Parses `os/arch[/variant]`, also accepting Rust's and uname's `x86_64` and `aarch64`.
    pub fn parse(text: &str) -> Result<Platform, ImageError> {
        let invalid = || ImageError::Platform {
            text: text.to_owned(),
        };
        let parts: Vec<&str> = text.split('/').collect();
        if parts.iter().any(|part| part.is_empty()) {
            return Err(invalid());
        }
        let (os, architecture, variant) = match parts[..] {
            [os, architecture] => (os, architecture, None),
            [os, architecture, variant] => (os, architecture, Some(variant.to_owned())),
            _ => return Err(invalid()),
        };
        Ok(Platform {
            os: os.to_owned(),
            architecture: go_architecture(architecture).to_owned(),
            variant,
        })
    }

    /// The platform an index entry declares, if it declares one.
    pub(super) fn of_descriptor(descriptor: &Descriptor) -> Option<Platform> {
        descriptor.platform().as_ref().map(|platform| Platform {
            os: platform.os().to_string(),
            architecture: platform.architecture().to_string(),
            variant: platform.variant().clone(),
        })
    }

    /// How `offered` (an index entry's platform) fits this wanted platform, if at all.
    pub(super) fn fit(&self, offered: &Platform) -> Option<Fit> {
        if offered.os != self.os || offered.architecture != self.architecture {
            return None;
        }
        match (&self.variant, &offered.variant) {
            (wanted, offered) if wanted == offered => Some(Fit::Exact),
            (None, Some(_)) => Some(Fit::Compatible),
            (Some(wanted), None) if self.architecture == "arm64" && wanted == "v8" => {
                Some(Fit::Compatible)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// Maps Rust's `std::env::consts::ARCH` names (and uname's) to Go's `GOARCH` names.
fn go_architecture(name: &str) -> &str {
    match name {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(text: &str) -> Platform {
        Platform::parse(text).unwrap()
    }

    #[test]
    fn parses_and_displays() {
        let arm = platform("linux/arm64/v8");
        assert_eq!(
            (arm.os.as_str(), arm.architecture.as_str()),
            ("linux", "arm64")
        );
        assert_eq!(arm.variant.as_deref(), Some("v8"));
        assert_eq!(arm.to_string(), "linux/arm64/v8");
        assert_eq!(platform("linux/x86_64").to_string(), "linux/amd64");
        for bad in ["linux", "linux/", "/amd64", "linux/arm/v7/x", ""] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_uses_go_names() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host, platform("linux/amd64"));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host, platform("linux/arm64/v8"));
        }
    }

    #[test]
    fn variants() {
        let fit = |wanted: &str, offered: &str| platform(wanted).fit(&platform(offered));
        assert_eq!(fit("linux/amd64", "linux/amd64"), Some(Fit::Exact));
        assert_eq!(fit("linux/amd64", "linux/amd64/v3"), Some(Fit::Compatible));
        assert_eq!(fit("linux/amd64/v3", "linux/amd64"), None);
        assert_eq!(fit("linux/arm64/v8", "linux/arm64/v8"), Some(Fit::Exact));
        assert_eq!(fit("linux/arm64/v8", "linux/arm64"), Some(Fit::Compatible));
        assert_eq!(fit("linux/arm/v7", "linux/arm/v6"), None);
        assert_eq!(fit("linux/arm64", "linux/amd64"), None);
        assert_eq!(fit("linux/amd64", "windows/amd64"), None);
    }
}
