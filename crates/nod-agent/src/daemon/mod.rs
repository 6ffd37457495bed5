//! The processes: `nod agent` ([`agent`]) and the `ssh-agent` drop-in `nod ssh-agent`
//! ([`ssh_agent`]). They build the services, bind the sockets and handle signals.

pub mod agent;
pub mod ssh_agent;

use std::path::Path;
use std::sync::Arc;

use crate::approvers::{self, ApproverChoice, Environment, SelectError};
use crate::audit::{AuditError, AuditLog};
use crate::config::AgentConfig;
use crate::decision::{Core, RateSettings};
use crate::log::event;

/// Why the decision core could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Approver(#[from] SelectError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What the agent says at start when nobody can be asked, then what `auto` found,
/// [`NO_APPROVER_EFFECT`] and the fix.
pub const NO_APPROVER: &str = "no approver can reach you";

/// What follows from [`NO_APPROVER`].
pub const NO_APPROVER_EFFECT: &str = "so every request is answered unavailable (hosts fall back \
     to the password, confirm keys are refused, `nod register` cannot be approved)";

/// The fix for [`NO_APPROVER`].
pub const NO_APPROVER_FIX: &str = "run the agent inside your graphical session (the packaged \
     unit finds the session bus at $XDG_RUNTIME_DIR/bus, or gets it with `systemctl --user \
     import-environment DBUS_SESSION_BUS_ADDRESS DISPLAY WAYLAND_DISPLAY` and `systemctl --user \
     restart nod-agent`), run `nod agent` in a terminal, or set [approver] in agent.toml (e.g. \
     kind = \"command\")";

/// The decision core of one agent process: its approvers (command line, then `agent.toml`,
/// then `auto`) and the audit log at `audit_path`. Says loudly when nobody can be asked.
pub fn build_core(
    cli: &ApproverChoice,
    config: &AgentConfig,
    audit_path: &Path,
) -> Result<Arc<Core>, CoreError> {
    let env = Environment::detect();
    let chain = approvers::select(cli, &config.approver, &env)?;
    let chosen_by = approvers::chosen_by(cli, &config.approver, &env);
    let audit = Arc::new(AuditLog::open(audit_path)?);
    let core = Core::new(
        chain,
        audit,
        RateSettings {
            burst: config.approval.rate_limit_burst,
            per_minute: config.approval.rate_limit_per_minute,
        },
    )
    .with_chosen_by(chosen_by.clone());
    if core.can_ask() {
        let names: Vec<String> = core
            .approvers()
            .iter()
            .map(|a| format!("{} ({})", a.name, a.presence.as_str()))
            .collect();
        event!(
            "approvers: {}, chosen by {chosen_by}; audit log {}",
            names.join(", then "),
            audit_path.display()
        );
    } else {
        event!(
            "{NO_APPROVER}: auto found {}, {NO_APPROVER_EFFECT}. Fix: {NO_APPROVER_FIX}; \
             `nod doctor` checks this",
            env.describe()
        );
    }
    if crate::caller::identity::in_initial_user_namespace() == Some(false) {
        event!("warning: {}", crate::caller::identity::SANDBOXED);
    }
    Ok(Arc::new(core))
}
