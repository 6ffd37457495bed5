//! Sealing the wrapping key to a TPM 2.0 (through tpm2-tss's ESAPI, `tss-esapi`).
//!
//! The key is the sensitive data of a keyedhash object (`fixedTPM`, `fixedParent`,
//! `userWithAuth`) created under the owner hierarchy's storage primary, an ECC P-256 key with
//! the TCG's standard SRK template. The primary is not stored: the TPM derives the same one from
//! its seed each time, and a TPM that is cleared, or another TPM, derives another and cannot
//! load the object. With a PIN, the PIN is the object's authValue and the object is subject to
//! the TPM's dictionary-attack lockout (no `noDA`), so a few wrong PINs lock the TPM out instead
//! of allowing a guessing run.
//!
//! Every command that carries the key or the PIN runs in a salted HMAC session (salted to the
//! primary) with parameter encryption both ways, so the key and the PIN do not cross the bus in
//! the clear.
//!
//! Which TPM: `TPM2TOOLS_TCTI`, `TCTI` or `TEST_TCTI` if set (e.g.
//! `swtpm:host=127.0.0.1,port=2321` in tests), else `device:/dev/tpmrm0`, the kernel's resource
//! manager.

use std::str::FromStr;

use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, EccPoint, KeyedHashScheme, Private, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, Error as TpmError};
use zeroize::Zeroizing;

/// Why a TPM operation did not happen; the message is for the person.
#[derive(Debug)]
pub enum TpmFailure {
    /// The PIN is wrong (this counts towards the TPM's lockout).
    WrongPin,
    Failed(String),
}

/// The wrapping key, zeroized on drop.
pub type WrapKey = Zeroizing<[u8; 32]>;

/// The TPM the environment names, else the kernel's resource manager.
fn tcti() -> Result<TctiNameConf, TpmFailure> {
    match TctiNameConf::from_environment_variable() {
        Ok(conf) => Ok(conf),
        Err(TpmError::WrapperError(tss_esapi::WrapperErrorKind::ParamsMissing)) => {
            TctiNameConf::from_str("device:/dev/tpmrm0").map_err(tpm_err("the TPM device"))
        }
        Err(e) => Err(TpmFailure::Failed(format!(
            "TPM2TOOLS_TCTI/TCTI does not name a TPM nod can use: {e}"
        ))),
    }
}

/// For messages: which TPM.
pub fn describe() -> String {
    ["TPM2TOOLS_TCTI", "TCTI", "TEST_TCTI"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .unwrap_or_else(|| "/dev/tpmrm0".into())
}

fn tpm_err(what: &'static str) -> impl Fn(TpmError) -> TpmFailure {
    move |e| match e {
        TpmError::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::Lockout) => {
            TpmFailure::Failed(format!(
                "{what}: the TPM is in dictionary-attack lockout after wrong PINs; wait for the \
                 lockout to pass (or have the TPM's owner reset it) and try again"
            ))
        }
        e => TpmFailure::Failed(format!("{what}: {e}")),
    }
}

fn is_auth_failure(e: &TpmError) -> bool {
    matches!(e, TpmError::Tss2Error(rc) if matches!(
        rc.kind(),
        Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth)
    ))
}

/// The TCG standard storage root key template: ECC P-256, AES-128-CFB, restricted decrypt.
fn primary_template() -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .with_restricted(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

fn sealed_template(pin: bool) -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(true)
        .with_no_da(!pin)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Default::default())
        .build()
}

/// A connection with the storage primary loaded and a salted, encrypting session set.
struct Tpm {
    context: Context,
    primary: KeyHandle,
    session: AuthSession,
}

impl Tpm {
    fn open() -> Result<Self, TpmFailure> {
        let mut context = Context::new(tcti()?).map_err(|e| {
            TpmFailure::Failed(format!(
                "cannot reach the TPM at {} ({e}); is there one, and may you use it (group \
                 tss)?",
                describe()
            ))
        })?;
        let primary = context
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(
                    Hierarchy::Owner,
                    primary_template()?,
                    None,
                    None,
                    None,
                    None,
                )
            })
            .map_err(tpm_err("creating the storage primary key"))?
            .key_handle;
        let session = context
            .start_auth_session(
                Some(primary),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm_err("starting a session"))?
            .ok_or_else(|| TpmFailure::Failed("the TPM gave no session".into()))?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        context
            .tr_sess_set_attributes(session, attributes, mask)
            .map_err(tpm_err("setting up the session"))?;
        Ok(Self {
            context,
            primary,
            session,
        })
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        self.context.clear_sessions();
        let session: SessionHandle = self.session.into();
        let _ = self.context.flush_context(ObjectHandle::from(session));
        let _ = self.context.flush_context(self.primary.into());
    }
}

fn auth(pin: Option<&[u8]>) -> Result<Option<Auth>, TpmFailure> {
    pin.map(|p| {
        Auth::try_from(p.to_vec()).map_err(|_| {
            TpmFailure::Failed("the PIN is too long for the TPM (at most 32 bytes)".into())
        })
    })
    .transpose()
}

/// Seals `key` to the TPM; returns the object's public and private blobs.
pub fn seal(key: &WrapKey, pin: Option<&[u8]>) -> Result<(Vec<u8>, Vec<u8>), TpmFailure> {
    let mut tpm = Tpm::open()?;
    let data = SensitiveData::try_from(key.to_vec()).map_err(tpm_err("preparing the key"))?;
    let template = sealed_template(pin.is_some()).map_err(tpm_err("the sealed object"))?;
    let auth = auth(pin)?;
    let primary = tpm.primary;
    let session = tpm.session;
    let created = tpm
        .context
        .execute_with_session(Some(session), |ctx| {
            ctx.create(primary, template, auth, Some(data), None, None)
        })
        .map_err(tpm_err("sealing the key"))?;
    let public = created
        .out_public
        .marshall()
        .map_err(tpm_err("encoding the sealed object"))?;
    Ok((public, created.out_private.value().to_vec()))
}

/// Unseals the key from the blobs [`seal`] returned.
pub fn unseal(public: &[u8], private: &[u8], pin: Option<&[u8]>) -> Result<WrapKey, TpmFailure> {
    let public = Public::unmarshall(public).map_err(tpm_err("reading the sealed object"))?;
    let private =
        Private::try_from(private.to_vec()).map_err(tpm_err("reading the sealed object"))?;
    let mut tpm = Tpm::open()?;
    let primary = tpm.primary;
    let session = tpm.session;
    let loaded = tpm
        .context
        .execute_with_session(Some(session), |ctx| ctx.load(primary, private, public))
        .map_err(|e| {
            TpmFailure::Failed(format!(
                "this TPM cannot load the keystore key ({e}): it was sealed to another TPM, or \
                 this TPM was cleared since"
            ))
        })?;
    if let Some(auth) = auth(pin)? {
        tpm.context
            .tr_set_auth(loaded.into(), auth)
            .map_err(tpm_err("setting the PIN"))?;
    }
    let unsealed = tpm
        .context
        .execute_with_session(Some(session), |ctx| ctx.unseal(loaded.into()));
    let _ = tpm.context.flush_context(loaded.into());
    let data = match unsealed {
        Ok(data) => Zeroizing::new(data.value().to_vec()),
        Err(e) if is_auth_failure(&e) => return Err(TpmFailure::WrongPin),
        Err(e) => return Err(tpm_err("unsealing the key")(e)),
    };
    let mut key = Zeroizing::new([0u8; 32]);
    if data.len() != 32 {
        return Err(TpmFailure::Failed(
            "the TPM unsealed something that is not a key".into(),
        ));
    }
    key.copy_from_slice(&data);
    Ok(key)
}
