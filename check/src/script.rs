//! MISC_CHECK: run a program; its exit code is the verdict. Run with `tokio::process`, so a slow
//! script costs a pid, not a thread. The program gets its own process group, and a timeout kills
//! the whole group (a `sh -c` wrapper would otherwise leave its children running).

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use crate::checker::DefError;
use crate::def::{self, ScriptCheck, Timing};
use crate::result::FailReason;
use crate::ScriptPolicy;

pub(crate) struct ScriptProbe {
    /// A command line, run as `/bin/sh -c LINE`; or else `program` with `args`.
    line: Option<String>,
    program: String,
    args: Vec<String>,
    misc_dynamic: bool,
    timeout: Option<std::time::Duration>,
}

impl ScriptProbe {
    pub(crate) fn new(def: &ScriptCheck) -> Result<Self, DefError> {
        let (line, program, args) = match &def.command {
            def::Command::Line(line) => {
                if line.trim().is_empty() {
                    return Err(DefError::invalid("command", "empty"));
                }
                (Some(line.clone()), "/bin/sh".to_string(), Vec::new())
            }
            def::Command::Argv(argv) => match argv.split_first() {
                Some((p, rest)) if !p.is_empty() => (None, p.clone(), rest.to_vec()),
                _ => return Err(DefError::invalid("command", "empty")),
            },
        };
        Ok(ScriptProbe { line, program, args, misc_dynamic: def.misc_dynamic, timeout: def.misc_timeout })
    }

    /// Ok(weight) when up; the weight is only set for `misc_dynamic` exit codes 2..=255.
    pub(crate) async fn attempt(&self, timing: &Timing, policy: &ScriptPolicy) -> Result<Option<u32>, FailReason> {
        let mut cmd = match &self.line {
            Some(line) => policy.shell(line),
            None => policy.command(&self.program).map(|mut c| {
                c.args(&self.args);
                c
            }),
        }
        .map_err(|e| FailReason::ScriptRefused(e.to_string()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| FailReason::Io(format!("cannot start {}: {e}", self.program)))?;
        let limit = self.timeout.unwrap_or(timing.interval);
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(FailReason::Io(format!("waiting for {}: {e}", self.program))),
            Err(_) => {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: kill(2) with a negative pid signals the process group we created
                    // with process_group(0); it has no memory-safety preconditions.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.kill().await;
                return Err(FailReason::ScriptTimeout);
            }
        };
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(None),
            (Some(code @ 2..=255), _) if self.misc_dynamic => Ok(Some(code as u32 - 2)),
            (Some(code), _) => Err(FailReason::ScriptExit(code)),
            (None, Some(sig)) => Err(FailReason::ScriptSignal(sig)),
            (None, None) => Err(FailReason::Io("script ended without exit status".into())),
        }
    }
}
