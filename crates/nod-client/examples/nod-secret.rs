//! A minimal client of the secrets broker, as a program that registers itself would write it:
//! - `nod-secret get SERVICE TARGET`;
//! - `nod-secret put SERVICE TARGET` (the value on stdin);
//! - `nod-secret call`: one message from stdin (JSON), a request sent in a session, the
//!   response printed as the agent sent it;
//! - `nod-secret raw`: one line from stdin, sent as is (no session), the response printed.
//!
//! It is also what nod's tests register as "a program that needs a secret".

use std::io::{Read, Write};
use std::process::ExitCode;

use nod_client::Client;
use nod_client::proto::SecretValue;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result =
        (|| -> Result<(), Box<dyn std::error::Error>> {
            let mut c = Client::connect_default()?;
            match args.as_slice() {
                ["get", service, target] => {
                    let v = c.get(service, target)?;
                    println!("{}", v.expose());
                }
                ["put", service, target] => {
                    let mut value = String::new();
                    std::io::stdin().read_to_string(&mut value)?;
                    let value = value.strip_suffix('\n').unwrap_or(&value).to_owned();
                    c.put(
                        service,
                        vec![((*target).to_owned(), SecretValue::new(value))],
                    )?;
                }
                ["call"] => {
                    let mut line = Vec::new();
                    std::io::stdin().read_to_end(&mut line)?;
                    let resp = match nod_client::proto::Message::decode(line.trim_ascii_end())? {
                        nod_client::proto::Message::Request(r) => c.send(r)?,
                        other => c.call(&other)?,
                    };
                    std::io::stdout().write_all(&resp.encode())?;
                }
                ["raw"] => {
                    let mut line = Vec::new();
                    std::io::stdin().read_to_end(&mut line)?;
                    let resp = c.call_raw(&line)?;
                    std::io::stdout().write_all(&resp.encode())?;
                }
                _ => return Err(
                    "usage: nod-secret get|put SERVICE TARGET | nod-secret call | nod-secret raw"
                        .into(),
                ),
            }
            Ok(())
        })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nod-secret: {e}");
            ExitCode::FAILURE
        }
    }
}
