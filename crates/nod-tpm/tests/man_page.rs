//! nod-tpm(1) held to the program: the requests it documents are the ones `nod-tpm` reads, the
//! answers, the size limit and the exit codes are the ones it gives. Runs the real binary; every
//! request here is refused while it is read, before a TPM is opened, so no TPM is needed.

use std::io::Write;
use std::process::{Command, Stdio};

use nod_man::check;

const PAGE: &str = include_str!("../man/nod-tpm.1.in");

/// `nod-tpm` with `request` on stdin: its exit code and answer.
fn run(request: &[u8]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nod-tpm"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Should a request get as far as a TPM, it finds none (nothing listens on port 1).
        .env("TPM2TOOLS_TCTI", "swtpm:host=127.0.0.1,port=1")
        .spawn()
        .expect("nod-tpm runs");
    // Past the limit nod-tpm stops reading; what it leaves unread may meet a closed pipe.
    let _ = child.stdin.take().unwrap().write_all(request);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().expect("nod-tpm exits"),
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn plain(text: &str) -> String {
    text.lines().map(check::plain).collect::<Vec<_>>().join(" ")
}

#[test]
fn the_documented_requests_are_the_ones_it_reads() {
    let requests: Vec<String> = check::tagged(check::section(PAGE, "DESCRIPTION").unwrap())
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(requests, ["seal", "unseal"]);
    // Each documented request is recognised: the answer is about its fields, in the order the
    // page gives them.
    for (request, answer) in [
        ("seal\n", "error bad request: key is missing\n"),
        ("seal\nzz\n-\n", "error bad request: key is not hex\n"),
        ("seal\n00\n", "error bad request: pin is missing\n"),
        (
            "seal\n00\n-\n",
            "error bad request: the key is not 32 bytes\n",
        ),
        ("unseal\n", "error bad request: public is missing\n"),
        ("unseal\n00\n", "error bad request: private is missing\n"),
        ("unseal\n00\n00\n", "error bad request: pin is missing\n"),
    ] {
        assert_eq!(
            run(request.as_bytes()),
            (1, answer.to_owned()),
            "{request:?}"
        );
    }
    let (code, answer) = run(b"open\n");
    assert_eq!(code, 1);
    assert!(answer.starts_with("error "), "{answer}");
    let description = plain(check::section(PAGE, "DESCRIPTION").unwrap());
    for word in ["ok", "wrong-pin", "error"] {
        assert!(description.contains(&format!(" {word} ")), "{word}");
    }
}

#[test]
fn the_documented_limit_and_exit_status_hold() {
    let description = plain(check::section(PAGE, "DESCRIPTION").unwrap());
    let limit: usize = description
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the page gives the request's limit");
    // `limit` bytes exactly: read whole (the key is not 32 bytes, but the PIN is there).
    let key = |len: usize| "0".repeat(len);
    let whole = format!("seal\n{}\n-\n", key(limit - 8));
    assert_eq!(whole.len(), limit);
    assert_eq!(
        run(whole.as_bytes()),
        (1, "error bad request: the key is not 32 bytes\n".to_owned())
    );
    // Two bytes more: the PIN is cut off at the limit.
    let cut = format!("seal\n{}\n-\n", key(limit - 6));
    assert_eq!(
        run(cut.as_bytes()),
        (1, "error bad request: pin is missing\n".to_owned()),
        "a request is read up to {limit} bytes"
    );
    let exits: Vec<String> = check::tagged(check::section(PAGE, "EXIT STATUS").unwrap())
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(exits, ["0", "1"]);
}
