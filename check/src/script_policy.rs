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
//! [`ScriptPolicy::shell`]). A scheduler takes it in its [`crate::Options`]; the one-off
//! [`crate::check_once`] and [`crate::Checker::attempt`] run script checks as the caller's own
//! user, unchecked, and are for tools run by hand, not for rules.

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
    #[error("looking up {key} {name:?}: {error}")]
    Lookup {
        /// "user" or "group".
        key: &'static str,
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

    /// Whether scripts end up running with root's privileges under this policy: root's uid, or
    /// root's group (gid 0 can write whatever root's group may).
    pub fn runs_as_root(&self) -> bool {
        match &self.run_as {
            Some(r) => r.uid == 0 || r.gid == 0,
            // SAFETY: geteuid(2) and getegid(2) cannot fail and have no preconditions.
            None => (unsafe { libc::geteuid() }) == 0 || (unsafe { libc::getegid() }) == 0,
        }
    }

    /// A command for `program`, checked against the policy, with the user and group set. Its
    /// supplementary groups are dropped too (the standard library calls `setgroups(0)` when it
    /// changes the uid as root), so root's groups do not follow the script.
    pub fn command(&self, program: &str) -> Result<tokio::process::Command, Refused> {
        self.vet(program)?;
        let mut cmd = tokio::process::Command::new(program);
        // systemd's service protocol is the daemon's alone: a script that inherited it could
        // report the daemon ready, stopping or alive (`systemd-notify`).
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            cmd.env_remove(var);
        }
        if let Some(r) = &self.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        Ok(cmd)
    }

    /// `/bin/sh -c line`, keepalived's way of running a notify line. Under `secure` (as root),
    /// the program the line starts is checked as well as the shell: its first word after any
    /// `NAME=value` assignments. A first word the policy cannot read plainly (quoted, escaped,
    /// with shell syntax in it) or that names no executable file is refused rather than waved
    /// through. What the line then does with its arguments is not judged (`sh /tmp/x` passes:
    /// `sh` is root's); bounding that is `script_user`'s job.
    pub fn shell(&self, line: &str) -> Result<tokio::process::Command, Refused> {
        if self.guards() {
            let first = line.split_whitespace().find(|w| !is_assignment(w));
            let Some(first) = first else {
                return Err(Refused { script: line.to_string(), path: PathBuf::new(), why: "starts no program".into() });
            };
            if first.contains(|c: char| "'\"\\$`;|&<>(){}*?~#".contains(c)) {
                return Err(Refused {
                    script: line.to_string(),
                    path: PathBuf::from(first),
                    why: "is not a plain program name or path (quotes, escapes or shell syntax), so it cannot be checked".into(),
                });
            }
            self.vet(first)?;
        }
        let mut cmd = self.command("/bin/sh")?;
        cmd.arg("-c").arg(line);
        Ok(cmd)
    }

    fn guards(&self) -> bool {
        self.secure && self.runs_as_root()
    }

    fn vet(&self, script: &str) -> Result<(), Refused> {
        if !self.guards() {
            return Ok(());
        }
        let refused = |path: PathBuf, why: String| Refused { script: script.to_string(), path, why };
        // keepalived refuses a script it cannot find, too: exec would fail anyway, and a name
        // that does not resolve now may resolve to something unchecked later.
        let Some(path) = resolve(script) else {
            return Err(refused(PathBuf::from(script), "is not an executable file here (nor on PATH)".into()));
        };
        vet_path(&path).map_err(|(p, why)| refused(p, why))
    }
}

/// `NAME=value` at the start of a shell line: an environment assignment, not the program.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Looks a `script_user` (and optional `script_group`) up. Numeric ids are taken as they are,
/// as `chown` does, except -1 (4294967295), which `setuid`/`setgid` read as "no change".
pub fn lookup(user: &str, group: Option<&str>) -> Result<RunAs, PolicyError> {
    use nix::unistd::{Uid, User};
    let lookup_err = |key: &'static str, name: &str, e: nix::Error| PolicyError::Lookup { key, name: name.to_string(), error: e.to_string() };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(u32::MAX) => return Err(PolicyError::UnknownUser(user.to_string())),
        Ok(n) => (n, User::from_uid(Uid::from_raw(n)).map_err(|e| lookup_err("user", user, e))?.map(|u| u.gid.as_raw())),
        Err(_) => {
            let u = User::from_name(user).map_err(|e| lookup_err("user", user, e))?.ok_or_else(|| PolicyError::UnknownUser(user.to_string()))?;
            (u.uid.as_raw(), Some(u.gid.as_raw()))
        }
    };
    let gid = match group {
        Some(g) => lookup_group(g)?,
        // A numeric uid with no passwd entry: its group is the same number (as `chown 1234`).
        None => primary.unwrap_or(uid),
    };
    Ok(RunAs { user: user.to_string(), uid, gid })
}

/// Looks a group up by name or number (a number is taken as it is, as `chown` does, except -1,
/// which `setgid` and `chown` read as "no change").
pub fn lookup_group(group: &str) -> Result<u32, PolicyError> {
    match group.parse::<u32>() {
        Ok(u32::MAX) => Err(PolicyError::UnknownGroup(group.to_string())),
        Ok(n) => Ok(n),
        Err(_) => nix::unistd::Group::from_name(group)
            .map_err(|e| PolicyError::Lookup { key: "group", name: group.to_string(), error: e.to_string() })?
            .map(|g| g.gid.as_raw())
            .ok_or_else(|| PolicyError::UnknownGroup(group.to_string())),
    }
}

/// The file `script` names: itself when it has a slash, else the first executable file of that
/// name on the daemon's PATH, as `execvp` and the shell search it (glibc's default PATH when
/// none is set).
fn resolve(script: &str) -> Option<PathBuf> {
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if script.contains('/') {
        return Some(PathBuf::from(script)).filter(|p| executable(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/bin:/usr/bin"));
    std::env::split_paths(&path).map(|d| d.join(script)).find(|p| executable(p))
}

/// Most symlinks followed on one path, as the kernel's limit (ELOOP).
const MAX_LINKS: u32 = 40;

/// Walks `path` the way the kernel resolves it, one component at a time, and checks everything
/// the resolution depends on: every directory passed through, every symlink followed (it must be
/// root's: in a sticky directory its owner could rename another link over it), the directories
/// holding each link, and the file at the end. If none of these can be changed by anyone but
/// root, nobody else can make the path lead elsewhere between this check and the exec.
fn vet_path(path: &Path) -> Result<(), (PathBuf, String)> {
    use std::collections::VecDeque;
    use std::path::Component;
    let stat = |p: &Path| std::fs::symlink_metadata(p).map_err(|e| (p.to_path_buf(), format!("cannot be checked: {e}")));
    let start = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| (path.to_path_buf(), format!("cannot be checked: {e}")))?.join(path)
    };
    let mut cur = PathBuf::from("/");
    check(&cur, &stat(&cur)?)?;
    let mut pending: VecDeque<std::ffi::OsString> = VecDeque::new();
    let push_front = |pending: &mut VecDeque<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => pending.push_front(n.to_os_string()),
                Component::ParentDir => pending.push_front(OsString::from("..")),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
    };
    push_front(&mut pending, &start);
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            cur.pop(); // `cur` holds no symlinks, so its parent is the one the kernel uses
            continue;
        }
        let next = cur.join(&name);
        let md = stat(&next)?;
        if md.file_type().is_symlink() {
            if md.uid() != 0 {
                return Err((next, format!("is a symlink owned by uid {}", md.uid())));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err((next, format!("leads through more than {MAX_LINKS} symlinks")));
            }
            let target = std::fs::read_link(&next).map_err(|e| (next.clone(), format!("cannot be checked: {e}")))?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            push_front(&mut pending, &target);
            continue;
        }
        check(&next, &md)?;
        cur = next;
    }
    Ok(())
}

fn check(p: &Path, md: &std::fs::Metadata) -> Result<(), (PathBuf, String)> {
    match unsafe_because(md.uid(), md.gid(), md.mode(), md.is_dir()) {
        Some(why) => Err((p.to_path_buf(), why)),
        None => Ok(()),
    }
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

    #[test]
    fn scripts_do_not_inherit_the_service_managers_socket() {
        for cmd in [ScriptPolicy::default().command("/bin/true").unwrap(), ScriptPolicy::default().shell("true").unwrap()] {
            let removed: Vec<_> = cmd.as_std().get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_owned()).collect();
            for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
                assert!(removed.iter().any(|k| k == var), "{var} is removed from the script's environment: {removed:?}");
            }
        }
    }

    fn secure_root() -> ScriptPolicy {
        ScriptPolicy::new(Some(RunAs { user: "root".into(), uid: 0, gid: 0 }), true)
    }

    /// A fresh directory under the temp dir with `mode`, removed on drop.
    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str, mode: u32) -> Dir {
            let d = std::env::temp_dir().join(format!("corral-policy-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            Dir(d)
        }
        fn script(&self, name: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The symlink cases need files and links that are root's, and a temp dir that is safe
    /// itself (root's, sticky): only then is "allowed" meaningful.
    fn as_root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0 && vet_path(&std::env::temp_dir()).is_ok() && vet_path(Path::new("/bin/sh")).is_ok();
        if !root {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: needs root and a root-owned sticky temp dir under CI");
            eprintln!("SKIP: {test}: needs root and a root-owned sticky temp dir");
        }
        root
    }

    #[test]
    fn a_script_in_a_world_writable_directory_is_refused_as_root() {
        if !as_root("world_writable") {
            return;
        }
        let dir = Dir::new("ww", 0o777);
        let script = dir.script("check.sh");
        let s = script.to_str().unwrap();
        let err = secure_root().command(s).unwrap_err();
        assert_eq!((err.path.as_path(), err.why.as_str()), (dir.0.as_path(), "is writable by everyone"));
        assert!(err.to_string().contains(s), "{err}");
        // The shell form checks the line's program, after any assignments.
        assert!(secure_root().shell(&format!("{s} --quick")).is_err());
        assert_eq!(secure_root().shell(&format!("FOO=1 BAR=x {s}")).unwrap_err().path, dir.0);
        // Without `secure`, or not as root, the same script is allowed.
        assert!(ScriptPolicy::new(None, false).command(s).is_ok());
        assert!(ScriptPolicy::new(Some(RunAs { user: "nobody".into(), uid: 65534, gid: 65534 }), true).command(s).is_ok());
        // ...but root's group is root enough.
        assert!(ScriptPolicy::new(Some(RunAs { user: "nobody".into(), uid: 65534, gid: 0 }), true).command(s).is_err());
        // Root's own directory makes it safe.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(secure_root().command(s).err(), None);
        assert_eq!(secure_root().shell(&format!("FOO=1 {s} a b")).err(), None);
    }

    #[test]
    fn every_symlink_on_the_way_and_the_directories_holding_them_are_checked() {
        if !as_root("symlinks") {
            return;
        }
        use std::os::unix::fs::symlink;
        let open = Dir::new("open", 0o777);
        let safe = Dir::new("safe", 0o755);
        let script = safe.script("check.sh");
        // A link to a safe script, in a directory anyone can write: they can repoint it.
        symlink(&script, open.0.join("l")).unwrap();
        assert_eq!(secure_root().command(open.0.join("l").to_str().unwrap()).unwrap_err().path, open.0);
        // A safe link leading through a link in that directory (a chain).
        symlink(open.0.join("l"), safe.0.join("chain")).unwrap();
        assert_eq!(secure_root().command(safe.0.join("chain").to_str().unwrap()).unwrap_err().path, open.0);
        // A directory component that is a link kept in that directory.
        symlink(&safe.0, open.0.join("d")).unwrap();
        assert_eq!(secure_root().command(open.0.join("d/check.sh").to_str().unwrap()).unwrap_err().path, open.0);
        // A link owned by someone else in a sticky directory: its owner may rename over it.
        let sticky = Dir::new("sticky", 0o1777);
        symlink(&script, sticky.0.join("mine")).unwrap();
        std::os::unix::fs::lchown(sticky.0.join("mine"), Some(65534), None).unwrap();
        let err = secure_root().command(sticky.0.join("mine").to_str().unwrap()).unwrap_err();
        assert_eq!((err.path, err.why), (sticky.0.join("mine"), "is a symlink owned by uid 65534".to_string()));
        // Root's links in root's or sticky directories, relative ones and `..` included, pass.
        symlink(&script, sticky.0.join("roots")).unwrap();
        assert_eq!(secure_root().command(sticky.0.join("roots").to_str().unwrap()).err(), None);
        std::fs::create_dir_all(safe.0.join("sub")).unwrap();
        symlink("../check.sh", safe.0.join("sub/up")).unwrap();
        assert_eq!(secure_root().command(safe.0.join("sub/up").to_str().unwrap()).err(), None);
        // A loop is refused, not followed for ever.
        symlink(safe.0.join("loop"), safe.0.join("loop")).unwrap();
        let err = secure_root().command(safe.0.join("loop").to_str().unwrap());
        assert!(err.is_err(), "a symlink loop passed");
    }

    #[test]
    fn lines_whose_program_cannot_be_read_plainly_or_found_are_refused_as_root() {
        if !as_root("lines") {
            return;
        }
        for line in ["'/srv/my check.sh' a", "/srv/x;true", "(/srv/x)", "$(echo /srv/x)", "\\/srv/x", "   ", "FOO=1"] {
            assert!(secure_root().shell(line).is_err(), "{line:?} passed");
        }
        let err = secure_root().shell("corral-no-such-program --flag").unwrap_err();
        assert_eq!(err.why, "is not an executable file here (nor on PATH)");
        assert!(secure_root().command("/corral/no/such/file").is_err());
        // Plain lines starting a root-owned program pass, with shell syntax after the program.
        assert_eq!(secure_root().shell("id -u > /dev/null; exit 1").err(), None);
        assert_eq!(secure_root().shell("test -e /; echo \"$X\" | cat").err(), None);
        // Nothing is judged without `secure`.
        assert!(ScriptPolicy::new(None, false).shell("'/srv/my check.sh'").is_ok());
    }

    #[test]
    fn assignments_are_told_from_programs() {
        assert!(is_assignment("FOO=1") && is_assignment("_x=") && is_assignment("A1=b=c"));
        assert!(!is_assignment("=x") && !is_assignment("1A=x") && !is_assignment("/bin/x=1") && !is_assignment("id"));
    }

    #[test]
    fn system_programs_pass_and_bare_names_resolve_on_path() {
        assert_eq!(resolve("sh").map(|p| p.is_file()), Some(true));
        assert_eq!(resolve("corral-no-such-program"), None);
        // A file without an execute bit is not what exec would run.
        let dir = Dir::new("noexec", 0o755);
        let p = dir.0.join("plain");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(resolve(p.to_str().unwrap()), None);
    }

    #[test]
    fn lookup_names_what_is_missing() {
        assert_eq!(lookup("corral-no-such-user", None), Err(PolicyError::UnknownUser("corral-no-such-user".into())));
        let root = lookup("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("root", Some("corral-no-such-group")), Err(PolicyError::UnknownGroup("corral-no-such-group".into())));
        assert_eq!(lookup("4294967295", None), Err(PolicyError::UnknownUser("4294967295".into())));
        assert_eq!(lookup("root", Some("4294967295")), Err(PolicyError::UnknownGroup("4294967295".into())));
        let n = lookup("4242", Some("4343")).unwrap();
        assert_eq!((n.uid, n.gid), (4242, 4343));
        assert_eq!(lookup("4242", None).unwrap().gid, 4242);
    }
}
