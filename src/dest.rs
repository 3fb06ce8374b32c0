//! DEST appears whole or not at all: everything is built in a private staging directory beside
//! it and renamed into place at the end.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::sandbox::{Helper, IdMap, IdMapMode};
use crate::store::after_cleanup;
use crate::unpack::Progress;

/// Makes `dest` whole or not at all: stages it, chooses the helper for `idmap` (tried on the
/// empty staging directory; `recorded` gives the mapping a store was made with), removes what
/// killed runs left beside it, lets `fill` fill the staging directory with that helper, and
/// publishes it. On any failure the staging directory goes. Returns what `fill` returned, and
/// the helper.
pub fn build<T>(
    dest: &Path,
    idmap: IdMapMode,
    recorded: impl FnOnce() -> Result<Option<IdMap>>,
    progress: &mut dyn FnMut(Progress),
    fill: impl FnOnce(&Staging, &Helper, &mut dyn FnMut(Progress)) -> Result<T>,
) -> Result<(T, Helper)> {
    let staging = Staging::create(dest)?;
    // Until a helper is chosen, the staging directory is empty and needs none to go.
    let mut helper = Helper::locate(IdMap::Single)?;
    let filled = (|| {
        let (chosen, warning) = Helper::choose(idmap, recorded()?, staging.path())?;
        helper = chosen;
        if let Some(warning) = warning {
            progress(Progress::Warning(warning));
        }
        staging.remove_dead_runs_debris(&helper)?;
        fill(&staging, &helper, progress)
    })();
    match filled {
        Ok(filled) => {
            staging.publish()?;
            Ok((filled, helper))
        }
        Err(err) => Err(after_cleanup(err, staging.discard(&helper))),
    }
}

pub struct Staging {
    dest: PathBuf,
    dir: PathBuf,
    /// `.NAME.strata-`: what staging directories for this DEST are called.
    prefix: String,
    /// DEST was an empty directory, which the rename replaces.
    replaces_empty_dir: bool,
}

impl Staging {
    /// Checks that DEST is absent or an empty directory, and creates the staging directory,
    /// mode 0700 (no other user may reach setuid files inside, as with umoci's bundles).
    pub fn create(dest: &Path) -> Result<Staging> {
        let replaces_empty_dir = match fs::symlink_metadata(dest) {
            Ok(meta) if meta.is_dir() => {
                let mut entries =
                    fs::read_dir(dest).with_context(|| format!("reading {}", dest.display()))?;
                if entries.next().is_some() {
                    bail!("destination {} is not empty", dest.display());
                }
                true
            }
            Ok(_) => bail!(
                "destination {} exists and is not a directory",
                dest.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(e).with_context(|| format!("checking destination {}", dest.display()));
            }
        };
        let Some(name) = dest.file_name() else {
            bail!(
                "destination {} does not name a directory to create",
                dest.display()
            );
        };
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let prefix = format!(".{}.strata-", name.to_string_lossy());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!("{prefix}{}-{nanos}", std::process::id()));
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {} beside the destination", dir.display()))?;
        Ok(Staging {
            dest: dest.to_path_buf(),
            dir,
            prefix,
            replaces_empty_dir,
        })
    }

    /// Removes staging directories that killed runs left beside DEST: `PREFIX<pid>-<nanos>`
    /// whose process is gone.
    pub fn remove_dead_runs_debris(&self, helper: &Helper) -> Result<()> {
        let parent = self.dir.parent().expect("the staging dir has a parent");
        let Ok(entries) = fs::read_dir(parent) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&self.prefix)) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let gone = kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH);
            if gone {
                let path = entry.path();
                helper
                    .remove_dir(&path)
                    .with_context(|| format!("removing {} left by a killed run", path.display()))?;
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Gives the tree's root the permission bits `mode` (it is made 0700).
    pub fn set_mode(&self, mode: u32) -> Result<()> {
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", self.dir.display()))
    }

    /// Moves the finished tree to DEST.
    pub fn publish(self) -> Result<()> {
        let flags = if self.replaces_empty_dir {
            RenameFlags::empty()
        } else {
            RenameFlags::RENAME_NOREPLACE
        };
        renameat2(AT_FDCWD, &self.dir, AT_FDCWD, &self.dest, flags)
            .with_context(|| format!("moving the unpacked tree to {}", self.dest.display()))
    }

    /// Removes the staging directory and all it holds (in a helper: the tree may hold
    /// directories its owner cannot enter).
    pub fn discard(self, helper: &Helper) -> Result<()> {
        helper.remove_dir(&self.dir)
    }
}
