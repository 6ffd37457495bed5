//! OpenSSH's encoding of private keys, as `ssh-keygen` writes key files and `ssh-add` sends
//! keys to an agent (`PROTOCOL.key`, `draft-miller-ssh-agent` §3.2).
//!
//! ssh-key decodes both, except one case: it takes an ECDSA private scalar only at its full
//! width (32, 48 or 66 bytes, or one more with a leading zero), while OpenSSH writes it as a
//! minimal `mpint`. A scalar whose top byte is zero, one P-256 key in 256 and about one P-521
//! key in four, is then refused. [`decode_keypair`] reads ECDSA keys itself, pads the scalar,
//! and leaves every other type to ssh-key; [`decode_key_file`] is the key file's container
//! (cipher, KDF, check integers, padding) around it, used when ssh-key refuses a file.

use ssh_agent_lib::ssh_encoding::Decode;
use ssh_key::private::{EcdsaKeypair, EcdsaPrivateKey, KeypairData};
use ssh_key::public::{EcdsaPublicKey, KeyData};
use ssh_key::{Cipher, Kdf, PrivateKey};
use zeroize::Zeroizing;

/// The key file's magic (`PROTOCOL.key`).
const AUTH_MAGIC: &[u8] = b"openssh-key-v1\0";

/// Why a key could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyDecodeError {
    #[error("{0}")]
    Format(String),
    #[error("ECDSA private scalar of {0} bytes is too long for its curve")]
    ScalarTooLong(usize),
    #[error("the private key does not go with the public key in the file")]
    PublicMismatch,
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("the key is encrypted; a passphrase is needed")]
    NeedsPassphrase,
}

fn format(e: impl std::fmt::Display) -> KeyDecodeError {
    KeyDecodeError::Format(e.to_string())
}

/// A string field, checked against what is left before it is taken.
fn string<'a>(r: &mut &'a [u8]) -> Result<&'a [u8], KeyDecodeError> {
    let len = u32::decode(r).map_err(format)? as usize;
    if len > r.len() {
        return Err(KeyDecodeError::Format("truncated field".into()));
    }
    let (head, rest) = r.split_at(len);
    *r = rest;
    Ok(head)
}

/// An ECDSA private scalar from an OpenSSH `mpint`, at the curve's full width `N`.
pub fn ecdsa_scalar<const N: usize>(mpint: &[u8]) -> Result<EcdsaPrivateKey<N>, KeyDecodeError> {
    if mpint.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(KeyDecodeError::Format("negative ECDSA scalar".into()));
    }
    let start = mpint.iter().position(|b| *b != 0).unwrap_or(mpint.len());
    let digits = &mpint[start..];
    if digits.len() > N {
        return Err(KeyDecodeError::ScalarTooLong(digits.len()));
    }
    // ssh-key builds the scalar only through its decoder: hand it the full-width form.
    let mut full = Zeroizing::new(Vec::with_capacity(4 + N));
    full.extend_from_slice(&u32::try_from(N).unwrap_or(0).to_be_bytes());
    full.resize(4 + N - digits.len(), 0);
    full.extend_from_slice(digits);
    EcdsaPrivateKey::<N>::decode(&mut full.as_slice()).map_err(format)
}

/// One private key: `string type, <fields>` (without the comment that follows it).
pub fn decode_keypair(r: &mut &[u8]) -> Result<KeypairData, KeyDecodeError> {
    let mut peek = *r;
    let key_type = string(&mut peek)?;
    if !key_type.starts_with(b"ecdsa-sha2-") {
        return KeypairData::decode(r).map_err(format);
    }
    let curve = string(&mut peek)?;
    if key_type.strip_prefix(b"ecdsa-sha2-") != Some(curve) {
        return Err(KeyDecodeError::Format(
            "ECDSA curve does not match the key type".into(),
        ));
    }
    let public = EcdsaPublicKey::from_sec1_bytes(string(&mut peek)?).map_err(format)?;
    let scalar = string(&mut peek)?;
    let pair = match public {
        EcdsaPublicKey::NistP256(public) => EcdsaKeypair::NistP256 {
            public,
            private: ecdsa_scalar(scalar)?,
        },
        EcdsaPublicKey::NistP384(public) => EcdsaKeypair::NistP384 {
            public,
            private: ecdsa_scalar(scalar)?,
        },
        EcdsaPublicKey::NistP521(public) => EcdsaKeypair::NistP521 {
            public,
            private: ecdsa_scalar(scalar)?,
        },
    };
    if key_type != pair.algorithm().as_str().as_bytes() {
        return Err(KeyDecodeError::Format(
            "ECDSA point is not on the named curve".into(),
        ));
    }
    *r = peek;
    Ok(KeypairData::Ecdsa(pair))
}

/// The binary form of an `OPENSSH PRIVATE KEY` PEM file (base64 wrapped at 70 columns, as
/// OpenSSH writes it).
pub fn key_file_bytes(pem: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyDecodeError> {
    let mut decoder =
        ssh_agent_lib::ssh_encoding::pem::Decoder::new_wrapped(pem, 70).map_err(format)?;
    if decoder.type_label() != "OPENSSH PRIVATE KEY" {
        return Err(KeyDecodeError::Format("not an OpenSSH private key".into()));
    }
    let mut out = Zeroizing::new(Vec::new());
    decoder.decode_to_end(&mut out).map_err(format)?;
    Ok(out)
}

/// A key file's binary form (the PEM body), decrypted with `passphrase` if it is encrypted.
pub fn decode_key_file(
    bytes: &[u8],
    passphrase: Option<&[u8]>,
) -> Result<PrivateKey, KeyDecodeError> {
    let mut r = bytes
        .strip_prefix(AUTH_MAGIC)
        .ok_or_else(|| KeyDecodeError::Format("not an openssh-key-v1 file".into()))?;
    let cipher = Cipher::decode(&mut r).map_err(format)?;
    let kdf = Kdf::decode(&mut r).map_err(format)?;
    if u32::decode(&mut r).map_err(format)? != 1 {
        return Err(KeyDecodeError::Format(
            "the file holds more than one key".into(),
        ));
    }
    let mut public_blob = string(&mut r)?;
    let public = KeyData::decode(&mut public_blob).map_err(format)?;
    let section = string(&mut r)?;
    let tag = if cipher.has_tag() {
        let mut tag = [0u8; 16];
        if r.len() < tag.len() {
            return Err(KeyDecodeError::Format("truncated tag".into()));
        }
        tag.copy_from_slice(&r[..16]);
        r = &r[16..];
        Some(tag)
    } else {
        None
    };
    if !r.is_empty() {
        return Err(KeyDecodeError::Format("trailing bytes".into()));
    }
    let mut plain = Zeroizing::new(section.to_vec());
    if cipher.is_some() {
        let passphrase = passphrase.ok_or(KeyDecodeError::NeedsPassphrase)?;
        let (key, iv) = kdf.derive_key_and_iv(cipher, passphrase).map_err(format)?;
        cipher
            .decrypt(&key, &iv, &mut plain, tag)
            .map_err(|_| KeyDecodeError::WrongPassphrase)?;
    }
    let block = cipher.block_size();
    if plain.len() % block != 0 {
        return Err(KeyDecodeError::Format(
            "private section is not padded".into(),
        ));
    }
    let mut p: &[u8] = &plain;
    let (check1, check2) = (
        u32::decode(&mut p).map_err(format)?,
        u32::decode(&mut p).map_err(format)?,
    );
    if check1 != check2 {
        return Err(if cipher.is_some() {
            KeyDecodeError::WrongPassphrase
        } else {
            KeyDecodeError::Format("check integers differ".into())
        });
    }
    let keypair = decode_keypair(&mut p)?;
    if KeyData::try_from(&keypair).map_err(format)? != public {
        return Err(KeyDecodeError::PublicMismatch);
    }
    let comment = String::from_utf8(string(&mut p)?.to_vec()).map_err(format)?;
    // Padding 1, 2, 3, … up to the block size.
    if p.len() >= block || p.iter().enumerate().any(|(i, b)| usize::from(*b) != i + 1) {
        return Err(KeyDecodeError::Format("bad padding".into()));
    }
    PrivateKey::new(keypair, comment).map_err(format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_agent_lib::ssh_encoding::Encode;
    use ssh_key::rand_core::OsRng;
    use ssh_key::{Algorithm, EcdsaCurve, LineEnding};

    fn put(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
        out.extend_from_slice(s);
    }

    /// A P-521 key whose scalar starts with a zero byte and then a byte below 0x80: OpenSSH
    /// writes its mpint in 65 bytes or fewer, which ssh-key alone refuses.
    fn short_p521() -> PrivateKey {
        for _ in 0..200 {
            let k = PrivateKey::random(
                &mut OsRng,
                Algorithm::Ecdsa {
                    curve: EcdsaCurve::NistP521,
                },
            )
            .unwrap();
            let KeypairData::Ecdsa(pair) = k.key_data() else {
                unreachable!()
            };
            let d = pair.private_key_bytes();
            if d[0] == 0 && d[1] < 0x80 {
                return k;
            }
        }
        panic!("no short P-521 scalar in 200 tries");
    }

    /// `string type, string curve, string Q, mpint d` as OpenSSH writes it (minimal mpint).
    fn openssh_ecdsa(k: &PrivateKey) -> Vec<u8> {
        let KeypairData::Ecdsa(pair) = k.key_data() else {
            unreachable!()
        };
        let name = pair.algorithm().as_str().to_owned();
        let mut out = Vec::new();
        put(&mut out, name.as_bytes());
        put(&mut out, name.trim_start_matches("ecdsa-sha2-").as_bytes());
        put(&mut out, pair.public_key_bytes());
        let d = pair.private_key_bytes();
        let start = d.iter().position(|b| *b != 0).unwrap();
        let mut mpint = d[start..].to_vec();
        if mpint[0] & 0x80 != 0 {
            mpint.insert(0, 0);
        }
        put(&mut out, &mpint);
        out
    }

    #[test]
    fn short_ecdsa_scalars_decode_at_full_width() {
        let k = short_p521();
        let bytes = openssh_ecdsa(&k);
        assert!(
            KeypairData::decode(&mut bytes.as_slice()).is_err(),
            "ssh-key alone refuses it"
        );
        let mut r = bytes.as_slice();
        assert_eq!(&decode_keypair(&mut r).unwrap(), k.key_data());
        assert!(r.is_empty());
        for curve in [EcdsaCurve::NistP256, EcdsaCurve::NistP384] {
            let k = PrivateKey::random(&mut OsRng, Algorithm::Ecdsa { curve }).unwrap();
            assert_eq!(
                &decode_keypair(&mut openssh_ecdsa(&k).as_slice()).unwrap(),
                k.key_data()
            );
        }
        // Other types go to ssh-key.
        let ed = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        let mut blob = Vec::new();
        ed.key_data().encode(&mut blob).unwrap();
        assert_eq!(
            &decode_keypair(&mut blob.as_slice()).unwrap(),
            ed.key_data()
        );
    }

    #[test]
    fn bad_scalars_are_refused() {
        assert!(matches!(
            ecdsa_scalar::<32>(&[1; 33]),
            Err(KeyDecodeError::ScalarTooLong(33))
        ));
        assert!(ecdsa_scalar::<32>(&[0x80, 1]).is_err(), "negative");
        assert_eq!(
            ecdsa_scalar::<32>(&[0, 0, 5]).unwrap().as_slice()[31],
            5,
            "padded"
        );
        let k = short_p521();
        let mut bytes = openssh_ecdsa(&k);
        // Another curve's name: refused.
        bytes[4 + 19 + 4 + 5] = b'4';
        assert!(decode_keypair(&mut bytes.as_slice()).is_err());
    }

    /// The file ssh-keygen writes for `k`, with a minimal scalar, encrypted or not.
    fn key_file(k: &PrivateKey, passphrase: Option<&str>) -> Vec<u8> {
        // Let ssh-key write the container, then put the minimal scalar in its place.
        let written = match passphrase {
            Some(p) => k.encrypt(&mut OsRng, p).unwrap(),
            None => k.clone(),
        };
        let pem = written.to_openssh(LineEnding::LF).unwrap();
        let bin = key_file_bytes(pem.as_bytes()).unwrap();
        if let Some(passphrase) = passphrase {
            // Rebuild the encrypted section around a minimal scalar.
            let KeypairData::Encrypted(_) = written.key_data() else {
                unreachable!()
            };
            let mut plain = Vec::new();
            plain.extend_from_slice(&[7, 7, 7, 7, 7, 7, 7, 7]);
            plain.extend_from_slice(&openssh_ecdsa(k));
            put(&mut plain, k.comment().as_bytes());
            let mut i = 1u8;
            while plain.len() % 16 != 0 {
                plain.push(i);
                i += 1;
            }
            let (key, iv) = written
                .kdf()
                .derive_key_and_iv(written.cipher(), passphrase)
                .unwrap();
            written.cipher().encrypt(&key, &iv, &mut plain).unwrap();
            let mut out = AUTH_MAGIC.to_vec();
            put(&mut out, written.cipher().as_str().as_bytes());
            written.kdf().encode(&mut out).unwrap();
            out.extend_from_slice(&1u32.to_be_bytes());
            let mut public = Vec::new();
            k.public_key().key_data().encode(&mut public).unwrap();
            put(&mut out, &public);
            put(&mut out, &plain);
            return out;
        }
        let mut plain = Vec::new();
        plain.extend_from_slice(&[7, 7, 7, 7, 7, 7, 7, 7]);
        plain.extend_from_slice(&openssh_ecdsa(k));
        put(&mut plain, k.comment().as_bytes());
        let mut i = 1u8;
        while plain.len() % 8 != 0 {
            plain.push(i);
            i += 1;
        }
        let mut out = AUTH_MAGIC.to_vec();
        put(&mut out, b"none");
        put(&mut out, b"none");
        put(&mut out, b"");
        out.extend_from_slice(&1u32.to_be_bytes());
        let mut public = Vec::new();
        k.public_key().key_data().encode(&mut public).unwrap();
        put(&mut out, &public);
        put(&mut out, &plain);
        assert!(bin.starts_with(AUTH_MAGIC));
        out
    }

    #[test]
    fn key_files_with_short_scalars_decode() {
        let mut k = short_p521();
        k.set_comment("p521");
        let plain = key_file(&k, None);
        let got = decode_key_file(&plain, None).unwrap();
        assert_eq!(got.key_data(), k.key_data());
        assert_eq!(got.comment(), "p521");
        let locked = key_file(&k, Some("pw"));
        assert_eq!(
            decode_key_file(&locked, None).unwrap_err(),
            KeyDecodeError::NeedsPassphrase
        );
        assert_eq!(
            decode_key_file(&locked, Some(b"wrong")).unwrap_err(),
            KeyDecodeError::WrongPassphrase
        );
        assert_eq!(
            decode_key_file(&locked, Some(b"pw")).unwrap().key_data(),
            k.key_data()
        );
        for cut in 0..plain.len() {
            assert!(
                decode_key_file(&plain[..cut], None).is_err(),
                "cut at {cut}"
            );
        }
    }
}
