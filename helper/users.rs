//! Who a process of the image runs as: an image config's `User` (`user[:group]`, each a name
//! or a number) looked up in the rootfs's `/etc/passwd` and `/etc/group`, as runc's
//! `GetExecUser` (and so umoci) does. Pure: the files' contents come in as bytes.
//!
//! - No user: root (0:0).
//! - A user found in passwd, by name or by number, takes its uid and primary gid; a number not
//!   found stands for itself, with gid 0; a name not found is an error.
//! - A group, by name or number, replaces the primary gid, looked up the same way.
//!
//! Additional groups (those that list the user) are not looked up: runc refuses to set any in
//! a rootless container, which is what `strata bundle` makes.

use std::fmt;

use strata_protocol::ExecUser;

/// Why a user cannot be found.
#[derive(Debug, PartialEq, Eq)]
pub enum LookupError {
    /// A user name that `/etc/passwd` does not have.
    NoUser(String),
    /// A group name that `/etc/group` does not have.
    NoGroup(String),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NoUser(name) => write!(f, "no user {name:?} in the image's /etc/passwd"),
            LookupError::NoGroup(name) => write!(f, "no group {name:?} in the image's /etc/group"),
        }
    }
}

impl std::error::Error for LookupError {}

/// `spec` (the config's `User`) as the image's `passwd` and `group` files (empty when missing)
/// resolve it.
pub fn look_up(spec: &str, passwd: &[u8], group: &[u8]) -> Result<ExecUser, LookupError> {
    let (user, group_spec) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let mut exec = ExecUser { uid: 0, gid: 0 };
    if !user.is_empty() {
        let found = entries(passwd, 7)
            .find(|fields| fields[0] == user || (is_id(user) && fields[2] == user));
        match (found, user.parse::<u32>()) {
            (Some(fields), _) => {
                exec.uid = fields[2].parse().unwrap_or(0);
                exec.gid = fields[3].parse().unwrap_or(0);
            }
            (None, Ok(uid)) => exec.uid = uid,
            (None, Err(_)) => return Err(LookupError::NoUser(user.to_owned())),
        }
    }
    if let Some(group_spec) = group_spec.filter(|group| !group.is_empty()) {
        let found = entries(group, 4).find(|fields| {
            fields[0] == group_spec || (is_id(group_spec) && fields[2] == group_spec)
        });
        exec.gid = match (found, group_spec.parse::<u32>()) {
            (Some(fields), _) => fields[2].parse().unwrap_or(0),
            (None, Ok(gid)) => gid,
            (None, Err(_)) => return Err(LookupError::NoGroup(group_spec.to_owned())),
        };
    }
    Ok(exec)
}

/// A decimal id, as the files write them.
fn is_id(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The lines of a colon-separated file with at least `fields` fields, split; comments and
/// malformed lines skipped, as libc does.
fn entries(file: &[u8], fields: usize) -> impl Iterator<Item = Vec<&str>> {
    file.split(|&b| b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(move |split| split.len() >= fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken line\n\
        svc:x:999:50::/:/sbin/nologin\n";
    const GROUP: &[u8] = b"root:x:0:\n\
        app:x:1000:\n\
        staff:x:50:app,other\n\
        audio:x:29:app\n\
        wheel:x:10:other\n";

    fn user(uid: u32, gid: u32) -> Result<ExecUser, LookupError> {
        Ok(ExecUser { uid, gid })
    }

    #[test]
    fn users_resolve_as_runc_resolves_them() {
        let rows = [
            ("", user(0, 0)),
            ("root", user(0, 0)),
            ("app", user(1000, 1000)),
            ("1000", user(1000, 1000)),
            ("svc", user(999, 50)),
            ("4321", user(4321, 0)),
            ("app:staff", user(1000, 50)),
            ("app:10", user(1000, 10)),
            ("app:777", user(1000, 777)),
            ("1234:5678", user(1234, 5678)),
            (":audio", user(0, 29)),
            ("nobody", Err(LookupError::NoUser("nobody".into()))),
            ("app:nogroup", Err(LookupError::NoGroup("nogroup".into()))),
        ];
        for (spec, expected) in rows {
            assert_eq!(look_up(spec, PASSWD, GROUP), expected, "{spec:?}");
        }
    }

    #[test]
    fn without_the_files_only_numbers_resolve() {
        assert_eq!(look_up("0", b"", b""), user(0, 0));
        assert_eq!(look_up("1000:1000", b"", b""), user(1000, 1000));
        assert_eq!(
            look_up("app", b"", b""),
            Err(LookupError::NoUser("app".into()))
        );
    }
}
