//! Who runs operator scripts, and whether one that someone other than root could have changed may
//! run as root.
//!
//! In corral a script check (MISC_CHECK) or a `notify_up`/`quorum_down` hook arrives with the
//! replicated rules: whoever can apply rules on one director has the command run on every
//! director. The node's own config decides how far that reaches, with keepalived's two answers:
//! - `script_user`: run every script as an unprivileged user ([`RunAs`]), and
//! - `enable_script_security`: refuse to run as root a script whose file, or a directory above
//!   it, is writable by anyone but root ([`ScriptPolicy::secure`]); otherwise a user who can
//!   write that file owns every director.
//!
//! The policy is applied where each command is built ([`ScriptPolicy::command`],
//! [`ScriptPolicy::shell`]), so no spawn site can forget it.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The user a script runs as, resolved once at start (a name that stops resolving later must not
/// fall back to root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// As configured, for logs.
    pub user: String,
    /// Numeric ids set in the child before it executes the script.
    pub uid: u32,
    /// The group: configured, or the user's primary group.
    pub gid: u32,
}

/// Why a `script_user`/`script_group` setting does not resolve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// No such user in the system's user database.
    #[error("no user named {0:?} on this system")]
    UnknownUser(String),
    /// No such group.
    #[error("no group named {0:?} on this system")]
    UnknownGroup(String),
    /// The lookup itself failed (NSS error).
    #[error("looking up {name:?}: {error}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The system's error.
        error: String,
    },
}

/// A script the policy will not run, with the path component that makes it unsafe.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("refused to run {script} as root: {path} {why} (script security is on: make the path root's alone, or run scripts as another user)")]
pub struct Refused {
    /// The script as the command names it.
    pub script: String,
    /// The file or directory that someone other than root could change.
    pub path: PathBuf,
    /// What is wrong with it, e.g. "is owned by uid 1000".
    pub why: String,
}

/// How this node runs operator scripts. The default runs them as the daemon's own user with no
/// path checks (what corral did before the policy existed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptPolicy {
    run_as: Option<RunAs>,
    secure: bool,
}

/// The user keepalived-style defaults pick when it exists and none is configured (keepalived's
/// is `keepalived_script`).
pub const DEFAULT_SCRIPT_USER: &str = "corral_script";

impl ScriptPolicy {
    /// `run_as`: None = the daemon's own user. `secure`: refuse scripts that a non-root user could
    /// change when they would run as root.
    pub fn new(run_as: Option<RunAs>, secure: bool) -> Self {
        ScriptPolicy { run_as, secure }
    }

    /// The configured user, if any.
    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    /// Whether insecure scripts are refused when they would run as root.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Whether scripts end up running as root under this policy.
    pub fn runs_as_root(&self) -> bool {
        match &self.run_as {
            Some(r) => r.uid == 0,
            // SAFETY: geteuid(2) cannot fail and has no preconditions.
            None => (unsafe { libc::geteuid() }) == 0,
        }
    }

    /// A command for `program`, checked against the policy, with the user and group set. Its
    /// supplementary groups are dropped too (the standard library does so when it changes the
    /// uid as root), so root's groups do not follow the script.
    pub fn command(&self, program: &str) -> Result<tokio::process::Command, Refused> {
        self.vet(program)?;
        let mut cmd = tokio::process::Command::new(program);
        if let Some(r) = &self.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        Ok(cmd)
    }

    /// `/bin/sh -c line`, keepalived's way of running a notify line. Under `secure`, the line's
    /// first word (the program it starts) is checked as well as the shell; arguments, pipes and
    /// later commands are the script author's business, as in keepalived.
    pub fn shell(&self, line: &str) -> Result<tokio::process::Command, Refused> {
        if let Some(first) = line.split_whitespace().next() {
            self.vet(first)?;
        }
        let mut cmd = self.command("/bin/sh")?;
        cmd.arg("-c").arg(line);
        Ok(cmd)
    }

    fn vet(&self, script: &str) -> Result<(), Refused> {
        if !self.secure || !self.runs_as_root() {
            return Ok(());
        }
        let Some(path) = resolve(script) else {
            // Not found: executing it fails with its own clear error, and nothing runs.
            return Ok(());
        };
        vet_path(&path).map_err(|(p, why)| Refused { script: script.to_string(), path: p, why })
    }
}

/// Looks a `script_user` (and optional `script_group`) up. Numeric ids are taken as they are,
/// as `chown` does.
pub fn lookup(user: &str, group: Option<&str>) -> Result<RunAs, PolicyError> {
    use nix::unistd::{Group, Uid, User};
    let lookup_err = |name: &str, e: nix::Error| PolicyError::Lookup { name: name.to_string(), error: e.to_string() };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (n, User::from_uid(Uid::from_raw(n)).map_err(|e| lookup_err(user, e))?.map(|u| u.gid.as_raw())),
        Err(_) => {
            let u = User::from_name(user).map_err(|e| lookup_err(user, e))?.ok_or_else(|| PolicyError::UnknownUser(user.to_string()))?;
            (u.uid.as_raw(), Some(u.gid.as_raw()))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(g).map_err(|e| lookup_err(g, e))?.ok_or_else(|| PolicyError::UnknownGroup(g.to_string()))?.gid.as_raw(),
        },
        // A numeric uid with no passwd entry: its group is the same number (as `chown 1234`).
        None => primary.unwrap_or(uid),
    };
    Ok(RunAs { user: user.to_string(), uid, gid })
}

/// The file `script` names: itself when it has a slash, else the first match on the daemon's
/// PATH (what `execvp` and the shell will run).
fn resolve(script: &str) -> Option<PathBuf> {
    if script.contains('/') {
        return Some(PathBuf::from(script));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    std::env::split_paths(&path).map(|d| d.join(script)).find(|p| p.is_file())
}

/// Checks the file and every directory above it, both where the path points after symlinks and
/// the directories the path itself goes through (whoever can write the directory holding a
/// symlink can point it elsewhere).
fn vet_path(path: &Path) -> Result<(), (PathBuf, String)> {
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(()); // missing or unreadable: exec fails on its own
    };
    let mut chains = vec![real];
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(dir) = std::fs::canonicalize(parent) {
            chains.push(dir);
        }
    }
    for chain in chains {
        for p in chain.ancestors() {
            let md = std::fs::metadata(p).map_err(|e| (p.to_path_buf(), format!("cannot be checked: {e}")))?;
            if let Some(why) = unsafe_because(md.uid(), md.gid(), md.mode(), md.is_dir()) {
                return Err((p.to_path_buf(), why));
            }
        }
    }
    Ok(())
}

/// Why a file or directory with this owner and mode could be changed by someone other than root,
/// or None. A world-writable directory with the sticky bit (/tmp) is safe for what root owns in
/// it: others can neither remove nor rename root's files there.
fn unsafe_because(uid: u32, gid: u32, mode: u32, is_dir: bool) -> Option<String> {
    if uid != 0 {
        return Some(format!("is owned by uid {uid}"));
    }
    if mode & 0o020 != 0 && gid != 0 {
        return Some(format!("is writable by group {gid}"));
    }
    if mode & 0o002 != 0 && !(is_dir && mode & 0o1000 != 0) {
        return Some("is writable by everyone".to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn owner_group_and_world_write_are_unsafe_sticky_dirs_are_not() {
        assert_eq!(unsafe_because(0, 0, 0o755, false), None);
        assert_eq!(unsafe_because(0, 0, 0o775, true), None, "root's own group may write");
        assert_eq!(unsafe_because(1000, 0, 0o755, false).as_deref(), Some("is owned by uid 1000"));
        assert_eq!(unsafe_because(0, 50, 0o775, false).as_deref(), Some("is writable by group 50"));
        assert_eq!(unsafe_because(0, 0, 0o757, false).as_deref(), Some("is writable by everyone"));
        assert_eq!(unsafe_because(0, 0, 0o1777, true), None, "sticky /tmp");
        assert_eq!(unsafe_because(0, 0, 0o1777, false).as_deref(), Some("is writable by everyone"));
        assert_eq!(unsafe_because(0, 0, 0o777, true).as_deref(), Some("is writable by everyone"));
    }

    fn secure_root() -> ScriptPolicy {
        ScriptPolicy::new(Some(RunAs { user: "root".into(), uid: 0, gid: 0 }), true)
    }

    #[test]
    fn a_script_in_a_world_writable_directory_is_refused_as_root() {
        let dir = std::env::temp_dir().join(format!("corral-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.join("check.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = script.to_str().unwrap();
        let err = secure_root().command(s).unwrap_err();
        assert_eq!(err.path, dir);
        assert_eq!(err.why, "is writable by everyone");
        assert!(err.to_string().contains(s), "{err}");
        // The shell form checks the line's first word.
        assert!(secure_root().shell(&format!("{s} --quick")).is_err());
        // Without `secure`, or not as root, the same script is allowed.
        assert!(ScriptPolicy::new(None, false).command(s).is_ok());
        assert!(ScriptPolicy::new(Some(RunAs { user: "nobody".into(), uid: 65534, gid: 65534 }), true).command(s).is_ok());
        // Root's own directory makes it safe, when the path above is too (not always so for the
        // temp dir: checked only where it is root's).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let above_ok = vet_path(&std::env::temp_dir()).is_ok();
        // SAFETY: geteuid has no preconditions.
        if above_ok && (unsafe { libc::geteuid() }) == 0 {
            assert!(secure_root().command(s).is_ok());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn system_programs_pass_and_bare_names_resolve_on_path() {
        assert_eq!(resolve("sh").map(|p| p.is_file()), Some(true));
        assert_eq!(resolve("corral-no-such-program"), None);
        if vet_path(Path::new("/bin/sh")).is_ok() {
            assert!(secure_root().shell("true").is_ok());
        }
    }

    #[test]
    fn lookup_names_what_is_missing() {
        assert_eq!(lookup("corral-no-such-user", None), Err(PolicyError::UnknownUser("corral-no-such-user".into())));
        let root = lookup("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("root", Some("corral-no-such-group")), Err(PolicyError::UnknownGroup("corral-no-such-group".into())));
        let n = lookup("4242", Some("4343")).unwrap();
        assert_eq!((n.uid, n.gid), (4242, 4343));
        assert_eq!(lookup("4242", None).unwrap().gid, 4242);
    }
}
