//! `nod-helper request`: sign one approval request, send it to the user's agent, and believe
//! the answer only if it is signed by a pinned agent key and bound to this very request.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nod_proto::frame::{read_frame_or_stall, write_frame};
use nod_proto::{
    Alg, Decision, KeyId, PROTOCOL_VERSION, PinnedKey, ProtoError, RequestBody, SignedResponse,
};

use crate::config::{Config, PamUser};
use crate::error::{HelperError, one_line};
use crate::socket::{Deadline, DeadlineStream, check_socket, connect_agent};

/// What PAM (through `pam_nod.so`) knows about the request. Empty strings count as absent.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub user: String,
    pub ruser: Option<String>,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    pub service: Option<String>,
    pub sudo_command: Option<String>,
    /// Overrides `timeout_ms` from the config.
    pub timeout_ms: Option<u64>,
}

/// Longest agent-supplied error text repeated in our one-line message.
const MAX_DETAIL_LEN: usize = 200;

/// Runs one request. `Ok(())` means approved; every other outcome is a [`HelperError`].
pub fn run(config: &Config, info: &RequestInfo, start: Instant) -> Result<(), HelperError> {
    let user = PamUser::lookup(&info.user)?;
    let socket_path = config.socket_path(&user);
    check_socket(&socket_path, &user)?;

    let timeout_ms = info.timeout_ms.unwrap_or(config.timeout_ms);
    let deadline = Deadline::new(start, timeout_ms);
    let body = build_request(config, info, timeout_ms)?;
    let signed = body.clone().sign(&config.host_key);

    let stream = connect_agent(&socket_path, &user, &deadline)?;
    let mut io = DeadlineStream::new(&stream, deadline);
    write_frame(&mut io, &signed.to_json()).map_err(|e| match e {
        // The agent side went away (or never read) before we could even ask: unavailable.
        ProtoError::Io { kind, .. } => HelperError::from_reply(
            ProtoError::Io {
                kind,
                started: false,
            },
            timeout_ms,
        ),
        e => HelperError::Protocol(e),
    })?;
    // A reply that starts and then stops before the deadline is "unavailable", unless what did
    // arrive is already broken: see `HelperError::from_reply`.
    let reply = read_frame_or_stall(&mut io, SignedResponse::check_prefix)
        .map_err(|e| HelperError::from_reply(e, timeout_ms))?;
    drop(stream);

    let response =
        SignedResponse::from_json(&reply).map_err(|e| HelperError::from_reply(e, timeout_ms))?;
    let claimed = shown_key_id(&response.body.agent_key_id);
    let verified = response
        .verify(
            &config.agent_keys,
            &body,
            now_ms()?,
            config.allowed_future_skew_ms,
        )
        .map_err(|e| match e {
            ProtoError::BadSignature => unverified_signer(config, claimed),
            e => HelperError::from_reply(e, timeout_ms),
        })?;

    let b = verified.body();
    let detail = detail(b.error_code.as_deref(), b.error_message.as_deref());
    match verified.decision() {
        Decision::Approved => Ok(()),
        Decision::Denied => Err(HelperError::Denied { detail }),
        Decision::Unavailable => Err(HelperError::AgentUnavailable { detail }),
        Decision::Cancelled => Err(HelperError::Cancelled { detail }),
        Decision::Failed => Err(HelperError::Failed { detail }),
        // A decision this helper does not know cannot be taken as approval.
        _ => Err(HelperError::Protocol(ProtoError::InvalidField("decision"))),
    }
}

/// Longest claimed key id repeated in a message.
const MAX_SHOWN_KEY_ID: usize = 100;

/// The key id a reply claims, made safe for one log line: a nod agent claims its key's
/// fingerprint, but the field comes off the wire.
fn shown_key_id(claimed: &str) -> String {
    let clean = !claimed.is_empty()
        && claimed.len() <= MAX_SHOWN_KEY_ID
        && claimed.bytes().all(|b| b.is_ascii_graphic());
    if clean {
        claimed.to_owned()
    } else {
        let cut: String = claimed.chars().take(MAX_SHOWN_KEY_ID).collect();
        format!("{cut:?}")
    }
}

/// A reply that no pinned key verifies. A signature names no key, so say who the reply says
/// signed it (its `agent_key_id`: a nod agent's is its key's fingerprint) next to what is
/// pinned; if that is a pinned key, the reply was changed on the way instead.
fn unverified_signer(config: &Config, claimed: String) -> HelperError {
    let names_pinned = config.agent_keys.iter().any(|p| {
        KeyId::fingerprint(&p.key).as_str() == claimed
            || p.key_id.as_ref().is_some_and(|id| id.as_str() == claimed)
    });
    if names_pinned {
        HelperError::AlteredReply { claimed }
    } else {
        HelperError::UnpinnedAgentKey {
            claimed,
            pinned: config.agent_keys.iter().map(describe_pin).collect(),
        }
    }
}

/// A pinned key for a message: its fingerprint, and the key id it pins unless that is the
/// fingerprint again (as `nod agent-key` files pin).
fn describe_pin(pin: &PinnedKey) -> String {
    let fingerprint = KeyId::fingerprint(&pin.key);
    match &pin.key_id {
        Some(id) if *id == fingerprint => fingerprint.to_string(),
        _ => pin.describe(),
    }
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|s| !s.is_empty()).cloned()
}

fn build_request(
    config: &Config,
    info: &RequestInfo,
    timeout_ms: u64,
) -> Result<RequestBody, HelperError> {
    let mut id = [0u8; 16];
    let mut nonce = [0u8; nod_proto::NONCE_LEN];
    random(&mut id)?;
    random(&mut nonce)?;
    let now = now_ms()?;
    Ok(RequestBody {
        protocol_version: PROTOCOL_VERSION,
        request_id: hex::encode(id),
        nonce,
        created_at_ms: now,
        expires_at_ms: now.saturating_add(timeout_ms),
        linux_host_id: config.host_id.clone(),
        linux_hostname: config.hostname.clone(),
        pam_service: nonempty(&info.service).unwrap_or_else(|| config.service.clone()),
        pam_user: info.user.clone(),
        pam_ruser: nonempty(&info.ruser),
        pam_rhost: nonempty(&info.rhost),
        pam_tty: nonempty(&info.tty),
        sudo_command: nonempty(&info.sudo_command),
        client_pid: u32::try_from(nix::unistd::getppid().as_raw()).ok(),
        key_id: config.key_id.as_str().to_owned(),
        alg: Alg::Ed25519,
    })
}

fn random(buf: &mut [u8]) -> Result<(), HelperError> {
    getrandom::getrandom(buf).map_err(|e| HelperError::System {
        what: "the kernel random generator failed",
        detail: e.to_string(),
        fix: crate::error::RANDOM_FIX,
    })
}

/// Milliseconds since the Unix epoch, the protocol's clock.
pub fn now_ms() -> Result<u64, HelperError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| HelperError::System {
            what: "the system clock is before 1970",
            detail: "no time to put in the request".into(),
            fix: "set the clock (timedatectl, chrony)",
        })
}

/// ` (code: message)` from the agent's optional error fields, made safe for one log line.
fn detail(code: Option<&str>, message: Option<&str>) -> String {
    let text = match (code, message) {
        (None, None) => return String::new(),
        (Some(c), None) => c.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (Some(c), Some(m)) => format!("{c}: {m}"),
    };
    let text: String = one_line(&text).chars().take(MAX_DETAIL_LEN).collect();
    format!(" ({text})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_error_detail_is_one_bounded_line() {
        assert_eq!(detail(None, None), "");
        assert_eq!(
            detail(Some("rate"), Some("slow\ndown")),
            " (rate: slow down)"
        );
        assert!(detail(None, Some(&"x".repeat(1000))).len() < MAX_DETAIL_LEN + 10);
    }

    #[test]
    fn a_claimed_key_id_from_the_wire_is_one_bounded_line() {
        assert_eq!(shown_key_id("SHA256:abc+/="), "SHA256:abc+/=");
        assert_eq!(shown_key_id("a\nb"), "\"a\\nb\"");
        assert!(shown_key_id(&"x".repeat(1000)).len() < MAX_SHOWN_KEY_ID + 10);
    }

    #[test]
    fn empty_flags_count_as_absent() {
        assert_eq!(nonempty(&Some(String::new())), None);
        assert_eq!(nonempty(&Some("pts/1".into())), Some("pts/1".into()));
        assert_eq!(nonempty(&None), None);
    }
}
