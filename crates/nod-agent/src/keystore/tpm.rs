//! The TPM protector's seal and unseal, done by `nod-tpm` (a program of its own, next to
//! `nod`), so the agent never maps tpm2-tss and the OpenSSL it links. The request goes on the
//! child's stdin and the answer comes on its stdout: the key crosses a pipe, never the disk.
//! A TPM that does not answer within [`TIMEOUT`] is given up on (the child is killed).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::KeystoreError;
use super::seal::WrapKey;

/// Longest a seal or unseal may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest answer read.
const MAX_ANSWER: u64 = 16 * 1024;
/// Where `nod-tpm` is looked for when it is not next to the running program.
const INSTALLED: &str = "/usr/bin/nod-tpm";

/// For messages: which TPM.
pub fn describe() -> String {
    ["TPM2TOOLS_TCTI", "TCTI", "TEST_TCTI"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .unwrap_or_else(|| "/dev/tpmrm0".into())
}

/// `nod-tpm` next to the running program (a build tree, or /usr/bin), else the installed one.
fn program() -> Result<PathBuf, KeystoreError> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("nod-tpm")));
    sibling
        .filter(|p| p.is_file())
        .or_else(|| Some(PathBuf::from(INSTALLED)).filter(|p| p.is_file()))
        .ok_or_else(|| {
            KeystoreError::Tpm(format!(
                "not supported here: nod-tpm (the TPM half of nod) is not installed next to \
                 this program or at {INSTALLED}"
            ))
        })
}

/// Runs one `nod-tpm` request; the `ok` answer's fields.
fn run(request: &str) -> Result<Option<Zeroizing<String>>, KeystoreError> {
    let mut child = Command::new(program()?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| KeystoreError::Tpm(format!("cannot run nod-tpm: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut answer = Zeroizing::new(String::new());
        let read = (&mut stdout)
            .take(MAX_ANSWER)
            .read_to_string(&mut answer)
            .map(|_| answer);
        let _ = tx.send(read);
    });
    let written = stdin.write_all(request.as_bytes());
    drop(stdin);
    let answer = match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(KeystoreError::Tpm(format!("reading nod-tpm's answer: {e}")));
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(KeystoreError::Tpm(format!(
                "the TPM at {} did not answer within {}s",
                describe(),
                TIMEOUT.as_secs()
            )));
        }
    };
    let _ = child.wait();
    written.map_err(|e| KeystoreError::Tpm(format!("writing to nod-tpm: {e}")))?;
    let line = answer.trim_end();
    if let Some(rest) = line.strip_prefix("ok ") {
        return Ok(Some(Zeroizing::new(rest.to_owned())));
    }
    if line == "wrong-pin" {
        return Ok(None);
    }
    Err(KeystoreError::Tpm(
        line.strip_prefix("error ")
            .unwrap_or("nod-tpm gave no answer")
            .to_owned(),
    ))
}

fn pin_field(pin: Option<&[u8]>) -> Zeroizing<String> {
    Zeroizing::new(pin.map_or_else(|| "-".into(), hex::encode))
}

/// Seals `key` to the TPM; returns the object's public and private blobs.
pub fn seal(key: &WrapKey, pin: Option<&[u8]>) -> Result<(Vec<u8>, Vec<u8>), KeystoreError> {
    let request = Zeroizing::new(format!(
        "seal\n{}\n{}\n",
        hex::encode(key.bytes()),
        &*pin_field(pin)
    ));
    let answer =
        run(&request)?.ok_or_else(|| KeystoreError::Tpm("nod-tpm refused to seal".into()))?;
    let bad = || KeystoreError::Tpm("nod-tpm's answer does not parse".into());
    let (public, private) = answer.split_once(' ').ok_or_else(bad)?;
    Ok((
        hex::decode(public).map_err(|_| bad())?,
        hex::decode(private).map_err(|_| bad())?,
    ))
}

/// Unseals the key from the blobs [`seal`] returned. `Ok(None)` is a wrong PIN (which counts
/// towards the TPM's lockout).
pub fn unseal(
    public: &[u8],
    private: &[u8],
    pin: Option<&[u8]>,
) -> Result<Option<WrapKey>, KeystoreError> {
    let request = Zeroizing::new(format!(
        "unseal\n{}\n{}\n{}\n",
        hex::encode(public),
        hex::encode(private),
        &*pin_field(pin)
    ));
    let Some(answer) = run(&request)? else {
        return Ok(None);
    };
    let mut key = [0u8; 32];
    hex::decode_to_slice(answer.trim(), &mut key)
        .map_err(|_| KeystoreError::Tpm("nod-tpm's answer is not a key".into()))?;
    let wrap = WrapKey::from_bytes(key);
    zeroize::Zeroize::zeroize(&mut key);
    Ok(Some(wrap))
}
