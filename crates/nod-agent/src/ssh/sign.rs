//! Which keys the agent accepts, and signing with them.
//!
//! Ed25519 and RSA sign with AWS-LC (through `aws-lc-rs`): its assembly field and Montgomery
//! arithmetic signs Ed25519 about twice, and RSA-3072 about five times, as fast as the
//! pure-Rust crates. ECDSA stays with RustCrypto's `p256`/`p384` (which ssh-key needs anyway):
//! they already sign faster than OpenSSH's agent, and AWS-LC's P-256 code and tables would add
//! about 0.3 MB to the agent's resident memory.
//!
//! Turning an `ssh_key::PrivateKey` into a signer costs more than a signature (public points
//! are re-derived and checked against the key's public half, RSA components validated), so
//! [`Signers`] does it once per held key and keeps the result only as long as the key itself
//! is held. The pure-Rust `rsa` crate is kept only to check an RSA key's components before
//! AWS-LC sees them.
//!
//! AWS-LC blinds the RSA private operation and cleanses every allocation it frees, so a dropped
//! signer leaves no key bytes behind. RSA signatures (about a millisecond each) run on tokio's
//! blocking pool, so concurrent clients use every core and the agent keeps answering others.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, RSA_PKCS1_SHA256, RSA_PKCS1_SHA512, RsaKeyPair};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use ssh_agent_lib::proto::{RSA_SHA2_256, RSA_SHA2_512};
use ssh_key::private::EcdsaKeypair;
use ssh_key::private::{KeypairData, RsaKeypair};
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
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl RsaSigner {
    /// Hands the checked components to AWS-LC as PKCS#1 DER; the DER is zeroized on drop.
    fn new(private: &rsa::RsaPrivateKey) -> Result<Self, SshError> {
        let der = private
            .to_pkcs1_der()
            .map_err(|_| SshError::BadKey("RSA components"))?;
        let key =
            RsaKeyPair::from_der(der.as_bytes()).map_err(|_| SshError::BadKey("RSA components"))?;
        Ok(Self {
            key,
            rng: SystemRandom::new(),
        })
    }

    /// PKCS#1 v1.5. The client's flags choose the hash; none means SHA-1, refused.
    fn sign(&self, data: &[u8], flags: u32) -> Result<Signature, SshError> {
        let (hash, padding) = if flags & RSA_SHA2_512 != 0 {
            (HashAlg::Sha512, &RSA_PKCS1_SHA512)
        } else if flags & RSA_SHA2_256 != 0 {
            (HashAlg::Sha256, &RSA_PKCS1_SHA256)
        } else {
            return Err(SshError::RsaSha1);
        };
        let mut bytes = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(padding, &self.rng, data, &mut bytes)
            .map_err(|_| SshError::Sign)?;
        Signature::new(Algorithm::Rsa { hash: Some(hash) }, bytes).map_err(|_| SshError::Sign)
    }
}

/// A held key turned into its signer once. Every variant wipes its secret on drop: the
/// RustCrypto keys zeroize, AWS-LC cleanses what it frees.
enum Prepared {
    Ed25519(Ed25519KeyPair),
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
    /// Builds the signer and checks that the key's public half is the one its private half
    /// gives (ssh-key does not check this when it decodes a key).
    fn new(key: &PrivateKey) -> Result<Self, SshError> {
        fn bad<E>(_: E) -> SshError {
            SshError::BadKey("key")
        }
        fn same(derived: &[u8], public: &[u8]) -> Result<(), SshError> {
            if derived == public {
                Ok(())
            } else {
                Err(SshError::BadKey("key"))
            }
        }
        Ok(match key.key_data() {
            KeypairData::Ed25519(k) => Self::Ed25519(
                Ed25519KeyPair::from_seed_and_public_key(k.private.as_ref(), k.public.as_ref())
                    .map_err(bad)?,
            ),
            KeypairData::Ecdsa(EcdsaKeypair::NistP256 { public, private }) => {
                let key = p256::ecdsa::SigningKey::from_slice(private.as_ref()).map_err(bad)?;
                let derived = key.verifying_key().to_encoded_point(false);
                same(derived.as_bytes(), public.as_bytes())?;
                Self::P256(key)
            }
            KeypairData::Ecdsa(EcdsaKeypair::NistP384 { public, private }) => {
                let key = p384::ecdsa::SigningKey::from_slice(private.as_ref()).map_err(bad)?;
                let derived = key.verifying_key().to_encoded_point(false);
                same(derived.as_bytes(), public.as_bytes())?;
                Self::P384(key)
            }
            KeypairData::Rsa(k) => Self::Rsa(Box::new(RsaSigner::new(&rsa_private(k)?)?)),
            _ => return Err(SshError::Unsupported("this key type".into())),
        })
    }

    /// Whether one signature takes long enough to be worth a blocking-pool thread.
    fn slow(&self) -> bool {
        matches!(self, Self::Rsa(_))
    }

    fn sign(&self, data: &[u8], flags: u32) -> Result<Signature, SshError> {
        match self {
            Self::Ed25519(k) => {
                let sig = k.try_sign(data).map_err(|_| SshError::Sign)?;
                Signature::new(Algorithm::Ed25519, sig.as_ref()).map_err(|_| SshError::Sign)
            }
            Self::P256(k) => {
                let sig: p256::ecdsa::Signature =
                    signature::Signer::try_sign(k, data).map_err(|_| SshError::Sign)?;
                sig.try_into().map_err(|_: ssh_key::Error| SshError::Sign)
            }
            Self::P384(k) => {
                let sig: p384::ecdsa::Signature =
                    signature::Signer::try_sign(k, data).map_err(|_| SshError::Sign)?;
                sig.try_into().map_err(|_: ssh_key::Error| SshError::Sign)
            }
            Self::Rsa(k) => k.sign(data, flags),
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

    /// Prepares `key`'s signer now, for a key just added: this checks that its public half is
    /// the one its private half gives and that its parts are sound, and the first signature
    /// then finds the signer ready.
    pub fn prepare(&self, key: &Arc<PrivateKey>) -> Result<(), SshError> {
        self.prepared(key).map(drop)
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
    use ssh_key::rand_core::OsRng;

    fn key(alg: Algorithm) -> Arc<PrivateKey> {
        if matches!(alg, Algorithm::Rsa { .. }) {
            let rsa = RsaKeypair::random(&mut OsRng, MIN_RSA_BITS).unwrap();
            return Arc::new(PrivateKey::new(KeypairData::Rsa(rsa), "rsa").unwrap());
        }
        Arc::new(PrivateKey::random(&mut OsRng, alg).unwrap())
    }

    /// Ed25519, P-256, P-384.
    fn elliptic() -> [Algorithm; 3] {
        let ecdsa = |curve| Algorithm::Ecdsa { curve };
        [
            Algorithm::Ed25519,
            ecdsa(EcdsaCurve::NistP256),
            ecdsa(EcdsaCurve::NistP384),
        ]
    }

    #[tokio::test]
    async fn prepared_signatures_verify_for_every_key_type() {
        let signers = Signers::default();
        let mut held = Vec::new();
        let rsa = Algorithm::Rsa { hash: None };
        for alg in elliptic().into_iter().chain([rsa]) {
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

    #[test]
    fn a_private_key_with_someone_elses_public_half_is_refused() {
        for alg in elliptic() {
            let (a, b) = (key(alg.clone()), key(alg));
            let mixed = match (a.key_data(), b.key_data()) {
                (KeypairData::Ed25519(a), KeypairData::Ed25519(b)) => {
                    let mut k = a.clone();
                    k.public = b.public;
                    KeypairData::Ed25519(k)
                }
                (
                    KeypairData::Ecdsa(EcdsaKeypair::NistP256 { private, .. }),
                    KeypairData::Ecdsa(EcdsaKeypair::NistP256 { public, .. }),
                ) => KeypairData::Ecdsa(EcdsaKeypair::NistP256 {
                    public: *public,
                    private: private.clone(),
                }),
                (
                    KeypairData::Ecdsa(EcdsaKeypair::NistP384 { private, .. }),
                    KeypairData::Ecdsa(EcdsaKeypair::NistP384 { public, .. }),
                ) => KeypairData::Ecdsa(EcdsaKeypair::NistP384 {
                    public: *public,
                    private: private.clone(),
                }),
                _ => unreachable!(),
            };
            let mixed = PrivateKey::new(mixed, "mixed").unwrap();
            assert!(matches!(sign(&mixed, b"x", 0), Err(SshError::BadKey(_))));
        }
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
