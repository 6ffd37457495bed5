//! `nod-tpm`: seals and unseals the keystore's wrapping key with the TPM 2.0 for `nod` (the
//! TPM protector, docs/security.md "Keys at rest").
//!
//! A program of its own so that the agent never maps tpm2-tss and the OpenSSL it links: those
//! stay out of the agent's memory, and out of its size, for everyone who does not use the TPM.
//! `nod` runs it with a request on stdin and reads one answer line on stdout; the key crosses
//! a pipe, never the disk.
//!
//! Requests (one field per line, binary fields in hex, at most [`MAX_REQUEST`] bytes):
//! - `seal`, key, PIN or `-` → `ok <public> <private>`
//! - `unseal`, public, private, PIN or `-` → `ok <key>`
//!
//! Other answers: `wrong-pin`, or `error <message>`. Exit status 0 for `ok`, 1 otherwise.

#![forbid(unsafe_code)]

mod tpm;

use std::io::{Read, Write};
use std::process::ExitCode;

use zeroize::Zeroizing;

/// Longest request read: two TPM blobs and a PIN, in hex, with room to spare.
const MAX_REQUEST: u64 = 16 * 1024;

fn field(lines: &mut std::str::Lines<'_>, name: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let line = lines.next().ok_or_else(|| format!("{name} is missing"))?;
    if line == "-" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    hex::decode(line)
        .map(Zeroizing::new)
        .map_err(|_| format!("{name} is not hex"))
}

fn answer(request: &str) -> Result<Zeroizing<String>, tpm::TpmFailure> {
    let bad = |m: String| tpm::TpmFailure::Failed(format!("bad request: {m}"));
    let mut lines = request.lines();
    match lines.next() {
        Some("seal") => {
            let key = field(&mut lines, "key").map_err(bad)?;
            let pin = field(&mut lines, "pin").map_err(bad)?;
            let mut wrap = Zeroizing::new([0u8; 32]);
            if key.len() != 32 {
                return Err(bad("the key is not 32 bytes".into()));
            }
            wrap.copy_from_slice(&key);
            let (public, private) = tpm::seal(&wrap, (!pin.is_empty()).then_some(&pin[..]))?;
            Ok(Zeroizing::new(format!(
                "ok {} {}\n",
                hex::encode(public),
                hex::encode(private)
            )))
        }
        Some("unseal") => {
            let public = field(&mut lines, "public").map_err(bad)?;
            let private = field(&mut lines, "private").map_err(bad)?;
            let pin = field(&mut lines, "pin").map_err(bad)?;
            let key = tpm::unseal(&public, &private, (!pin.is_empty()).then_some(&pin[..]))?;
            Ok(Zeroizing::new(format!("ok {}\n", hex::encode(&key[..]))))
        }
        _ => Err(bad("first line is neither seal nor unseal".into())),
    }
}

fn main() -> ExitCode {
    let mut request = Zeroizing::new(String::new());
    if std::io::stdin()
        .take(MAX_REQUEST)
        .read_to_string(&mut request)
        .is_err()
    {
        println!("error cannot read the request");
        return ExitCode::FAILURE;
    }
    let (line, code) = match answer(&request) {
        Ok(line) => (line, ExitCode::SUCCESS),
        Err(tpm::TpmFailure::WrongPin) => (Zeroizing::new("wrong-pin\n".into()), ExitCode::FAILURE),
        Err(tpm::TpmFailure::Failed(m)) => (
            Zeroizing::new(format!("error {}\n", m.replace('\n', " "))),
            ExitCode::FAILURE,
        ),
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    code
}
