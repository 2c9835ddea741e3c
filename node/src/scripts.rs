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
    let run_as = match &node.script_user {
        Some(user) => Some(script_policy::lookup(user, node.script_group.as_deref()).map_err(|e| match e {
            script_policy::PolicyError::UnknownGroup(_) => format!("[node] script_group: {e}"),
            e => format!("[node] script_user: {e}"),
        })?),
        None if node.script_group.is_some() => return Err("[node] script_group: needs script_user".into()),
        None => script_policy::lookup(DEFAULT_SCRIPT_USER, None).ok(),
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

fn refused(e: &Refused, what: &str) {
    REFUSED.fetch_add(1, Ordering::Relaxed);
    tracing::error!(what, "{e}");
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
        let p = policy_from(&node(Some("65534"), Some("65534"))).unwrap();
        assert_eq!(p.run_as().map(|r| (r.uid, r.gid)), Some((65534, 65534)));
        assert!(!p.secure());
    }
}
