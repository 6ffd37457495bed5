//! The processes: `nod agent` ([`agent`]) and the `ssh-agent` drop-in `nod ssh-agent`
//! ([`ssh_agent`]). They build the services, bind the sockets and handle signals.

pub mod agent;
pub mod ssh_agent;
