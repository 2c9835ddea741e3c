//! How this node runs operator scripts: `[node] script_user`, `script_group` and
//! `enable_script_security`, keepalived's settings of the same names.
//!
//! Why it matters more here than in keepalived: a script check or a `notify_up`/`quorum_down`
//! hook comes with the cluster's replicated rules, so whoever can apply rules on one director
//! has the command run on every director. The policy is each node's own (its config, read at
//! start), and every place corrald starts a script goes through it: script checks (via the
//! checker's `Options`), health and quorum hooks, VRRP notify scripts and track scripts.
//!
//! Default, as keepalived: scripts run as the user `corral_script` when it exists, otherwise as
//! the daemon's own user (root), with a warning at start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use check::script_policy::{self, Refused, ScriptPolicy, DEFAULT_SCRIPT_USER};

use crate::config::NodeSection;

static POLICY: OnceLock<ScriptPolicy> = OnceLock::new();
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// The policy `[node]` asks for. An explicit `script_user` or `script_group` that does not
/// resolve is an error naming the key (the daemon must not quietly run scripts as root instead).
pub fn policy_from(node: &NodeSection) -> Result<ScriptPolicy, String> {
    use script_policy::PolicyError;
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let run_as = match &node.script_user {
        Some(user) => {
            let r = script_policy::lookup(user, node.script_group.as_deref()).map_err(|e| match e {
                PolicyError::UnknownGroup(_) | PolicyError::Lookup { key: "group", .. } => format!("[node] script_group: {e}"),
                e => format!("[node] script_user: {e}"),
            })?;
            // Only root can switch users: anyone else would fail at every script's start.
            if euid != 0 && r.uid != euid {
                return Err(format!("[node] script_user: {user} (uid {}) needs corrald to run as root; it runs as uid {euid}", r.uid));
            }
            Some(r)
        }
        None if node.script_group.is_some() => return Err("[node] script_group: needs script_user".into()),
        // keepalived's default: the script user if it exists, when there is a user to switch from.
        None if euid == 0 => match script_policy::lookup(DEFAULT_SCRIPT_USER, None) {
            Ok(r) => Some(r),
            Err(PolicyError::UnknownUser(_)) => None,
            Err(e) => return Err(format!("[node] script_user (default {DEFAULT_SCRIPT_USER}): {e}")),
        },
        None => None,
    };
    Ok(ScriptPolicy::new(run_as, node.enable_script_security))
}

/// Records the node's policy (once, at start) and says how scripts will run.
pub fn init(policy: ScriptPolicy) {
    match policy.run_as() {
        Some(r) => tracing::info!(user = %r.user, uid = r.uid, gid = r.gid, secure = policy.secure(), "scripts run as {}", r.user),
        None if policy.runs_as_root() && !policy.secure() => tracing::warn!(
            "scripts (script checks and hooks from the cluster's rules, VRRP notify and track scripts) run as root: \
             set [node] script_user (or create the user {DEFAULT_SCRIPT_USER}), or enable_script_security"
        ),
        None => tracing::info!(secure = policy.secure(), "scripts run as the daemon's user"),
    }
    let _ = POLICY.set(policy);
}

/// The node's policy; the default one (the daemon's user, no checks) before [`init`].
pub fn policy() -> &'static ScriptPolicy {
    static DEFAULT: OnceLock<ScriptPolicy> = OnceLock::new();
    POLICY.get().unwrap_or_else(|| DEFAULT.get_or_init(ScriptPolicy::default))
}

/// `/bin/sh -c line` under the node's policy; a refusal is logged with what it names and counted.
pub fn shell(line: &str, what: &str) -> Option<tokio::process::Command> {
    match policy().shell(line) {
        Ok(c) => Some(c),
        Err(e) => {
            refused(&e, what);
            None
        }
    }
}

/// Counts every refusal; logs the first one of each script in each use (a track script is
/// refused every interval), up to a bound on how many it remembers.
fn refused(e: &Refused, what: &str) {
    static LOGGED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    REFUSED.fetch_add(1, Ordering::Relaxed);
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    let key = format!("{what}\0{}", e.script);
    if !logged.contains(&key) {
        if logged.len() >= 256 {
            logged.remove(0);
        }
        logged.push(key);
        tracing::error!(what, "{e} (further refusals of this script are counted in corral_scripts_refused_total, not logged)");
    }
}

/// Hooks and notify scripts refused by `enable_script_security` (script checks count theirs as
/// the checker's `script_refused` failures).
pub fn refused_total() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(user: Option<&str>, group: Option<&str>) -> NodeSection {
        NodeSection { script_user: user.map(Into::into), script_group: group.map(Into::into), ..NodeSection::default() }
    }

    #[test]
    fn unresolvable_settings_name_their_key() {
        assert_eq!(policy_from(&node(Some("corral-no-such-user"), None)).unwrap_err(), "[node] script_user: no user named \"corral-no-such-user\" on this system");
        assert_eq!(policy_from(&node(Some("root"), Some("corral-no-such-group"))).unwrap_err(), "[node] script_group: no group named \"corral-no-such-group\" on this system");
        assert_eq!(policy_from(&node(None, Some("root"))).unwrap_err(), "[node] script_group: needs script_user");
        assert_eq!(policy_from(&node(Some("4294967295"), None)).unwrap_err(), "[node] script_user: no user named \"4294967295\" on this system");
        let p = policy_from(&node(Some("65534"), Some("65534"))).unwrap();
        assert_eq!(p.run_as().map(|r| (r.uid, r.gid)), Some((65534, 65534)));
        assert!(!p.secure());
    }
}
