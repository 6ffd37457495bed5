//! Which keys the agent accepts, and signing with them.
//!
//! Turning an `ssh_key::PrivateKey` into a signer is costly: ssh-key re-derives the Ed25519 and
//! ECDSA public points on every signature, and an RSA key's CRT values would be recomputed and
//! the key validated each time. [`Signers`] does that once per held key and keeps the result
//! only as long as the key itself is held. RSA signatures (milliseconds each) run on tokio's
//! blocking pool, so concurrent clients use every core and the agent keeps answering others.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use rsa::pkcs1v15::SigningKey;
use rsa::sha2::{Sha256, Sha512};
use rsa::traits::PublicKeyParts as _;
use signature::{RandomizedSigner as _, SignatureEncoding, Signer as _};
use ssh_agent_lib::proto::{RSA_SHA2_256, RSA_SHA2_512};
use ssh_key::private::EcdsaKeypair;
use ssh_key::private::{KeypairData, RsaKeypair};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, PrivateKey, Signature};

use super::SshError;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Checks that `key` is of a type and size this agent signs with.
pub fn check_key(key: &KeypairData) -> Result<(), SshError> {
    match key {
        KeypairData::Ed25519(_) => Ok(()),
        KeypairData::Ecdsa(k) => match k.curve() {
            EcdsaCurve::NistP256 | EcdsaCurve::NistP384 => Ok(()),
            EcdsaCurve::NistP521 => Err(SshError::Unsupported("ECDSA P-521 keys".into())),
        },
        KeypairData::Rsa(k) => {
            let bits = rsa_private(k)?.size().saturating_mul(8);
            if bits >= MIN_RSA_BITS {
                Ok(())
            } else {
                Err(SshError::RsaTooSmall(bits))
            }
        }
        _ => Err(SshError::Unsupported("this key type".into())),
    }
}

/// Signs `data` with `key`. For RSA the client's flags choose SHA-256 or SHA-512; a request
/// without either asks for SHA-1 (`ssh-rsa`), which is refused.
pub fn sign(key: &PrivateKey, data: &[u8], flags: u32) -> Result<Signature, SshError> {
    Prepared::new(key)?.sign(data, flags)
}

/// An RSA key ready to sign with SHA-256 or SHA-512.
struct RsaSigner {
    sha256: SigningKey<Sha256>,
    sha512: SigningKey<Sha512>,
}

impl RsaSigner {
    fn new(private: rsa::RsaPrivateKey) -> Self {
        Self {
            sha256: SigningKey::new(private.clone()),
            sha512: SigningKey::new(private),
        }
    }
}

/// PKCS#1 v1.5 with blinding (the random `r` keeps the private exponentiation's timing
/// independent of the key). The client's flags choose the hash; none means SHA-1, refused.
fn rsa_sign(key: &RsaSigner, data: &[u8], flags: u32) -> Result<Signature, SshError> {
    let (hash, bytes) = if flags & RSA_SHA2_512 != 0 {
        let sig = key
            .sha512
            .try_sign_with_rng(&mut OsRng, data)
            .map_err(|_| SshError::Sign)?;
        (HashAlg::Sha512, sig.to_vec())
    } else if flags & RSA_SHA2_256 != 0 {
        let sig = key
            .sha256
            .try_sign_with_rng(&mut OsRng, data)
            .map_err(|_| SshError::Sign)?;
        (HashAlg::Sha256, sig.to_vec())
    } else {
        return Err(SshError::RsaSha1);
    };
    Signature::new(Algorithm::Rsa { hash: Some(hash) }, bytes).map_err(|_| SshError::Sign)
}

/// A held key turned into its signer once. Every variant zeroizes its secret on drop.
enum Prepared {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Rsa(Box<RsaSigner>),
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Self::Ed25519(_) => "Ed25519",
            Self::P256(_) => "P-256",
            Self::P384(_) => "P-384",
            Self::Rsa(_) => "RSA",
        };
        write!(f, "Prepared({kind}, <secret>)")
    }
}

impl Prepared {
    fn new(key: &PrivateKey) -> Result<Self, SshError> {
        Ok(match key.key_data() {
            KeypairData::Ed25519(k) => Self::Ed25519(
                ed25519_dalek::SigningKey::try_from(k).map_err(|_| SshError::BadKey("key"))?,
            ),
            KeypairData::Ecdsa(EcdsaKeypair::NistP256 { private, .. }) => Self::P256(
                p256::ecdsa::SigningKey::from_slice(private.as_ref())
                    .map_err(|_| SshError::BadKey("key"))?,
            ),
            KeypairData::Ecdsa(EcdsaKeypair::NistP384 { private, .. }) => Self::P384(
                p384::ecdsa::SigningKey::from_slice(private.as_ref())
                    .map_err(|_| SshError::BadKey("key"))?,
            ),
            KeypairData::Rsa(k) => Self::Rsa(Box::new(RsaSigner::new(rsa_private(k)?))),
            _ => return Err(SshError::Unsupported("this key type".into())),
        })
    }

    /// Whether one signature takes long enough to be worth a blocking-pool thread.
    fn slow(&self) -> bool {
        matches!(self, Self::Rsa(_))
    }

    fn sign(&self, data: &[u8], flags: u32) -> Result<Signature, SshError> {
        let ecdsa = |r: signature::Result<Signature>| r.map_err(|_| SshError::Sign);
        match self {
            Self::Ed25519(k) => {
                let sig = k.try_sign(data).map_err(|_| SshError::Sign)?;
                Signature::new(Algorithm::Ed25519, sig.to_vec()).map_err(|_| SshError::Sign)
            }
            Self::P256(k) => {
                let sig: p256::ecdsa::Signature = k.try_sign(data).map_err(|_| SshError::Sign)?;
                ecdsa(sig.try_into().map_err(|_| signature::Error::new()))
            }
            Self::P384(k) => {
                let sig: p384::ecdsa::Signature = k.try_sign(data).map_err(|_| SshError::Sign)?;
                ecdsa(sig.try_into().map_err(|_| signature::Error::new()))
            }
            Self::Rsa(k) => rsa_sign(k, data, flags),
        }
    }
}

/// Prepared signers of the keys the agent holds, found by the key's `Arc`. An entry lives only
/// while its key does: entries whose key is gone are dropped (and zeroized) on every access.
#[derive(Debug)]
pub struct Signers {
    cache: Mutex<Vec<(Weak<PrivateKey>, Arc<Prepared>)>>,
    /// One slow signature per core at a time: more would only stretch every one of them (the
    /// tail latency) without signing more per second.
    slots: tokio::sync::Semaphore,
}

impl Default for Signers {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            cache: Mutex::default(),
            slots: tokio::sync::Semaphore::new(cores),
        }
    }
}

impl Signers {
    fn prepared(&self, key: &Arc<PrivateKey>) -> Result<Arc<Prepared>, SshError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(held, _)| held.strong_count() > 0);
        // With dead entries gone, a live `Weak` at this address is this very key.
        if let Some((_, prepared)) = cache
            .iter()
            .find(|(held, _)| held.as_ptr() == Arc::as_ptr(key))
        {
            return Ok(Arc::clone(prepared));
        }
        let prepared = Arc::new(Prepared::new(key)?);
        cache.push((Arc::downgrade(key), Arc::clone(&prepared)));
        Ok(prepared)
    }

    /// Drops the prepared signers of keys no longer held.
    pub fn purge(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(held, _)| held.strong_count() > 0);
    }

    /// Signs `data` with `key` (see [`sign`] for the flags).
    pub async fn sign(
        &self,
        key: &Arc<PrivateKey>,
        data: &[u8],
        flags: u32,
    ) -> Result<Signature, SshError> {
        let prepared = self.prepared(key)?;
        if !prepared.slow() {
            return prepared.sign(data, flags);
        }
        let _slot = self.slots.acquire().await.map_err(|_| SshError::Sign)?;
        let data = data.to_vec();
        tokio::task::spawn_blocking(move || prepared.sign(&data, flags))
            .await
            .map_err(|_| SshError::Sign)?
    }
}

/// The `rsa` crate's key, built from both primes. (ssh-key 0.6.7's own conversion passes `p`
/// twice, so its CRT values would be wrong.)
fn rsa_private(k: &RsaKeypair) -> Result<rsa::RsaPrivateKey, SshError> {
    let int = |m: &ssh_key::Mpint| {
        rsa::BigUint::try_from(m.clone()).map_err(|_| SshError::BadKey("RSA integer"))
    };
    let key = rsa::RsaPrivateKey::from_components(
        int(&k.public.n)?,
        int(&k.public.e)?,
        int(&k.private.d)?,
        vec![int(&k.private.p)?, int(&k.private.q)?],
    )
    .map_err(|_| SshError::BadKey("RSA components"))?;
    key.validate()
        .map_err(|_| SshError::BadKey("RSA components"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signature::Verifier;

    fn key(alg: Algorithm) -> Arc<PrivateKey> {
        if matches!(alg, Algorithm::Rsa { .. }) {
            let rsa = RsaKeypair::random(&mut OsRng, MIN_RSA_BITS).unwrap();
            return Arc::new(PrivateKey::new(KeypairData::Rsa(rsa), "rsa").unwrap());
        }
        Arc::new(PrivateKey::random(&mut OsRng, alg).unwrap())
    }

    #[tokio::test]
    async fn prepared_signatures_verify_for_every_key_type() {
        let signers = Signers::default();
        let mut held = Vec::new();
        for alg in [
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            },
            Algorithm::Rsa { hash: None },
        ] {
            let k = key(alg.clone());
            for flags in [RSA_SHA2_256, RSA_SHA2_512] {
                let sig = signers.sign(&k, b"data", flags).await.unwrap();
                Verifier::verify(k.public_key().key_data(), b"data", &sig).unwrap();
                let one_shot = sign(&k, b"data", flags).unwrap();
                Verifier::verify(k.public_key().key_data(), b"data", &one_shot).unwrap();
            }
            held.push(k);
        }
        assert_eq!(signers.cache.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn rsa_without_sha2_flags_is_refused() {
        let k = key(Algorithm::Rsa { hash: None });
        let r = Signers::default().sign(&k, b"data", 0).await;
        assert!(matches!(r, Err(SshError::RsaSha1)));
    }

    #[tokio::test]
    async fn prepared_signer_goes_with_its_key() {
        let signers = Signers::default();
        let k = key(Algorithm::Ed25519);
        signers.sign(&k, b"x", 0).await.unwrap();
        assert_eq!(signers.cache.lock().unwrap().len(), 1);
        drop(k);
        signers.purge();
        assert!(signers.cache.lock().unwrap().is_empty());
        assert!(!format!("{signers:?}").is_empty());
    }
}
