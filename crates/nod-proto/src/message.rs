//! Request and response messages (protocol v1 §Request body, §Response body).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical::Canonical;
use crate::keys::PinnedKey;
use crate::{MAX_RESPONSE_LIFETIME_MS, NONCE_LEN, PROTOCOL_VERSION, ProtoError, serde_bytes64};

/// Domain string that starts the canonical bytes of every request.
pub const REQUEST_DOMAIN: &[u8] = b"macos-auth/auth-request/v1";
/// Domain string that starts the canonical bytes of every response.
pub const RESPONSE_DOMAIN: &[u8] = b"macos-auth/auth-response/v1";

/// Signature algorithm. JSON `"ed25519"`, canonical `Ed25519`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Alg {
    Ed25519,
}

impl Alg {
    fn canonical(self) -> &'static str {
        match self {
            Self::Ed25519 => "Ed25519",
        }
    }
}

/// What the person (or the agent on their behalf) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Decision {
    Approved,
    Denied,
    Unavailable,
    Cancelled,
    Failed,
}

impl Decision {
    /// The wire and canonical spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Unavailable => "unavailable",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}

/// How the person proved presence. nod's own approvers report `unknown`, as the spec prefers,
/// so a macOS agent never has to parse a method it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AuthMethod {
    Watch,
    TouchId,
    BiometricOrWatch,
    Unknown,
    None,
}

impl AuthMethod {
    /// Canonical spelling; note `touchid` here versus `touch-id` in JSON.
    fn canonical(self) -> &'static str {
        match self {
            Self::Watch => "watch",
            Self::TouchId => "touchid",
            Self::BiometricOrWatch => "biometric-or-watch",
            Self::Unknown => "unknown",
            Self::None => "none",
        }
    }
}

/// The body of a request, in canonical field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    pub protocol_version: u16,
    pub request_id: String,
    pub nonce: [u8; NONCE_LEN],
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub linux_host_id: String,
    pub linux_hostname: String,
    pub pam_service: String,
    pub pam_user: String,
    pub pam_ruser: Option<String>,
    pub pam_rhost: Option<String>,
    pub pam_tty: Option<String>,
    pub sudo_command: Option<String>,
    pub client_pid: Option<u32>,
    pub key_id: String,
    pub alg: Alg,
}

impl RequestBody {
    /// The bytes that are hashed and signed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canonical::new(REQUEST_DOMAIN);
        c.u16(self.protocol_version)
            .str(&self.request_id)
            .bytes(&self.nonce)
            .u64(self.created_at_ms)
            .u64(self.expires_at_ms)
            .str(&self.linux_host_id)
            .str(&self.linux_hostname)
            .str(&self.pam_service)
            .str(&self.pam_user)
            .opt_str(self.pam_ruser.as_deref())
            .opt_str(self.pam_rhost.as_deref())
            .opt_str(self.pam_tty.as_deref())
            .opt_str(self.sudo_command.as_deref())
            .opt_u32(self.client_pid)
            .str(&self.key_id)
            .str(self.alg.canonical());
        c.finish()
    }

    /// SHA-256 of the canonical bytes; the response echoes it as `request_hash`.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_bytes()).into()
    }

    /// Signs the request with the host key.
    pub fn sign(self, host_key: &SigningKey) -> SignedRequest {
        let signature = host_key.sign(&self.canonical_bytes()).to_bytes();
        SignedRequest {
            body: self,
            signature,
        }
    }

    fn check_shape(&self) -> Result<(), ProtoError> {
        check_common_shape(
            self.protocol_version,
            self.created_at_ms,
            self.expires_at_ms,
        )
    }
}

/// The body of a response, in canonical field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseBody {
    pub protocol_version: u16,
    pub request_id: String,
    pub nonce: [u8; NONCE_LEN],
    pub request_hash: [u8; 32],
    pub linux_host_id: String,
    pub pam_service: String,
    pub pam_user: String,
    pub decision: Decision,
    pub auth_method: AuthMethod,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub agent_key_id: String,
    pub alg: Alg,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

impl ResponseBody {
    /// A response to `request`, bound to it by id, nonce, hash, host, service and user, valid
    /// for [`MAX_RESPONSE_LIFETIME_MS`] from `now_ms` (macos-auth's agent uses the same 10 s).
    pub fn answering(
        request: &VerifiedRequest,
        decision: Decision,
        auth_method: AuthMethod,
        agent_key_id: &str,
        now_ms: u64,
    ) -> Self {
        let body = request.body();
        Self {
            protocol_version: PROTOCOL_VERSION,
            request_id: body.request_id.clone(),
            nonce: body.nonce,
            request_hash: request.hash,
            linux_host_id: body.linux_host_id.clone(),
            pam_service: body.pam_service.clone(),
            pam_user: body.pam_user.clone(),
            decision,
            auth_method,
            created_at_ms: now_ms,
            expires_at_ms: now_ms + MAX_RESPONSE_LIFETIME_MS,
            agent_key_id: agent_key_id.to_owned(),
            alg: Alg::Ed25519,
            error_code: None,
            error_message: None,
        }
    }

    /// The bytes that are signed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canonical::new(RESPONSE_DOMAIN);
        c.u16(self.protocol_version)
            .str(&self.request_id)
            .bytes(&self.nonce)
            .bytes(&self.request_hash)
            .str(&self.linux_host_id)
            .str(&self.pam_service)
            .str(&self.pam_user)
            .str(self.decision.as_str())
            .str(self.auth_method.canonical())
            .u64(self.created_at_ms)
            .u64(self.expires_at_ms)
            .str(&self.agent_key_id)
            .str(self.alg.canonical())
            .opt_str(self.error_code.as_deref())
            .opt_str(self.error_message.as_deref());
        c.finish()
    }

    /// Signs the response with the agent key.
    pub fn sign(self, agent_key: &SigningKey) -> SignedResponse {
        let signature = agent_key.sign(&self.canonical_bytes()).to_bytes();
        SignedResponse {
            body: self,
            signature,
        }
    }

    fn check_shape(&self) -> Result<(), ProtoError> {
        check_common_shape(
            self.protocol_version,
            self.created_at_ms,
            self.expires_at_ms,
        )
    }
}

fn check_common_shape(version: u16, created: u64, expires: u64) -> Result<(), ProtoError> {
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    if created >= expires {
        return Err(ProtoError::InvalidField("expires_at_ms"));
    }
    Ok(())
}

/// Freshness (protocol v1 §Validation): stale once `now > expires_at_ms`; too early when
/// `created_at_ms > now + allowed_future_skew_ms`.
pub fn check_freshness(
    created_at_ms: u64,
    expires_at_ms: u64,
    now_ms: u64,
    allowed_future_skew_ms: u64,
) -> Result<(), ProtoError> {
    if now_ms > expires_at_ms {
        return Err(ProtoError::Expired {
            now_ms,
            expires_at_ms,
        });
    }
    if created_at_ms > now_ms.saturating_add(allowed_future_skew_ms) {
        return Err(ProtoError::FromFuture {
            now_ms,
            created_at_ms,
        });
    }
    Ok(())
}

fn verify_strict(key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> Result<(), ProtoError> {
    key.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| ProtoError::BadSignature)
}

fn from_json<T: for<'de> Deserialize<'de>>(json: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(json).map_err(|e| ProtoError::Json(e.to_string()))
}

/// A request as it travels: `{"body": {...}, "signature": [64 numbers]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRequest {
    pub body: RequestBody,
    #[serde(with = "serde_bytes64")]
    pub signature: [u8; 64],
}

impl SignedRequest {
    /// Decodes a frame payload. Rejects unknown fields, a wrong version and an empty lifetime;
    /// the signature is not checked yet (see [`SignedRequest::verify`]).
    pub fn from_json(json: &[u8]) -> Result<Self, ProtoError> {
        let msg: Self = from_json(json)?;
        msg.body.check_shape()?;
        Ok(msg)
    }

    /// Encodes the message as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a request always serializes")
    }

    /// The agent-side checks, in the order of docs/design.md §1 once the host is known: signature by
    /// the host's pinned key, then key id (the pinned one, if the host was pinned with an id;
    /// else any), then freshness. Replay and rate limits are the caller's state and come after.
    pub fn verify(
        self,
        host: &PinnedKey,
        now_ms: u64,
        allowed_future_skew_ms: u64,
    ) -> Result<VerifiedRequest, ProtoError> {
        let canonical = self.body.canonical_bytes();
        verify_strict(&host.key, &canonical, &self.signature)?;
        if let Some(pinned) = host
            .key_id
            .as_ref()
            .filter(|id| id.as_str() != self.body.key_id)
        {
            return Err(ProtoError::WrongKeyId {
                expected: pinned.as_str().to_owned(),
                got: self.body.key_id,
            });
        }
        check_freshness(
            self.body.created_at_ms,
            self.body.expires_at_ms,
            now_ms,
            allowed_future_skew_ms,
        )?;
        Ok(VerifiedRequest {
            hash: Sha256::digest(&canonical).into(),
            body: self.body,
            signature: self.signature,
        })
    }
}

/// A request whose signature, key id and freshness have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedRequest {
    body: RequestBody,
    signature: [u8; 64],
    hash: [u8; 32],
}

impl VerifiedRequest {
    pub fn body(&self) -> &RequestBody {
        &self.body
    }

    /// The host's signature; the agent's replay cache is keyed by it.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// SHA-256 of the request's canonical bytes.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

/// A response as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedResponse {
    pub body: ResponseBody,
    #[serde(with = "serde_bytes64")]
    pub signature: [u8; 64],
}

impl SignedResponse {
    /// Decodes a frame payload; rejects unknown fields, a wrong version and an empty lifetime.
    pub fn from_json(json: &[u8]) -> Result<Self, ProtoError> {
        let msg: Self = from_json(json)?;
        msg.body.check_shape()?;
        Ok(msg)
    }

    /// Encodes the message as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a response always serializes")
    }

    /// Checks the first bytes of a response payload, as far as they go: `Ok` if they are a
    /// whole valid response or could still become one, else the decode error they already
    /// cause. For [`crate::frame::read_frame_or_stall`], so a reply that stalls halfway is told
    /// apart from one that is broken.
    pub fn check_prefix(bytes: &[u8]) -> Result<(), ProtoError> {
        match serde_json::from_slice::<Self>(bytes) {
            Ok(msg) => msg.body.check_shape(),
            // serde_json says "EOF" only when the input so far is valid and merely ends.
            Err(e) if e.is_eof() => Ok(()),
            Err(e) => Err(ProtoError::Json(e.to_string())),
        }
    }

    /// The helper-side checks: the signature under a pinned agent key that admits the claimed
    /// `agent_key_id`, the binding to `request` (id, nonce, hash, host, service, user), and
    /// freshness. A response replayed from an earlier exchange fails the binding, because the
    /// helper's nonce and request hash are new for every request.
    ///
    /// The claimed id only narrows the candidates: a key pinned with an id is tried only for
    /// that id, a key pinned without one for any id, and the response counts only if one of
    /// those candidates verifies its signature. A signature that verifies only under a key
    /// pinned with another id is [`ProtoError::WrongKeyId`]; one that no pinned key verifies
    /// is [`ProtoError::BadSignature`].
    pub fn verify(
        self,
        pinned: &[PinnedKey],
        request: &RequestBody,
        now_ms: u64,
        allowed_future_skew_ms: u64,
    ) -> Result<VerifiedResponse, ProtoError> {
        let canonical = self.body.canonical_bytes();
        let verifies = |p: &&PinnedKey| verify_strict(&p.key, &canonical, &self.signature).is_ok();
        let claimed = &self.body.agent_key_id;
        if !pinned
            .iter()
            .filter(|p| p.admits(claimed))
            .any(|p| verifies(&p))
        {
            // Only for the error: is it the wrong id for a pinned key, or no pinned key at all?
            return Err(match pinned.iter().find(verifies) {
                Some(PinnedKey {
                    key_id: Some(id), ..
                }) => ProtoError::WrongKeyId {
                    expected: id.as_str().to_owned(),
                    got: self.body.agent_key_id,
                },
                _ => ProtoError::BadSignature,
            });
        }
        let body = self.body;
        let checks: [(&'static str, bool); 6] = [
            ("request_id", body.request_id == request.request_id),
            ("nonce", body.nonce == request.nonce),
            ("request_hash", body.request_hash == request.hash()),
            ("linux_host_id", body.linux_host_id == request.linux_host_id),
            ("pam_service", body.pam_service == request.pam_service),
            ("pam_user", body.pam_user == request.pam_user),
        ];
        if let Some((field, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(ProtoError::Mismatch(field));
        }
        check_freshness(
            body.created_at_ms,
            body.expires_at_ms,
            now_ms,
            allowed_future_skew_ms,
        )?;
        Ok(VerifiedResponse { body })
    }
}

/// A response whose signature, key id, binding and freshness have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedResponse {
    body: ResponseBody,
}

impl VerifiedResponse {
    pub fn body(&self) -> &ResponseBody {
        &self.body
    }

    pub fn decision(&self) -> Decision {
        self.body.decision
    }
}
