//! The agent protocol's messages (`draft-miller-ssh-agent`, OpenSSH `PROTOCOL.agent`) as
//! types: one variant per request the agent handles, decoded from one frame's body with
//! [`Request::decode`], and the replies with [`Response::encode`]. I/O-free; the framing and
//! its 256 KiB cap are in [`super::codec`].
//!
//! Key blobs go through [`super::credential`] (certificates valid forever included), private
//! keys through ssh-key's decoders. A frame that does not decode is answered FAILURE and the
//! connection stays open, as with OpenSSH.

use std::fmt;

use ssh_agent_lib::proto::{EcdsaPrivateKey, PrivateKeyData};
use ssh_key::private::KeypairData;
use ssh_key::public::{EcdsaPublicKey, KeyData};
use zeroize::Zeroizing;

use crate::keystore::openssh;

use super::credential::{self, OpensshCert, PublicCredential, is_cert_type};
use super::sign::Signed;
use super::wire::{Reader, WireError, put_string, put_u32};

/// Message numbers (`draft-miller-ssh-agent` §7.1, OpenSSH `authfd.h`).
pub mod number {
    pub const FAILURE: u8 = 5;
    pub const SUCCESS: u8 = 6;
    /// SSH protocol 1's "remove all": `ssh-add -D` still sends it after 19, and OpenSSH's
    /// agent treats it as 19.
    pub const REMOVE_ALL_RSA_IDENTITIES: u8 = 9;
    pub const REQUEST_IDENTITIES: u8 = 11;
    pub const IDENTITIES_ANSWER: u8 = 12;
    pub const SIGN_REQUEST: u8 = 13;
    pub const SIGN_RESPONSE: u8 = 14;
    pub const ADD_IDENTITY: u8 = 17;
    pub const REMOVE_IDENTITY: u8 = 18;
    pub const REMOVE_ALL_IDENTITIES: u8 = 19;
    pub const ADD_SMARTCARD_KEY: u8 = 20;
    pub const REMOVE_SMARTCARD_KEY: u8 = 21;
    pub const LOCK: u8 = 22;
    pub const UNLOCK: u8 = 23;
    pub const ADD_ID_CONSTRAINED: u8 = 25;
    pub const ADD_SMARTCARD_KEY_CONSTRAINED: u8 = 26;
    pub const EXTENSION: u8 = 27;
    pub const EXTENSION_FAILURE: u8 = 28;
    pub const EXTENSION_RESPONSE: u8 = 29;
}

/// Key constraint numbers (§5.2).
const CONSTRAIN_LIFETIME: u8 = 1;
const CONSTRAIN_CONFIRM: u8 = 2;
const CONSTRAIN_EXTENSION: u8 = 255;

/// Longest name (extension, constraint, key type) read.
const MAX_NAME: usize = 1024;
/// Longest comment, passphrase or smartcard id read.
const MAX_TEXT: usize = 16 * 1024;
/// Most constraints on one added key.
const MAX_CONSTRAINTS: usize = 16;

/// SSH_AGENT_RSA_SHA2_256 / _512 (§3.6.1).
pub const RSA_SHA2_256: u32 = 2;
pub const RSA_SHA2_512: u32 = 4;

/// One key constraint (§5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyConstraint {
    /// Seconds.
    Lifetime(u32),
    Confirm,
    /// `restrict-destination-v00@openssh.com`: the constraint list, decoded by
    /// [`super::destination`].
    Destinations(Vec<u8>),
    /// `sk-provider@openssh.com`: the FIDO middleware library to load.
    SkProvider(String),
    /// `associated-certs-v00@openssh.com` (smartcard keys only).
    AssociatedCerts,
}

/// A private key or certificate to add (§3.2).
#[derive(Clone)]
pub enum PrivateCredential {
    Key {
        privkey: KeypairData,
        comment: String,
    },
    Cert {
        certificate: Box<OpensshCert>,
        privkey: PrivateKeyData,
        comment: String,
    },
}

impl fmt::Debug for PrivateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key { comment, .. } => write!(f, "Key({comment:?}, <secret>)"),
            Self::Cert {
                certificate,
                comment,
                ..
            } => write!(f, "Cert({certificate:?}, {comment:?}, <secret>)"),
        }
    }
}

/// SSH_AGENTC_SIGN_REQUEST (§3.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest {
    pub credential: PublicCredential,
    pub data: Vec<u8>,
    pub flags: u32,
}

/// SSH_AGENTC_EXTENSION (§3.8): the name and the rest of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub name: String,
    pub details: Vec<u8>,
}

/// One request from a client.
#[derive(Debug)]
pub enum Request {
    RequestIdentities,
    Sign(SignRequest),
    /// ADD_IDENTITY, or ADD_ID_CONSTRAINED with its constraints.
    Add {
        credential: PrivateCredential,
        constraints: Vec<KeyConstraint>,
    },
    Remove(PublicCredential),
    /// REMOVE_ALL_IDENTITIES, or protocol 1's REMOVE_ALL_RSA_IDENTITIES.
    RemoveAll,
    /// ADD_SMARTCARD_KEY(_CONSTRAINED): a PKCS#11 provider to load.
    AddSmartcard {
        provider: String,
    },
    RemoveSmartcard {
        provider: String,
    },
    Lock(Zeroizing<String>),
    Unlock(Zeroizing<String>),
    Extension(Extension),
}

/// Why a frame is not a request the agent handles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("empty message")]
    Empty,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Credential(#[from] credential::CredentialError),
    #[error("private key: {0}")]
    PrivateKey(String),
    #[error("unknown key constraint {0}")]
    UnknownConstraint(u8),
    #[error("unsupported key constraint extension {0:?}")]
    UnknownConstraintExtension(String),
    #[error("more than {MAX_CONSTRAINTS} key constraints")]
    TooManyConstraints,
}

impl MessageError {
    /// Whether the message type is unknown (logged as such, as OpenSSH does).
    pub fn is_unknown_type(&self) -> bool {
        matches!(self, Self::UnknownType(_))
    }
}

fn text(r: &mut Reader<'_>, max: usize, what: &'static str) -> Result<String, MessageError> {
    Ok(r.text(max, what)?.to_owned())
}

fn decode_private(r: &mut Reader<'_>) -> Result<PrivateCredential, MessageError> {
    let key_type = Reader::new(r.remaining()).text(MAX_NAME, "key type")?;
    if is_cert_type(key_type) {
        r.string(MAX_NAME, "key type")?;
        let cert = OpensshCert::decode(r.string(MAX_TEXT, "certificate")?)?;
        let privkey = match cert.public_key() {
            // OpenSSH writes the scalar as a minimal mpint, which ssh-key may refuse.
            KeyData::Ecdsa(public) => {
                let mpint = r.string(MAX_NAME, "ECDSA scalar")?;
                let bad = |e: openssh::KeyDecodeError| MessageError::PrivateKey(e.to_string());
                PrivateKeyData::Ecdsa(match public {
                    EcdsaPublicKey::NistP256(_) => {
                        EcdsaPrivateKey::NistP256(openssh::ecdsa_scalar(mpint).map_err(bad)?)
                    }
                    EcdsaPublicKey::NistP384(_) => {
                        EcdsaPrivateKey::NistP384(openssh::ecdsa_scalar(mpint).map_err(bad)?)
                    }
                    EcdsaPublicKey::NistP521(_) => {
                        EcdsaPrivateKey::NistP521(openssh::ecdsa_scalar(mpint).map_err(bad)?)
                    }
                })
            }
            key => {
                let mut rest = r.remaining();
                let privkey = PrivateKeyData::decode_as(&mut rest, key.algorithm())
                    .map_err(|e| MessageError::PrivateKey(e.to_string()))?;
                *r = Reader::new(rest);
                privkey
            }
        };
        let comment = text(r, MAX_TEXT, "comment")?;
        Ok(PrivateCredential::Cert {
            certificate: Box::new(cert),
            privkey,
            comment,
        })
    } else {
        let mut rest = r.remaining();
        let privkey = openssh::decode_keypair(&mut rest)
            .map_err(|e| MessageError::PrivateKey(e.to_string()))?;
        *r = Reader::new(rest);
        let comment = text(r, MAX_TEXT, "comment")?;
        Ok(PrivateCredential::Key { privkey, comment })
    }
}

fn decode_constraints(r: &mut Reader<'_>) -> Result<Vec<KeyConstraint>, MessageError> {
    let mut out = Vec::new();
    while !r.is_empty() {
        if out.len() >= MAX_CONSTRAINTS {
            return Err(MessageError::TooManyConstraints);
        }
        out.push(match r.u8("constraint")? {
            CONSTRAIN_LIFETIME => KeyConstraint::Lifetime(r.u32("lifetime")?),
            CONSTRAIN_CONFIRM => KeyConstraint::Confirm,
            CONSTRAIN_EXTENSION => {
                // Each extension lays out its own data, so an unknown one cannot be skipped.
                let name = r.text(MAX_NAME, "constraint name")?;
                match name {
                    "restrict-destination-v00@openssh.com" => KeyConstraint::Destinations(
                        r.string(usize::MAX, "destination constraints")?.to_vec(),
                    ),
                    "sk-provider@openssh.com" => {
                        KeyConstraint::SkProvider(text(r, MAX_TEXT, "sk provider")?)
                    }
                    "associated-certs-v00@openssh.com" => {
                        r.u8("certs only")?;
                        r.string(usize::MAX, "associated certificates")?;
                        KeyConstraint::AssociatedCerts
                    }
                    other => {
                        return Err(MessageError::UnknownConstraintExtension(other.to_owned()));
                    }
                }
            }
            other => return Err(MessageError::UnknownConstraint(other)),
        });
    }
    Ok(out)
}

impl Request {
    /// Decodes one message body (type byte first). Nothing may trail it.
    pub fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(body);
        let kind = r.u8("message type").map_err(|_| MessageError::Empty)?;
        let request = match kind {
            number::REQUEST_IDENTITIES => Self::RequestIdentities,
            number::SIGN_REQUEST => {
                let credential = PublicCredential::decode(r.string(MAX_TEXT, "key blob")?)?;
                let data = r.string(usize::MAX, "data")?.to_vec();
                let flags = r.u32("flags")?;
                Self::Sign(SignRequest {
                    credential,
                    data,
                    flags,
                })
            }
            number::ADD_IDENTITY | number::ADD_ID_CONSTRAINED => {
                let credential = decode_private(&mut r)?;
                let constraints = if kind == number::ADD_ID_CONSTRAINED {
                    decode_constraints(&mut r)?
                } else {
                    Vec::new()
                };
                Self::Add {
                    credential,
                    constraints,
                }
            }
            number::REMOVE_IDENTITY => {
                Self::Remove(PublicCredential::decode(r.string(MAX_TEXT, "key blob")?)?)
            }
            number::REMOVE_ALL_IDENTITIES | number::REMOVE_ALL_RSA_IDENTITIES => Self::RemoveAll,
            number::ADD_SMARTCARD_KEY | number::ADD_SMARTCARD_KEY_CONSTRAINED => {
                let provider = text(&mut r, MAX_TEXT, "provider")?;
                let _pin = Zeroizing::new(r.string(MAX_TEXT, "pin")?.to_vec());
                if kind == number::ADD_SMARTCARD_KEY_CONSTRAINED {
                    decode_constraints(&mut r)?;
                }
                Self::AddSmartcard { provider }
            }
            number::REMOVE_SMARTCARD_KEY => {
                let provider = text(&mut r, MAX_TEXT, "provider")?;
                let _pin = Zeroizing::new(r.string(MAX_TEXT, "pin")?.to_vec());
                Self::RemoveSmartcard { provider }
            }
            number::LOCK | number::UNLOCK => {
                let pass = Zeroizing::new(text(&mut r, MAX_TEXT, "passphrase")?);
                if kind == number::LOCK {
                    Self::Lock(pass)
                } else {
                    Self::Unlock(pass)
                }
            }
            number::EXTENSION => {
                let name = text(&mut r, MAX_NAME, "extension name")?;
                let details = r.rest().to_vec();
                Self::Extension(Extension { name, details })
            }
            other => return Err(MessageError::UnknownType(other)),
        };
        r.finish()?;
        Ok(request)
    }
}

/// One identity in an IDENTITIES_ANSWER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub credential: PublicCredential,
    pub comment: String,
}

/// A reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    Success,
    Failure,
    Identities(Vec<Identity>),
    Signature(Signed),
    /// SSH_AGENT_EXTENSION_RESPONSE: the extension's name is not repeated; `details` is all.
    ExtensionResponse(Vec<u8>),
    /// SSH_AGENT_EXTENSION_FAILURE: the extension is known but its request failed.
    ExtensionFailure,
}

impl Response {
    /// The message body (type byte first), without the length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Success => out.push(number::SUCCESS),
            Self::Failure => out.push(number::FAILURE),
            Self::ExtensionFailure => out.push(number::EXTENSION_FAILURE),
            Self::Identities(ids) => {
                out.push(number::IDENTITIES_ANSWER);
                put_u32(&mut out, u32::try_from(ids.len()).unwrap_or(u32::MAX));
                for id in ids {
                    put_string(&mut out, &id.credential.to_blob());
                    put_string(&mut out, id.comment.as_bytes());
                }
            }
            Self::Signature(sig) => {
                out.push(number::SIGN_RESPONSE);
                put_string(&mut out, &sig.to_blob());
            }
            Self::ExtensionResponse(details) => {
                out.push(number::EXTENSION_RESPONSE);
                out.extend_from_slice(details);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::credential::tests::{cert_blob, ed25519};
    use ssh_agent_lib::ssh_encoding::Encode;
    use ssh_key::certificate::CertType;

    #[test]
    fn decodes_the_simple_requests() {
        assert!(matches!(
            Request::decode(&[11]),
            Ok(Request::RequestIdentities)
        ));
        assert!(matches!(Request::decode(&[19]), Ok(Request::RemoveAll)));
        // `ssh-add -D` also sends protocol 1's remove-all.
        assert!(matches!(Request::decode(&[9]), Ok(Request::RemoveAll)));
        assert_eq!(Request::decode(&[]).unwrap_err(), MessageError::Empty);
        assert!(Request::decode(&[1]).unwrap_err().is_unknown_type());
        assert!(Request::decode(&[11, 0]).is_err(), "trailing byte");
        let mut lock = vec![22];
        put_string(&mut lock, b"pw");
        assert!(matches!(Request::decode(&lock), Ok(Request::Lock(p)) if p.as_str() == "pw"));
    }

    #[test]
    fn sign_request_names_a_forever_certificate() {
        let (ca, user) = (ed25519(), ed25519());
        let blob = cert_blob(
            &ca,
            user.public_key().key_data(),
            CertType::User,
            &["me"],
            u64::MAX,
        );
        let mut m = vec![13];
        put_string(&mut m, &blob);
        put_string(&mut m, b"data");
        put_u32(&mut m, RSA_SHA2_256);
        let Ok(Request::Sign(s)) = Request::decode(&m) else {
            panic!("not a sign request")
        };
        assert!(matches!(&s.credential, PublicCredential::Cert(c) if c.blob() == blob));
        assert_eq!((s.data.as_slice(), s.flags), (&b"data"[..], RSA_SHA2_256));
        for cut in 1..m.len() {
            assert!(Request::decode(&m[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn add_identity_with_certificate_and_constraints() {
        let (ca, user) = (ed25519(), ed25519());
        let blob = cert_blob(
            &ca,
            user.public_key().key_data(),
            CertType::User,
            &["me"],
            u64::MAX,
        );
        let KeypairData::Ed25519(pair) = user.key_data() else {
            unreachable!()
        };
        let mut m = vec![25];
        put_string(&mut m, b"ssh-ed25519-cert-v01@openssh.com");
        put_string(&mut m, &blob);
        pair.encode(&mut m).unwrap();
        put_string(&mut m, b"comment");
        m.push(CONSTRAIN_LIFETIME);
        put_u32(&mut m, 60);
        m.push(CONSTRAIN_CONFIRM);
        m.push(CONSTRAIN_EXTENSION);
        put_string(&mut m, b"sk-provider@openssh.com");
        put_string(&mut m, b"/usr/lib/x.so");
        let Ok(Request::Add {
            credential: PrivateCredential::Cert { comment, .. },
            constraints,
        }) = Request::decode(&m)
        else {
            panic!("not a certificate add")
        };
        assert_eq!(comment, "comment");
        assert_eq!(
            constraints,
            [
                KeyConstraint::Lifetime(60),
                KeyConstraint::Confirm,
                KeyConstraint::SkProvider("/usr/lib/x.so".into())
            ]
        );
        let mut unknown = m.clone();
        unknown.push(CONSTRAIN_EXTENSION);
        put_string(&mut unknown, b"what@example.com");
        assert!(matches!(
            Request::decode(&unknown),
            Err(MessageError::UnknownConstraintExtension(_))
        ));
    }

    #[test]
    fn encodes_replies() {
        assert_eq!(Response::Success.encode(), [6]);
        assert_eq!(Response::Failure.encode(), [5]);
        assert_eq!(Response::ExtensionFailure.encode(), [28]);
        let key = ed25519();
        let ids = Response::Identities(vec![Identity {
            credential: PublicCredential::Key(key.public_key().key_data().clone()),
            comment: "c".into(),
        }])
        .encode();
        let mut r = Reader::new(&ids[1..]);
        assert_eq!(ids[0], 12);
        assert_eq!(r.u32("n"), Ok(1));
        assert_eq!(
            r.string(1024, "k").unwrap(),
            credential::key_blob(key.public_key().key_data())
        );
        assert_eq!(r.text(10, "c"), Ok("c"));
        assert!(r.finish().is_ok());
    }
}
