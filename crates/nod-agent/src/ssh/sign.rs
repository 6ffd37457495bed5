//! Which keys the agent accepts, and signing with them.
//!
//! Ed25519, ECDSA P-521 and RSA sign with AWS-LC (through `aws-lc-rs`): its assembly field and
//! Montgomery arithmetic signs Ed25519 about twice, and RSA-3072 about five times, as fast as
//! the pure-Rust crates. ECDSA P-256/P-384 stays with RustCrypto's `p256`/`p384` (which ssh-key
//! needs anyway): they already sign faster than OpenSSH's agent, and AWS-LC's P-256 code and
//! tables would add about 0.3 MB to the agent's resident memory.
//!
//! RSA signs with SHA-256 or SHA-512 when the client's flags ask for it, and with SHA-1
//! (`ssh-rsa`) when they ask for neither, as OpenSSH's agent does (sshd's `HostKeyAgent` asks
//! for it for an `ssh-rsa` host key). AWS-LC's Rust API has no SHA-1 signing, so those few
//! signatures are made by the RustCrypto `rsa` crate, blinded; `agent.toml` can refuse them
//! (`[ssh] refuse_rsa_sha1 = true`).
//!
//! Not accepted: DSA (OpenSSH 10 removed it), and security keys (`sk-*`), which sign through a
//! FIDO provider library that nod does not load.
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
use aws_lc_rs::signature::{
    ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, RSA_PKCS1_SHA256,
    RSA_PKCS1_SHA512, RsaKeyPair,
};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use sha1::Digest as _;
use ssh_agent_lib::ssh_encoding::Encode as _;
use ssh_key::private::EcdsaKeypair;
use ssh_key::private::{KeypairData, RsaKeypair};
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, Mpint, PrivateKey, Signature};

use super::SshError;
use super::message::{RSA_SHA2_256, RSA_SHA2_512};
use super::wire::put_string;

/// A signature as the agent returns it (`string algorithm, string blob`, RFC 4253 §6.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// Every algorithm ssh-key models.
    Ssh(Signature),
    /// `ssh-rsa`: RSA PKCS#1 v1.5 with SHA-1, which ssh-key's `Signature` cannot hold.
    RsaSha1(Vec<u8>),
}

impl Signed {
    /// The signature blob.
    pub fn to_blob(&self) -> Vec<u8> {
        match self {
            Self::Ssh(sig) => super::wire::to_vec(sig),
            Self::RsaSha1(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 16);
                put_string(&mut out, b"ssh-rsa");
                put_string(&mut out, bytes);
                out
            }
        }
    }

    /// The signature, unless it is SHA-1 RSA.
    pub fn signature(&self) -> Option<&Signature> {
        match self {
            Self::Ssh(sig) => Some(sig),
            Self::RsaSha1(_) => None,
        }
    }
}

impl From<Signature> for Signed {
    fn from(sig: Signature) -> Self {
        Self::Ssh(sig)
    }
}

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Checks that `key` is of a type and size this agent signs with.
pub fn check_key(key: &KeypairData) -> Result<(), SshError> {
    match key {
        KeypairData::Ed25519(_) => Ok(()),
        KeypairData::Ecdsa(_) => Ok(()),
        KeypairData::Rsa(k) => {
            let bits = rsa_private(k)?.size().saturating_mul(8);
            if bits >= MIN_RSA_BITS {
                Ok(())
            } else {
                Err(SshError::RsaTooSmall(bits))
            }
        }
        KeypairData::Dsa(_) => Err(SshError::Unsupported(
            "DSA keys (OpenSSH 10 removed DSA; use an Ed25519 key)".into(),
        )),
        KeypairData::SkEcdsaSha2NistP256(_) | KeypairData::SkEd25519(_) => {
            Err(SshError::Unsupported(
                "security-key (sk-*) keys: they sign through a FIDO provider library, and nod \
                 loads no provider libraries"
                    .into(),
            ))
        }
        _ => Err(SshError::Unsupported("this key type".into())),
    }
}

/// Which hash an RSA signature uses, from the client's flags as OpenSSH's agent reads them
/// (`agent_decode_alg`): SHA-256 first, then SHA-512, else SHA-1.
fn rsa_hash(flags: u32) -> Option<HashAlg> {
    if flags & RSA_SHA2_256 != 0 {
        Some(HashAlg::Sha256)
    } else if flags & RSA_SHA2_512 != 0 {
        Some(HashAlg::Sha512)
    } else {
        None
    }
}

/// Signs `data` with `key` (SHA-1 RSA allowed; see [`Signers`] for the refusal option).
pub fn sign(key: &PrivateKey, data: &[u8], flags: u32) -> Result<Signed, SshError> {
    let prepared = Prepared::new(key)?;
    match (&prepared, rsa_hash(flags)) {
        (Prepared::Rsa(_), None) => rsa_sha1(key, data),
        _ => prepared.sign(data, flags).map(Signed::from),
    }
}

/// DigestInfo for SHA-1 (RFC 8017 §9.2, note 1).
const SHA1_DIGEST_INFO: [u8; 15] = [
    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
];

/// `ssh-rsa`: PKCS#1 v1.5 over SHA-1, by the `rsa` crate with blinding (see the module docs).
/// The key is built from its components for this signature only and zeroized after.
fn rsa_sha1(key: &PrivateKey, data: &[u8]) -> Result<Signed, SshError> {
    let KeypairData::Rsa(k) = key.key_data() else {
        return Err(SshError::Sign);
    };
    let private = rsa_private(k)?;
    let scheme = rsa::Pkcs1v15Sign {
        hash_len: Some(20),
        prefix: SHA1_DIGEST_INFO.into(),
    };
    let digest = sha1::Sha1::digest(data);
    let bytes = private
        .sign_with_rng(&mut ssh_key::rand_core::OsRng, scheme, &digest)
        .map_err(|_| SshError::Sign)?;
    Ok(Signed::RsaSha1(bytes))
}

/// An ECDSA signature from AWS-LC's fixed-length `r || s`, as SSH encodes it (two mpints).
fn ecdsa_from_fixed(curve: EcdsaCurve, fixed: &[u8]) -> Result<Signature, SshError> {
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let mut blob = Vec::with_capacity(fixed.len() + 10);
    for half in [r, s] {
        Mpint::from_positive_bytes(half)
            .and_then(|m| m.encode(&mut blob).map_err(ssh_key::Error::from))
            .map_err(|_| SshError::Sign)?;
    }
    Signature::new(Algorithm::Ecdsa { curve }, blob).map_err(|_| SshError::Sign)
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

    /// PKCS#1 v1.5 with SHA-256 or SHA-512, as the client's flags choose. SHA-1 is made by
    /// [`rsa_sha1`] instead.
    fn sign(&self, data: &[u8], flags: u32) -> Result<Signature, SshError> {
        let (hash, padding) = match rsa_hash(flags) {
            Some(HashAlg::Sha512) => (HashAlg::Sha512, &RSA_PKCS1_SHA512),
            Some(_) => (HashAlg::Sha256, &RSA_PKCS1_SHA256),
            None => return Err(SshError::RsaSha1),
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
    P521(EcdsaKeyPair),
    Rsa(Box<RsaSigner>),
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Self::Ed25519(_) => "Ed25519",
            Self::P256(_) => "P-256",
            Self::P384(_) => "P-384",
            Self::P521(_) => "P-521",
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
            // AWS-LC checks that the public point is the one the private scalar gives.
            KeypairData::Ecdsa(EcdsaKeypair::NistP521 { public, private }) => Self::P521(
                EcdsaKeyPair::from_private_key_and_public_key(
                    &ECDSA_P521_SHA512_FIXED_SIGNING,
                    private.as_ref(),
                    public.as_bytes(),
                )
                .map_err(bad)?,
            ),
            KeypairData::Rsa(k) => Self::Rsa(Box::new(RsaSigner::new(&rsa_private(k)?)?)),
            _ => return Err(SshError::Unsupported("this key type".into())),
        })
    }

    /// Whether one signature takes long enough to be worth a blocking-pool thread.
    fn slow(&self) -> bool {
        matches!(self, Self::Rsa(_) | Self::P521(_))
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
            Self::P521(k) => {
                let sig = k
                    .sign(&SystemRandom::new(), data)
                    .map_err(|_| SshError::Sign)?;
                ecdsa_from_fixed(EcdsaCurve::NistP521, sig.as_ref())
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
    /// `[ssh] refuse_rsa_sha1`.
    refuse_rsa_sha1: bool,
}

impl Default for Signers {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            cache: Mutex::default(),
            slots: tokio::sync::Semaphore::new(cores),
            refuse_rsa_sha1: false,
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

    /// Refuses SHA-1 RSA signatures (`ssh-rsa`) from now on.
    pub fn refuse_rsa_sha1(&mut self, refuse: bool) {
        self.refuse_rsa_sha1 = refuse;
    }

    /// Signs `data` with `key` (see [`sign`] for the flags).
    pub async fn sign(
        &self,
        key: &Arc<PrivateKey>,
        data: &[u8],
        flags: u32,
    ) -> Result<Signed, SshError> {
        let prepared = self.prepared(key)?;
        if !prepared.slow() {
            return prepared.sign(data, flags).map(Signed::from);
        }
        let sha1 = matches!(*prepared, Prepared::Rsa(_)) && rsa_hash(flags).is_none();
        if sha1 && self.refuse_rsa_sha1 {
            return Err(SshError::RsaSha1);
        }
        let _slot = self.slots.acquire().await.map_err(|_| SshError::Sign)?;
        let data = data.to_vec();
        let key = Arc::clone(key);
        tokio::task::spawn_blocking(move || {
            if sha1 {
                rsa_sha1(&key, &data)
            } else {
                prepared.sign(&data, flags).map(Signed::from)
            }
        })
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

    /// Ed25519, P-256, P-384, P-521.
    fn elliptic() -> [Algorithm; 4] {
        let ecdsa = |curve| Algorithm::Ecdsa { curve };
        [
            Algorithm::Ed25519,
            ecdsa(EcdsaCurve::NistP256),
            ecdsa(EcdsaCurve::NistP384),
            ecdsa(EcdsaCurve::NistP521),
        ]
    }

    fn verify(k: &PrivateKey, data: &[u8], sig: &Signed) {
        Verifier::verify(k.public_key().key_data(), data, sig.signature().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn prepared_signatures_verify_for_every_key_type() {
        let signers = Signers::default();
        let mut held = Vec::new();
        let rsa = Algorithm::Rsa { hash: None };
        for alg in elliptic().into_iter().chain([rsa]) {
            let k = key(alg.clone());
            for flags in [RSA_SHA2_256, RSA_SHA2_512] {
                verify(
                    &k,
                    b"data",
                    &signers.sign(&k, b"data", flags).await.unwrap(),
                );
                verify(&k, b"data", &sign(&k, b"data", flags).unwrap());
            }
            held.push(k);
        }
        assert_eq!(signers.cache.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn rsa_flags_choose_the_hash_as_openssh_does() {
        let k = key(Algorithm::Rsa { hash: None });
        let signers = Signers::default();
        let alg = |flags| {
            let signers = &signers;
            let k = &k;
            async move {
                signers
                    .sign(k, b"d", flags)
                    .await
                    .unwrap()
                    .signature()
                    .map(Signature::algorithm)
            }
        };
        let rsa = |hash| Some(Algorithm::Rsa { hash: Some(hash) });
        assert_eq!(alg(RSA_SHA2_256).await, rsa(HashAlg::Sha256));
        assert_eq!(alg(RSA_SHA2_512).await, rsa(HashAlg::Sha512));
        // Both: SHA-256, as OpenSSH's agent_decode_alg picks.
        assert_eq!(alg(RSA_SHA2_256 | RSA_SHA2_512).await, rsa(HashAlg::Sha256));
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
                (
                    KeypairData::Ecdsa(EcdsaKeypair::NistP521 { private, .. }),
                    KeypairData::Ecdsa(EcdsaKeypair::NistP521 { public, .. }),
                ) => KeypairData::Ecdsa(EcdsaKeypair::NistP521 {
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
    async fn rsa_without_sha2_flags_signs_sha1_unless_refused() {
        use rsa::traits::PublicKeyParts as _;
        let k = key(Algorithm::Rsa { hash: None });
        let mut signers = Signers::default();
        let signed = signers.sign(&k, b"data", 0).await.unwrap();
        let one_shot = sign(&k, b"data", 0).unwrap();
        for s in [&signed, &one_shot] {
            let Signed::RsaSha1(bytes) = s else {
                panic!("not a SHA-1 signature")
            };
            // Verified independently of the signer: RSA public operation, PKCS#1 v1.5 layout.
            let KeypairData::Rsa(pair) = k.key_data() else {
                unreachable!()
            };
            let public = rsa_private(pair).unwrap().to_public_key();
            let scheme = rsa::Pkcs1v15Sign {
                hash_len: Some(20),
                prefix: SHA1_DIGEST_INFO.into(),
            };
            public
                .verify(scheme, &sha1::Sha1::digest(b"data"), bytes)
                .unwrap();
            assert_eq!(bytes.len(), public.size());
            let blob = s.to_blob();
            assert_eq!(&blob[..11], b"\0\0\0\x07ssh-rsa");
        }
        signers.refuse_rsa_sha1(true);
        let r = signers.sign(&k, b"data", 0).await;
        assert!(matches!(r, Err(SshError::RsaSha1)));
        assert!(signers.sign(&k, b"data", RSA_SHA2_256).await.is_ok());
    }

    #[test]
    fn dsa_and_security_keys_are_refused() {
        let dsa = PrivateKey::random(&mut OsRng, Algorithm::Dsa);
        if let Ok(dsa) = dsa {
            assert!(matches!(
                check_key(dsa.key_data()),
                Err(SshError::Unsupported(_))
            ));
        }
        let sk =
            ssh_key::public::SkEd25519::new(ssh_key::public::Ed25519PublicKey([1; 32]), "ssh:");
        let pair =
            KeypairData::SkEd25519(ssh_key::private::SkEd25519::new(sk, 0, vec![1, 2, 3]).unwrap());
        assert!(matches!(check_key(&pair), Err(SshError::Unsupported(m)) if m.contains("FIDO")));
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
