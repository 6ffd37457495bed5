//! Which keys the agent accepts, and signing with them.

use rsa::pkcs1v15::SigningKey;
use rsa::sha2::{Sha256, Sha512};
use rsa::traits::PublicKeyParts as _;
use signature::{SignatureEncoding, Signer as _};
use ssh_agent_lib::proto::{RSA_SHA2_256, RSA_SHA2_512};
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
    match key.key_data() {
        KeypairData::Rsa(k) => {
            let private = rsa_private(k)?;
            let (hash, bytes) = if flags & RSA_SHA2_512 != 0 {
                let sig = SigningKey::<Sha512>::new(private)
                    .try_sign(data)
                    .map_err(|_| SshError::Sign)?;
                (HashAlg::Sha512, sig.to_vec())
            } else if flags & RSA_SHA2_256 != 0 {
                let sig = SigningKey::<Sha256>::new(private)
                    .try_sign(data)
                    .map_err(|_| SshError::Sign)?;
                (HashAlg::Sha256, sig.to_vec())
            } else {
                return Err(SshError::RsaSha1);
            };
            Signature::new(Algorithm::Rsa { hash: Some(hash) }, bytes).map_err(|_| SshError::Sign)
        }
        KeypairData::Ed25519(_) | KeypairData::Ecdsa(_) => {
            key.try_sign(data).map_err(|_| SshError::Sign)
        }
        _ => Err(SshError::Unsupported("this key type".into())),
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
